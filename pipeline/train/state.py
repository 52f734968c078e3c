"""A run's state across checkpoints: `TrainState`, saving it with the sampler and config, and the resume check.

    state, changed = resume(accelerator, find_resume_checkpoint("auto", run_dir), cfg, steps, model, optimizer,
                            scheduler)
    save(accelerator, run_dir, cfg, state, steps)

The checkpoint folder format itself (atomic `step-N` folders, the newest complete one) is
`pipeline.checkpoints`; this module decides what goes in and whether a checkpoint may be resumed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from pipeline.adapters import load_trainable_weights
from pipeline.checkpoints import read_records, save_checkpoint
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.train.feed import StepSource

# Settings that must be equal to resume a checkpoint: anything that changes the data or the model's shape.
RESUME_MUST_MATCH = (
    "run.seed", "model.name", "data.mixture", "data.few_shot_k", "data.max_input_length",
    "data.max_target_length", "data.packing", "data.homogeneous_batches", "data.length_window", "train.batch_size", "train.optimizer",
    "train.loss_per",
    "peft.method", "peft.rank", "peft.target_modules",
)


@dataclass
class TrainState:
    """Runtime state saved with every checkpoint (the config never holds any)."""

    step: int = 0
    examples_seen: int = 0
    tokens_seen: int = 0
    """Real (non-padding) encoder + decoder tokens over all processes."""
    elapsed_seconds: float = 0.0
    first_validation: dict[str, float] = field(default_factory=dict)
    """Per-task validation loss before training, for the end-of-run summary."""


def resume(accelerator: Accelerator, checkpoint: Path, cfg: Config, steps: StepSource, model: Any, optimizer: Any,
           scheduler: Any) -> tuple[TrainState, list[str]]:
    """Load a checkpoint into the prepared model, optimizer and scheduler, the step source (the sampler and
    any length window) and a `TrainState`.

    Settings that shape the data or the model (`RESUME_MUST_MATCH`) must be as they were. Every other setting
    may change and takes effect from here; the changes are returned (as "key old -> new") to be printed and
    logged: the learning rate and schedule in particular, which the scheduler's saved state would otherwise quietly
    keep as they were.
    """
    records = read_records(checkpoint)
    # A setting added since the checkpoint was written had its default then.
    saved = {**flat_config(Config().to_dict()), **flat_config(records["config"])}
    current = flat_config(cfg.to_dict())
    for key in RESUME_MUST_MATCH:
        if saved.get(key) != current.get(key):
            raise UserError(
                f"{checkpoint}: cannot resume: it was trained with {key}={saved.get(key)!r}, this run has "
                f"{current.get(key)!r}; use the same setting, train.resume=off, or another run.dir"
            )
    # An adapter run's checkpoint holds only the adapters: the frozen base stays as loaded, and the adapters are
    # loaded by name (accelerate's load matches names only under the wrapper they were saved under).
    accelerator.load_state(str(checkpoint), strict=cfg.peft.method == "none")
    if cfg.peft.method != "none" and (checkpoint / "model.safetensors").is_file():  # (FSDP saves its own way)
        load_trainable_weights(model, checkpoint)
    steps.sampler.load_state_dict(records["sampler"])
    steps.load_state_dict(records.get("steps", {}))
    known = {f.name for f in dataclasses.fields(TrainState)}
    state = TrainState(**{k: v for k, v in records["train_state"].items() if k in known})
    changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in current.items()
               if key in saved and saved[key] != value and not key.startswith("run.")]
    if changed:
        _apply_learning_rate(optimizer, scheduler, cfg.train.lr)
    return state, changed


def _apply_learning_rate(optimizer: Any, scheduler: Any, lr: float) -> None:
    """The configured peak learning rate and schedule from the scheduler's position on. (The schedule's shape,
    warmup and length come from the current settings already; the peak is part of its saved state.)"""
    inner = getattr(scheduler, "scheduler", scheduler)
    inner.base_lrs = [lr for _ in inner.base_lrs]
    for group, factor in zip(optimizer.param_groups, inner.lr_lambdas, strict=True):
        group["lr"] = lr * factor(inner.last_epoch)
    inner._last_lr = [group["lr"] for group in optimizer.param_groups]


def save(accelerator: Accelerator, run_dir: Path, cfg: Config, state: TrainState, steps: StepSource) -> Path:
    """A checkpoint of the run as it stands (collective: every process calls it)."""
    records = {
        "train_state": dataclasses.asdict(state),
        "sampler": steps.sampler.state_dict(),
        "steps": steps.state_dict(),
        "config": cfg.to_dict(),
    }
    return save_checkpoint(accelerator, run_dir, state.step, records, cfg.train.keep_last)


def flat_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-3}}` -> `{"train.lr": 1e-3}`, values JSON scalars (as trackers take them)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, int | float | str | bool) or value is None else str(value)
    return flat
