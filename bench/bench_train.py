"""Training throughput: flanpipe's loop (padded and packed) against the obvious alternative,
`transformers.Seq2SeqTrainer`, on the same model, the same examples in the same order, the same optimizer.

    .venv/bin/python bench/bench_train.py [--steps 10] [--warmup 2] [--rounds 3] [--batch-size 32]
                                          [--threads 1]

Data: `--warmup + --steps` global batches drawn from the `default` mixture by the `MixtureSampler` (run.seed
0), rendered by `TrainingFeed.render` and tokenized once (`Batcher.tokenize`, i.e. `tokenize_batch`), so both
sides see a fixed list of examples in a fixed order and neither pays for rendering or tokenizing (`train()`
renders per step, a few ms; a Trainer user tokenizes up front with `datasets.map`).

Model and optimizer: the embedded default `flanpipe/t5-tiny` (from `pipeline.train.load_model`), every run
starting from a deep copy of the same initial weights; fp32, AdamW (torch's, not fused) lr 1e-3, no weight
decay, constant schedule, gradient clipping at 1.0, one process, no gradient accumulation.

The sides:
  Seq2SeqTrainer     `DataCollatorForSeq2Seq` (dynamic padding), sequential sampler, no eval, no saving,
                     no trackers, no dataloader workers, the loss logged every step (to compare losses).
  flanpipe padded    the core of `train()`'s loop with `data.packing=false`: `Seq2SeqLogits` prepared by the
  flanpipe packed    same `Accelerator`, `Batcher.collate`, `token_losses`, `accelerator.accumulate`,
                     backward of the token-sum loss over the global token count, clipping, optimizer and
                     scheduler steps, per-task loss bookkeeping; and the same with `data.packing=true`.
                     Evaluation, checkpoints, trackers and the progress bar of `train()` are left out.

Each round runs every side once over all batches (the order of the sides rotates from round to round, so
that load from other processes hits them alike); the first `--warmup` steps of each run are not timed. The
time of a step runs from the end of the previous step to the end of this one, so it includes collation.
Tokens are real (non-padding) encoder + decoder tokens; every side trains on the same examples, so the
tokens/s ratio equals the steps/s ratio. Reported: the median over rounds (and the range), the ratios of the
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
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from pipeline.config import SHIPPED_CONFIGS, Config, load_config
from pipeline.data.batcher import Batcher
from pipeline.forward import Seq2SeqLogits
from pipeline.mixing.sampler import MixtureSampler
from pipeline.mixing.tree import RegistryStats, load_mixture
from pipeline.modeling import load_model
from pipeline.tasks.task import load_tasks
from pipeline.train.feed import TrainingFeed
from pipeline.train.log_window import LogWindow
from pipeline.train.loop import train_step
from pipeline.train.runtime import make_optimizer

DEFAULT_PRESET = SHIPPED_CONFIGS / "default.yaml"
SIDES = ("Seq2SeqTrainer", "flanpipe padded", "flanpipe packed")


@dataclass
class Run:
    """One side's pass over all batches: a timestamp and the loss after each step."""

    stamps: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def seconds(self, warmup: int) -> float:
        """Wall time of the steps after the warmup ones (from the end of the last warmup step)."""
        return self.stamps[-1] - self.stamps[warmup - 1]


def bench_config(batch_size: int, steps: int, packing: bool, run_dir: Path) -> Config:
    return load_config(DEFAULT_PRESET, [
        f"data.packing={packing}", f"train.batch_size={batch_size}", f"train.max_steps={steps}",
        "train.optimizer=adamw", "train.lr=1e-3", "train.weight_decay=0.0", "train.schedule=constant",
        "train.warmup_steps=0", "train.max_grad_norm=1.0", "train.mixed_precision='no'",
        "train.gradient_accumulation_steps=1", "train.loss_per=token",  # the Trainer's loss (the preset's is task)
        f"run.dir={run_dir}",
    ])


def fixed_batches(cfg: Config, steps: int):
    """(initial model, tokenizer, tokenized global batches): what `train()` would draw for its first steps."""
    tasks = load_tasks(cfg.data.templates_path())
    stats = RegistryStats(tasks, cfg.data.cache_path(), cfg.data.split_seed)
    mixture = load_mixture(cfg.data.mixture, stats, cfg.data.mixtures_path())
    model, tokenizer = load_model(cfg.model, cfg.data)
    batcher = Batcher(tokenizer, cfg.data, model.config.decoder_start_token_id)
    feed = TrainingFeed(tasks, list(mixture.shares), batcher, cfg.data, cfg.run.seed)
    sampler = MixtureSampler(mixture, seed=cfg.run.seed, homogeneous=cfg.data.homogeneous_batches)
    batches = [batcher.tokenize(feed.render(sampler.next_batch(cfg.train.batch_size).draws()))
               for _ in range(steps)]
    return model, tokenizer, batches


def run_trainer(initial: torch.nn.Module, tokenizer, batches: list[list[dict]], cfg: Config) -> Run:
    """`Seq2SeqTrainer` set up as in the transformers examples, on the batches in order."""
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
            run.stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                run.losses.append(float(logs["loss"]))

    model = copy.deepcopy(initial)
    args = Seq2SeqTrainingArguments(
        output_dir=str(cfg.run.path() / "trainer"), per_device_train_batch_size=cfg.train.batch_size,
        max_steps=len(batches), learning_rate=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=cfg.train.max_grad_norm,
        optim="adamw_torch",  # flanpipe's torch.optim.AdamW (the Trainer's default is the fused variant)
        train_sampling_strategy="sequential", eval_strategy="no", save_strategy="no", report_to=[],
        logging_strategy="steps", logging_steps=1, dataloader_num_workers=0, dataloader_pin_memory=False,
        use_cpu=True, seed=cfg.run.seed, disable_tqdm=True,
    )
    examples = [{"input_ids": f["input_ids"], "labels": f["labels"]} for batch in batches for f in batch]
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=examples, processing_class=tokenizer,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                             callbacks=[Record()])
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.train()
    return run


def run_flanpipe(initial: torch.nn.Module, tokenizer, batches: list[list[dict]], cfg: Config) -> Run:
    """The core of `pipeline.train.train`'s loop (its `train_step`), step for step, on the batches in order."""
    # `train()`'s Accelerator on one CPU process: no trackers, which the loop below never calls.
    accelerator = Accelerator(cpu=True, mixed_precision=cfg.train.mixed_precision,
                              gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                              step_scheduler_with_optimizer=False)
    batcher = Batcher(tokenizer, cfg.data, initial.config.decoder_start_token_id)
    model = Seq2SeqLogits(copy.deepcopy(initial))
    optimizer, scheduler = make_optimizer(cfg.train, model)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    window = LogWindow()
    run = Run()
    for features in batches:
        # One process, no accumulation: the global batch is the one micro-batch (TrainingFeed.micro_batches).
        micro_batches = [batcher.collate(features)]
        run.losses.append(train_step(accelerator, model, optimizer, scheduler, micro_batches, cfg.train, window))
        window.step_real_tokens(accelerator)
        run.stamps.append(time.perf_counter())
    accelerator.free_memory()
    return run


def padding_efficiency(batcher: Batcher, batches: list[list[dict]]) -> float:
    collated = [batcher.collate(features) for features in batches]
    return sum(b["real_tokens"] for b in collated) / sum(b["all_tokens"] for b in collated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, alternated")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per optimizer step")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (2 on a quiet 2-core machine; see the module docstring)")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be >= 1")
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    import accelerate
    import transformers

    print("$ " + shlex.join([sys.executable, *sys.argv]))
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, accelerate {accelerate.__version__}; "
          f"{torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}")
    if os.getloadavg()[0] + args.threads > (os.cpu_count() or 1) + 0.5:
        print("note: other jobs are using the cores; expect noisy timings (compare each range to its median)")

    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        configs = {
            "Seq2SeqTrainer": bench_config(args.batch_size, total, False, Path(tmp) / "trainer"),
            "flanpipe padded": bench_config(args.batch_size, total, False, Path(tmp) / "padded"),
            "flanpipe packed": bench_config(args.batch_size, total, True, Path(tmp) / "packed"),
        }
        cfg = configs["flanpipe padded"]
        initial, tokenizer, batches = fixed_batches(cfg, total)
        initial.train()
        start_token = initial.config.decoder_start_token_id
        timed = batches[args.warmup:]
        real_tokens = sum(len(f["input_ids"]) + len(f["labels"]) for batch in timed for f in batch)
        efficiency = {side: padding_efficiency(Batcher(tokenizer, configs[side].data, start_token), batches)
                      for side in SIDES}
        print(f"{initial.config.name_or_path}: {sum(p.numel() for p in initial.parameters()):,} parameters; "
              f"{total} batches of {args.batch_size} from mixture {cfg.data.mixture!r} "
              f"({args.warmup} warmup + {args.steps} timed steps, {real_tokens:,} real tokens timed); "
              f"{args.rounds} rounds")

        runners = {"Seq2SeqTrainer": run_trainer, "flanpipe padded": run_flanpipe,
                   "flanpipe packed": run_flanpipe}
        runs: dict[str, list[Run]] = {side: [] for side in SIDES}
        for round_index in range(args.rounds):
            order = SIDES[round_index % len(SIDES):] + SIDES[:round_index % len(SIDES)]
            for side in order:
                run = runners[side](initial, tokenizer, batches, configs[side])
                runs[side].append(run)
                speed = args.steps / run.seconds(args.warmup)
                print(f"  round {round_index + 1} {side:16} {speed:6.2f} steps/s", flush=True)

    steps_per_second = {side: [args.steps / r.seconds(args.warmup) for r in runs[side]] for side in SIDES}
    median = {side: statistics.median(values) for side, values in steps_per_second.items()}
    print(f"\n{'side':18}{'steps/s':>9}{'range over rounds':>20}{'real tokens/s':>15}{'padding eff.':>14}")
    for side in SIDES:
        low, high = min(steps_per_second[side]), max(steps_per_second[side])
        print(f"{side:18}{median[side]:9.2f}{f'{low:.2f} - {high:.2f}':>20}"
              f"{median[side] * real_tokens / args.steps:15,.0f}{efficiency[side]:14.1%}")
    baseline = median["Seq2SeqTrainer"]
    print(f"\nratio flanpipe padded / Seq2SeqTrainer: {median['flanpipe padded'] / baseline:.2f}x")
    print(f"ratio flanpipe packed / Seq2SeqTrainer: {median['flanpipe packed'] / baseline:.2f}x")

    reference = runs["Seq2SeqTrainer"][0].losses
    print(f"\nper-step training loss over {total} steps (first round; step 1 {reference[0]:.4f}, "
          f"step {total} {reference[-1]:.4f} for Seq2SeqTrainer):")
    for side in SIDES[1:]:
        losses = runs[side][0].losses
        diff = max(abs(a - b) for a, b in zip(reference, losses, strict=True))
        print(f"  max |{side} - Seq2SeqTrainer| = {diff:.2e}   (last step {losses[-1]:.4f})")
    repeat = max(abs(a - b) for side in SIDES for r in runs[side][1:]
                 for a, b in zip(runs[side][0].losses, r.losses, strict=True)) if args.rounds > 1 else 0.0
    print(f"  max difference between rounds of the same side = {repeat:.2e}")


if __name__ == "__main__":
    main()
