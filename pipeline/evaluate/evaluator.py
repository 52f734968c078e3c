"""The evaluator: each evaluated task's rows, and what the model makes of them (losses, generations, scores).

    evaluator = Evaluator(tasks, names, batcher, cfg.eval, cfg.data, seed=cfg.run.seed)
    evaluator.validation_losses(accelerator, model)     # task -> teacher-forced loss
    evaluator.scores(accelerator, model)                # task -> {"n", "loss", "metrics": {name: score}}

The rows of a task's evaluation set are its validation (or test) examples rendered zero-shot (or few-shot),
example `i` under forward template `i mod T`, so every phrasing is scored without multiplying the cost by T.
Rows are split over processes in equal shares (`even_shard`) and the results gathered, so scores do not depend on
the number of processes and every process makes the same model calls (as FSDP needs).
Each task is scored by the metrics its task.yaml declares (`pipeline.metrics`): generation metrics on greedy
(or beam) outputs, and rank classification over the answer choices (`pipeline.evaluate.scoring`). The model
is the prepared (wrapped) one; everything runs through `pipeline.forward`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from pipeline.config import DataConfig, EvalConfig
from pipeline.data.batcher import Batcher
from pipeline.data.tokenize import check_tokenizer, shown
from pipeline.errors import UserError, one_line
from pipeline.evaluate.scoring import rank_classification_scores
from pipeline.files import content_hash, write_json_atomically
from pipeline.forward import example_loss_sums, generate, token_losses
from pipeline.metrics import MODEL_METRICS, compute_metrics, get_normalizer, rank_classification
from pipeline.tasks.rendering import ZERO_SHOT, RenderedExample, Variant, render_split
from pipeline.tasks.task import Task

SCORES_FORMAT = 2  # bump when `Evaluator.scores` returns other fields (2: per-task "loss"), so old caches miss


def evaluation_rows(task: Task, split: str, data: DataConfig, seed: int, limit: int | None,
                    variant: Variant = ZERO_SHOT) -> list[RenderedExample]:
    """Rows of a split, one forward template per example (rotating over the templates). Where a promptsource-style
    example makes no pair under its template, the next template that does stands in; an example none renders
    is left out (as P3 left such examples out)."""
    templates = [t.name for t in task.forward_templates]
    rendered = render_split(
        task, split, cache_dir=data.cache_path(), seed=seed, templates=templates, variant=variant,
        k=data.few_shot_k, max_input_length=data.max_input_length, split_seed=data.split_seed,
        max_bad_fraction=data.max_bad_row_fraction, limit=limit or None,
    )
    count = len(templates)
    dropped = rendered["dropped"]
    picks = []
    for i in range(len(rendered) // count):
        turns = (i * count + (i + turn) % count for turn in range(count))
        picks += [row for row in turns if not dropped[row]][:1]
    return [
        RenderedExample(row["task"], row["template"], row["index"], row["input"], row["target"], tuple(row["choices"]))
        for row in rendered.select(picks)
    ]


def _on_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


def even_shard(accelerator: Any, rows: Sequence[Any]) -> tuple[list[Any], int]:
    """This process's contiguous share of `rows` and how many of it are real. Every process gets the same
    number (the last shares are padded by repeating a row), so every process makes the same model calls: FSDP and
    ZeRO-3 gather weights inside each call, and a process with one batch fewer would leave the others waiting.
    Results of the real rows, gathered in process order, are in the order of `rows`."""
    per_process = -(-len(rows) // accelerator.num_processes)
    start = accelerator.process_index * per_process
    mine = list(rows[start : start + per_process])
    real = len(mine)
    if rows:
        mine += [(mine or list(rows))[-1]] * (per_process - real)
    return mine, real


def gather_rows(accelerator: Any, local: list[Any]) -> list[Any]:
    """Every process's results, concatenated in process order (the order of the rows `even_shard` split)."""
    return gather_object(local) if accelerator.num_processes > 1 else local


class Evaluator:
    """Holds each evaluated task's rows; computes validation losses, generations and per-task scores."""

    def __init__(self, tasks: dict[str, Task], names: Sequence[str], batcher: Batcher, settings: EvalConfig,
                 data: DataConfig, seed: int = 0, split: str = "validation", limit: int | None = None,
                 variant: Variant = ZERO_SHOT):
        self.settings = settings
        self.data = data
        self.batcher = batcher
        self.tokenizer = batcher.tokenizer
        self.tasks = {name: tasks[name] for name in names}
        limit = settings.max_examples if limit is None else limit
        self.rows = {name: evaluation_rows(tasks[name], split, data, seed, limit, variant) for name in names}

    @torch.no_grad()
    def check_tokenizer(self, model_name: str, max_unk_rate: float) -> str | None:
        """Refuse a tokenizer that turns more than `max_unk_rate` of the rendered text into `<unk>` (a tokenizer
        of another model, or none at all); else a note naming the characters the model never sees as written
        (real T5's vocabulary has no newline, no `{` or `}`), or None."""
        texts = [text for rows in self.rows.values() for row in rows for text in (row.input, row.target)]
        check = check_tokenizer(self.tokenizer, texts)
        if check.unk_rate > max_unk_rate:
            raise UserError(
                f"model {model_name}: its tokenizer turns {check.unk_rate:.1%} of the rendered prompts' and targets' "
                f"tokens into {self.tokenizer.unk_token} (data.max_unk_rate={max_unk_rate}); characters it loses: "
                f"{shown(check.lost[:40]) or '(whole words)'}. Is it the model's own tokenizer? Raise "
                "data.max_unk_rate to use it anyway"
            )
        if check.lost or check.dropped:
            return (f"note: {model_name}'s tokenizer never shows the model these characters of the rendered text: "
                    f"{shown([*check.lost, *check.dropped][:40])} (`flanpipe render TASK --tokenized` shows what the "
                    "model sees)")
        return None

    def scores(self, accelerator: Any, model: Any, progress: bool = False, per_task: int | None = None,
               keep_predictions: bool = False) -> dict[str, dict[str, Any]]:
        """Per task: {"n": examples, "loss": validation loss, "metrics": {name: score}} by the metrics its
        task.yaml declares (scores 0-100, higher is better; the loss is teacher-forced, lower is better), on each
        task's first `per_task` rows (all held when None); with `keep_predictions`, also "predictions": the
        generated outputs of tasks scored on generations.
        Generations and answer choices of all tasks share batches, so a thousand tasks of one row each cost as
        many model calls as their rows: rows are generated in groups of one answer length (`answer_length`), and
        every process makes the same calls."""
        rows = {name: task_rows[:per_task] for name, task_rows in self.rows.items()}
        losses = self.validation_losses(accelerator, model, per_task=per_task)
        generating = [n for n in rows if any(m not in MODEL_METRICS for m in self.tasks[n].metrics)]
        ranked_rows = {n: [r for r in rows[n] if self.scored_by(n, r, "rank_classification") and r.target in r.choices]
                       for n in rows if "rank_classification" in self.tasks[n].metrics}
        ranked_rows = {n: task_rows for n, task_rows in ranked_rows.items() if task_rows}
        ranking = list(ranked_rows)
        bar = tqdm(total=sum(len(rows[n]) for n in generating + ranking), desc="evaluate", unit="example",
                   disable=not (progress and accelerator.is_local_main_process))
        generated = self.generate_rows(accelerator, model, rows, [(n, i) for n in generating for i in range(len(rows[n]))],
                                       bar)
        predictions = {name: [generated[(name, i)] for i in range(len(rows[name]))] for name in generating}
        ranked = self.rank_classification(accelerator, model, ranked_rows)
        bar.update(sum(len(rows[n]) for n in ranking))
        bar.close()
        results = {}
        for name, task_rows in rows.items():
            task = self.tasks[name]
            metrics: dict[str, float] = {}
            for metric in (m for m in task.metrics if m not in MODEL_METRICS and name in predictions):
                scored = [i for i, row in enumerate(task_rows) if self.scored_by(name, row, metric)]
                if scored:
                    metrics.update(compute_metrics([metric], [predictions[name][i] for i in scored],
                                                   [task_rows[i].target for i in scored], normalize=task.normalize))
            metrics.update(ranked.get(name, {}))
            results[name] = {"n": len(task_rows), "loss": losses[name], "metrics": metrics}
            if keep_predictions and name in predictions:
                results[name]["predictions"] = predictions[name]
        return results

    def scored_by(self, task: str, row: RenderedExample, metric: str) -> bool:
        """Whether `metric` scores this row: every metric of the task scores it, unless its template names its own
        (promptsource tags metrics per template)."""
        template = self.tasks[task].templates[row.template]
        return not template.metrics or metric in template.metrics

    def rank_classification(self, accelerator: Any, model: Any, rows: dict[str, Sequence[RenderedExample]]
                            ) -> dict[str, dict[str, float]]:
        """Rank accuracy over each row's answer choices, per task; the rows of all tasks share batches and are
        split over processes."""
        flat = [row for task_rows in rows.values() for row in task_rows]
        if not flat:
            return {}
        shard, real = even_shard(accelerator, flat)
        local = rank_classification_scores(
            model, self.tokenizer, [r.input for r in shard], [list(r.choices) for r in shard],
            batch_size=self.settings.batch_size, max_input_length=self.data.max_input_length,
            max_target_length=self.data.max_target_length,
        )
        scores = gather_rows(accelerator, local[:real])
        results, start = {}, 0
        for name, task_rows in rows.items():
            gold = [list(row.choices).index(row.target) for row in task_rows]
            results[name] = rank_classification(scores[start : start + len(task_rows)], gold)
            start += len(task_rows)
        return results

    @torch.no_grad()
    def validation_losses(self, accelerator: Any, model: Any, other_inputs: bool = False,
                          per_task: int | None = None) -> dict[str, float]:
        """Mean target-token cross-entropy per task (teacher forcing), on each task's first `per_task` rows (all
        held when None). Batches mix tasks, so a thousand tasks of a few rows cost as many model calls as their
        rows, and the per-task sums are reduced over processes once. With `other_inputs`, each target is scored
        after the next example's input (same task, rotated by one): how much worse that is measures how much
        the model reads its input rather than guessing the task's typical answer."""
        model.eval()
        index = {task: i for i, task in enumerate(self.rows)}
        rows: list[RenderedExample] = []
        for task_rows in self.rows.values():
            task_rows = task_rows[:per_task]
            if other_inputs:
                inputs = [row.input for row in task_rows[1:] + task_rows[:1]]
                task_rows = [dataclasses.replace(row, input=text) for row, text in zip(task_rows, inputs, strict=True)]
            rows += task_rows
        totals = torch.zeros(len(index), 2, dtype=torch.float64, device=accelerator.device)
        shard, real = even_shard(accelerator, rows)
        for start in range(0, len(shard), self.settings.batch_size):
            chunk = shard[start : start + self.settings.batch_size]
            batch = _on_device(self.batcher.collate(chunk), accelerator.device)
            sums, counts = example_loss_sums(token_losses(model(batch), batch["labels"]), batch)
            keep = min(len(chunk), max(0, real - start))  # the padding rows at the end of the shard do not count
            owners = torch.tensor([index[row.task] for row in chunk[:keep]], device=accelerator.device)
            totals.index_add_(0, owners, torch.stack([sums[:keep], counts[:keep]], dim=1).double())
        totals = accelerator.reduce(totals, "sum")
        return {task: float(totals[i, 0] / totals[i, 1].clamp(min=1)) for task, i in index.items()}

    def answer_length(self, rows: Sequence[RenderedExample]) -> int:
        """New tokens to generate for a task: its longest target plus a margin, within eval.max_new_tokens.
        (An untrained model never stops by itself; a yes/no task need not pay for 48 decoding steps.)"""
        longest = max(len(ids) for ids in self.tokenizer([row.target for row in rows], add_special_tokens=False)["input_ids"])
        return min(self.settings.max_new_tokens, longest + 4)

    def cached_scores(self, accelerator: Any, model: Any, model_id: str) -> dict[str, dict[str, Any]]:
        """`scores`, cached under a key of the model and the exact rows and decoding (for base models,
        whose scores every report shows and which never change)."""
        scoring = {key: value for key, value in dataclasses.asdict(self.settings).items()
                   if key not in ("samples", "sample_tasks", "periodic_examples")}  # these change no score
        key = content_hash(SCORES_FORMAT, model_id, scoring, self.data.max_input_length,
                           {task: [(r.input, r.target, r.choices) for r in rows] for task, rows in self.rows.items()},
                           length=20)
        path = self.data.cache_path() / "eval" / f"scores-{key}.json"
        cached = _read_scores(path, set(self.rows))
        if cached is not None:
            return cached
        results = self.scores(accelerator, model, progress=True)
        if accelerator.is_main_process:
            write_json_atomically(path, results)
        return results

    def generate_rows(self, accelerator: Any, model: Any, rows: Mapping[str, Sequence[RenderedExample]],
                      wanted: Sequence[tuple[str, int]], bar: tqdm | None = None) -> dict[tuple[str, int], str]:
        """Generations of `rows[task][i]` for each (task, i) in `wanted`, each up to its task's answer length
        (`answer_length` of `rows[task]`): rows of one length share batches, whatever their task, and every
        process makes the same calls. `bar` counts the rows done."""
        lengths = {task: self.answer_length(rows[task]) for task in dict.fromkeys(task for task, _ in wanted)}
        by_length: dict[int, list[tuple[str, int]]] = {}
        for task, i in wanted:
            by_length.setdefault(lengths[task], []).append((task, i))
        outputs: dict[tuple[str, int], str] = {}
        for length, members in sorted(by_length.items()):
            texts = self.generate(accelerator, model, [rows[task][i].input for task, i in members], max_new_tokens=length)
            outputs.update(zip(members, texts, strict=True))
            if bar is not None:
                bar.update(len(members))
        return outputs

    @torch.no_grad()
    def generate(self, accelerator: Any, model: Any, inputs: Sequence[str], max_new_tokens: int | None = None
                 ) -> list[str]:
        """Greedy (or beam) generations for `inputs`, computed across processes, in input order."""
        model.eval()
        outputs: list[str] = []
        shard, real = even_shard(accelerator, inputs)
        for start in range(0, len(shard), self.settings.batch_size):
            encoded = self.batcher.encode_inputs(shard[start : start + self.settings.batch_size])
            generated = generate(model, _on_device(encoded, accelerator.device),
                                 max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
                                 num_beams=self.settings.num_beams)
            outputs.extend(self.tokenizer.batch_decode(generated, skip_special_tokens=True))
        return [text.strip() for text in gather_rows(accelerator, outputs[:real])]

    def samples(self, accelerator: Any, model: Any, scored: dict[str, dict[str, Any]] | None = None
                ) -> list[dict[str, Any]]:
        """A few generations per task (`eval.samples`) from at most `eval.sample_tasks` tasks spread evenly over
        them in name order: dicts of task, template, input, target, prediction and whether it is `correct` (the
        task's normaliser makes it equal the target). Predictions already in `scored` (from `scores`) are reused;
        the rest are generated (every process computes, all get them)."""
        names = sorted(self.rows)
        count = min(len(names), self.settings.sample_tasks)
        chosen = [names[i * len(names) // count] for i in range(count)]
        picked = [(task, i) for task in chosen for i in range(min(self.settings.samples, len(self.rows[task])))]
        known = {(task, i): text for task, result in (scored or {}).items()
                 for i, text in enumerate(result.get("predictions", []))}
        known.update(self.generate_rows(accelerator, model, self.rows, [key for key in picked if key not in known]))
        samples = []
        for task, i in picked:
            row, prediction = self.rows[task][i], known[(task, i)]
            normalize = get_normalizer(self.tasks[task].normalize)
            samples.append({"task": task, "template": row.template, "input": row.input, "target": row.target,
                            "prediction": prediction, "correct": normalize(prediction) == normalize(row.target)})
        return samples


def _read_scores(path: Path, tasks: set[str]) -> dict[str, dict[str, Any]] | None:
    """Cached scores for exactly `tasks`, or None when there are none; an unreadable file (truncated, edited)
    is reported and scored again."""
    if not path.exists():
        return None
    try:
        scores = json.loads(path.read_text())
        if isinstance(scores, dict) and set(scores) == tasks and all(
            isinstance(score, dict) and {"n", "loss", "metrics"} <= set(score) for score in scores.values()
        ):
            return scores
        problem = "it does not hold a score for each task"
    except (OSError, ValueError) as error:
        problem = one_line(error)
    print(f"flanpipe: the cached scores in {path} are damaged ({problem}); scoring again", file=sys.stderr,
          flush=True)
    return None
