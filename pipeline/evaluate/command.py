"""`flanpipe eval`: score a model, a run or a checkpoint on every task's held-out split, beside its base model.

    flanpipe eval runs/default/final --split test --limit 200 --out results.json
    accelerate launch --multi_gpu --num_processes 8 -m pipeline.cli eval google/flan-t5-base --tasks sentiment

The base model's scores are cached by everything that shapes them (`Evaluator.cached_scores`), so a report
always shows base, tuned and the difference.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from pipeline.adapters import adapter_base_name, add_adapters, apply_adapter_folder, is_adapter_folder
from pipeline.checkpoints import complete_checkpoints, read_records
from pipeline.config import Config, load_config_dict
from pipeline.data.batcher import Batcher
from pipeline.errors import UserError
from pipeline.evaluate.evaluator import Evaluator
from pipeline.evaluate.results import add_base
from pipeline.forward import Seq2SeqLogits, check_packing
from pipeline.modeling import load_model, load_weights, weights_fingerprint
from pipeline.tasks.rendering import ZERO_SHOT, Variant
from pipeline.tasks.task import get_task, load_tasks


def load_for_evaluation(target: str, cfg: Config) -> tuple[Any, Any, str]:
    """(model, tokenizer, description) for a run folder (its final model, merged for an adapter run), a
    `save_pretrained` folder, a peft adapter folder (`<run>/adapter`: on the base its config names), a training
    checkpoint (`.../checkpoints/step-N`: the run's base model with the checkpoint's weights or adapters), or a hub
    name / `flanpipe/t5-tiny` (the base model)."""
    path = Path(target)
    if (path / "final" / "config.json").exists():
        path = path / "final"
    if (path / "train_state.json").exists():
        run_cfg = load_config_dict(read_records(path)["config"])
        model, tokenizer = load_model(run_cfg.model, run_cfg.data)
        model = add_adapters(model, run_cfg.peft)  # an adapter run's checkpoint holds only the adapters
        load_weights(model, path, run_cfg.model.name)
        return model, tokenizer, f"{path} (checkpoint of {run_cfg.model.name})"
    if is_adapter_folder(path):
        base_name = adapter_base_name(path)
        model, tokenizer = load_model(dataclasses.replace(cfg.model, name=base_name), cfg.data)
        return apply_adapter_folder(model, path), tokenizer, f"{path} (adapters on {base_name})"
    if path.exists() and not (path / "config.json").exists():
        raise UserError(f"{path}: not a model folder, run folder or checkpoint; expected config.json, "
                        "adapter_config.json, final/ or train_state.json inside")
    model, tokenizer = load_model(dataclasses.replace(cfg.model, name=str(path)), cfg.data)
    return model, tokenizer, str(path)


def base_model_of(target: str) -> str | None:
    """The model a run (or a run's checkpoint or final model) started from; None for anything else."""
    path = Path(target)
    for run_dir in (path, path.parent, path.parent.parent):
        found = complete_checkpoints(run_dir)
        if found:
            return read_records(found[-1][1])["config"]["model"]["name"]
    return None


def evaluate_model(target: str, cfg: Config, task_names: Sequence[str] | None, split: str, limit: int | None,
                   variant: Variant = ZERO_SHOT, base: str | None = None) -> dict[str, Any]:
    """Score a model on tasks; with `base`, also the base model's (cached) scores and the differences."""
    tasks = load_tasks(cfg.data.templates_path())
    names = list(task_names or [n for n, t in tasks.items() if t.available(cfg.data.cache_path())[0]])
    for name in names:
        get_task(tasks, name)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())

    def score(model_name: str, cached: bool = False) -> tuple[dict[str, Any], str]:
        with accelerator.main_process_first():
            model, tokenizer, description = load_for_evaluation(model_name, cfg)
            check_packing(model.config, cfg.data.packing)
            batcher = Batcher(tokenizer, cfg.data, model.config.decoder_start_token_id)
            evaluator = Evaluator(tasks, names, batcher, cfg.eval, cfg.data, seed=cfg.run.seed, split=split,
                                  limit=limit, variant=variant)
            note = evaluator.check_tokenizer(model_name, cfg.data.max_unk_rate)
        if note:
            accelerator.print(note, file=sys.stderr)
        wrapped = accelerator.prepare(Seq2SeqLogits(model))
        if cached:
            return evaluator.cached_scores(accelerator, wrapped, weights_fingerprint(model)), description
        return evaluator.scores(accelerator, wrapped, progress=True), description

    results, description = score(target)
    report: dict[str, Any] = {
        "model": description, "split": split, "variant": variant.name, "limit": limit,
        "decoding": {"num_beams": cfg.eval.num_beams, "max_new_tokens": cfg.eval.max_new_tokens},
        "config_hash": cfg.fingerprint(), "tasks": results,
    }
    if base is not None:
        base_results, _ = score(base, cached=True)
        add_base(report, {"model": base, "tasks": base_results})
    return report
