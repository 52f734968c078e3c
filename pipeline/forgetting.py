"""The forgetting experiment: sequential single-task tuning against one multi-task run on the same tasks.

    flanpipe forgetting [--tasks sentiment topics arithmetic] [--steps 300] [--quick]   (make forgetting)

(a) the base model is scored on every task; (b) it is tuned on task A alone, then the result on B alone,
then on C, and after each stage every task is scored again; (c) the base model is tuned once on a mixture of
A, B and C for the same total number of steps. The forgetting matrix has one row per stage and one column
per task; the drop of an earlier task after a later stage is forgetting, and the multi-task row shows what a
mixture keeps. Scores are each task's primary metric (0-100) and its validation loss, because a small model's
generation scores can sit at 0 while its loss still moves. Every stage is a normal `flanpipe train` run in
its own folder under the experiment folder; the report is Markdown with PNG plots.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.dashboard import markdown_table, primary_metric
from pipeline.errors import UserError
from pipeline.files import write_text_atomically
from pipeline.report import new_figure, save_figure

DEFAULT_SEQUENCE = ("sentiment", "topics", "arithmetic")


def _run(command: list[str], log: Path) -> None:
    """Run a flanpipe step as its own process (a clean Accelerate state each time), logging its output."""
    with log.open("w") as handle:
        result = subprocess.run([sys.executable, "-m", "pipeline.cli", *command], stdout=handle,
                                stderr=subprocess.STDOUT)
    if result.returncode:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"forgetting: `flanpipe {' '.join(command[:2])}` failed ({tail[0]}); full log: {log}")


def run_experiment(out: Path, tasks: list[str], steps: int, settings: list[str], limit: int) -> dict[str, Any]:
    """Run every stage into `out` (a stage already finished is reused) and return the matrix. `settings`
    (`-c preset.yaml`, `key=value`, ...) are passed to every train and eval step."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    evaluate = ["--tasks", *tasks, "--split", "validation", "--limit", str(limit), "--base", "none"]
    rows: dict[str, dict[str, Any]] = {}

    def score(stage: str, model: str) -> None:
        path = out / f"scores-{stage}.json"
        if not path.exists():
            print(f"forgetting: scoring {stage}", flush=True)
            _run(["eval", model, *settings, *evaluate, "--out", str(path)], out / f"eval-{stage}.log")
        rows[stage] = json.loads(path.read_text())["tasks"]

    def tune(stage: str, model: str, mixture: str, stage_steps: int) -> str:
        run_dir = out / stage
        if not (run_dir / "final" / "config.json").exists():
            print(f"forgetting: training {stage} ({stage_steps} steps on {mixture})", flush=True)
            # The stage's own settings come last, so they win over the experiment-wide ones.
            _run(["train", *settings, f"run.dir={run_dir}", f"run.name={stage}", f"model.name={model}",
                  f"data.mixture={mixture}", f"train.max_steps={stage_steps}", "train.eval_every=0",
                  f"train.save_every={stage_steps}", f"eval.max_examples={limit}", "log.trackers=[jsonl]",
                  "train.resume=auto"], out / f"train-{stage}.log")
        return str(run_dir / "final")

    def mixture(name: str, members: list[str]) -> str:
        """A mixture file in the experiment folder; every stage uses the same variants and rule."""
        path = out / f"{name}.yaml"
        write_text_atomically(
            path,
            "# Written by flanpipe forgetting: the same rule and variants for every stage.\n"
            "rate: {rule: examples_proportional, cap: 3000}\n"
            "members: {" + ", ".join(f"{task}: {{}}" for task in members) + "}\n"
            "variants: {few_shot: 0.25, options: 0.5, inversion: 0.1}\n"
        )
        return str(path)

    base = _setting(settings, "model.name", "flanpipe/t5-tiny")
    score("base", base)
    model = base
    for position, task in enumerate(tasks, start=1):
        stage = f"{position}-after-{task}"
        model = tune(stage, model, mixture(f"only-{task}", [task]), steps)
        score(stage, model)
    score("multi-task", tune("multi-task", base, mixture("all", tasks), steps * len(tasks)))
    return {"tasks": tasks, "steps_per_stage": steps, "limit": limit, "rows": rows,
            "seconds": round(time.perf_counter() - started, 1)}


def _setting(settings: list[str], key: str, default: str) -> str:
    for setting in settings:
        if setting.startswith(key + "="):
            return setting.split("=", 1)[1]
    return default


def write_report(result: dict[str, Any], out: Path) -> Path:
    """forgetting.md with the score and loss matrices, the drops, and PNG plots."""
    tasks, rows = result["tasks"], result["rows"]
    metric = {task: primary_metric(rows["base"][task]["metrics"]) for task in tasks}
    stages = list(rows)

    def value(stage: str, task: str, kind: str) -> float:
        entry = rows[stage][task]
        return entry["loss"] if kind == "loss" else entry["metrics"][metric[task]]

    sections = [
        "# Forgetting: sequential single-task tuning vs one multi-task run\n",
        f"Tasks in order: {', '.join(tasks)}; {result['steps_per_stage']} steps per stage; the multi-task run "
        f"trains {result['steps_per_stage'] * len(tasks)} steps on a mixture of the same tasks. Validation split, "
        f"{result['limit']} examples per task. Wall time {result['seconds'] / 60:.1f} min.\n",
    ]
    for kind, title in (("score", "Score (primary metric, 0-100, higher is better)"),
                        ("loss", "Validation loss (lower is better)")):
        header = ["after", *[f"{t} ({metric[t]})" if kind == "score" else t for t in tasks]]
        table = [[stage, *[value(stage, t, kind) for t in tasks]] for stage in stages]
        sections.append(f"## {title}\n\n" + markdown_table(header, table) + "\n")

    sequential = [s for s in stages if s not in ("base", "multi-task")]
    drops = []
    for position, task in enumerate(tasks):
        learned = sequential[position]
        for later in sequential[position + 1:]:
            drops.append([task, learned, later, value(learned, task, "score"), value(later, task, "score"),
                          value(later, task, "score") - value(learned, task, "score"),
                          value(later, task, "loss") - value(learned, task, "loss")])
    if drops:
        sections.append("## What earlier tasks lose in later stages\n\n" + markdown_table(
            ["task", "learned in", "after", "score then", "score now", "score change", "loss change"], drops) + "\n")
    final = sequential[-1]
    kept = [[t, value(final, t, "score"), value("multi-task", t, "score"), value(final, t, "loss"),
             value("multi-task", t, "loss")] for t in tasks]
    sections.append("## End of sequential tuning vs the multi-task run\n\n" + markdown_table(
        ["task", "sequential score", "multi-task score", "sequential loss", "multi-task loss"], kept) + "\n")

    for kind, ylabel in (("score", "primary metric"), ("loss", "validation loss")):
        figure, axes = new_figure(f"Forgetting: {kind} of each task after each stage", ylabel)
        for task in tasks:
            axes.plot(sequential, [value(s, task, kind) for s in sequential], marker="o", label=f"{task} (sequential)")
            axes.axhline(value("multi-task", task, kind), linestyle="--", linewidth=1,
                         color=axes.lines[-1].get_color(), label=f"{task} (multi-task)")
        axes.set_xlabel("after stage")
        axes.legend(fontsize=8)
        image = save_figure(figure, out / f"forgetting_{kind}.png")
        sections.append(f"![{kind}]({image})\n")
    path = out / "forgetting.md"
    write_text_atomically(path, "\n".join(sections))
    write_text_atomically(out / "forgetting.json", json.dumps(result, indent=2) + "\n")
    return path
