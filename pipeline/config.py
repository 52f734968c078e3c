"""Run configuration: one dataclass per concern, loaded from a YAML file plus `dotted.key=value` overrides.

    cfg = load_config("configs/quick.yaml", ["train.max_steps=50", "run.seed=1"])

Every field has a default and a one-line docstring (the text after it); values are type-checked against the
annotations, and an unknown key or a bad value raises `UserError` naming the key and listing the valid ones.
Runtime state (step, sampler position) never lives here: see `TrainState` in `pipeline.train.state`.

Each layer takes its own section (`DataConfig` for batching and rendering, `EvalConfig` for the evaluator,
`TrainConfig` for the loop); only the entry points (`train`, `flanpipe eval`) hold the whole `Config`.

The shipped templates, mixtures and presets travel with the package: `shipped_path` finds them inside an
installed wheel (`pipeline/shipped/`, copied there by setup.py) or, in a source checkout, beside `pipeline/`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from pipeline.errors import UserError
from pipeline.files import content_hash, read_yaml


def shipped_path(name: str) -> Path:
    """A folder shipped with flanpipe (`templates`, `task_mixtures` or `configs`): the installed package's copy
    (a wheel), else the source checkout's own (an editable install or a plain checkout)."""
    packaged = resources.files("pipeline") / "shipped" / name
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / name


SHIPPED_TEMPLATES = shipped_path("templates")
SHIPPED_MIXTURES = shipped_path("task_mixtures")
SHIPPED_CONFIGS = shipped_path("configs")


def project_folder(name: str, marker: str) -> Path | None:
    """`./<name>` when the working directory holds a flanpipe project folder of that name (one with a
    `marker` file somewhere below it), so a user's own `templates/` and `task_mixtures/` are found there."""
    folder = Path(name)
    return folder if folder.is_dir() and next(folder.glob(marker), None) is not None else None


def default_cache_dir() -> Path:
    """Where downloaded sources and rendered data live: $FLANPIPE_CACHE, else $XDG_CACHE_HOME/flanpipe."""
    if os.environ.get("FLANPIPE_CACHE"):
        return Path(os.environ["FLANPIPE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "flanpipe"


def check_at_least(section: str, key: str, value: float, minimum: float, *, above: bool = False) -> None:
    """Refuse a setting below its bound (or not above it), and any NaN or infinity, naming the key."""
    bad = not math.isfinite(value) or (value <= minimum if above else value < minimum)
    if bad:
        relation = ">" if above else ">="
        raise UserError(f"{section}.{key} must be a finite number {relation} {minimum:g}, got {value}")


@dataclass
class RunConfig:
    name: str = "default"
    """Run name: the run folder is `<dir>/<name>` unless `dir` is set explicitly."""
    dir: str = ""
    """Run folder (checkpoints, logs, reports); empty means `runs/<name>`."""
    seed: int = 0
    """Seed for data order, template variants and model initialisation."""
    threads: int = 0
    """torch threads per process; 0: $OMP_NUM_THREADS if set, else the usable cores ÷ the processes on this machine
    (two processes with two threads each on two cores wait on each other: 10-20× slower)."""

    def __post_init__(self) -> None:
        check_at_least("run", "threads", self.threads, 0)

    def path(self) -> Path:
        return Path(self.dir) if self.dir else Path("runs") / self.name


@dataclass
class DataConfig:
    templates_dir: str = ""
    """Folder of task folders; empty means `./templates` if it holds task folders, else the shipped ones."""
    mixtures_dir: str = ""
    """Folder of mixture files; empty means `./task_mixtures` if it holds mixtures, else the shipped ones."""
    cache_dir: str = ""
    """Downloads and rendered/tokenized data; empty means $FLANPIPE_CACHE or ~/.cache/flanpipe."""
    mixture: str = "default"
    """Mixture to train on: a name in the mixtures folder or a path to a mixture file."""
    few_shot_k: int = 3
    """Number of exemplars in a few-shot prompt (fewer when they would not fit `max_input_length`)."""
    max_input_length: int = 256
    """Longest input in tokens; few-shot prompts are pruned to fit, longer inputs are truncated."""
    max_target_length: int = 64
    """Longest target in tokens; longer targets are truncated (and counted)."""
    split_seed: int = 0
    """Seed for carving missing validation/test splits from train; kept apart from `run.seed` so that
    changing the run seed never moves examples between training and evaluation."""
    num_proc: int = 1
    """Processes for `datasets.map` when rendering; more only pays for large tasks."""
    packing: bool = False
    """Pack several examples per row (block-diagonal attention, no cross-example attention)."""
    packed_input_length: int = 0
    """Widest encoder side of a packed row; 0 = `max_input_length`. Each batch's rows are as wide as the batch
    needs, up to this (`pipeline.data.collate.plan_rows`)."""
    packed_target_length: int = 0
    """Widest decoder side of a packed row; 0 = twice `max_target_length`, so that two long targets can share a
    row whose encoder side the batch fills. Measured on the default mixture (batches of 32,
    `bench/bench_packing.py --mixture default --threads 1 --timed-batches 20`): rows of at most 256/64 tokens
    filled 83% of the positions, 256/128 92% at 1% more real tokens/s of forward+backward, 512/128 97% at 14%
    fewer (attention grows with the square of the width)."""
    pad_to_multiple_of: int = 0
    """Pad batch lengths up to a multiple of this (8 helps tensor cores on GPUs); 0 = off."""
    prefetch: bool = True
    """Tokenize and collate the next step's batch in a background thread while this step trains (it is rendered
    in the main thread, where the templates' time limit works); the batches, losses and resume points are the
    same either way. On 2 CPU cores it cut the default run's data path from 6.7% to 2.9% of step time at the
    same speed (`bench/README.md`); on GPUs the cores are otherwise idle while the model runs."""
    group_by_length: bool = False
    """Order each rank's micro-batches by length to cut padding (deterministic)."""
    length_window: int = 1
    """Group the examples of this many consecutive global batches by length, so that each batch pads less
    (the Trainer's `group_by_length` groups 50); each step then trains on other examples than the mixture drew
    for it, the same ones over the window. 1 = every global batch as drawn. For padded batches: packing
    (`data.packing`) pads less still and keeps every batch a sample of the mixture."""
    homogeneous_batches: bool = False
    """Draw every global batch from a single task instead of mixing tasks within a batch."""
    max_bad_row_fraction: float = 0.01
    """Refuse a task when more than this share of its rows lack a field its templates read (null) or have a
    blank field a target reads; fewer are dropped and reported."""
    max_unk_rate: float = 0.02
    """Refuse to train when more than this share of the rendered text's tokens are the tokenizer's unknown token
    (a tokenizer that does not fit the model or the data); 1 = never refuse."""

    def __post_init__(self) -> None:
        if self.few_shot_k < 0:
            raise UserError(f"data.few_shot_k must be >= 0, got {self.few_shot_k}")
        if self.max_input_length < 8 or self.max_target_length < 1:
            raise UserError("data.max_input_length must be >= 8 and data.max_target_length >= 1")
        if self.num_proc < 1:
            raise UserError(f"data.num_proc must be >= 1, got {self.num_proc}")
        if not 0 <= self.max_unk_rate <= 1:
            raise UserError(f"data.max_unk_rate must be between 0 and 1, got {self.max_unk_rate}")
        check_at_least("data", "pad_to_multiple_of", self.pad_to_multiple_of, 0)
        check_at_least("data", "length_window", self.length_window, 1)
        check_at_least("data", "packed_input_length", self.packed_input_length, 0)
        check_at_least("data", "packed_target_length", self.packed_target_length, 0)
        if (0 < self.packed_input_length < self.max_input_length
                or 0 < self.packed_target_length < self.max_target_length):
            raise UserError("data.packed_input_length / data.packed_target_length must be 0 or at least "
                            f"data.max_input_length / data.max_target_length ({self.max_input_length} / "
                            f"{self.max_target_length}), so that the longest example fits a row")
        if not 0 <= self.max_bad_row_fraction <= 1:
            raise UserError(f"data.max_bad_row_fraction must be between 0 and 1, got {self.max_bad_row_fraction}")

    def packed_row_lengths(self) -> tuple[int, int]:
        """(encoder, decoder) widest packed row, the 0 defaults resolved."""
        return (self.packed_input_length or self.max_input_length,
                self.packed_target_length or 2 * self.max_target_length)

    def templates_path(self) -> Path:
        if self.templates_dir:
            return Path(self.templates_dir)
        return project_folder("templates", "*/task.yaml") or SHIPPED_TEMPLATES

    def mixtures_path(self) -> Path:
        if self.mixtures_dir:
            return Path(self.mixtures_dir)
        return project_folder("task_mixtures", "**/*.yaml") or SHIPPED_MIXTURES

    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


@dataclass
class ModelConfig:
    name: str = "flanpipe/t5-tiny"
    """Hub name or local path of an encoder-decoder model; `flanpipe/t5-tiny` is the embedded default."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub checkpoint. Off: such code is someone else's program."""


@dataclass
class PeftConfig:
    method: Literal["none", "lora", "ia3"] = "none"
    """`none`: tune every weight; `lora`: low-rank adapters beside linear layers; `ia3`: learned rescaling of keys,
    values and feed-forward activations (T0's PEFT method). Via `peft`: the base is frozen, checkpoints hold adapters."""
    rank: int = 8
    """LoRA's rank r: the width of each adapter's A (r × in) and B (out × r) matrices."""
    alpha: float = 16.0
    """LoRA's scale numerator: the adapter's update is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the LoRA input. 0 by default: the embedded model trains without dropout, and dropout's draws
    depend on the process, so 1 and N processes would train apart."""
    target_modules: list[str] = field(default_factory=list)
    """Module names (or name suffixes) that get adapters; empty: for LoRA every linear layer but the output head
    (`all-linear`: T5's q, k, v, o, wi/wi_0/wi_1, wo; BART's q/k/v/out_proj, fc1, fc2), as the QLoRA paper found
    adapting all of them is what matches full fine-tuning; for IA3 peft's own choice for the architecture."""

    def __post_init__(self) -> None:
        check_at_least("peft", "rank", self.rank, 1)
        check_at_least("peft", "alpha", self.alpha, 0, above=True)
        if not 0 <= self.dropout < 1:
            raise UserError(f"peft.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    max_steps: int = 1500
    """Optimizer steps to train for."""
    batch_size: int = 32
    """Global batch size (examples per optimizer step, summed over processes and accumulation)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step on each process."""
    optimizer: Literal["adafactor", "adamw"] = "adamw"
    """`adafactor` (FLAN's choice, constant lr ~1e-3) or `adamw`."""
    adamw_kernel: Literal["auto", "fused", "default"] = "auto"
    """AdamW's implementation: `fused` (one kernel over all parameters), `default` (torch's choice for the
    device), or `auto`: fused on GPUs, torch's choice on CPU (they differ in the last bits of every update)."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warmup."""
    warmup_steps: int = 100
    """Linear warmup steps."""
    loss_per: Literal["token", "example", "task"] = "token"
    """`token`: the mean over all target tokens of the global batch (T5's); `example`: the mean over examples
    of each example's mean token loss, so a one-word label weighs as much as a paragraph; `task`: as
    `example` between tasks, as `token` within each (see `pipeline.train.loss.loss_weights`)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 = off."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """`auto`: bf16 on GPUs that support it, fp32 on CPU (bf16 is ~14x slower on these CPUs)."""
    compile: bool = False
    """torch.compile the model (~7% faster on CPU after ~2 minutes of compiling)."""
    log_every: int = 25
    """Steps between training log lines (per-task losses, shares, lr, tokens/s)."""
    eval_every: int = 500
    """Steps between validation evaluations; 0 = only at the start and the end."""
    save_every: int = 500
    """Steps between checkpoints; a checkpoint is always written at the end."""
    keep_last: int = 2
    """Checkpoints to keep (the newest ones)."""
    resume: str = "auto"
    """`auto` (the newest complete checkpoint, if any), a checkpoint path, or `off`."""

    def __post_init__(self) -> None:
        for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every", "keep_last"):
            if getattr(self, key) < 1:
                raise UserError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "eval_every", "save_every"):
            if getattr(self, key) < 0:
                raise UserError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        check_at_least("train", "lr", self.lr, 0, above=True)
        check_at_least("train", "weight_decay", self.weight_decay, 0)
        check_at_least("train", "max_grad_norm", self.max_grad_norm, 0)


@dataclass
class EvalConfig:
    max_examples: int = 200
    """Validation examples per task in periodic evaluations (the first N of the split; 0 = all)."""
    batch_size: int = 64
    """Examples per evaluation batch on each process."""
    max_new_tokens: int = 48
    """Longest generated answer."""
    num_beams: int = 1
    """Beam search width; 1 = greedy (FLAN's default for evaluation)."""
    samples: int = 3
    """Sample generations per task logged at each evaluation."""
    sample_tasks: int = 20
    """Tasks whose sample generations are logged at each evaluation, spread evenly over the tasks in name order
    (with a thousand tasks, generating for all would dominate every evaluation)."""
    periodic_examples: int = 0
    """Validation examples, over all tasks, scored by each evaluation during training (every
    `train.eval_every` steps): each task's first ⌈N / tasks⌉ (at least 1). Bounds their cost whatever the
    number of tasks; the evaluations before and after training score `max_examples` per task. 0 = no bound."""

    def __post_init__(self) -> None:
        for key, minimum in (("max_examples", 0), ("batch_size", 1), ("max_new_tokens", 1), ("num_beams", 1),
                             ("samples", 0), ("sample_tasks", 0), ("periodic_examples", 0)):
            check_at_least("eval", key, getattr(self, key), minimum)


@dataclass
class LogConfig:
    trackers: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard", "wandb"])
    """Experiment trackers among jsonl (always on), tensorboard, wandb."""
    wandb_project: str = "flanpipe"
    """wandb project; wandb runs offline unless an API key is configured or WANDB_MODE says otherwise."""

    def __post_init__(self) -> None:
        for tracker in self.trackers:
            if tracker not in ("jsonl", "tensorboard", "wandb"):
                raise UserError(f"log.trackers: unknown tracker {tracker!r}; valid: jsonl, tensorboard, wandb")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A short hash of every setting, recorded in score files beside the scores."""
        return content_hash(self.to_dict(), length=12)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a `Config` from an optional YAML file, then apply `section.key=value` overrides in order."""
    values: dict[str, dict[str, Any]] = {}
    if path is not None:
        values = _read_yaml_mapping(Path(path))
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or "." not in key:
            raise UserError(f"override {override!r}: expected section.key=value, e.g. train.max_steps=100")
        section, _, name = key.strip().partition(".")
        values.setdefault(section, {})[name] = _parse_scalar(raw)
    return _build(Config, values, where=str(path) if path else "overrides")


def load_config_dict(values: dict[str, Any], where: str = "saved config") -> Config:
    """A `Config` from a nested dict such as `Config.to_dict()` (the config saved with a checkpoint)."""
    return _build(Config, values, where=where)


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    data = read_yaml(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of sections (run:, data:, ...)")
    return data


def _parse_scalar(raw: str) -> Any:
    """Parse an override value as YAML so `3e-4`, `true`, `[a, b]` and `null` mean what they look like."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _build(cls: type, values: Any, where: str, prefix: str = "") -> Any:
    if not isinstance(values, dict):
        raise UserError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            valid = ", ".join(prefix + k for k in known)
            raise UserError(f"{where}: unknown key {prefix + key!r}; valid keys: {valid}")
        kwargs[key] = _coerce(hints[key], value, where, prefix + key)
    return cls(**kwargs)


def _coerce(annotation: Any, value: Any, where: str, key: str) -> Any:
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, where, prefix=key + ".")
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where, key)
            except UserError:
                continue
        raise UserError(f"{where}: {key}={value!r} is not a valid {_type_name(annotation)}")
    if origin is Literal:
        if value not in get_args(annotation):
            choices = ", ".join(map(str, get_args(annotation)))
            raise UserError(f"{where}: {key}={value!r} is not one of: {choices}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: {key} must be a list, got {value!r}")
        (item_type, *_) = get_args(annotation) or (Any,)
        return origin(_coerce(item_type, item, where, key) for item in value)
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads `3e-4` (no dot) as a string
        except ValueError:
            pass
    if annotation is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # `run.name=2024` should not fail for looking like a number
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise UserError(f"{where}: {key}={value!r} must be of type {_type_name(annotation)}")
    return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
