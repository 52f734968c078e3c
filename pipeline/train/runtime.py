"""What a training process runs in: the Accelerator (devices, precision, trackers), the optimizer and schedule,
the run folder check, and stop signals that every process obeys at the same step.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, parse_flag_from_env
from transformers import get_scheduler
from transformers.optimization import Adafactor

from pipeline.config import Config, TrainConfig
from pipeline.errors import UserError
from pipeline.tracking import tracker_setup


class StopSignal:
    """SIGTERM/SIGINT on any process stop every process at the same step.

    The handler only sets accelerate's trigger; `requested()` checks it across processes (a collective: every
    process calls it once per step), so ranks that saw no signal stop with the one that did and all of them
    save the same checkpoint. A second signal on a process stops it at once.
    """

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.name: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.name:  # a second signal: stop now
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        self.accelerator.set_trigger()

    def requested(self) -> bool:
        """Whether any process has been signalled (decided collectively: the same answer on every process)."""
        if self.accelerator.check_trigger():
            self.name = self.name or "a signal to another process"
            return True
        return False


def torch_threads(setting: int) -> int:
    """Threads for this process: `run.threads` if set, else $OMP_NUM_THREADS if set, else the cores this process
    may use divided among the processes the launcher started on this machine (LOCAL_WORLD_SIZE)."""
    if setting > 0:
        return setting
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def warn_if_cores_are_busy(threads: int) -> None:
    """Say so when other work keeps this machine's cores busy: torch's threads wait on each other whenever one
    of their cores is taken (measured: 0.08× the solo throughput beside one busy job, 0.63× with one thread;
    `bench/contention.py`). The thread count is not changed behind the user's back: it changes the low bits of
    every loss, and runs must repeat exactly."""
    import psutil

    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        return  # the other processes of this launch are busy starting up: sampling would count them
    busy = sum(percent > 50 for percent in psutil.cpu_percent(interval=0.3, percpu=True))
    if busy:
        print(f"flanpipe: note: {busy} of {psutil.cpu_count()} cores are busy with other work; torch's {threads} "
              "threads will wait on each other (several times slower). run.threads=1 is faster while that lasts",
              file=sys.stderr, flush=True)


def make_accelerator(cfg: Config, run_dir: Path) -> Accelerator:
    """The Accelerator: CPU when no GPU, bf16 on GPUs that have it, the trackers of `log.trackers`."""
    threads = torch_threads(cfg.run.threads)
    torch.set_num_threads(threads)
    use_cpu = not torch.cuda.is_available()
    if use_cpu and threads > 1 and cfg.run.threads == 0:
        warn_if_cores_are_busy(threads)
    launched_by = [name for name in ("LOCAL_RANK", "RANK") if name in os.environ]
    mixed_precision = cfg.train.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, whatever the process count
        log_with=tracker_setup(cfg, run_dir),
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if launched_by and world > 1 and accelerator.num_processes == 1:
        raise UserError(
            f"launched as one of {world} processes, but this process runs alone (world size 1): the launcher "
            "started independent trainings. On CPU use `torchrun --standalone --nproc_per_node N` or "
            "`accelerate launch --multi_gpu --num_processes N` (not `--cpu`, which starts one process)"
        )
    check_sharding(accelerator)
    if cfg.train.batch_size % (accelerator.num_processes * cfg.train.gradient_accumulation_steps):
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} must be a multiple of processes × accumulation steps "
            f"({accelerator.num_processes} × {cfg.train.gradient_accumulation_steps})"
        )
    return accelerator


def check_sharding(accelerator: Accelerator) -> None:
    """Refuse a sharding request that accelerate would quietly run as something else, or run wrongly."""
    requested = {"FSDP": parse_flag_from_env("ACCELERATE_USE_FSDP"),
                 "DEEPSPEED": parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")}
    running = accelerator.distributed_type
    for kind, asked in requested.items():
        if asked and running != getattr(DistributedType, kind):
            raise UserError(
                f"{kind} was requested (accelerate config or --use_{kind.lower()}) but accelerate runs this as "
                f"{running.value} on device {accelerator.device.type}: it shards models only on GPUs, under "
                "`accelerate launch`. On CPU, run data parallel instead (`accelerate launch --multi_gpu` or torchrun)"
            )
    plugin = accelerator.state.fsdp_plugin if running == DistributedType.FSDP else None
    if plugin is not None and plugin.fsdp_version == 1 and not plugin.use_orig_params:
        raise UserError("FSDP v1 with use_orig_params false leaves the optimizer without the sharded parameters "
                        "(nothing would train); set fsdp_use_orig_params: true in the accelerate config, or use "
                        "fsdp_version: 2")


def make_optimizer(train: TrainConfig, model: torch.nn.Module, device: torch.device | str = "cpu"
                   ) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer over the trainable parameters and its learning-rate schedule; `device` is where training
    runs (for `train.adamw_kernel=auto`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train.optimizer == "adafactor":
        # FLAN's setting: a fixed learning rate, no relative step or warmup-init inside Adafactor itself.
        optimizer = Adafactor(params, lr=train.lr, relative_step=False, scale_parameter=False,
                              warmup_init=False)
    else:
        fused = train.adamw_kernel == "fused" or (train.adamw_kernel == "auto" and torch.device(device).type == "cuda")
        optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, fused=fused or None)
    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[train.schedule]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=train.warmup_steps,
                              num_training_steps=train.max_steps)
    return optimizer, scheduler


def finish(accelerator: Accelerator) -> None:
    """End a run: the prepared model released, then trackers closed and the process group destroyed.

    The order matters under DDP on CPU. DDP's reducer holds a reference to the gloo process group and is freed
    with the GIL held; had it held the last reference, gloo's destructor would wait, GIL held, for its worker
    thread, which needs the GIL to free the tensors of the last finished collective: a deadlock that now and then
    hung a 2-process run at exit (py-spy: `~Reducer` -> `~ProcessGroupGloo` -> `thread::join`, the worker in
    `decref_pyobject`). Released while the group is still registered, the reducer drops a reference, not the
    group, and `destroy_process_group` then frees it without the GIL. The caller deletes its own references to
    the prepared model first."""
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # the accelerator's references to the prepared model, optimizer and scheduler
    gc.collect()  # modules sit in reference cycles (hooks); collected here, not at some later collection
    accelerator.end_training()
