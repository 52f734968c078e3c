"""Reports readable without any dashboard: Markdown with PNG plots and tables, from a run's own files.

    flanpipe report runs/default        ->  runs/default/report/report.md (+ PNGs beside it)

A run report shows the training loss per task, the validation loss per task, target vs realized mixture
shares, the per-task score table (base / tuned / delta, a drop flagged as forgetting) and sample generations.
It reads `metrics.jsonl` and `eval/validation.json`, both written by `flanpipe train`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.evaluate.results import score_rows
from pipeline.files import write_text_atomically


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise UserError(f"{run_dir}: no metrics.jsonl; is this a run folder written by `flanpipe train`?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(records: list[dict[str, Any]], prefix: str) -> dict[str, list[tuple[int, float]]]:
    """name -> [(step, value)] for every key `prefix<name>` (the last record of a repeated step wins)."""
    found: dict[str, dict[int, float]] = defaultdict(dict)
    for record in records:
        for key, value in record.items():
            if key.startswith(prefix) and isinstance(value, int | float):
                found[key[len(prefix):]][record["step"]] = float(value)
    return {name: sorted(points.items()) for name, points in sorted(found.items())}


def new_figure(title: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5), dpi=110)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def save_figure(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path.name


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str, ylabel: str) -> str:
    figure, axes = new_figure(title, ylabel)
    for name, points in curves.items():
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, label=name, marker="o" if len(points) < 12 else None, markersize=3)
    axes.set_xlabel("step")
    axes.legend(fontsize=8, ncol=2)
    return save_figure(figure, path)


def plot_bars(groups: dict[str, dict[str, float]], path: Path, title: str, ylabel: str) -> str:
    """Grouped bars: one group per task (x), one bar per series (e.g. target / realized, base / tuned)."""
    figure, axes = new_figure(title, ylabel)
    names = list(groups)
    labels = list(next(iter(groups.values()), {}))  # series in the order the first group names them
    width = 0.8 / max(1, len(labels))
    for offset, label in enumerate(labels):
        xs = [i + offset * width - 0.4 + width / 2 for i in range(len(names))]
        axes.bar(xs, [groups[name].get(label, 0.0) for name in names], width, label=label)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axes.axhline(0, color="black", linewidth=0.6)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ⏎ ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_run_report(run_dir: Path) -> Path:
    """Write `<run>/report/report.md` and its PNGs; returns the Markdown path."""
    records = read_metrics(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    sections = [f"# Run report: {run_dir.name}\n"]

    train_loss = series(records, "train/loss/")
    if train_loss:
        image = plot_curves(train_loss, out / "train_loss.png", "Training loss per task", "loss (mean per target token)")
        sections.append(f"## Training loss per task\n\n![training loss]({image})\n")
    eval_loss = series(records, "eval/loss/")
    if eval_loss:
        image = plot_curves(eval_loss, out / "validation_loss.png", "Validation loss per task", "loss")
        first_last = [[task, points[0][1], points[-1][1], points[-1][1] - points[0][1]] for task, points in eval_loss.items()]
        sections.append(f"## Validation loss per task\n\n![validation loss]({image})\n\n"
                        + markdown_table(["task", "start", "end", "change"], first_last) + "\n")

    target = {name: points[-1][1] for name, points in series(records, "mixture/target/").items()}
    realized = {name: points[-1][1] for name, points in series(records, "mixture/realized/").items()}
    if target:
        groups = {task: {"target": 100 * target[task], "realized": 100 * realized.get(task, 0.0)} for task in target}
        image = plot_bars(groups, out / "mixture_shares.png", "Mixture shares: target vs realized", "% of draws")
        rows = [[task, 100 * target[task], 100 * realized.get(task, 0.0)] for task in target]
        sections.append(f"## Mixture shares\n\n![mixture shares]({image})\n\n"
                        + markdown_table(["task", "target %", "realized %"], rows) + "\n")

    validation_path = run_dir / "eval" / "validation.json"
    if validation_path.exists():
        validation = json.loads(validation_path.read_text())
        rows = score_rows(validation)
        table = [[t, m, b, v, d, "▼ forgot" if d is not None and d < 0 else ""] for t, m, b, v, d in rows]
        sections.append("## Scores per task (validation)\n\n"
                        + markdown_table(["task", "metric", "base", "tuned", "delta", ""], table) + "\n")
        deltas = {f"{t}/{m}": {"base": b or 0.0, "tuned": v} for t, m, b, v, _ in rows}
        if deltas:
            image = plot_bars(deltas, out / "scores.png", "Per-task scores: base vs tuned", "score (0-100)")
            sections.append(f"![scores]({image})\n")

    samples = [record["eval/samples"] for record in records if "eval/samples" in record]
    if samples:
        rows = [[s["task"], s["input"][:160], s["target"], s["prediction"]] for s in samples[-1]]
        sections.append("## Sample generations (last evaluation)\n\n"
                        + markdown_table(["task", "input", "target", "prediction"], rows) + "\n")
    path = out / "report.md"
    write_text_atomically(path, "\n".join(sections))
    return path
