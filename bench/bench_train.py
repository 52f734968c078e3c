"""Training throughput: flanpipe's loop (padded and packed) against the obvious alternative,
`transformers.Seq2SeqTrainer`, on the same model, the same examples in the same order, the same optimizer.

    .venv/bin/python bench/bench_train.py [--model default|flan-t5-small|flan-t5-base] [--steps 10]
        [--warmup 2] [--rounds 3] [--batch-size 32] [--threads 1] [--sides NAME ...]
        [--device cpu|cuda] [--precision fp32|bf16] [--peak-tflops F]       (bench/gpu.sh: the GPU run)

Data: `--warmup + --steps` global batches drawn from the `default` mixture by the `MixtureSampler` (run.seed
0), rendered by `TrainingFeed.render` and tokenized once (`Batcher.tokenize`, i.e. `tokenize_batch`), so both
sides see a fixed list of examples in a fixed order and neither pays for rendering or tokenizing (`train()`
renders per step, a few ms; a Trainer user tokenizes up front with `datasets.map`).

Model and optimizer: `--model default` is the embedded default `flanpipe/t5-tiny` (from
`pipeline.modeling.load_model`); `--model flan-t5-small` is a model of google/flan-t5-small's published shape
with random weights (`bench/shapes.py`; 77M parameters, vocabulary 32,128) fed the default tokenizer's ids.
Every run starts from a deep copy of the same initial weights; fp32, AdamW (torch's, not fused) lr 1e-3, no
weight decay, constant schedule, gradient clipping at 1.0, one process, no gradient accumulation.

The sides:
  Seq2SeqTrainer     `DataCollatorForSeq2Seq` (dynamic padding), sequential sampler, no eval, no saving,
                     no trackers, no dataloader workers, the loss logged every step (to compare losses).
  Trainer grouped    the same with `train_sampling_strategy="group_by_length"` (`group_by_length=True` before
                     transformers 5): the one change a user who minds padding makes. It batches examples of
                     similar length from a window of 50 batches, so its steps hold other examples than the
                     other sides' steps (the same examples over the run; its losses are not compared).
  flanpipe padded    the core of `train()`'s loop with `data.packing=false`: `Seq2SeqLogits` prepared by the
  flanpipe packed    same `Accelerator`, `Batcher.collate`, `token_losses`, `accelerator.accumulate`,
                     backward of the token-sum loss over the global token count, clipping, optimizer and
                     scheduler steps, per-task loss bookkeeping; and the same with `data.packing=true`.
                     Evaluation, checkpoints, trackers and the progress bar of `train()` are left out.
  flanpipe grouped   flanpipe padded with `data.length_window` covering all the batches (the Trainer's
                     window of 50 batches covers them too): the examples regrouped by length
                     (`pipeline.train.feed.regroup_by_length`); its losses are not compared either.

MFU: model FLOPs per second (`shapes.training_flops`: 6 FLOPs per weight per real token plus each example's
attention over its own tokens) over this machine's fp32 peak, the fastest `torch.matmul` of two 2048 x 2048
matrices on the same threads in the same process (`shapes.matmul_peak`). Padding and packed rows' masked
attention blocks are computed but are not model FLOPs, so MFU compares the sides' useful work.

Sides ending in `+compile` are the same with `torch.compile` (flanpipe: `train.compile=true`; the Trainer:
`torch_compile=True`); raise `--warmup` to keep compilation out of the timings. On a GPU (`--device cuda`)
both sides use fused AdamW (flanpipe's `train.adamw_kernel=auto`, the Trainer's `adamw_torch_fused`), bf16 is
autocast on both (`--precision bf16`), the peak is a bf16 matmul of 8192 x 8192, `--peak-tflops` adds MFU
against the card's datasheet figure, and each side's peak memory is reported.

Each round runs every side once over all batches (the order of the sides rotates from round to round, so
that load from other processes hits them alike); the first `--warmup` steps of each run are not timed. The
time of a step runs from the end of the previous step to the end of this one, so it includes collation.
Tokens are real (non-padding) encoder + decoder tokens; every side trains on the same examples, so the
tokens/s ratio equals the steps/s ratio (the grouped sides' untimed warmup steps hold other examples than the
others', so theirs is close, not exact). Reported: the median over rounds (and the range), the ratios of the
medians, and the largest per-step loss difference between the sides (the same data, weights and optimizer
give the same losses up to float summation order; packing changes only which pad positions are computed).
On a shared machine timings can jump for tens of seconds: compare the range with the median, or raise
`--rounds`. Threads default to 1: with 2 threads on 2 cores that another job keeps busy, every side ran 5 to
15 times slower than with 1 (the threads wait on each other) and the ratios measured only the waiting, even
packing against padding came out at 1x. On a quiet machine pass `--threads 2`, what `make train` gets on 2
cores (torch's default).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from pipeline.config import SHIPPED_CONFIGS, Config, load_config
from pipeline.data.batcher import Batcher
from pipeline.forward import Seq2SeqLogits
from pipeline.mixing.sampler import MixtureSampler
from pipeline.mixing.tree import RegistryStats, load_mixture
from pipeline.modeling import load_model
from pipeline.tasks.task import load_tasks
from pipeline.train.feed import TrainingFeed, regroup_by_length
from pipeline.train.log_window import LogWindow
from pipeline.train.loop import train_step
from pipeline.train.runtime import make_optimizer

sys.path.insert(0, str(Path(__file__).parent))
from shapes import SHAPES, matmul_peak, random_model, training_flops  # noqa: E402

DEFAULT_PRESET = SHIPPED_CONFIGS / "default.yaml"


@dataclass(frozen=True)
class Side:
    """One way of training on the batches."""

    name: str
    trainer: bool
    grouped_or_packed: bool
    """The Trainer's `group_by_length`, or flanpipe's `data.packing`."""
    compiled: bool = False
    window: bool = False
    """flanpipe padded with `data.length_window` spanning all the batches (as the Trainer's 50-batch window does
    here): the batches regrouped by length (`regroup_by_length`)."""


BASE_SIDES = (Side("Seq2SeqTrainer", True, False), Side("Trainer grouped", True, True),
              Side("flanpipe padded", False, False), Side("flanpipe packed", False, True),
              Side("flanpipe grouped", False, False, window=True))
SIDES = {side.name: side for base in BASE_SIDES
         for side in (base, dataclasses.replace(base, name=base.name + " +compile", compiled=True))}


@dataclass
class Run:
    """One side's pass over all batches: a timestamp and the loss after each step, and the peak memory."""

    stamps: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    def seconds(self, warmup: int) -> float:
        """Wall time of the steps after the warmup ones (from the end of the last warmup step)."""
        return self.stamps[-1] - self.stamps[warmup - 1]


@dataclass(frozen=True)
class Setup:
    """What every side shares: the device and precision."""

    device: str = "cpu"
    precision: str = "fp32"

    def stamp(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()


def bench_config(side: Side, batch_size: int, steps: int, setup: Setup, run_dir: Path) -> Config:
    return load_config(DEFAULT_PRESET, [
        f"data.packing={side.grouped_or_packed and not side.trainer}", f"train.batch_size={batch_size}",
        f"train.max_steps={steps}", f"train.compile={side.compiled}",
        "train.optimizer=adamw", "train.lr=1e-3", "train.weight_decay=0.0", "train.schedule=constant",
        "train.warmup_steps=0", "train.max_grad_norm=1.0",
        "train.mixed_precision=" + ("bf16" if setup.precision == "bf16" else "'no'"),  # quoted: YAML reads no as false
        "train.gradient_accumulation_steps=1", "train.loss_per=token",  # the Trainer's loss (the preset's is task)
        f"run.dir={run_dir}",
    ])


def fixed_batches(cfg: Config, steps: int, shape: str):
    """(initial model, tokenizer, tokenized global batches): what `train()` would draw for its first steps;
    the model is the default one or, with `shape`, a random one of that published shape."""
    tasks = load_tasks(cfg.data.templates_path())
    stats = RegistryStats(tasks, cfg.data.cache_path(), cfg.data.split_seed)
    mixture = load_mixture(cfg.data.mixture, stats, cfg.data.mixtures_path())
    model, tokenizer = load_model(cfg.model, cfg.data)
    batcher = Batcher(tokenizer, cfg.data, model.config.decoder_start_token_id)
    feed = TrainingFeed(tasks, list(mixture.shares), batcher, cfg.data, cfg.run.seed)
    sampler = MixtureSampler(mixture, seed=cfg.run.seed, homogeneous=cfg.data.homogeneous_batches)
    batches = [batcher.tokenize(feed.render(sampler.next_batch(cfg.train.batch_size).draws()))
               for _ in range(steps)]
    return (model if shape == "default" else random_model(shape)), tokenizer, batches


def run_trainer(initial: torch.nn.Module, tokenizer, batches: list[list[dict]], cfg: Config, side: Side,
                setup: Setup) -> Run:
    """`Seq2SeqTrainer` set up as in the transformers examples, on the batches in order (or, grouped, on the
    same examples batched by length)."""
    from transformers import (
        DataCollatorForSeq2Seq,
        PrinterCallback,
        ProgressCallback,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
    )

    run = Run()

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            run.stamps.append(setup.stamp())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                run.losses.append(float(logs["loss"]))

    model = copy.deepcopy(initial)
    args = Seq2SeqTrainingArguments(
        output_dir=str(cfg.run.path() / "trainer"), per_device_train_batch_size=cfg.train.batch_size,
        max_steps=len(batches), learning_rate=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=cfg.train.max_grad_norm,
        # flanpipe's AdamW for the device (the Trainer's default is the fused one everywhere)
        optim="adamw_torch_fused" if setup.device == "cuda" else "adamw_torch",
        train_sampling_strategy="group_by_length" if side.grouped_or_packed else "sequential",
        eval_strategy="no", save_strategy="no", report_to=[], logging_strategy="steps", logging_steps=1,
        dataloader_num_workers=0, dataloader_pin_memory=False, use_cpu=setup.device == "cpu",
        bf16=setup.precision == "bf16", torch_compile=side.compiled, seed=cfg.run.seed, disable_tqdm=True,
    )
    examples = [{"input_ids": f["input_ids"], "labels": f["labels"]} for batch in batches for f in batch]
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=examples, processing_class=tokenizer,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                             callbacks=[Record()])
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.train()
    return run


def run_flanpipe(initial: torch.nn.Module, tokenizer, batches: list[list[dict]], cfg: Config, side: Side,
                 setup: Setup) -> Run:
    """The core of `pipeline.train.train`'s loop (its `train_step`), step for step, on the batches in order."""
    # `train()`'s Accelerator on one process: no trackers, which the loop below never calls.
    accelerator = Accelerator(cpu=setup.device == "cpu", mixed_precision=cfg.train.mixed_precision,
                              gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                              step_scheduler_with_optimizer=False)
    batcher = Batcher(tokenizer, cfg.data, initial.config.decoder_start_token_id)
    model = Seq2SeqLogits(copy.deepcopy(initial))
    if cfg.train.compile:
        model = torch.compile(model)
    optimizer, scheduler = make_optimizer(cfg.train, model, accelerator.device)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    window = LogWindow()
    run = Run()
    if side.window:
        batches = regroup_by_length([f for batch in batches for f in batch], len(batches[0]), (cfg.run.seed, 0))
    for features in batches:
        # One process, no accumulation: the global batch is the one micro-batch (TrainingFeed.micro_batches).
        micro_batches = [batcher.collate(features)]
        run.losses.append(train_step(accelerator, model, optimizer, scheduler, micro_batches, cfg.train, window))
        window.step_real_tokens(accelerator)
        run.stamps.append(setup.stamp())
    accelerator.free_memory()
    return run


def run_side(initial: torch.nn.Module, tokenizer, batches: list[list[dict]], cfg: Config, side: Side,
             setup: Setup) -> Run:
    if setup.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    run = (run_trainer if side.trainer else run_flanpipe)(initial, tokenizer, batches, cfg, side, setup)
    if setup.device == "cuda":
        run.peak_bytes = torch.cuda.max_memory_allocated()
    return run


def grouped_efficiency(batches: list[list[dict]]) -> float:
    """Padding efficiency of length-grouped batches as the Trainer makes them (its `LengthGroupedSampler`,
    grouping by input length, over the same examples; the Trainer's random permutation differs from this one,
    so its figure is close, not equal)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    examples = [f for batch in batches for f in batch]
    size = len(batches[0])
    torch.manual_seed(0)
    order = list(LengthGroupedSampler(size, lengths=[len(f["input_ids"]) for f in examples]))
    real = total = 0
    for start in range(0, len(order), size):
        group = [examples[i] for i in order[start:start + size]]
        real += sum(len(f["input_ids"]) + len(f["labels"]) for f in group)
        total += len(group) * (max(len(f["input_ids"]) for f in group) + max(len(f["labels"]) for f in group))
    return real / total


def padding_efficiency(batcher: Batcher, batches: list[list[dict]]) -> float:
    collated = [batcher.collate(features) for features in batches]
    return sum(b["real_tokens"] for b in collated) / sum(b["all_tokens"] for b in collated)


def machine_line(args: argparse.Namespace) -> str:
    import accelerate
    import transformers

    if args.device == "cuda":
        where = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    else:
        where = (f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs visible, "
                 f"load average {os.getloadavg()[0]:.1f}")
    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"accelerate {accelerate.__version__}; {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["default", *SHAPES], default="default",
                        help="the embedded default model, or a random model of a published shape")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, alternated")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per optimizer step")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (2 on a quiet 2-core machine; see the module docstring)")
    parser.add_argument("--sides", nargs="+", choices=list(SIDES), default=[side.name for side in BASE_SIDES])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--peak-tflops", type=float, help="the device's datasheet peak for --precision, for MFU")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to torch")
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    setup = Setup(args.device, args.precision)
    sides = [SIDES[name] for name in args.sides]

    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(machine_line(args))
    if args.device == "cpu" and os.getloadavg()[0] + args.threads > (os.cpu_count() or 1) + 0.5:
        print("note: other jobs are using the cores; expect noisy timings (compare each range to its median)")
    peak = matmul_peak(args.threads, args.device, args.precision)
    print(f"{args.precision} matmul peak: {peak / 1e12:.3f} TFLOP/s (measured here)"
          + (f"; datasheet {args.peak_tflops:g} TFLOP/s" if args.peak_tflops else ""))

    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        configs = {side: bench_config(side, args.batch_size, total, setup, Path(tmp) / str(i))
                   for i, side in enumerate(sides)}
        cfg = bench_config(BASE_SIDES[2], args.batch_size, total, setup, Path(tmp) / "data")
        initial, tokenizer, batches = fixed_batches(cfg, total, args.model)
        initial.train()
        start_token = initial.config.decoder_start_token_id
        timed = batches[args.warmup:]
        real_tokens = sum(len(f["input_ids"]) + len(f["labels"]) for batch in timed for f in batch)
        flops = training_flops(initial, [(len(f["input_ids"]), len(f["labels"])) for batch in timed for f in batch])
        packed = bench_config(BASE_SIDES[3], args.batch_size, total, setup, Path(tmp) / "data").data
        efficiency = {(False, False): padding_efficiency(Batcher(tokenizer, cfg.data, start_token), batches),
                      (False, True): padding_efficiency(Batcher(tokenizer, packed, start_token), batches),
                      (True, True): grouped_efficiency(batches)}
        efficiency[(True, False)] = efficiency[(False, False)]  # the same padding of the same batches
        regrouped = regroup_by_length([f for batch in batches for f in batch], args.batch_size, (cfg.run.seed, 0))
        efficiency["window"] = padding_efficiency(Batcher(tokenizer, cfg.data, start_token), regrouped)
        print(f"{initial.config.name_or_path}: {sum(p.numel() for p in initial.parameters()):,} parameters; "
              f"{total} batches of {args.batch_size} from mixture {cfg.data.mixture!r} "
              f"({args.warmup} warmup + {args.steps} timed steps, {real_tokens:,} real tokens timed, "
              f"{flops / args.steps / 1e9:.1f} GFLOP per step); {args.rounds} rounds")

        runs: dict[Side, list[Run]] = {side: [] for side in sides}
        for round_index in range(args.rounds):
            shift = round_index % len(sides)
            for side in sides[shift:] + sides[:shift]:
                run = run_side(initial, tokenizer, batches, configs[side], side, setup)
                runs[side].append(run)
                print(f"  round {round_index + 1} {side.name:26} {args.steps / run.seconds(args.warmup):7.2f} steps/s",
                      flush=True)

    report(args, sides, runs, real_tokens, flops, peak, efficiency)


def report(args: argparse.Namespace, sides: list[Side], runs: dict[Side, list[Run]], real_tokens: int,
           flops: float, peak: float, efficiency: dict[Any, float]) -> None:
    steps_per_second = {side: [args.steps / r.seconds(args.warmup) for r in runs[side]] for side in sides}
    median = {side: statistics.median(values) for side, values in steps_per_second.items()}
    datasheet = args.peak_tflops * 1e12 if args.peak_tflops else None
    print(f"\n{'side':27}{'steps/s':>9}{'range over rounds':>20}{'real tokens/s':>15}{'padding eff.':>14}"
          f"{'TFLOP/s':>9}{'MFU':>7}" + (f"{'MFU (datasheet)':>17}" if datasheet else "")
          + (f"{'peak memory':>13}" if args.device == "cuda" else ""))
    for side in sides:
        low, high = min(steps_per_second[side]), max(steps_per_second[side])
        achieved = median[side] * flops / args.steps
        print(f"{side.name:27}{median[side]:9.2f}{f'{low:.2f} - {high:.2f}':>20}"
              f"{median[side] * real_tokens / args.steps:15,.0f}"
              f"{efficiency['window' if side.window else (side.trainer, side.grouped_or_packed)]:14.1%}{achieved / 1e12:9.4f}{achieved / peak:7.1%}"
              + (f"{achieved / datasheet:17.1%}" if datasheet else "")
              + (f"{max(r.peak_bytes for r in runs[side]) / 2**30:10.2f} GiB" if args.device == "cuda" else ""))
    print()
    for baseline in (side for side in sides if side.trainer):
        for side in (side for side in sides if not side.trainer and side.compiled == baseline.compiled):
            print(f"ratio {side.name} / {baseline.name}: {median[side] / median[baseline]:.2f}x")

    reference_side = next((side for side in sides if side.trainer and not side.grouped_or_packed), None)
    if reference_side is None:
        return
    reference = runs[reference_side][0].losses
    print(f"\nper-step training loss over {len(reference)} steps (first round; step 1 {reference[0]:.4f}, "
          f"step {len(reference)} {reference[-1]:.4f} for {reference_side.name}):")
    for side in (side for side in sides if not side.trainer and not side.window):
        losses = runs[side][0].losses
        diff = max(abs(a - b) for a, b in zip(reference, losses, strict=True))
        print(f"  max |{side.name} - {reference_side.name}| = {diff:.2e}   (last step {losses[-1]:.4f})")
    repeat = max((abs(a - b) for side in sides for r in runs[side][1:]
                  for a, b in zip(runs[side][0].losses, r.losses, strict=True)), default=0.0)
    print(f"  max difference between rounds of the same side = {repeat:.2e}")


if __name__ == "__main__":
    main()
