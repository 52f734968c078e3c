"""Experiment tracking: the local `metrics.jsonl` tracker, and wandb/tensorboard set up through Accelerate.

Everything is logged once through `accelerator.log(...)`, which fans out to every configured tracker on the
main process, under the names `pipeline.dashboard` lists (`batch/loss`, `eval/<task>/<metric>`, ...), so every
task gets its own series and the aggregates come first. The trackers' own features carry the rest: TensorBoard's
HParams and Custom Scalars in the run itself, wandb's run name, group, tags, metric summaries and a growing
samples table. wandb runs offline unless the user has an API key or sets WANDB_MODE:
with no key and no mode, wandb would stop the run with `UsageError: No API key configured`.
"""

from __future__ import annotations

import errno
import json
import math
import netrc
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, TensorBoardTracker, on_main_process

from pipeline.config import Config
from pipeline.dashboard import RUN_METRICS, custom_scalars_layout, markdown_table
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


class TensorBoard(TensorBoardTracker):
    """accelerate's TensorBoard tracker, writing ONE run: the event files go straight into `logging_dir`,
    and the hyperparameters into that same run, tied to the metrics that judge it (`hparam_metrics`) so the
    HParams tab shows each run's final values; plus the Custom Scalars layout (`dashboard.custom_scalars_layout`).
    (accelerate's own `add_hparams` call writes a second run, named by a timestamp, with no metrics attached.)"""

    def __init__(self, run_name: str, logging_dir: str | os.PathLike, layout: dict[str, Any],
                 hparam_metrics: Sequence[str]):
        super().__init__(run_name, logging_dir)
        self.layout = layout
        self.hparam_metrics = hparam_metrics

    @on_main_process
    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logging_dir = str(self.logging_dir_param)
        self.writer = SummaryWriter(self.logging_dir)

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        # torch's hparams() tests for numbers before booleans, so true/false would show as 1.0/0.0: given as text.
        shown = {key: str(value).lower() if isinstance(value, bool) else value for key, value in values.items()}
        for summary in hparams(shown, dict.fromkeys(self.hparam_metrics, 0.0)):  # experiment, session start, end
            self.writer.file_writer.add_summary(summary)
        self.writer.add_custom_scalars(self.layout)
        self.writer.flush()


def tracker_setup(cfg: Config, run_dir: Path) -> list[Any]:
    """`log_with` for `Accelerator(log_with=...)`; `tracker_init_kwargs` completes them once the mixture is known."""
    log_with: list[Any] = [JSONLTracker(cfg.run.name, run_dir)]
    if "tensorboard" in cfg.log.trackers:
        log_with.append(TensorBoard(cfg.run.name, run_dir / "tensorboard" / cfg.run.name, {}, RUN_METRICS))
    if "wandb" in cfg.log.trackers:
        if not wandb_has_api_key() and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"  # sync later with `wandb sync <run>/wandb/offline-run-*`
        log_with.append("wandb")
    return log_with


def tracker_init_kwargs(accelerator: Any, cfg: Config, run_dir: Path, mixture: str, trained: list[str]
                        ) -> dict[str, dict[str, Any]]:
    """`init_kwargs` for `accelerator.init_trackers`: the wandb run is named after the run, grouped by mixture
    and tagged with the mixture, model and task count; TensorBoard gets its layout for these tasks."""
    for tracker in accelerator.log_with:
        if isinstance(tracker, TensorBoard):
            tracker.layout = custom_scalars_layout(trained)
    if "wandb" not in cfg.log.trackers:
        return {}
    model = Path(cfg.model.name).name or cfg.model.name
    return {"wandb": {"dir": str(run_dir), "name": cfg.run.name, "group": mixture, "job_type": "train",
                      "tags": [f"mixture:{mixture}"[:64], f"model:{model}"[:64], f"tasks:{len(trained)}"]}}


def describe_metrics(accelerator: Any) -> None:
    """wandb's summary of each metric (best and last where a best exists, else last), so the runs table of a
    project compares runs by what they reached, not by whatever was logged last."""
    for tracker in accelerator.trackers if accelerator.is_main_process else []:
        if tracker.name == "wandb":
            run = tracker.run
            for pattern, summary in (("aggregate/score_*", "max,last"), ("aggregate/loss_*", "min,last"),
                                     ("aggregate/worst*", "max,last"), ("batch/loss", "min,last"),
                                     ("eval/*", "last"), ("held_out/*", "last")):
                run.define_metric(pattern, summary=summary)


def log_summary(accelerator: Any, run_dir: Path, summary: dict[str, Any]) -> None:
    """End-of-run totals as summary values, not history: `<run>/summary.json`, wandb's run summary, and a text
    card on TensorBoard."""
    if not accelerator.is_main_process:
        return
    write_text_atomically(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    scalars = {key: value for key, value in summary.items() if isinstance(value, int | float)}
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.run.summary.update(scalars)
        elif tracker.name == "tensorboard":
            tracker.writer.add_text("summary", markdown_table(["total", "value"], [[k, v] for k, v in scalars.items()]))
            tracker.writer.flush()


SAMPLE_COLUMNS = ["step", "task", "held_out", "template", "input", "target", "prediction", "correct"]


def log_samples(accelerator: Any, samples: list[dict[str, Any]], step: int) -> None:
    """Sample generations (dicts of `SAMPLE_COLUMNS` less the step) on every tracker: one wandb table that grows
    with each evaluation (filter it by task or by `correct`), one TensorBoard text card per task (`samples/<task>`,
    a table per step), a `samples` record in metrics.jsonl."""
    if not samples or not accelerator.is_main_process:
        return
    rows = [[step, *(sample[column] for column in SAMPLE_COLUMNS[1:])] for sample in samples]
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            by_task: dict[str, list[list[Any]]] = defaultdict(list)
            for _, task, _, template, text, target, prediction, correct in rows:
                by_task[task].append([template, text, target, prediction, "✓" if correct else "✗"])
            for task, table in by_task.items():
                tracker.writer.add_text(f"samples/{task}", markdown_table(
                    ["template", "input", "target", "prediction", "correct"], table), global_step=step)
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb

            if not hasattr(tracker, "samples_table"):
                tracker.samples_table = wandb.Table(columns=SAMPLE_COLUMNS, log_mode="INCREMENTAL")
            for row in rows:
                tracker.samples_table.add_data(*row)
            tracker.run.log({"samples": tracker.samples_table}, step=step)
        elif hasattr(tracker, "log_table"):
            tracker.log_table("samples", columns=SAMPLE_COLUMNS, data=rows, step=step)
