"""The training loop: `train(cfg)` tunes a model on a mixture with Accelerate, on one CPU, one GPU or many.

    flanpipe train [preset.yaml] train.max_steps=200 data.mixture=default
    accelerate launch --multi_gpu --num_processes 2 -m pipeline.cli train ...   (also works on CPU: gloo)
    torchrun --standalone --nproc_per_node 2 -m pipeline.cli train ...

Read top to bottom: setup, the loop, cleanup. Side concerns are the helpers below `train`. Every global batch
is drawn identically on every process by the mixture sampler and each process takes its slice, so the data
order (and, up to float summation order, the loss) does not depend on the number of processes. The loss is
the mean over the global batch's target tokens, whatever the split over processes and micro-batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

from pipeline.benchmarks import refuse_training_on_benchmarks
from pipeline.checkpointing import find_resume_checkpoint, read_records, save_checkpoint
from pipeline.config import Config
from pipeline.data import Batcher, Seq2SeqLogits, TrainingFeed, example_loss_sums, token_losses
from pipeline.errors import UserError
from pipeline.evaluate import Evaluator, write_json_atomically
from pipeline.mixing import MixtureSampler, RegistryStats, load_mixture
from pipeline.modeling import DEFAULT_MODEL, load_model_and_tokenizer
from pipeline.report import add_base
from pipeline.tasks import load_tasks
from pipeline.tracking import tracker_setup


class _TiedWeightsNotice(logging.Filter):
    """accelerate warns on every save that T5's tied embeddings were stored once; that is expected here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNotice())

# Settings that must be equal to resume a checkpoint: anything that changes the data or the model's shape.
RESUME_MUST_MATCH = (
    "run.seed", "model.name", "data.mixture", "data.few_shot_k", "data.max_input_length",
    "data.max_target_length", "data.packing", "data.homogeneous_batches", "train.batch_size", "train.optimizer",
    "train.loss_per",
)


@dataclass
class TrainState:
    """Runtime state saved with every checkpoint (the config never holds any)."""

    step: int = 0
    examples_seen: int = 0
    tokens_seen: int = 0
    """Real (non-padding) encoder + decoder tokens over all processes."""
    elapsed_seconds: float = 0.0
    best_metric: float | None = None
    """Lowest mean validation loss so far."""
    first_validation: dict[str, float] = field(default_factory=dict)
    """Per-task validation loss before training, for the end-of-run summary."""


def train(cfg: Config) -> dict[str, Any]:
    """Run (or resume) a training run; returns the end-of-run summary."""
    # --- setup ---------------------------------------------------------------------------------------------
    run_dir = cfg.run.path()
    _check_writable(run_dir)
    accelerator, tracker_kwargs = _make_accelerator(cfg, run_dir)
    set_seed(cfg.run.seed)
    cache_dir = cfg.data.cache_path()
    tasks = load_tasks(cfg.data.templates_path())
    with accelerator.main_process_first():  # one process builds data caches and the default model
        stats = RegistryStats(tasks, cache_dir, cfg.data.split_seed)
        mixture = load_mixture(cfg.data.mixture, stats, cfg.data.mixtures_path())
        refuse_training_on_benchmarks([tasks[name] for name in mixture.shares])
        model, tokenizer = load_model(cfg)
        start_token = model.config.decoder_start_token_id
        feed = TrainingFeed(tasks, list(mixture.shares), Batcher(tokenizer, cfg, start_token), cfg)
        evaluator = Evaluator(tasks, [*mixture.shares, *mixture.held_out], Batcher(tokenizer, cfg, start_token), cfg)
    sampler = MixtureSampler(mixture, seed=cfg.run.seed, homogeneous=cfg.data.homogeneous_batches)
    accelerator.print(f"{cfg.model.name}: {sum(p.numel() for p in model.parameters()):,} parameters; "
                      f"mixture {mixture.name}: {len(mixture.shares)} tasks, {len(mixture.held_out)} held out; "
                      f"{accelerator.num_processes} process(es), {accelerator.distributed_type.value}, "
                      f"mixed precision {accelerator.mixed_precision}")
    model = Seq2SeqLogits(model)  # packed batches need the whole forward inside the DDP/FSDP wrapper
    if cfg.train.compile:
        model = torch.compile(model)
    optimizer, scheduler = make_optimizer(cfg, model)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = TrainState()
    checkpoint = find_resume_checkpoint(cfg.train.resume, run_dir)
    if checkpoint is not None:
        state = _resume(accelerator, checkpoint, cfg, sampler)
        accelerator.print(f"resumed from {checkpoint} at step {state.step}")

    accelerator.init_trackers(cfg.log.wandb_project, config=_flat(cfg.to_dict()), init_kwargs=tracker_kwargs)
    stop = _StopRequest()
    window = LogWindow()
    if state.step == 0:
        accelerator.log({f"mixture/target/{task}": share for task, share in mixture.shares.items()}, step=0)
        base = evaluator.cached_scores(accelerator, model, accelerator.unwrap_model(model).model.config.name_or_path)
        if accelerator.is_main_process:
            write_json_atomically(run_dir / "eval" / "base_validation.json", {"model": cfg.model.name, "tasks": base})
        state.first_validation = maybe_eval(accelerator, evaluator, model, state,
                                            losses={task: result["loss"] for task, result in base.items()})

    # --- the loop ------------------------------------------------------------------------------------------
    started = time.perf_counter() - state.elapsed_seconds
    with _progress(accelerator, cfg, state.step) as progress:  # closed (a clean line) even on errors
        while state.step < cfg.train.max_steps and not stop.requested:
            batch = sampler.next_batch(cfg.train.batch_size)
            micro_batches = feed.micro_batches(
                batch.for_rank(accelerator.process_index, accelerator.num_processes),
                cfg.train.gradient_accumulation_steps,
            )
            loss = train_step(accelerator, model, optimizer, scheduler, micro_batches, cfg, window)
            if not math.isfinite(loss):
                raise UserError(
                    f"step {state.step + 1}: the loss is {loss}; stopping with the last good checkpoint kept "
                    f"in {run_dir / 'checkpoints'}. Lower train.lr or check the data of this step's tasks"
                )
            state.step += 1
            state.examples_seen += len(batch)
            state.tokens_seen += window.step_real_tokens(accelerator)
            state.elapsed_seconds = time.perf_counter() - started
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.3f}")

            log_step(accelerator, cfg, state, window, sampler, scheduler, feed)
            if cfg.train.eval_every and state.step % cfg.train.eval_every == 0 and state.step < cfg.train.max_steps:
                maybe_eval(accelerator, evaluator, model, state)
            if cfg.train.save_every and state.step % cfg.train.save_every == 0:
                maybe_save(accelerator, run_dir, cfg, state, sampler)

    # --- cleanup -------------------------------------------------------------------------------------------
    if stop.requested:
        maybe_save(accelerator, run_dir, cfg, state, sampler)
        accelerator.print(f"stopped by {stop.requested} at step {state.step}; resume with train.resume=auto")
        accelerator.end_training()
        return {"step": state.step, "stopped": stop.requested}
    scores = save_scores(accelerator, evaluator, model, run_dir / "eval" / "validation.json", cfg,
                         base=run_dir / "eval" / "base_validation.json")
    final_validation = maybe_eval(accelerator, evaluator, model, state,
                                  losses={task: result["loss"] for task, result in scores["tasks"].items()})
    accelerator.log({f"eval/{task}/{metric}": value for task, result in scores["tasks"].items()
                     for metric, value in result["metrics"].items()}, step=state.step)
    maybe_save(accelerator, run_dir, cfg, state, sampler)
    save_final_model(accelerator, accelerator.unwrap_model(model).model, tokenizer, run_dir)
    summary = _summary(state, final_validation, run_dir)
    accelerator.log({"summary/" + k: v for k, v in summary.items() if isinstance(v, int | float)}, step=state.step)
    accelerator.end_training()
    accelerator.print(_summary_line(summary))
    return summary


# --- helpers ----------------------------------------------------------------------------------------------------


def train_step(accelerator: Accelerator, model: Any, optimizer: Any, scheduler: Any,
               micro_batches: list[dict[str, Any]], cfg: Config, window: LogWindow) -> float:
    """One optimizer step over this process's micro-batches of a global batch; returns the global loss.

    The objective is a weighted sum of target-token losses whose weights are normalised over the *global*
    batch (`loss_weights`), so it means the same for any number of processes or micro-batches. DDP averages
    gradients over processes and accelerate divides by the accumulation steps: the scale multiplies both back.
    """
    weights = loss_weights(accelerator, micro_batches, cfg.train.loss_per)
    scale = accelerator.num_processes * cfg.train.gradient_accumulation_steps
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
                if cfg.train.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
    return window.last_step_loss(accelerator)


def loss_weights(accelerator: Accelerator, micro_batches: list[dict[str, Any]], loss_per: str) -> list[torch.Tensor]:
    """Per micro-batch, the weight of each example's summed token loss, normalised over the global batch:

    - `token`: 1 / (target tokens in the global batch): every token weighs the same (T5's loss);
    - `example`: 1 / (its own tokens × examples): each example weighs the same, a one-token label as much
      as a paragraph; labels of different lengths then weigh differently per token (a 3-token label's
      tokens each count 2/3 of a 2-token label's), which biases the model towards the shorter label;
    - `task`: 1 / (its task's mean tokens per example × examples): each task's share of the loss is its
      share of the examples, as with `example`, spread evenly over that task's tokens, so within a task
      every token weighs the same and no label is favoured for its length.
    """
    tokens = [example_loss_sums(torch.ones(mb["labels"].shape), mb)[1] for mb in micro_batches]
    if loss_per == "token":
        total = accelerator.reduce(torch.tensor(float(sum(t.sum() for t in tokens)), device=accelerator.device), "sum")
        return [torch.full_like(t, 1.0 / max(1.0, float(total))) for t in tokens]
    examples = sum(len(t) for t in tokens)
    total = int(accelerator.reduce(torch.tensor(examples, device=accelerator.device), "sum"))
    if loss_per == "example":
        return [1.0 / (t.clamp_min(1) * total) for t in tokens]
    pairs = [pair for mb, counts in zip(micro_batches, tokens, strict=True)
             for pair in zip(mb["task"], counts.tolist(), strict=True)]  # (task, tokens) of each example
    if accelerator.num_processes > 1:
        pairs = gather_object(pairs)  # every process's examples: the global batch
    per_task: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # task -> [examples, tokens]
    for task, count in pairs:
        per_task[task][0] += 1
        per_task[task][1] += count
    mean_tokens = {task: max(1.0, count / n) for task, (n, count) in per_task.items()}
    return [torch.tensor([1.0 / (mean_tokens[task] * total) for task in mb["task"]]) for mb in micro_batches]


def log_step(accelerator: Accelerator, cfg: Config, state: TrainState, window: LogWindow,
             sampler: MixtureSampler, scheduler: Any, feed: TrainingFeed) -> None:
    """Every `log_every` steps: blended and per-task loss and counts, realized shares, lr, tokens/s, padding."""
    if state.step % cfg.train.log_every and state.step != cfg.train.max_steps:
        return
    values = window.flush(accelerator)
    values["train/lr"] = scheduler.get_last_lr()[0]
    values["train/tokens_seen"] = state.tokens_seen
    truncation = feed.batcher.truncation  # cumulative since this process started, summed over processes
    counts = accelerator.reduce(torch.tensor([truncation.inputs_truncated, truncation.targets_truncated]), "sum")
    values["train/truncated_inputs"], values["train/truncated_targets"] = counts.tolist()
    for task, share in sampler.realized_shares().items():
        values[f"mixture/realized/{task}"] = share
    accelerator.log(values, step=state.step)


def maybe_eval(accelerator: Accelerator, evaluator: Evaluator, model: Any, state: TrainState,
               losses: dict[str, float] | None = None) -> dict[str, float]:
    """Validation loss per task (and sample generations) logged to the trackers; returns task -> loss.
    `losses` already computed (by a full scoring at the start or end of a run) are logged as they are."""
    if losses is None:
        losses = evaluator.validation_losses(accelerator, model)
    values = {f"eval/loss/{task}": loss for task, loss in losses.items()}
    values["eval/loss"] = sum(losses.values()) / max(1, len(losses))
    if state.best_metric is None or values["eval/loss"] < state.best_metric:
        state.best_metric = values["eval/loss"]
    accelerator.log(values, step=state.step)
    evaluator.log_samples(accelerator, model, step=state.step)
    return losses


def save_scores(accelerator: Accelerator, evaluator: Evaluator, model: Any, path: Path, cfg: Config,
                base: Path) -> dict[str, Any]:
    """Score every evaluated task by its metrics on validation, beside the base scores and the deltas."""
    report: dict[str, Any] = {"model": cfg.model.name, "split": "validation", "variant": "zero_shot",
                              "limit": cfg.eval.max_examples, "config_hash": config_hash(cfg),
                              "tasks": evaluator.scores(accelerator, model, progress=True)}
    if base.exists():
        add_base(report, json.loads(base.read_text()))
    if accelerator.is_main_process:
        write_json_atomically(path, report)
    return report


def maybe_save(accelerator: Accelerator, run_dir: Path, cfg: Config, state: TrainState,
               sampler: MixtureSampler) -> Path:
    records = {
        "train_state": dataclasses.asdict(state),
        "sampler": sampler.state_dict(),
        "config": cfg.to_dict(),
    }
    return save_checkpoint(accelerator, run_dir, state.step, records, cfg.train.keep_last)


def save_final_model(accelerator: Accelerator, model: Any, tokenizer: Any, run_dir: Path) -> None:
    """`<run>/final`: model + tokenizer via save_pretrained, so plain transformers loads it. Written atomically."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        import shutil

        final, staging = run_dir / "final", run_dir / ".tmp-final"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    accelerator.wait_for_everyone()


def _resume(accelerator: Accelerator, checkpoint: Path, cfg: Config, sampler: MixtureSampler) -> TrainState:
    records = read_records(checkpoint)
    saved, current = _flat(records["config"]), _flat(cfg.to_dict())
    for key in RESUME_MUST_MATCH:
        if saved.get(key) != current.get(key):
            raise UserError(
                f"{checkpoint}: cannot resume: it was trained with {key}={saved.get(key)!r}, this run has "
                f"{current.get(key)!r}; use the same setting, train.resume=off, or another run.dir"
            )
    accelerator.load_state(str(checkpoint))
    sampler.load_state_dict(records["sampler"])
    return TrainState(**records["train_state"])


def _make_accelerator(cfg: Config, run_dir: Path) -> tuple[Accelerator, dict[str, Any]]:
    """The Accelerator (CPU when no GPU, bf16 on GPUs that have it) and the trackers' init kwargs."""
    from accelerate.utils import ProjectConfiguration

    use_cpu = not torch.cuda.is_available()
    launched_by = [name for name in ("LOCAL_RANK", "RANK") if name in os.environ]
    mixed_precision = cfg.train.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    log_with, tracker_kwargs = tracker_setup(cfg.log.trackers, run_dir, cfg.run.name)
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, whatever the process count
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if launched_by and world > 1 and accelerator.num_processes == 1:
        raise UserError(
            f"launched as one of {world} processes, but this process runs alone (world size 1): the launcher "
            "started independent trainings. On CPU use `torchrun --standalone --nproc_per_node N` or "
            "`accelerate launch --multi_gpu --num_processes N` (not `--cpu`, which starts one process)"
        )
    if cfg.train.batch_size % (accelerator.num_processes * cfg.train.gradient_accumulation_steps):
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of processes × accumulation steps "
            f"({accelerator.num_processes} × {cfg.train.gradient_accumulation_steps})"
        )
    return accelerator, tracker_kwargs


def make_optimizer(cfg: Config, model: torch.nn.Module):
    from transformers import get_scheduler
    from transformers.optimization import Adafactor

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.train.optimizer == "adafactor":
        # FLAN's setting: a fixed learning rate, no relative step or warmup-init inside Adafactor itself.
        optimizer = Adafactor(params, lr=cfg.train.lr, relative_step=False, scale_parameter=False,
                              warmup_init=False)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[cfg.train.schedule]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=cfg.train.warmup_steps,
                              num_training_steps=cfg.train.max_steps)
    return optimizer, scheduler


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"run.dir={run_dir}: cannot write there ({error.strerror}); choose another run.dir") from None


def load_model(cfg: Config) -> tuple[Any, Any]:
    """The configured model and tokenizer. The embedded default is created from the *shipped* built-in
    suite's text whatever `data.templates_dir` says, so every run and evaluation shares one base model."""
    from pipeline.config import SHIPPED_TEMPLATES
    from pipeline.rendering import sample_texts, texts_fingerprint

    cache_dir = cfg.data.cache_path()
    tasks = load_tasks(SHIPPED_TEMPLATES) if cfg.model.name == DEFAULT_MODEL else {}
    return load_model_and_tokenizer(
        cfg.model.name, trust_remote_code=cfg.model.trust_remote_code, cache_dir=cache_dir,
        default_texts=lambda: sample_texts(tasks, cache_dir, split_seed=cfg.data.split_seed),
        texts_fingerprint=texts_fingerprint(tasks, cache_dir, cfg.data.split_seed) if cfg.model.name == DEFAULT_MODEL else None,
    )


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, int | float | str | bool) or value is None else str(value)
    return flat


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


class _StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves a checkpoint and exits cleanly."""

    def __init__(self) -> None:
        self.requested: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name


class LogWindow:
    """Per-task loss sums and counts since the last log line, reduced over processes when flushed."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.tokens: dict[str, int] = defaultdict(int)
        self.examples: dict[str, int] = defaultdict(int)
        self.real_tokens = self.all_tokens = 0
        self.started = time.perf_counter()
        self._step_sum = 0.0
        self._step_tokens = 0
        self._step_real = 0

    def add(self, micro_batch: dict[str, Any], per_token: torch.Tensor) -> None:
        sums, counts = example_loss_sums(per_token.detach(), micro_batch)
        per_example_sum, per_example_tokens = sums.tolist(), [int(c) for c in counts.tolist()]
        for task, loss_sum, tokens in zip(micro_batch["task"], per_example_sum, per_example_tokens, strict=True):
            self.sums[task] += loss_sum
            self.tokens[task] += tokens
            self.examples[task] += 1
        self._step_sum += sum(per_example_sum)
        self._step_tokens += sum(per_example_tokens)
        self._step_real += int(micro_batch["real_tokens"])
        self.real_tokens += int(micro_batch["real_tokens"])
        self.all_tokens += int(micro_batch["all_tokens"])

    def last_step_loss(self, accelerator: Accelerator) -> float:
        totals = accelerator.reduce(torch.tensor([self._step_sum, float(self._step_tokens)]), "sum")
        self._step_sum, self._step_tokens = 0.0, 0
        return float(totals[0] / max(1.0, float(totals[1])))

    def step_real_tokens(self, accelerator: Accelerator) -> int:
        total = int(accelerator.reduce(torch.tensor(self._step_real), "sum"))
        self._step_real = 0
        return total

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        names = sorted(self.sums)
        names = accelerator.gather_for_metrics(names, use_gather_object=True) if accelerator.num_processes > 1 else names
        names = sorted(set(names))
        local = torch.tensor(
            [[self.sums.get(n, 0.0), self.tokens.get(n, 0), self.examples.get(n, 0)] for n in names]
            + [[float(self.real_tokens), float(self.all_tokens), 0.0]],
            dtype=torch.float64,
        )
        totals = accelerator.reduce(local, "sum")
        values: dict[str, float] = {}
        loss_sum = token_count = 0.0
        for name, (task_sum, task_tokens, task_examples) in zip(names, totals[:-1].tolist(), strict=True):
            values[f"train/loss/{name}"] = task_sum / max(1.0, task_tokens)
            values[f"train/examples/{name}"] = task_examples
            loss_sum, token_count = loss_sum + task_sum, token_count + task_tokens
        real, padded, _ = totals[-1].tolist()
        elapsed = time.perf_counter() - self.started
        values["train/loss"] = loss_sum / max(1.0, token_count)
        values["train/padding_efficiency"] = real / max(1.0, padded)
        values["train/tokens_per_second"] = real / max(1e-9, elapsed)
        self.__init__()
        return values


def _progress(accelerator: Accelerator, cfg: Config, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.train.max_steps, initial=start, desc="train", unit="step",
                disable=not accelerator.is_local_main_process, dynamic_ncols=True)


def _summary(state: TrainState, final_validation: dict[str, float], run_dir: Path) -> dict[str, Any]:
    return {
        "steps": state.step,
        "examples": state.examples_seen,
        "tokens": state.tokens_seen,
        "seconds": round(state.elapsed_seconds, 1),
        "validation_loss_start": state.first_validation,
        "validation_loss_end": final_validation,
        "run_dir": str(run_dir),
    }


def _summary_line(summary: dict[str, Any]) -> str:
    start, end = summary["validation_loss_start"], summary["validation_loss_end"]
    per_task = ", ".join(f"{task} {start.get(task, float('nan')):.2f}→{end[task]:.2f}" for task in sorted(end))
    return (f"done: {summary['steps']} steps, {summary['tokens']:,} tokens, {summary['seconds']:.0f} s; "
            f"validation loss {per_task}; final model in {summary['run_dir']}/final")
