"""Experiment tracking: the local `metrics.jsonl` tracker, and wandb/tensorboard set up through Accelerate.

Everything is logged once through `accelerator.log(...)`, which fans out to every configured tracker on the
main process. Metric names are `section/name` or `section/task/name` (e.g. `train/loss/sentiment`), so each
task gets its own series on a dashboard. wandb runs offline unless the user has an API key or sets WANDB_MODE:
with no key and no mode, wandb would stop the run with `UsageError: No API key configured`.
"""

from __future__ import annotations

import errno
import json
import math
import netrc
import os
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, on_main_process

from pipeline.files import write_text_atomically


class JSONLTracker(GeneralTracker):
    """Appends one JSON object per `log` call to `<run>/metrics.jsonl`: readable without any dashboard."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        super().__init__()
        self.run_name = run_name
        self.path = Path(logging_dir) / "metrics.jsonl"

    @property
    def tracker(self) -> Path:
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        write_text_atomically(self.path.parent / "run_config.json", json.dumps(values, indent=2, default=str) + "\n")

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        record = {"step": step, **{key: _jsonable(value) for key, value in values.items()}}
        # One write of the whole line on an O_APPEND file: a process killed at any moment leaves whole lines.
        line = (json.dumps(record) + "\n").encode()
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.write(descriptor, line) < len(line):  # a short write: the disk filled up mid-line
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            finally:
                os.close(descriptor)
        except OSError as error:  # disk full or read-only: the CLI says so in one line naming the file
            raise OSError(error.errno, error.strerror, str(self.path)) from None

    @on_main_process
    def log_table(self, table_name: str, columns: list[str], data: list[list[Any]], step: int | None = None) -> None:
        rows = [dict(zip(columns, row, strict=True)) for row in data]
        self.log({table_name: rows}, step=step)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def wandb_has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def tracker_setup(trackers: list[str], run_dir: Path, run_name: str):
    """(log_with, init_kwargs) for `Accelerator(log_with=...)` and `accelerator.init_trackers(wandb_project, ...)`."""
    log_with: list[Any] = [JSONLTracker(run_name, run_dir)]
    init_kwargs: dict[str, dict[str, Any]] = {}
    if "tensorboard" in trackers:
        log_with.append("tensorboard")
    if "wandb" in trackers:
        if not wandb_has_api_key() and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"  # sync later with `wandb sync <run>/wandb/offline-run-*`
        log_with.append("wandb")
        init_kwargs["wandb"] = {"dir": str(run_dir), "name": run_name}
    return log_with, init_kwargs


def log_samples(accelerator: Any, columns: list[str], rows: list[list[Any]], step: int) -> None:
    """Sample generations as a table on every tracker (wandb table, tensorboard text, metrics.jsonl)."""
    if not rows or not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            text = "\n\n".join(f"**{t}** ({tp})  \n{i}  \n→ {p}  (target: {g})" for t, tp, i, g, p in rows)
            tracker.writer.add_text("eval/samples", text, global_step=step)
        elif hasattr(tracker, "log_table"):
            tracker.log_table("eval/samples", columns=columns, data=rows, step=step)
