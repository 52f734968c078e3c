"""Score reports: a model's per-task scores beside its base model's, and the table `flanpipe eval` prints.

A report is `{"model", "split", "tasks": {task: {"n", "loss", "metrics": {name: score}}}, ...}`; `add_base` puts
the base model's scores and each metric's change beside it.
"""

from __future__ import annotations

from typing import Any


def add_base(report: dict[str, Any], base: dict[str, Any]) -> None:
    """Put the base model's scores (`{"model", "tasks"}`) beside a report's, and each metric's change."""
    report["base"] = base
    report["delta"] = {
        task: {metric: value - base["tasks"][task]["metrics"].get(metric, float("nan"))
               for metric, value in result["metrics"].items()}
        for task, result in report["tasks"].items() if task in base["tasks"]
    }


def score_rows(report: dict[str, Any]) -> list[tuple[str, str, float | None, float, float | None]]:
    """(task, metric, base, tuned, delta) rows of a report; base and delta are None without a base."""
    base = report.get("base", {}).get("tasks", {})
    rows = []
    for task, result in report["tasks"].items():
        for metric, value in result["metrics"].items():
            before = base.get(task, {}).get("metrics", {}).get(metric)
            rows.append((task, metric, before, value, None if before is None else value - before))
    return rows


def format_scores(report: dict[str, Any]) -> str:
    """A table: one row per task and metric, with base, tuned and delta when the base is known."""
    lines = [f"{report['model']} · split {report['split']} · {report['variant']}",
             f"{'task':<20} {'n':>5}  {'metric':<14} {'base':>7} {'tuned':>7} {'delta':>7}"]
    for task, metric, before, value, delta in score_rows(report):
        before_text = "" if before is None else f"{before:7.1f}"
        delta_text = "" if delta is None else f"{delta:+7.1f}"
        flag = "  ▼ forgot" if delta is not None and delta < -1e-9 else ""
        n = report["tasks"][task]["n"]
        lines.append(f"{task:<20} {n:>5}  {metric:<14} {before_text:>7} {value:7.1f} {delta_text:>7}{flag}")
    return "\n".join(lines)
