"""The training loop: `train(cfg)` tunes a model on a mixture with Accelerate, on one CPU, one GPU or many.

    flanpipe train [preset.yaml] train.max_steps=200 data.mixture=default
    accelerate launch --multi_gpu --num_processes 2 -m pipeline.cli train ...   (also works on CPU: gloo)
    torchrun --standalone --nproc_per_node 2 -m pipeline.cli train ...

Read top to bottom: setup, the loop, cleanup. Side concerns are named helpers, most in their own modules
(`runtime`, `state`, `log_window`, `loss`, `feed`). Every global batch is drawn identically on every process by
the mixture sampler and each process takes its slice, so the data order (and, up to float summation order, the
loss) does not depend on the number of processes. The loss is normalised over the global batch's target tokens
(`train.loss_per`), whatever the split over processes and micro-batches.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from pipeline.adapters import add_adapters, parameter_counts, save_adapter_and_merged, trainable_weights
from pipeline.checkpoints import choose_resume_checkpoint
from pipeline.config import Config, TrainConfig
from pipeline.dashboard import evaluation_values
from pipeline.data.batcher import Batcher
from pipeline.errors import UserError
from pipeline.evaluate.evaluator import Evaluator
from pipeline.evaluate.results import add_base
from pipeline.files import check_writable, staged_folder, write_json_atomically
from pipeline.forward import (
    Seq2SeqLogits,
    check_packing,
    example_loss_sums,
    inner_model,
    model_weight_name,
    token_losses,
)
from pipeline.importers.benchmarks import refuse_training_on_benchmarks
from pipeline.mixing.sampler import MixtureSampler
from pipeline.mixing.tree import RegistryStats, load_mixture
from pipeline.modeling import load_model, weights_fingerprint
from pipeline.tasks.task import load_tasks
from pipeline.tracking import describe_metrics, log_samples, log_summary, tracker_init_kwargs
from pipeline.train.feed import StepSource, TrainingFeed
from pipeline.train.log_window import LogWindow, log_step
from pipeline.train.loss import loss_weights
from pipeline.train.runtime import StopSignal, finish, make_accelerator, make_optimizer
from pipeline.train.state import TrainState, flat_config, resume, save


class _TiedWeightsNotice(logging.Filter):
    """accelerate warns on every save that T5's tied embeddings were stored once; that is expected here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNotice())


def train(cfg: Config) -> dict[str, Any]:
    """Run (or resume) a training run; returns the end-of-run summary."""
    # --- setup ---------------------------------------------------------------------------------------------
    run_dir = cfg.run.path()
    check_writable(run_dir, f"run.dir={run_dir}")
    accelerator = make_accelerator(cfg, run_dir)
    checkpoint = choose_resume_checkpoint(accelerator, cfg.train.resume, run_dir)
    set_seed(cfg.run.seed)
    tasks = load_tasks(cfg.data.templates_path())
    with accelerator.main_process_first():  # one process builds data caches and the default model
        stats = RegistryStats(tasks, cfg.data.cache_path(), cfg.data.split_seed, cfg.data.max_bad_row_fraction)
        mixture = load_mixture(cfg.data.mixture, stats, cfg.data.mixtures_path())
        refuse_training_on_benchmarks([tasks[name] for name in mixture.shares])
        model, tokenizer = load_model(cfg.model, cfg.data)
        check_packing(model.config, cfg.data.packing)
        with torch.random.fork_rng():  # the adapters' initial values depend on the seed alone
            torch.manual_seed(cfg.run.seed)
            model = add_adapters(model, cfg.peft)
        start_token = model.config.decoder_start_token_id
        feed = TrainingFeed(tasks, list(mixture.shares), Batcher(tokenizer, cfg.data, start_token), cfg.data,
                            cfg.run.seed)
        evaluator = Evaluator(tasks, [*mixture.shares, *mixture.held_out], Batcher(tokenizer, cfg.data, start_token),
                              cfg.eval, cfg.data, seed=cfg.run.seed)
    note = evaluator.check_tokenizer(cfg.model.name, cfg.data.max_unk_rate)
    if note:
        accelerator.print(note)
    sampler = MixtureSampler(mixture, seed=cfg.run.seed, homogeneous=cfg.data.homogeneous_batches)
    counts = parameter_counts(model)
    tuned = f" ({counts['trainable_parameters']:,} trained: {cfg.peft.method})" if cfg.peft.method != "none" else ""
    accelerator.print(f"{cfg.model.name}: {counts['parameters']:,} parameters{tuned}; "
                      f"mixture {mixture.name}: {len(mixture.shares)} tasks, {len(mixture.held_out)} held out; "
                      f"{accelerator.num_processes} process(es), {accelerator.distributed_type.value}, "
                      f"mixed precision {accelerator.mixed_precision}")
    model = Seq2SeqLogits(model)  # packed batches need the whole forward inside the DDP/FSDP wrapper
    if cfg.train.compile:
        model = torch.compile(model)
    optimizer, scheduler = make_optimizer(cfg.train, model, accelerator.device)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)  # FSDP swaps in its parameters
    if cfg.peft.method != "none":  # checkpoints hold the adapters; the frozen base is the base model's
        accelerator.register_save_state_pre_hook(keep_trainable_weights)

    steps = StepSource(feed, sampler, cfg.train.batch_size, accelerator.process_index, accelerator.num_processes,
                       cfg.train.gradient_accumulation_steps, prefetch=cfg.data.prefetch,
                       length_window=cfg.data.length_window)
    state, changed = TrainState(), []
    if checkpoint is not None:
        state, changed = resume(accelerator, checkpoint, cfg, steps, model, optimizer, scheduler)
        accelerator.print(f"resumed from {checkpoint} at step {state.step}"
                          + (f" with changed settings: {', '.join(changed)}" if changed else ""))

    accelerator.init_trackers(cfg.log.wandb_project, config={**flat_config(cfg.to_dict()), **counts},
                              init_kwargs=tracker_init_kwargs(accelerator, cfg, run_dir, mixture.name, list(mixture.shares)))
    describe_metrics(accelerator)
    if changed:
        accelerator.log({"resume/changed": ", ".join(changed)}, step=state.step)
    stop = StopSignal(accelerator)
    held_out = set(mixture.held_out)
    base_path = run_dir / "eval" / "base_validation.json"
    if state.step == 0:  # the base model's scores: step 0 of every task's curve
        base = evaluator.cached_scores(accelerator, model, weights_fingerprint(inner_model(model)))
        if accelerator.is_main_process:
            write_json_atomically(base_path, {"model": cfg.model.name, "tasks": base})
        log_evaluation(accelerator, evaluator, model, state.step, held_out, base, scored=base)
        state.first_validation = {task: result["loss"] for task, result in base.items()}
    else:  # resumed: the base scores this run wrote at step 0 (only the main process logs what they give)
        base = json.loads(base_path.read_text())["tasks"] if base_path.exists() else {}

    # --- the loop ------------------------------------------------------------------------------------------
    window = LogWindow()
    started = time.perf_counter() - state.elapsed_seconds
    stopped = False
    # both closed even on errors: the bar with a clean line, the prefetch thread stopped
    with _progress(accelerator, cfg.train, state.step) as progress, steps:
        while state.step < cfg.train.max_steps and not (stopped := stop.requested()):
            step_started = time.perf_counter()
            draws, micro_batches = steps.next()
            data_seconds = time.perf_counter() - step_started  # the data path: draw, render, tokenize, collate
            loss = train_step(accelerator, model, optimizer, scheduler, micro_batches, cfg.train, window)
            window.time_step(data_seconds, time.perf_counter() - step_started)
            if not math.isfinite(loss):
                raise UserError(
                    f"step {state.step + 1}: the loss is {loss}; stopping with the last good checkpoint kept "
                    f"in {run_dir / 'checkpoints'}. Lower train.lr or check the data of this step's tasks"
                )
            state.step += 1
            state.examples_seen += len(draws)
            state.tokens_seen += window.step_real_tokens(accelerator)
            state.elapsed_seconds = time.perf_counter() - started
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.3f}")

            if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
                log_step(accelerator, state.step, state.tokens_seen, window, sampler, scheduler, steps.truncation)
            if cfg.train.eval_every and state.step % cfg.train.eval_every == 0 and state.step < cfg.train.max_steps:
                log_evaluation(accelerator, evaluator, model, state.step, held_out, base)
            if cfg.train.save_every and state.step % cfg.train.save_every == 0:
                save(accelerator, run_dir, cfg, state, steps)

    # --- cleanup -------------------------------------------------------------------------------------------
    if stopped:
        save(accelerator, run_dir, cfg, state, steps)
        accelerator.print(f"stopped by {stop.name} at step {state.step}; resume with train.resume=auto")
        del model, optimizer, scheduler  # before the process group goes: see `finish`
        finish(accelerator)
        return {"step": state.step, "stopped": stop.name}
    scores = save_scores(accelerator, evaluator, model, run_dir / "eval" / "validation.json", cfg, base=base_path)
    logged = log_evaluation(accelerator, evaluator, model, state.step, held_out, base, scored=scores["tasks"])
    if not (cfg.train.save_every and state.step % cfg.train.save_every == 0):  # else the loop just saved it
        save(accelerator, run_dir, cfg, state, steps)
    save_final_model(accelerator, model, tokenizer, run_dir, cfg)
    final_validation = {task: result["loss"] for task, result in scores["tasks"].items()}
    summary = _summary(state, final_validation, run_dir, window.session_data_share(accelerator))
    summary.update({key.removeprefix("aggregate/"): value for key, value in logged.items()
                    if key.startswith("aggregate/")})
    log_summary(accelerator, run_dir, summary)
    del model, optimizer, scheduler  # before the process group goes: see `finish`
    finish(accelerator)
    accelerator.print(_summary_line(summary))
    return summary


# --- helpers ----------------------------------------------------------------------------------------------------


def train_step(accelerator: Accelerator, model: Any, optimizer: Any, scheduler: Any,
               micro_batches: list[dict[str, Any]], train: TrainConfig, window: LogWindow) -> float:
    """One optimizer step over this process's micro-batches of a global batch; returns the global loss.

    The objective is a weighted sum of target-token losses whose weights are normalised over the *global*
    batch (`loss_weights`), so it means the same for any number of processes or micro-batches. DDP averages
    gradients over processes and accelerate divides by the accumulation steps: the scale multiplies both back.
    """
    weights = loss_weights(accelerator, micro_batches, train.loss_per)
    scale = accelerator.num_processes * train.gradient_accumulation_steps
    model.train()
    for micro_batch, weight in zip(micro_batches, weights, strict=True):
        with accelerator.accumulate(model):
            micro_batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in micro_batch.items()}
            per_token = token_losses(model(micro_batch), micro_batch["labels"])
            sums, _ = example_loss_sums(per_token, micro_batch)
            objective = (sums * weight.to(sums.device)).sum()
            accelerator.backward(objective * scale)
            window.add(micro_batch, per_token)
            if accelerator.sync_gradients:
                if train.max_grad_norm > 0:  # the norm before clipping, over all processes' shards
                    window.add_grad_norm(accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
    return window.last_step_loss(accelerator)


def log_evaluation(accelerator: Accelerator, evaluator: Evaluator, model: Any, step: int, held_out: set[str],
                   base: dict[str, Any], scored: dict[str, Any] | None = None) -> dict[str, float]:
    """Every task's scores and validation loss (`eval/<task>/...`, `held_out/<task>/...`), the aggregates over
    tasks against the base model's scores (`aggregate/...`), and sample generations, logged with the seconds they
    took (`time/eval_seconds`); returns the values logged. Scores already computed (the base model's at step 0, the
    final ones) are logged as they are; evaluations during training score each task's first
    ⌈eval.periodic_examples / tasks⌉ rows (all of them when it is 0), so their cost is bounded at any number of
    tasks. Collective: every process calls it."""
    started = time.perf_counter()
    if scored is None:
        budget = evaluator.settings.periodic_examples
        per_task = -(-budget // max(1, len(evaluator.rows))) if budget else None
        scored = evaluator.scores(accelerator, model, per_task=per_task, keep_predictions=True)
    samples = evaluator.samples(accelerator, model, scored)
    for sample in samples:
        sample["held_out"] = sample["task"] in held_out
    values = evaluation_values(scored, held_out, base)
    values["time/eval_seconds"] = time.perf_counter() - started
    accelerator.log(values, step=step)
    log_samples(accelerator, samples, step)
    return values


def save_scores(accelerator: Accelerator, evaluator: Evaluator, model: Any, path: Path, cfg: Config,
                base: Path) -> dict[str, Any]:
    """Score every evaluated task by its metrics on validation, beside the base scores and the deltas."""
    report: dict[str, Any] = {"model": cfg.model.name, "split": "validation", "variant": "zero_shot",
                              "limit": cfg.eval.max_examples, "config_hash": cfg.fingerprint(),
                              "tasks": evaluator.scores(accelerator, model, progress=True)}
    if base.exists():
        add_base(report, json.loads(base.read_text()))
    if accelerator.is_main_process:
        write_json_atomically(path, report)
    return report


def save_final_model(accelerator: Accelerator, model: Any, tokenizer: Any, run_dir: Path, cfg: Config) -> None:
    """`<run>/final`: model + tokenizer via save_pretrained, so plain transformers loads it; an adapter run
    (`peft.method`) also writes `<run>/adapter` (peft's folder: adapters + tokenizer) and merges them into
    `final`. Collective: every process hands over its shard of the weights (FSDP, ZeRO-3); the main process
    writes the folders atomically, a previous one staying in place until the new one replaces it."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        weights = {model_weight_name(key): value for key, value in state_dict.items()}
        inner = inner_model(model)
        if cfg.peft.method != "none":
            with staged_folder(run_dir / "adapter") as staging:
                inner = save_adapter_and_merged(weights, cfg.peft, lambda: load_model(cfg.model, cfg.data)[0],
                                                staging)
                tokenizer.save_pretrained(staging)
            weights = inner.state_dict()
        # A gathered (FSDP, ZeRO-3) state dict holds a copy per name of a tied matrix; keep the one a single
        # process saves, so the folder is the same whatever the launcher.
        for name, target in getattr(inner, "all_tied_weights_keys", {}).items():
            if name in weights and target in weights and torch.equal(weights[name], weights[target]):
                del weights[name]
        with staged_folder(run_dir / "final") as staging:
            inner.save_pretrained(staging, state_dict=weights, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            keep_hub_conventions(inner, tokenizer, staging)
    accelerator.wait_for_everyone()


def keep_trainable_weights(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
    """accelerate's save-state hook for adapter runs: each model's saved weights cut to its trainable ones."""
    for index, (model, state) in enumerate(zip(models, weights, strict=False)):
        weights[index] = trainable_weights(model, state)


def keep_hub_conventions(model: Any, tokenizer: Any, folder: Path) -> None:
    """Make a saved folder read like the hub checkpoint it came from. transformers 5 writes an untied T5's config
    (FLAN-T5, T5 v1.1, mT5) as `tie_word_embeddings: true` (its own reading of "no rescaling"), which older
    transformers would load with the head tied to the embedding: the config says `false` again. And the
    tokenizer's original vocabulary files (`spiece.model`, `vocab.json` + `merges.txt`) are copied beside
    `tokenizer.json`, for the tools that read only those."""
    output, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and output.weight is not embeddings.weight:
        config = json.loads((folder / "config.json").read_text())
        if config.get("tie_word_embeddings", False):
            config["tie_word_embeddings"] = False
            (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for attribute in ("vocab_file", "merges_file"):
        source = getattr(tokenizer, attribute, None)
        if isinstance(source, str) and Path(source).is_file() and not (folder / Path(source).name).exists():
            shutil.copy(source, folder / Path(source).name)


def _progress(accelerator: Accelerator, train: TrainConfig, start: int) -> tqdm:
    return tqdm(total=train.max_steps, initial=start, desc="train", unit="step",
                disable=not accelerator.is_local_main_process, dynamic_ncols=True)


def _summary(state: TrainState, final_validation: dict[str, float], run_dir: Path, data_share: float
             ) -> dict[str, Any]:
    return {
        "steps": state.step,
        "examples": state.examples_seen,
        "tokens": state.tokens_seen,
        "seconds": round(state.elapsed_seconds, 1),
        "data_share": round(data_share, 4),
        "validation_loss_start": state.first_validation,
        "validation_loss_end": final_validation,
        "run_dir": str(run_dir),
    }


SUMMARY_TASKS = 20
"""Past this many tasks the closing line gives the mean and the tasks that improved least, not every task."""


def _summary_line(summary: dict[str, Any]) -> str:
    start, end = summary["validation_loss_start"], summary["validation_loss_end"]
    change = {task: end[task] - start.get(task, float("nan")) for task in end}
    if len(end) <= SUMMARY_TASKS:
        losses = ", ".join(f"{task} {start.get(task, float('nan')):.2f}→{end[task]:.2f}" for task in sorted(end))
    else:
        known = [task for task in end if task in start]
        mean_start = sum(start[task] for task in known) / max(1, len(known))
        least = sorted(known, key=lambda task: -change[task])[:3]
        losses = (f"mean over {len(end)} tasks {mean_start:.2f}→{sum(end.values()) / len(end):.2f}; least improved "
                  + ", ".join(f"{task} {start[task]:.2f}→{end[task]:.2f}" for task in least)
                  + f" (every task in {summary['run_dir']}/eval/validation.json)")
    return (f"done: {summary['steps']} steps, {summary['tokens']:,} tokens, {summary['seconds']:.0f} s "
            f"(data path {summary['data_share']:.1%} of step time); "
            f"validation loss {losses}; final model in {summary['run_dir']}/final")
