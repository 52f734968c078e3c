"""The forgetting experiment: tasks tuned in sequence from a pre-trained base under each remedy, side by side.

    flanpipe forgetting [--tasks sentiment topics arithmetic] [--steps 300] [--strategies ...] [--quick]

Tasks A, B, C are tuned in turn, each stage starting from the previous stage's final model, under every strategy:
  full                full fine-tuning on the stage's task alone;
  lora                a fresh LoRA adapter per stage (peft), merged into the model the next stage starts from;
  replay              the stage's mixture holds a share (`--replay`, 5%) of the earlier tasks' data (Continual-T0);
  pretraining_replay  the stage's mixture holds that share of span corruption on the corpus (T5's objective);
  multitask           one run on a mixture of all the tasks for the same total steps (no sequence).
After every stage every task is scored (its primary metric and validation loss), and so is what the base knew:
the span-corruption loss on held-out corpus text and the scores of tasks nobody trains here (`--general`). Each
stage is a normal `flanpipe train` run in its own folder, whose mixture lists the tasks it does not train as
held out, so its closing evaluation scores them all; a stage already finished is reused.

The report (forgetting.md, forgetting.json, PNGs): a matrix per strategy, one summary table (strategy × final
score per task, average forgetting = the mean drop of each earlier task from its best score, and the change in
what the base knew), forgetting curves per strategy and a learn-vs-forget scatter.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dashboard import markdown_table, primary_metric
from pipeline.errors import UserError
from pipeline.files import write_text_atomically
from pipeline.report import save_figure, small_multiples

DEFAULT_SEQUENCE = ("sentiment", "topics", "arithmetic")
DEFAULT_GENERAL = ("corpus", "definitions", "analogies")
"""What the base knew: held-out span-corruption text, and tasks no stage trains."""
CORPUS = "corpus"


@dataclass(frozen=True)
class Strategy:
    name: str
    title: str
    settings: tuple[str, ...] = ()
    """Extra training settings of every stage."""
    replay: str = ""
    """"tasks": earlier tasks' data in each stage's mixture; "pretraining": span corruption; "": none."""
    sequential: bool = True


STRATEGIES = {strategy.name: strategy for strategy in (
    Strategy("full", "full fine-tuning"),
    # LoRA trains 6% of the embedded model's weights; 3× full fine-tuning's learning rate, as adapters usually need.
    Strategy("lora", "LoRA (rank 8, every linear layer; lr 3e-3)", ("peft.method=lora", "train.lr=3e-3")),
    Strategy("replay", "replay of earlier tasks' data", replay="tasks"),
    Strategy("pretraining_replay", "replay of span corruption", replay="pretraining"),
    Strategy("multitask", "multi-task mixing (all tasks at once)", sequential=False),
)}


def _run(command: list[str], log: Path) -> None:
    """Run a flanpipe step as its own process (a clean Accelerate state each time), logging its output."""
    with log.open("w") as handle:
        result = subprocess.run([sys.executable, "-m", "pipeline.cli", *command], stdout=handle,
                                stderr=subprocess.STDOUT)
    if result.returncode:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"forgetting: `flanpipe {' '.join(command[:2])}` failed ({tail[0]}); full log: {log}")


def stage_mixture(strategy: Strategy, tasks: list[str], position: int, evaluated: list[str], share: float) -> str:
    """The mixture file text of a stage (position 0-based; the multi-task run is one stage over all tasks): what it
    trains, with everything else it scores listed as held out."""
    if not strategy.sequential:
        members = {task: 1.0 for task in tasks}
    else:
        task, earlier = tasks[position], tasks[:position]
        replayed = earlier if strategy.replay == "tasks" else [CORPUS] if strategy.replay == "pretraining" else []
        members = {task: 1 - share if replayed else 1.0, **{other: share / len(replayed) for other in replayed}}
    held_out = [name for name in evaluated if name not in members]
    return ("# Written by flanpipe forgetting: one stage's mixture; the tasks it does not train are scored as held out.\n"
            "rate: {rule: explicit}\n"
            "members: {" + ", ".join(f"{name}: {{weight: {weight:.6g}}}" for name, weight in members.items()) + "}\n"
            "variants: {few_shot: 0, options: 0.5, inversion: 0}\n"
            f"held_out: [{', '.join(held_out)}]\n")


def run_experiment(out: Path, tasks: list[str], steps: int, settings: list[str], limit: int,
                   strategies: list[str], general: list[str], share: float) -> dict[str, Any]:
    """Train and score every stage of every strategy into `out` (finished stages are reused); returns the
    scores: rows[strategy][stage][task] = {"loss", "metrics"}, with the base as stage "base"."""
    unknown = [name for name in strategies if name not in STRATEGIES]
    if unknown:
        raise UserError(f"forgetting: unknown strategy {unknown[0]!r}; valid: {', '.join(STRATEGIES)}")
    overlap = sorted(set(tasks) & set(general))
    if overlap:
        raise UserError(f"forgetting: {overlap[0]!r} is both tuned (--tasks) and a measure of what the base knew "
                        "(--general); take it out of one of them")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    evaluated = [*tasks, *general]
    base_model = _setting(settings, "model.name", "flanpipe/t5-tiny-pretrained")
    rows: dict[str, dict[str, Any]] = {}
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    for name in strategies:
        strategy = STRATEGIES[name]
        model, rows[name] = base_model, {}
        stages = list(enumerate(tasks)) if strategy.sequential else [(0, "all")]
        for position, task in stages:
            stage = f"{name}/{position + 1}-{task}" if strategy.sequential else f"{name}/all"
            run_dir = out / stage
            mixture = out / f"{stage}.yaml"
            if not (run_dir / "eval" / "validation.json").exists():
                print(f"forgetting: {strategy.title}: training {stage}", flush=True)
                stage_started = time.perf_counter()
                mixture.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomically(mixture, stage_mixture(strategy, tasks, position, evaluated, share))
                stage_steps = steps if strategy.sequential else steps * len(tasks)
                # The stage's own settings come last, so they win over the experiment-wide ones.
                _run(["train", *settings, *strategy.settings, f"run.dir={run_dir}", f"run.name={stage}",
                      f"model.name={model}", f"data.mixture={mixture}", f"train.max_steps={stage_steps}",
                      "train.eval_every=0", f"train.save_every={stage_steps}", f"eval.max_examples={limit}",
                      "log.trackers=[jsonl]", "train.resume=auto"], run_dir.parent / f"{run_dir.name}.log")
                timings[stage] = round(time.perf_counter() - stage_started, 1)
                write_text_atomically(out / "timings.json", json.dumps(timings, indent=2) + "\n")
            if not rows[name]:
                rows[name]["base"] = _scores(run_dir / "eval" / "base_validation.json")
            rows[name][task] = _scores(run_dir / "eval" / "validation.json")
            model = str(run_dir / "final")
    return {"tasks": tasks, "general": general, "strategies": strategies, "steps_per_stage": steps, "limit": limit,
            "replay_share": share, "base_model": base_model, "rows": rows,
            "seconds": round(time.perf_counter() - started, 1),
            "stage_seconds": sum(timings.values())}


def _scores(path: Path) -> dict[str, Any]:
    return {task: {"loss": entry["loss"], "metrics": entry["metrics"]}
            for task, entry in json.loads(path.read_text())["tasks"].items()}


def _setting(settings: list[str], key: str, default: str) -> str:
    for setting in settings:
        if setting.startswith(key + "="):
            return setting.split("=", 1)[1]
    return default


# --- the report ---------------------------------------------------------------------------------------------------


def summarize(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per strategy: each task's final score and loss, what each task learned in its own stage (score gain over the
    base), average forgetting (the mean drop of every task but the last from its best score, and the mean rise of
    its loss from its lowest, after its own stage), and the change in what the base knew (corpus loss, and the mean
    loss and score of the general tasks)."""
    tasks, general = result["tasks"], result["general"]
    summary = {}
    for name, rows in result["rows"].items():
        base, stages = rows["base"], [stage for stage in rows if stage != "base"]
        final = rows[stages[-1]]
        own = {task: rows[task][task] if task in rows else final[task] for task in tasks}  # after its own stage
        forgetting_score, forgetting_loss = [], []
        if STRATEGIES[name].sequential:
            for position, task in enumerate(tasks[:-1]):
                after = [rows[stage][task] for stage in stages[position:]]
                forgetting_score.append(max(_score(entry) for entry in after) - _score(final[task]))
                forgetting_loss.append(final[task]["loss"] - min(entry["loss"] for entry in after))
        measured = [task for task in general if task != CORPUS and _metric(base[task]) is not None]
        summary[name] = {
            "final_score": {task: _score(final[task]) for task in tasks},
            "final_loss": {task: final[task]["loss"] for task in tasks},
            "learned": _mean([_score(own[task]) - _score(base[task]) for task in tasks]),
            "learned_loss": _mean([base[task]["loss"] - own[task]["loss"] for task in tasks]),
            "forgetting_score": _mean(forgetting_score) if forgetting_score else None,
            "forgetting_loss": _mean(forgetting_loss) if forgetting_loss else None,
            "corpus_loss_change": (final[CORPUS]["loss"] - base[CORPUS]["loss"]) if CORPUS in general else None,
            "general_loss_change": _mean([final[t]["loss"] - base[t]["loss"] for t in general if t != CORPUS]),
            "general_score_change": _mean([_score(final[t]) - _score(base[t]) for t in measured]) if measured else None,
        }
    return summary


def _metric(entry: dict[str, Any]) -> str | None:
    return primary_metric(entry["metrics"])


def _score(entry: dict[str, Any]) -> float:
    metric = _metric(entry)
    return float("nan") if metric is None else entry["metrics"][metric]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def write_report(result: dict[str, Any], out: Path) -> Path:
    """forgetting.md (the summary table, one matrix per strategy), forgetting.json and the PNG plots."""
    tasks, general = result["tasks"], result["general"]
    summary = summarize(result)
    base = next(iter(result["rows"].values()))["base"]
    metric = {task: _metric(base[task]) for task in [*tasks, *general]}
    sections = [
        "# Forgetting and its remedies\n",
        f"Tasks tuned in order: {', '.join(tasks)}, {result['steps_per_stage']} steps per stage, from "
        f"{result['base_model']}; the multi-task run trains {result['steps_per_stage'] * len(tasks)} steps on all "
        f"of them. Replay share {result['replay_share']:.0%}. Validation split, {result['limit']} examples per "
        f"task. What the base knew: {', '.join(general)} (never trained here). Training and scoring the stages "
        f"took {result['stage_seconds'] / 60:.1f} min (this invocation {result['seconds'] / 60:.1f} min; a "
        "finished stage is reused).\n",
        "## Summary\n",
        "Scores are each task's primary metric (0-100). *Forgetting* is the mean, over every task but the last, of "
        "its drop from its best score after it was learned (and of its loss rise from its lowest); *learned* is the "
        "mean gain of each task's score (and fall of its loss) in its own stage over the base. The changes in what "
        "the base knew are final minus base: a positive loss change is knowledge lost.\n",
    ]
    header = ["strategy", *[f"{t} ({metric[t]})" for t in tasks], "learned (score)", "learned (loss)",
              "forgetting (score)", "forgetting (loss)", "corpus loss change", "general loss change",
              "general score change"]
    table = [[STRATEGIES[name].title, *[entry["final_score"][t] for t in tasks], entry["learned"],
              entry["learned_loss"], entry["forgetting_score"], entry["forgetting_loss"], entry["corpus_loss_change"],
              entry["general_loss_change"], entry["general_score_change"]] for name, entry in summary.items()]
    sections.append(markdown_table(header, table) + "\n")
    for name, rows in result["rows"].items():
        header = ["after", *[f"{t} score / loss" for t in tasks],
                  *[f"{t} loss" if metric[t] is None else f"{t} score / loss" for t in general]]
        cells = [[stage, *[_cell(rows[stage][t]) for t in [*tasks, *general]]] for stage in rows]
        sections.append(f"## {STRATEGIES[name].title}\n\n" + markdown_table(header, cells) + "\n")

    for kind in ("score", "loss"):
        figure, panels = small_multiples(len(result["rows"]), f"Every task's {kind} after each stage", columns=3)
        for axes, (name, rows) in zip(panels, result["rows"].items(), strict=True):
            stages = list(rows)
            for task in [*tasks, *([CORPUS] if kind == "loss" and CORPUS in general else [])]:
                values = [rows[stage][task]["loss"] if kind == "loss" else _score(rows[stage][task]) for stage in stages]
                axes.plot(stages, values, marker="o", label=task, linestyle=":" if task == CORPUS else "-")
            axes.set_title(STRATEGIES[name].title, fontsize=8)
        panels[0].legend(fontsize=7)
        sections.append(f"![{kind}]({save_figure(figure, out / f'forgetting_{kind}.png')})\n")
    figure, panels = small_multiples(2, "Learning vs forgetting, per strategy (sequential ones)", columns=2,
                                     height=4.0)
    for axes, (learned, forgot, unit) in zip(panels, (("learned", "forgetting_score", "score points"),
                                                      ("learned_loss", "forgetting_loss", "nats")), strict=True):
        for name, entry in summary.items():
            if entry[forgot] is not None:
                axes.scatter(entry[learned], entry[forgot], s=40)
                axes.annotate(name, (entry[learned], entry[forgot]), fontsize=8)
        axes.set_xlabel(f"learned in each task's own stage ({unit})", fontsize=8)
        axes.set_ylabel(f"average forgetting ({unit})", fontsize=8)
    sections.append(f"![learn vs forget]({save_figure(figure, out / 'learn_vs_forget.png')})\n")
    path = out / "forgetting.md"
    write_text_atomically(path, "\n".join(sections))
    write_text_atomically(out / "forgetting.json", json.dumps({**result, "summary": summary}, indent=2) + "\n")
    return path


def _cell(entry: dict[str, Any]) -> str:
    score = _score(entry)
    return f"{entry['loss']:.2f}" if math.isnan(score) else f"{score:.1f} / {entry['loss']:.2f}"
