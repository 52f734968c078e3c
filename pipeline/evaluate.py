"""Evaluation: per-task scores on held-out splits, validation losses, generations; base vs tuned.

    flanpipe eval runs/default/final --split test --limit 200 --out results.json
    accelerate launch --multi_gpu --num_processes 8 -m pipeline.cli eval google/flan-t5-base --tasks sentiment

The rows of a task's evaluation set are its validation (or test) examples rendered zero-shot (or few-shot),
example `i` under forward template `i mod T`, so every phrasing is scored without multiplying the cost by T.
Rows are split over processes and the results gathered, so scores do not depend on the number of processes.
Each task is scored by the metrics its task.yaml declares (pipeline.metrics): generation metrics on greedy
(or beam) outputs, and rank classification over the answer choices. The base model's scores are cached by
everything that shapes them, so a report always shows base, tuned and the difference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Config
from pipeline.data import Batcher, Seq2SeqLogits, token_losses
from pipeline.errors import UserError
from pipeline.files import write_text_atomically
from pipeline.rendering import ZERO_SHOT, RenderedExample, Variant, render_split
from pipeline.report import add_base, score_rows
from pipeline.tasks import Task

SCORES_FORMAT = 2  # bump when `Evaluator.scores` returns other fields (2: per-task "loss"), so old caches miss


def evaluation_rows(task: Task, split: str, cfg: Config, limit: int | None,
                    variant: Variant = ZERO_SHOT) -> list[RenderedExample]:
    """Rows of a split, one forward template per example (rotating over the templates)."""
    templates = [t.name for t in task.forward_templates]
    rendered = render_split(
        task, split, cache_dir=cfg.data.cache_path(), seed=cfg.run.seed, templates=templates, variant=variant,
        k=cfg.data.few_shot_k, max_input_length=cfg.data.max_input_length, split_seed=cfg.data.split_seed,
        limit=limit or None,
    )
    count = len(templates)
    picks = [i * count + i % count for i in range(len(rendered) // count)]
    return [
        RenderedExample(row["task"], row["template"], row["index"], row["input"], row["target"], tuple(row["choices"]))
        for row in rendered.select(picks)
    ]


class Evaluator:
    """Holds each evaluated task's rows; computes validation losses and sample generations."""

    def __init__(self, tasks: dict[str, Task], names: Sequence[str], batcher: Batcher, cfg: Config,
                 split: str = "validation", limit: int | None = None, variant: Variant = ZERO_SHOT):
        self.cfg = cfg
        self.batcher = batcher
        self.tokenizer = batcher.tokenizer
        self.tasks = {name: tasks[name] for name in names}
        limit = cfg.eval.max_examples if limit is None else limit
        self.rows = {name: evaluation_rows(tasks[name], split, cfg, limit, variant) for name in names}

    @torch.no_grad()
    def scores(self, accelerator: Any, model: Any, progress: bool = False) -> dict[str, dict[str, Any]]:
        """Per task: {"n": examples, "loss": validation loss, "metrics": {name: score}} by the metrics its
        task.yaml declares (scores 0-100, higher is better; the loss is teacher-forced, lower is better)."""
        from tqdm.auto import tqdm

        from pipeline.metrics import compute_metrics, rank_classification, rank_classification_scores

        results = {}
        losses = self.validation_losses(accelerator, model)
        bar = tqdm(self.rows.items(), desc="evaluate", unit="task",
                   disable=not (progress and accelerator.is_local_main_process))
        for name, rows in bar:
            bar.set_postfix_str(name)
            task = self.tasks[name]
            metrics: dict[str, float] = {}
            generation_metrics = [m for m in task.metrics if m != "rank_classification"]
            if generation_metrics:
                predictions = self.generate(accelerator, model, [row.input for row in rows],
                                            max_new_tokens=self.answer_length(rows))
                metrics.update(compute_metrics(generation_metrics, predictions, [row.target for row in rows],
                                               normalize=task.normalize))
            if "rank_classification" in task.metrics and all(row.choices for row in rows):
                with accelerator.split_between_processes(rows) as shard:
                    local = rank_classification_scores(
                        accelerator.unwrap_model(model).model, self.tokenizer, [r.input for r in shard],
                        [list(r.choices) for r in shard], batch_size=self.cfg.eval.batch_size,
                        max_input_length=self.cfg.data.max_input_length,
                        max_target_length=self.cfg.data.max_target_length,
                    )
                scores = accelerator.gather_for_metrics(local, use_gather_object=True) if accelerator.num_processes > 1 else local
                gold = [list(row.choices).index(row.target) for row in rows]
                metrics.update(rank_classification(scores, gold))
            results[name] = {"n": len(rows), "loss": losses[name], "metrics": metrics}
        return results

    @torch.no_grad()
    def validation_losses(self, accelerator: Any, model: Any, other_inputs: bool = False) -> dict[str, float]:
        """Mean target-token cross-entropy per task (teacher forcing). With `other_inputs`, each target is
        scored after the next example's input (same task, rotated by one): how much worse that is measures
        how much the model reads its input rather than guessing the task's typical answer."""
        model.eval()
        losses = {}
        for task, rows in self.rows.items():
            if other_inputs:
                inputs = [row.input for row in rows[1:] + rows[:1]]
                rows = [dataclasses.replace(row, input=text) for row, text in zip(rows, inputs, strict=True)]
            total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
            with accelerator.split_between_processes(rows) as shard:
                for start in range(0, len(shard), self.cfg.eval.batch_size):
                    batch = self.batcher.collate(shard[start : start + self.cfg.eval.batch_size])
                    batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                    per_token = token_losses(model(batch), batch["labels"])
                    total += torch.stack([per_token.sum().double(), (batch["labels"] != -100).sum().double()])
            total = accelerator.reduce(total, "sum")
            losses[task] = float(total[0] / total[1].clamp(min=1))
        return losses

    def answer_length(self, rows: Sequence[RenderedExample]) -> int:
        """New tokens to generate for a task: its longest target plus a margin, within eval.max_new_tokens.
        (An untrained model never stops by itself; a yes/no task need not pay for 48 decoding steps.)"""
        longest = max(len(ids) for ids in self.tokenizer([row.target for row in rows], add_special_tokens=False)["input_ids"])
        return min(self.cfg.eval.max_new_tokens, longest + 4)

    def cached_scores(self, accelerator: Any, model: Any, model_id: str) -> dict[str, dict[str, Any]]:
        """`scores`, cached under a key of the model and the exact rows and decoding (for base models,
        whose scores every report shows and which never change)."""
        parts = [SCORES_FORMAT, model_id, dataclasses.asdict(self.cfg.eval), self.cfg.data.max_input_length,
                 {task: [(r.input, r.target, r.choices) for r in rows] for task, rows in self.rows.items()}]
        key = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]
        path = self.cfg.data.cache_path() / "eval" / f"scores-{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        results = self.scores(accelerator, model, progress=True)
        if accelerator.is_main_process:
            write_json_atomically(path, results)
        return results

    @torch.no_grad()
    def generate(self, accelerator: Any, model: Any, inputs: Sequence[str], max_new_tokens: int | None = None
                 ) -> list[str]:
        """Greedy (or beam) generations for `inputs`, computed across processes, in input order."""
        model.eval()
        unwrapped = accelerator.unwrap_model(model).model  # generate() lives on the model inside Seq2SeqLogits
        outputs: list[str] = []
        with accelerator.split_between_processes(list(inputs)) as shard:
            for start in range(0, len(shard), self.cfg.eval.batch_size):
                encoded = self.batcher.encode_inputs(shard[start : start + self.cfg.eval.batch_size])
                generated = unwrapped.generate(
                    **{k: v.to(accelerator.device) for k, v in encoded.items()},
                    max_new_tokens=max_new_tokens or self.cfg.eval.max_new_tokens, num_beams=self.cfg.eval.num_beams,
                    do_sample=False,
                )
                outputs.extend(self.tokenizer.batch_decode(generated, skip_special_tokens=True))
        if accelerator.num_processes > 1:
            outputs = accelerator.gather_for_metrics(outputs, use_gather_object=True)
        return [text.strip() for text in outputs]

    def log_samples(self, accelerator: Any, model: Any, step: int) -> None:
        """A few generations per task, logged as a table (wandb table, tensorboard text, metrics.jsonl)."""
        count = self.cfg.eval.samples
        if count <= 0:
            return
        picked = [row for rows in self.rows.values() for row in rows[:count]]
        predictions = self.generate(accelerator, model, [row.input for row in picked])
        columns = ["task", "template", "input", "target", "prediction"]
        data = [[r.task, r.template, r.input, r.target, p] for r, p in zip(picked, predictions, strict=True)]
        if not accelerator.is_main_process:
            return
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                text = "\n\n".join(f"**{t}** ({tp})  \n{i}  \n→ {p}  (target: {g})" for t, tp, i, g, p in data)
                tracker.writer.add_text("eval/samples", text, global_step=step)
            elif hasattr(tracker, "log_table"):
                tracker.log_table("eval/samples", columns=columns, data=data, step=step)


# --- `flanpipe eval`: a model, a run or a checkpoint; base vs tuned -------------------------------------------


def load_for_evaluation(target: str, cfg: Config) -> tuple[Any, Any, str]:
    """(model, tokenizer, description) for a run folder (its final model), a `save_pretrained` folder,
    a training checkpoint (`.../checkpoints/step-N`: the run's base model with the checkpoint's weights),
    or a hub name / `flanpipe/t5-tiny` (the base model)."""
    from pipeline.train import load_model

    path = Path(target)
    if (path / "final" / "config.json").exists():
        path = path / "final"
    if (path / "train_state.json").exists():
        from safetensors.torch import load_file

        from pipeline.checkpointing import read_records
        from pipeline.config import load_config_dict

        run_cfg = load_config_dict(read_records(path)["config"])
        model, tokenizer = load_model(run_cfg)
        weights = load_file(str(path / "model.safetensors"))
        weights = {key.removeprefix("model."): value for key, value in weights.items()}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if "embed_tokens" not in k and "lm_head" not in k]:
            raise UserError(f"{path}: the checkpoint's weights do not fit {run_cfg.model.name} "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        model.tie_weights()
        return model, tokenizer, f"{path} (checkpoint of {run_cfg.model.name})"
    if path.exists() and not (path / "config.json").exists():
        raise UserError(f"{path}: not a model folder, run folder or checkpoint; expected config.json, final/ "
                        "or train_state.json inside")
    model_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=str(path)))
    model, tokenizer = load_model(model_cfg)
    return model, tokenizer, str(path)


def base_model_of(target: str) -> str | None:
    """The model a run (or a run's checkpoint or final model) started from; None for anything else."""
    from pipeline.checkpointing import complete_checkpoints, read_records

    path = Path(target)
    for run_dir in (path, path.parent, path.parent.parent):
        found = complete_checkpoints(run_dir)
        if found:
            return read_records(found[-1][1])["config"]["model"]["name"]
    return None


def evaluate_model(target: str, cfg: Config, task_names: Sequence[str] | None, split: str, limit: int | None,
                   variant: Variant = ZERO_SHOT, base: str | None = None) -> dict[str, Any]:
    """Score a model on tasks; with `base`, also the base model's (cached) scores and the differences."""
    from accelerate import Accelerator

    from pipeline.tasks import get_task, load_tasks
    from pipeline.train import config_hash

    tasks = load_tasks(cfg.data.templates_path())
    names = list(task_names or [n for n, t in tasks.items() if t.available(cfg.data.cache_path())[0]])
    for name in names:
        get_task(tasks, name)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())

    def score(model_name: str, cached: bool = False) -> tuple[dict[str, Any], str]:
        with accelerator.main_process_first():
            model, tokenizer, description = load_for_evaluation(model_name, cfg)
            batcher = Batcher(tokenizer, cfg, model.config.decoder_start_token_id)
            evaluator = Evaluator(tasks, names, batcher, cfg, split=split, limit=limit, variant=variant)
        wrapped = accelerator.prepare(Seq2SeqLogits(model))
        if cached:
            return evaluator.cached_scores(accelerator, wrapped, model.config.name_or_path), description
        return evaluator.scores(accelerator, wrapped, progress=True), description

    results, description = score(target)
    report: dict[str, Any] = {
        "model": description, "split": split, "variant": variant.name, "limit": limit,
        "decoding": {"num_beams": cfg.eval.num_beams, "max_new_tokens": cfg.eval.max_new_tokens},
        "config_hash": config_hash(cfg), "tasks": results,
    }
    if base is not None:
        base_results, _ = score(base, cached=True)
        add_base(report, {"model": base, "tasks": base_results})
    return report


def write_json_atomically(path: Path, value: Any) -> None:
    write_text_atomically(path, json.dumps(value, indent=2, default=str) + "\n")


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
