"""A task's data: its source (a hub dataset, local files or a built-in reader), field renames, preprocessing,
and the train/validation/test splits, carving the ones the source lacks.

    train = load_split(task, "train", cache_dir)
    splits = load_splits(task, cache_dir, split_seed=0)      # DatasetDict with every split

A task's data comes from a hub dataset (`source: {path: super_glue, name: rte}`: kwargs for
`datasets.load_dataset`), local files (`source: {files: data.jsonl}`, paths relative to the task folder), or a
built-in reader over packaged text (`source: {builtin: sentiment}`, fetched by `flanpipe data`). Splits the
source lacks are carved from train, deterministically by `split_seed` and the task's source, and disjointly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.builtin.fetch import builtin_data_path, ensure_builtin
from pipeline.config import DataConfig
from pipeline.errors import UserError, one_line
from pipeline.files import stable_seed
from pipeline.tasks.task import FILE_FORMATS, PREPROCESSORS, SPLITS, Task

MAX_BAD_ROW_FRACTION = DataConfig.max_bad_row_fraction
"""The default share of a task's rows that may be dropped as incomplete, for callers without a config."""

if TYPE_CHECKING:
    import datasets


def load_source(task: Task, cache_dir: Path) -> datasets.DatasetDict:
    """The task's data as a DatasetDict keyed by *our* split names, before carving and preprocessing."""
    import datasets

    source = dict(task.source)
    if "builtin" in source:
        available, why = task.available(cache_dir)
        if not available:
            raise UserError(f"task {task.name!r}: {why}")
        path = ensure_builtin(cache_dir, source.pop("builtin"))
        with _no_network():
            loaded = datasets.load_dataset("json", data_files={"train": str(path)}, **source)
    elif "files" in source:
        files = source.pop("files")
        data_files = _resolve_files(files, task)
        suffixes = {Path(p).suffix for paths in data_files.values() for p in paths}
        if len(suffixes) != 1 or next(iter(suffixes)) not in FILE_FORMATS:
            raise UserError(
                f"{task.yaml_path}: source.files: use one file type among {', '.join(FILE_FORMATS)}, got {suffixes}"
            )
        builder = source.pop("format", None) or FILE_FORMATS[suffixes.pop()]
        try:
            with _quiet_logger("datasets"), _no_network():  # it logs a parse error with a traceback, then raises
                loaded = datasets.load_dataset(builder, data_files=data_files, **source)
        except Exception as error:  # datasets' own errors for a broken line, CSV in a .jsonl, no rows...
            files_named = ", ".join(path for paths in data_files.values() for path in paths)
            raise UserError(f"{task.yaml_path}: source.files: cannot read {files_named} as {builder} "
                            f"({type(error).__name__}: {one_line(error)}); fix the file or source.format") from None
    else:
        try:
            loaded = datasets.load_dataset(**source)
        except ConnectionError as error:
            if datasets.config.HF_HUB_OFFLINE:  # `hub_offline`, or HF_HUB_OFFLINE=1: the data is not cached here
                raise NotCached(f"{task.yaml_path}: hub dataset {source} is not in the local cache "
                                f"({one_line(error)})") from None
            raise UserError(f"{task.yaml_path}: datasets.load_dataset({source}) failed: "
                            f"{type(error).__name__}: {error}") from None
        except Exception as error:  # the hub or the path is wrong: say which task and what it tried
            raise UserError(
                f"{task.yaml_path}: datasets.load_dataset({source}) failed: {type(error).__name__}: {error}"
            ) from None
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    renamed = {}
    for ours, theirs in task.splits.items():
        if theirs not in loaded:
            raise UserError(
                f"{task.yaml_path}: splits.{ours}: the source has no split {theirs!r}; it has {', '.join(loaded)}"
            )
        renamed[ours] = loaded[theirs]
    return datasets.DatasetDict(renamed)


@contextlib.contextmanager
def _no_network() -> Iterator[None]:
    """Local files need no network, and must not wait on one: `load_dataset` on local files sends a download-count
    request to the hub per call (a DNS lookup that can hang for seconds where there is no network; 1,000 local
    tasks took 150 s instead of 8 s). Off for the call, as HF_UPDATE_DOWNLOAD_COUNTS=0 would do for the process."""
    from datasets import config

    counting = config.HF_UPDATE_DOWNLOAD_COUNTS
    config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        config.HF_UPDATE_DOWNLOAD_COUNTS = counting


class NotCached(UserError):
    """A hub dataset asked for offline (`hub_offline`) that is not in the local cache."""


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hub datasets load from the local cache only, failing at once when they are not there: for commands that only
    look (`lint`, `tasks`), which must not wait through the hub client's retries where there is no network
    (24.5 s per task measured here). `HF_HUB_OFFLINE=1` does the same for a whole process."""
    import huggingface_hub.constants
    from datasets import config

    saved = config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _resolve_files(files: Any, task: Task) -> dict[str, list[str]]:
    if not isinstance(files, dict):
        files = {task.splits.get("train", "train"): files}
    resolved = {}
    for split, paths in files.items():
        paths = [paths] if isinstance(paths, str) else list(paths)
        resolved[split] = []
        for path in paths:
            full = Path(path) if Path(path).is_absolute() else task.folder / path
            if not full.exists():
                raise UserError(f"{task.yaml_path}: source.files: {path} not found (relative paths start at {task.folder})")
            resolved[split].append(str(full))
    return resolved


def load_splits(task: Task, cache_dir: Path, split_seed: int = 0, max_bad_fraction: float = MAX_BAD_ROW_FRACTION
                ) -> datasets.DatasetDict:
    """All of train/validation/test for a task: field mapping, preprocessing, rows missing a field the templates
    read dropped (`drop_incomplete_rows`), then carving of missing splits.

    Loaded once per process: mixture statistics, the training feed and the evaluator all ask for the same task,
    and each load reads the source (1,000 tasks cost seconds per pass). The key holds the task's text and the
    source files' sizes and times, so an edited task or data file is loaded again. `max_bad_fraction` only
    decides whether the dropped rows refuse the task, so it is applied on every call, not part of the key."""
    import datasets

    key = (str(task.folder), task.fingerprint, str(cache_dir), split_seed, _source_state(task, cache_dir))
    if key not in _LOADED:
        _LOADED[key] = _load_splits(task, cache_dir, split_seed)
    splits, dropped = _LOADED[key]
    if dropped is not None:
        _refuse_or_report(task, dropped, max_bad_fraction)
    return datasets.DatasetDict(splits)  # a new dict: a caller may replace a split in its own


_LOADED: dict[tuple, Any] = {}


def _source_state(task: Task, cache_dir: Path) -> tuple:
    """Size and modification time of the task's local data files (empty for hub datasets)."""
    if "builtin" in task.source:
        paths = [builtin_data_path(cache_dir, task.source["builtin"])]
    elif "files" in task.source:
        paths = [Path(p) for files in _resolve_files(task.source["files"], task).values() for p in files]
    else:
        return ()
    state = []
    for path in paths:
        if path.exists():
            stat = path.stat()
            state.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(state)


def _load_splits(task: Task, cache_dir: Path, split_seed: int) -> tuple[datasets.DatasetDict, DroppedRows | None]:
    import datasets
    import numpy as np

    splits = load_source(task, cache_dir)
    for ours, theirs in task.fields.items():
        for name, dataset in splits.items():
            if theirs not in dataset.column_names:
                raise UserError(
                    f"{task.yaml_path}: fields.{ours}: no column {theirs!r} in split {name!r}; "
                    f"columns: {', '.join(dataset.column_names)}"
                )
            splits[name] = dataset.rename_column(theirs, ours) if ours != theirs else dataset
    for step, settings in task.preprocess:
        try:
            splits = datasets.DatasetDict({name: PREPROCESSORS[step].apply(ds, split_seed, **settings)
                                           for name, ds in splits.items()})
        except KeyError as error:  # a step reads a column the data lacks
            raise UserError(f"{task.yaml_path}: preprocess: {step}: no column {error.args[0]!r}; columns: "
                            f"{', '.join(next(iter(splits.values())).column_names)}") from None
    splits, dropped = drop_incomplete_rows(task, splits)
    if task.carve:
        train = splits["train"]
        # Seeded by the *source*, not the task name: two tasks over the same data (en→es and es→en) carve
        # the same held-out examples, so neither trains on the other's test set.
        rng = np.random.default_rng(stable_seed(split_seed, json.dumps(task.source, sort_keys=True), "carve"))
        order = rng.permutation(len(train))
        start = 0
        for split, amount in sorted(task.carve.items()):
            size = int(round(amount * len(train))) if amount < 1 else int(amount)
            splits[split] = train.select(np.sort(order[start : start + size]))
            start += size
        if start >= len(train):
            raise UserError(f"{task.yaml_path}: carve takes {start} of {len(train)} train examples; ask for less")
        splits["train"] = train.select(np.sort(order[start:]))
    return splits, dropped


@dataclass(frozen=True)
class DroppedRows:
    """What `drop_incomplete_rows` dropped from a task: `count` of `total` rows, per split in `where`."""

    count: int
    total: int
    where: str
    what: str


def drop_incomplete_rows(task: Task, splits: datasets.DatasetDict
                         ) -> tuple[datasets.DatasetDict, DroppedRows | None]:
    """Drop the rows where a field the task's templates read is null, or a text field a target reads is blank:
    such a row would render "None" or nothing as its prompt or target and be trained on. Returns the kept
    splits and what was dropped (None when nothing was); `load_splits` reports it or refuses the task."""
    import datasets

    read = sorted(set().union(*(template.variables for template in task.templates.values())))
    targets = set().union(*(template.target_variables for template in task.templates.values()))
    kept, dropped, total = {}, {}, 0
    for name, dataset in splits.items():
        # Arrow counts nulls and blanks per column in one pass of compiled code: a clean split is kept as it is
        # (same fingerprint, same caches).
        nullable = [column for column in read if column in dataset.column_names
                    and dataset.data.column(column).null_count]
        blank = [column for column in sorted(targets) if column in dataset.column_names
                 and _blank_count(dataset.data.column(column))]
        total += len(dataset)
        if not nullable and not blank:
            kept[name] = dataset
            continue
        kept[name] = dataset.filter(_complete, batched=True, fn_kwargs={"nullable": nullable, "blank": blank},
                                    desc=f"checking {task.name}/{name}")
        if len(kept[name]) < len(dataset):
            dropped[name] = len(dataset) - len(kept[name])
    if not dropped:
        return datasets.DatasetDict(kept), None
    where = ", ".join(f"{n} {name}" for name, n in dropped.items())
    what = f"a missing (null) field the templates read ({', '.join(read)}) or a blank one a target reads"
    return datasets.DatasetDict(kept), DroppedRows(sum(dropped.values()), total, where, what)


def _refuse_or_report(task: Task, dropped: DroppedRows, max_bad_fraction: float) -> None:
    """More than `max_bad_fraction` of a task's rows dropped refuses the task (`data.max_bad_row_fraction`: the
    data is not what the templates expect); fewer are reported once per task on stderr."""
    if dropped.count > max_bad_fraction * dropped.total:
        raise UserError(f"task {task.name!r}: {dropped.count} of {dropped.total} rows ({dropped.where}) have "
                        f"{dropped.what}, more than data.max_bad_row_fraction={max_bad_fraction}; fix the data in "
                        f"{task.yaml_path.parent} or raise the setting")
    _report_once(f"flanpipe: task {task.name}: dropped {dropped.count} of {dropped.total} rows ({dropped.where}) "
                 f"with {dropped.what}")


def _blank_count(column: Any) -> int:
    """How many values of an Arrow column are empty or whitespace-only text (0 for other types)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return 0
    return pc.sum(pc.equal(pc.utf8_trim_whitespace(column), "")).as_py() or 0


def _complete(batch: dict[str, list], nullable: list[str], blank: list[str]) -> list[bool]:
    size = len(batch[(nullable or blank)[0]])
    return [all(batch[column][i] is not None for column in nullable)
            and all(isinstance(batch[column][i], str) and batch[column][i].strip() for column in blank)
            for i in range(size)]


_REPORTED: set[str] = set()


def _report_once(line: str) -> None:
    if line not in _REPORTED:
        _REPORTED.add(line)
        print(line, file=sys.stderr)


def load_split(task: Task, split: str, cache_dir: Path, split_seed: int = 0,
               max_bad_fraction: float = MAX_BAD_ROW_FRACTION) -> datasets.Dataset:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    splits = load_splits(task, cache_dir, split_seed, max_bad_fraction)
    if split not in splits:
        raise UserError(f"task {task.name!r} has no {split!r} split; add it to splits or carve in {task.yaml_path}")
    return splits[split]

