"""What the dashboards show: the metric names every tracker shares, the aggregates over tasks that stay readable
at any number of tasks, and TensorBoard's Custom Scalars layout. Torch-free.

Names (metrics.jsonl, TensorBoard and wandb alike; `<task>` is a task name):

    aggregate/score_trained, aggregate/score_held_out   mean primary score (0-100) over trained / held-out tasks
    aggregate/loss_trained, aggregate/loss_held_out     mean validation loss over the same
    aggregate/worst5_delta                              mean change from the base model of the 5 tasks that lost most
    aggregate/tasks_below_base                          tasks whose primary score is below the base model's
    aggregate/mixture_distance                          ½ Σ |realized share - target share| (0: the mixture is followed)
    batch/loss, batch/lr, batch/grad_norm, batch/tokens_per_second, ...   the global batch, every train.log_every steps
    eval/<task>/<metric>, eval/<task>/loss              each trained task, at every evaluation (step 0: the base model)
    held_out/<task>/<metric>, held_out/<task>/loss      each held-out task, the same
    mixture/<task>/target, mixture/<task>/realized      the task's target share and its share of all draws so far
    train/<task>/loss                                   each trained task's training loss over the log window
    samples                                             generations: step, task, template, input, target, prediction, correct

TensorBoard's Time Series page sorts groups (the part before the first `/`) by name and opens the first two
expanded, the rest collapsed: `aggregate` and `batch` come first on purpose, the per-task groups after them.
A task's primary score is the first of `PRIMARY_METRICS` its evaluation reports.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

PRIMARY_METRICS = ("rank_accuracy", "accuracy", "exact_match", "bleu", "rougeL")
WORST_K = 5
RUN_METRICS = ("aggregate/score_trained", "aggregate/score_held_out", "aggregate/loss_trained",
               "aggregate/loss_held_out", "aggregate/tasks_below_base", f"aggregate/worst{WORST_K}_delta", "batch/loss")
"""The metrics a run is judged by: TensorBoard's HParams columns."""
LAYOUT_TASKS = 20
"""Tasks up to which the Custom Scalars layout has a target-vs-realized chart per task (past it, the distance)."""


def primary_metric(metrics: Mapping[str, float]) -> str | None:
    """The metric that stands for a task in aggregates, forgetting matrices and report plots (None: no metric)."""
    for name in PRIMARY_METRICS:
        if name in metrics:
            return name
    return next(iter(metrics), None)


def primary_score(result: Mapping[str, Any]) -> float | None:
    """A task's primary score from its result (`{"loss", "metrics"}`), or None when it has no metric."""
    metric = primary_metric(result.get("metrics", {}))
    return None if metric is None else result["metrics"][metric]


def task_prefix(task: str, held_out: Collection[str]) -> str:
    return f"{'held_out' if task in held_out else 'eval'}/{task}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def evaluation_values(results: Mapping[str, Mapping[str, Any]], held_out: Collection[str],
                      base: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, float]:
    """Everything one evaluation logs: each task's loss and metrics under its prefix, and the aggregates.
    `results` and `base` map task -> {"loss", "metrics": {name: score}} (the base model's, for the deltas)."""
    values: dict[str, float] = {}
    for task, result in results.items():
        prefix = task_prefix(task, held_out)
        values[f"{prefix}/loss"] = result["loss"]
        values.update({f"{prefix}/{metric}": score for metric, score in result["metrics"].items()})
    for group, names in (("trained", [t for t in results if t not in held_out]),
                         ("held_out", [t for t in results if t in held_out])):
        if names:
            values[f"aggregate/loss_{group}"] = _mean([results[t]["loss"] for t in names])
        scores = [score for t in names if (score := primary_score(results[t])) is not None]
        if scores:
            values[f"aggregate/score_{group}"] = _mean(scores)
    deltas = score_deltas(results, base or {})
    if deltas:
        values["aggregate/tasks_below_base"] = sum(delta < 0 for delta in deltas.values())
        values[f"aggregate/worst{WORST_K}_delta"] = _mean(sorted(deltas.values())[:WORST_K])
    return values


def score_deltas(results: Mapping[str, Mapping[str, Any]], base: Mapping[str, Mapping[str, Any]]
                 ) -> dict[str, float]:
    """task -> primary score minus the base model's, for tasks scored by both."""
    deltas = {}
    for task, result in results.items():
        score = primary_score(result)
        before = primary_score(base[task]) if task in base else None
        if score is not None and before is not None:
            deltas[task] = score - before
    return deltas


def mixture_values(target: Mapping[str, float], realized: Mapping[str, float]) -> dict[str, float]:
    """Target and realized shares per task, on the same step so they plot together, and their distance."""
    values = {}
    for task, share in target.items():
        values[f"mixture/{task}/target"] = share
        values[f"mixture/{task}/realized"] = realized.get(task, 0.0)
    values["aggregate/mixture_distance"] = 0.5 * sum(abs(realized.get(t, 0.0) - s) for t, s in target.items())
    return values


def custom_scalars_layout(trained: list[str]) -> dict[str, dict[str, list[Any]]]:
    """TensorBoard's Custom Scalars tab: the run at a glance (several series per chart), then target against
    realized share for each trained task (up to `LAYOUT_TASKS`; past that, their distance)."""
    overview = {
        "training loss": ["Multiline", ["^batch/loss$"]],
        "learning rate": ["Multiline", ["^batch/lr$"]],
        "gradient norm (mean and max over the log window)": ["Multiline", ["^batch/grad_norm"]],
        "tokens per second": ["Multiline", ["^batch/tokens_per_second$"]],
        "mean primary score: trained and held-out tasks": ["Multiline", ["^aggregate/score_"]],
        "mean validation loss: trained and held-out tasks": ["Multiline", ["^aggregate/loss_"]],
        "tasks below the base model": ["Multiline", ["^aggregate/tasks_below_base$"]],
        f"mean change of the {WORST_K} tasks that lost most": ["Multiline", [f"^aggregate/worst{WORST_K}_delta$"]],
    }
    mixture: dict[str, list[Any]] = {"distance from the target shares": ["Multiline", ["^aggregate/mixture_distance$"]]}
    if len(trained) <= LAYOUT_TASKS:
        mixture.update({f"{task}: target and realized share": ["Multiline", [f"^mixture/{re.escape(task)}/"]]
                        for task in trained})
    return {"Overview": overview, "Mixture": mixture}


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ⏎ ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
