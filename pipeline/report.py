"""Reports readable without any dashboard: Markdown with PNG plots and tables, from a run's own files.

    flanpipe report runs/default        ->  runs/default/report/report.md (+ PNGs and scores.csv beside it)

A run report reads `metrics.jsonl`, `summary.json` and `eval/{base_,}validation.json` (all written by
`flanpipe train`) and shows: the run at a glance (loss, lr, gradient norm, tokens/s), the aggregate scores over
training, each task's primary score over training against its base, validation and training loss per task,
target vs realized mixture shares, the scores per metric (base vs tuned), and sample generations.

It stays readable at any number of tasks. Each task has one colour in every plot. Up to `MANY_TASKS` tasks,
every task is drawn and listed. Past that, the plots show the spread over tasks (median and 10-90% band), the
`K` tasks that lost most and the `K` that gained most, a histogram of per-task changes, and target against
realized share as a histogram of their ratio; the tables list those tasks, and every task's scores are in `scores.csv`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.dashboard import WORST_K, markdown_table, primary_metric, score_deltas
from pipeline.errors import UserError
from pipeline.evaluate.results import score_rows
from pipeline.files import write_text_atomically

MANY_TASKS = 20
K = 6
"""Tasks shown at each end (lost most, gained most) once there are more than `MANY_TASKS`."""
REPORT_IMAGES = ("overview.png", "task_scores.png", "train_loss.png", "validation_loss.png", "mixture_shares.png",
                 "scores.png", "score_changes.png")
SKIPPED_IN_PLOTS = ("rouge1", "rouge2", "rougeLsum")  # rougeL stands for ROUGE in plots; the tables have all four


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise UserError(f"{run_dir}: no metrics.jsonl; is this a run folder written by `flanpipe train`?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """[(step, value)] of one key (the last record of a repeated step wins: a resumed run repeats steps)."""
    points = {record["step"]: float(record[key]) for record in records
              if isinstance(record.get(key), int | float) and not isinstance(record.get(key), bool)}
    return sorted(points.items())


def task_series(records: list[dict[str, Any]], group: str, metric: str) -> dict[str, list[tuple[int, float]]]:
    """task -> [(step, value)] for every key `group/<task>/metric`."""
    found: dict[str, dict[int, float]] = defaultdict(dict)
    for record in records:
        for key, value in record.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == group and parts[2] == metric and isinstance(value, int | float):
                found[parts[1]][record["step"]] = float(value)
    return {task: sorted(points.items()) for task, points in sorted(found.items())}


# --- plotting ---------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def new_figure(title: str, ylabel: str):
    figure, axes = _pyplot().subplots(figsize=(9, 5), dpi=110)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def small_multiples(count: int, title: str, columns: int = 4, height: float = 2.6):
    """A figure of `count` panels in rows of `columns`; returns (figure, [axes]) with unused panels hidden."""
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure, grid = _pyplot().subplots(rows, columns, figsize=(3.6 * columns, height * rows + 0.6), dpi=100,
                                      squeeze=False)
    figure.suptitle(title)
    panels = [axes for row in grid for axes in row]
    for axes in panels[count:]:
        axes.set_visible(False)
    for axes in panels[:count]:
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize=7)
    return figure, panels[:count]


def save_figure(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path)
    _pyplot().close(figure)
    return path.name


def task_colours(tasks: list[str]) -> dict[str, Any]:
    """One colour per task, the same in every plot of a report: tab10/tab20 for up to 20 tasks, else hues spread
    over a colour map (with many tasks only a few are drawn at once, and those are labelled)."""
    plt = _pyplot()
    ordered = sorted(tasks)
    if len(ordered) <= 10:
        palette = [plt.get_cmap("tab10")(i) for i in range(10)]
    elif len(ordered) <= 20:
        palette = [plt.get_cmap("tab20")(i) for i in range(20)]
    else:  # hues a golden ratio apart: tasks next to each other in name order get far-apart colours
        palette = [plt.get_cmap("turbo")(0.05 + 0.9 * ((i * 0.6180339887) % 1.0)) for i in range(len(ordered))]
    return {task: palette[i] for i, task in enumerate(ordered)}


def plot_task_curves(curves: dict[str, list[tuple[int, float]]], colours: dict[str, Any], path: Path, title: str,
                     ylabel: str, highlight: list[str]) -> str:
    """Every task's curve (up to `MANY_TASKS`); past that, the median and 10-90% band over tasks with the
    `highlight` tasks drawn on top."""
    figure, axes = new_figure(title, ylabel)
    if len(curves) <= MANY_TASKS:
        shown = list(curves)
    else:
        by_step: dict[int, list[float]] = defaultdict(list)
        for points in curves.values():
            for step, value in points:
                by_step[step].append(value)
        steps = sorted(by_step)
        quantiles = [_quantiles(sorted(by_step[s]), (0.1, 0.5, 0.9)) for s in steps]
        axes.fill_between(steps, [q[0] for q in quantiles], [q[2] for q in quantiles], color="0.8",
                          label=f"10-90% of {len(curves)} tasks")
        axes.plot(steps, [q[1] for q in quantiles], color="black", linewidth=1.5, label="median task")
        shown = [task for task in highlight if task in curves]
    for task in shown:
        steps, values = zip(*curves[task], strict=True)
        axes.plot(steps, values, color=colours[task], label=task, marker="o" if len(steps) < 12 else None,
                  markersize=3)
    axes.set_xlabel("step")
    axes.legend(fontsize=7, ncol=2 if len(shown) > 8 else 1, loc="best")
    return save_figure(figure, path)


def _quantiles(values: list[float], levels: tuple[float, ...]) -> list[float]:
    return [values[min(len(values) - 1, int(level * len(values)))] for level in levels]


# --- the report -------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _overview(records: list[dict[str, Any]], out: Path) -> str | None:
    panels = [(key, label) for key, label in (("batch/loss", "training loss"), ("batch/lr", "learning rate"),
                                              ("batch/grad_norm", "gradient norm (before clipping)"),
                                              ("batch/tokens_per_second", "real tokens per second"))
              if series(records, key)]
    aggregates = [(keys, label) for keys, label in (
        (("aggregate/score_trained", "aggregate/score_held_out"), "mean primary score"),
        (("aggregate/loss_trained", "aggregate/loss_held_out"), "mean validation loss"),
        (("aggregate/tasks_below_base",), "tasks below their base score"),
        ((f"aggregate/worst{WORST_K}_delta",), f"mean change of the {WORST_K} tasks that lost most"))
        if any(series(records, key) for key in keys)]
    if not panels and not aggregates:
        return None
    figure, axes_list = small_multiples(len(panels) + len(aggregates), "The run at a glance", columns=4)
    for axes, (key, label) in zip(axes_list, panels, strict=False):
        steps, values = zip(*series(records, key), strict=True)
        axes.plot(steps, values, color="tab:blue")
        axes.set_title(label, fontsize=9)
    for axes, (keys, label) in zip(axes_list[len(panels):], aggregates, strict=True):
        for key, colour in zip(keys, ("tab:blue", "tab:orange"), strict=False):
            points = series(records, key)
            if points:
                steps, values = zip(*points, strict=True)
                axes.plot(steps, values, marker="o", markersize=3, color=colour,
                          label=key.rsplit("_", 1)[-1].replace("out", "held out"))
        if len(keys) > 1:
            axes.legend(fontsize=7)
        axes.set_title(label, fontsize=9)
    return save_figure(figure, out / "overview.png")


def _task_scores_over_time(records: list[dict[str, Any]], shown: list[str], held_out: set[str], metric: dict[str, str],
                           colours: dict[str, Any], out: Path) -> str | None:
    """One panel per shown task: its primary score at each evaluation, step 0 being the base model."""
    curves = {}
    for task in shown:
        group = "held_out" if task in held_out else "eval"
        points = series(records, f"{group}/{task}/{metric[task]}") if task in metric else []
        if points:
            curves[task] = points
    if not curves:
        return None
    figure, panels = small_multiples(len(curves), "Primary score at each evaluation (step 0: the base model)")
    for axes, (task, points) in zip(panels, curves.items(), strict=True):
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, marker="o", markersize=3, color=colours[task])
        axes.axhline(values[0], linestyle="--", linewidth=0.8, color="0.5")
        axes.set_ylim(min(0.0, *values), max(1.0, *values) * 1.08)  # scores are 0-100: a flat 0 sits on the floor
        axes.set_title(f"{task}{' (held out)' if task in held_out else ''}\n{metric[task]}", fontsize=8)
    return save_figure(figure, out / "task_scores.png")


def _scores_by_metric(rows: list[tuple], colours: dict[str, Any], out: Path) -> str | None:
    """Small multiples, one per metric (each on its own scale): base and tuned score of each task."""
    by_metric: dict[str, list[tuple]] = defaultdict(list)
    for task, metric, before, value, _ in rows:
        if metric not in SKIPPED_IN_PLOTS:
            by_metric[metric].append((task, before, value))
    if not by_metric:
        return None
    figure, panels = small_multiples(len(by_metric), "Scores per metric: base (hatched) and tuned", columns=3,
                                     height=3.2)
    for axes, (metric, entries) in zip(panels, sorted(by_metric.items()), strict=True):
        names = [task for task, _, _ in entries]
        xs = range(len(names))
        axes.bar([x - 0.2 for x in xs], [b or 0.0 for _, b, _ in entries], 0.4, color="white", hatch="///",
                 edgecolor=[colours[t] for t in names])
        axes.bar([x + 0.2 for x in xs], [v for _, _, v in entries], 0.4, color=[colours[t] for t in names])
        top = max([v for _, _, v in entries] + [b or 0.0 for _, b, _ in entries])
        axes.set_ylim(0, max(1.0, top * 1.15))
        for x, (_, _, value) in zip(xs, entries, strict=True):
            axes.annotate(f"{value:.2g}", (x + 0.2, value), ha="center", va="bottom", fontsize=6)
        axes.set_xticks(list(xs), names, rotation=40, ha="right", fontsize=7)
        axes.set_title(metric, fontsize=9)
    return save_figure(figure, out / "scores.png")


def _deltas(deltas: dict[str, float], colours: dict[str, Any], out: Path, ends: tuple[list[str], list[str]]) -> str:
    """Past `MANY_TASKS`: a histogram of every task's change in primary score, and the tasks at both ends."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    values = list(deltas.values())
    left.hist(values, bins=min(50, max(10, len(values) // 10)), color="tab:blue")
    left.axvline(0, color="black", linewidth=0.8)
    left.set_title(f"Change in primary score from the base model, {len(values)} tasks")
    left.set_xlabel("tuned - base (points)")
    left.set_ylabel("tasks")
    worst, best = ends
    names = worst + best
    right.barh(range(len(names)), [deltas[t] for t in names], color=[colours[t] for t in names])
    right.set_yticks(range(len(names)), names, fontsize=7)
    right.invert_yaxis()
    right.axvline(0, color="black", linewidth=0.8)
    right.set_title(f"The {len(worst)} tasks that lost most and the {len(best)} that gained most")
    right.set_xlabel("tuned - base (points)")
    return save_figure(figure, out / "score_changes.png")


def _mixture(target: dict[str, float], realized: dict[str, float], colours: dict[str, Any], out: Path) -> str:
    if len(target) <= MANY_TASKS:
        figure, axes = new_figure("Mixture shares: target (hatched) and realized", "% of draws")
        names = list(target)
        xs = range(len(names))
        axes.bar([x - 0.2 for x in xs], [100 * target[t] for t in names], 0.4, color="white", hatch="///",
                 edgecolor=[colours[t] for t in names])
        axes.bar([x + 0.2 for x in xs], [100 * realized.get(t, 0.0) for t in names], 0.4,
                 color=[colours[t] for t in names])
        axes.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
    else:
        ratios = [realized.get(task, 0.0) / share for task, share in target.items() if share > 0]
        figure, axes = new_figure(f"Mixture shares of {len(target)} tasks: realized ÷ target share", "tasks")
        axes.hist(ratios, bins=40, color="tab:blue")
        axes.axvline(1.0, color="black", linewidth=0.8, label="realized = target")
        axes.set_xlabel("realized share ÷ target share")
        axes.legend(fontsize=8)
    return save_figure(figure, out / "mixture_shares.png")


def write_run_report(run_dir: Path) -> Path:
    """Write `<run>/report/report.md`, its PNGs and `scores.csv`; returns the Markdown path."""
    records = read_metrics(run_dir)
    validation = _read_json(run_dir / "eval" / "validation.json")
    base = (_read_json(run_dir / "eval" / "base_validation.json") or {}).get("tasks", {})
    summary = _read_json(run_dir / "summary.json")
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    for stale in REPORT_IMAGES:  # a plot this report does not draw (fewer tasks, no scores) must not linger
        (out / stale).unlink(missing_ok=True)

    held_out = {key.split("/")[1] for record in records for key in record if key.startswith("held_out/")}
    train_loss = task_series(records, "train", "loss")
    eval_loss = {**task_series(records, "eval", "loss"), **task_series(records, "held_out", "loss")}
    tasks = sorted({*train_loss, *eval_loss, *(validation or {}).get("tasks", {})})
    colours = task_colours(tasks)
    many = len(tasks) > MANY_TASKS
    results = (validation or {}).get("tasks", {})
    metric = {task: name for task, result in {**base, **results}.items()
              if (name := primary_metric(result["metrics"])) is not None}
    deltas = score_deltas(results, base)
    ranked = sorted(deltas, key=deltas.get)
    ends = (ranked[:K], ranked[-K:][::-1] if len(ranked) > K else [])
    highlight = ends[0] + [t for t in ends[1] if t not in ends[0]] if deltas else tasks[:K]

    sections = [f"# Run report: {run_dir.name}\n"]
    if summary:
        facts = [f"{summary['steps']} steps", f"{summary['tokens']:,} tokens", f"{summary['seconds']:.0f} s",
                 f"{len(tasks)} tasks ({len(held_out)} held out)"]
        scores = [f"{name.replace('_', ' ')} {summary[name]:.2f}".removesuffix(".00") for name in
                  ("score_trained", "score_held_out", "tasks_below_base", f"worst{WORST_K}_delta") if name in summary]
        sections.append(", ".join(facts) + ("; at the end: " + ", ".join(scores) if scores else "") + ".\n")
    image = _overview(records, out)
    if image:
        sections.append(f"## The run at a glance\n\n![overview]({image})\n")
    shown = highlight if many else tasks
    image = _task_scores_over_time(records, shown, held_out, metric, colours, out)
    if image:
        which = (f"the {len(ends[0])} tasks that lost most and the {len(ends[1])} that gained most"
                 if many else "every task")
        sections.append(f"## Scores over training\n\nPrimary score of {which} at each evaluation; the dashed line is "
                        f"the base model's.\n\n![task scores]({image})\n")
    if train_loss:
        image = plot_task_curves(train_loss, colours, out / "train_loss.png", "Training loss per task",
                                 "loss (mean per target token)", highlight)
        sections.append(f"## Training loss per task\n\n![training loss]({image})\n")
    if eval_loss:
        image = plot_task_curves(eval_loss, colours, out / "validation_loss.png", "Validation loss per task",
                                 "loss", highlight)
        table = [[task, points[0][1], points[-1][1], points[-1][1] - points[0][1]]
                 for task, points in eval_loss.items() if not many or task in highlight]
        note = f" (the {len(table)} tasks of the score plots; {len(eval_loss)} in all)" if many else ""
        sections.append(f"## Validation loss per task\n\n![validation loss]({image})\n\n"
                        f"Loss at the first and last evaluation{note}:\n\n"
                        + markdown_table(["task", "start", "end", "change"], table) + "\n")

    target = {task: points[-1][1] for task, points in task_series(records, "mixture", "target").items()}
    realized = {task: points[-1][1] for task, points in task_series(records, "mixture", "realized").items()}
    if target:
        image = _mixture(target, realized, colours, out)
        distance = series(records, "aggregate/mixture_distance")
        rows = [[task, 100 * target[task], 100 * realized.get(task, 0.0)] for task in target]
        if many:
            rows = sorted(rows, key=lambda row: -abs(row[2] - row[1]))[:2 * K]
        text = (f"Distance from the target shares at the end (½ Σ |realized - target|): {distance[-1][1]:.4f}.\n\n"
                if distance else "")
        sections.append(f"## Mixture shares\n\n![mixture shares]({image})\n\n{text}"
                        + ("The tasks furthest from their target share:\n\n" if many else "")
                        + markdown_table(["task", "target %", "realized %"], rows) + "\n")

    if validation:
        rows = score_rows(validation)
        write_text_atomically(out / "scores.csv", _csv(["task", "metric", "base", "tuned", "delta"], rows))
        flagged = [[t, m, b, v, d, "▼ forgot" if d is not None and d < 0 else ""] for t, m, b, v, d in rows]
        if many:
            picked = [row for task in highlight for row in flagged if row[0] == task and row[1] == metric.get(task)]
            text = (f"Primary score of the {len(ends[0])} tasks that lost most and the {len(ends[1])} that gained "
                    f"most; {sum(d < 0 for d in deltas.values())} of {len(deltas)} tasks are below their base. "
                    "Every task and metric: [scores.csv](scores.csv).\n\n")
        else:
            picked, text = flagged, "Every task and metric also in [scores.csv](scores.csv).\n\n"
        sections.append("## Scores per task (validation)\n\n" + text
                        + markdown_table(["task", "metric", "base", "tuned", "delta", "flag"], picked) + "\n")
        image = (_deltas(deltas, colours, out, ends) if many and deltas
                 else _scores_by_metric(rows, colours, out))
        if image:
            sections.append(f"![scores]({image})\n")

    samples = [record["samples"] for record in records if "samples" in record]
    if samples:
        rows = [[s["task"], s["input"][:160], s["target"], s["prediction"], "✓" if s["correct"] else "✗"]
                for s in samples[-1]]
        sections.append(f"## Sample generations (step {samples[-1][0]['step']})\n\n"
                        + markdown_table(["task", "input", "target", "prediction", "correct"], rows) + "\n")
    path = out / "report.md"
    write_text_atomically(path, "\n".join(sections))
    return path


def _csv(header: list[str], rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if value is None else value for value in row] for row in rows)
    return buffer.getvalue()
