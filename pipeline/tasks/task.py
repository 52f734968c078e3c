"""The task record: a folder of `task.yaml` + `*.jinja` templates, checked, and the registry of task folders.

    tasks = load_tasks(Path("templates"))           # name -> Task, every folder holding a task.yaml
    task = get_task(tasks, "sentiment")

A task's data (its source and splits) is loaded by `pipeline.tasks.splits`; this module only reads and checks
what task.yaml declares. The format is in the README ("Write a task"); `TASK_KEYS` lists every key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.builtin.fetch import builtin_data_path
from pipeline.builtin.sources import BUILTIN_SOURCES
from pipeline.errors import UserError
from pipeline.files import content_hash, read_yaml
from pipeline.metrics import METRICS, NORMALIZERS
from pipeline.tasks import span_corruption
from pipeline.tasks.environment import STYLES
from pipeline.tasks.templates import Template, load_template

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "validation", "test")
TASK_KEYS = {
    "description": "one line saying what the task is",
    "license": "the data's license",
    "source": "{path: ..., name: ...} for a hub dataset, {files: ...} for local files, {builtin: NAME}",
    "fields": "mapping of template variable -> source column, to rename columns",
    "splits": "mapping of train/validation/test -> the source's split name",
    "carve": "missing splits to carve from train: {validation: 0.05, test: 500} (fraction < 1, or a count)",
    "answer_choices": "a list of choices, or a Jinja string 'a ||| b' over the example",
    "metrics": "metric names (see pipeline.metrics)",
    "cap": "examples-proportional mixing cap for this task",
    "held_out": "true: evaluated, never trained on",
    "preprocess": "preprocessing steps, applied in order: a name, or {name: {setting: value}}",
    "shuffle_options": "true: list the options in a seeded random order in the options variant",
    "normalize": "how predictions and targets are normalised for exact match and accuracy (see pipeline.metrics)",
    "style": "flanpipe (default) or promptsource: templates with `|||` inline, rendered as promptsource renders them",
}
SOURCE_KINDS = ("path", "files", "builtin")
FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
DEFAULT_CARVE = {"validation": 0.05, "test": 0.05}


def _strip(batch: dict[str, list]) -> dict[str, list]:
    return {key: [v.strip() if isinstance(v, str) else v for v in values] for key, values in batch.items()}


def _lowercase(batch: dict[str, list]) -> dict[str, list]:
    return {key: [v.lower() if isinstance(v, str) else v for v in values] for key, values in batch.items()}


def _drop_empty(dataset: datasets.Dataset) -> datasets.Dataset:
    def keep(batch: dict[str, list]) -> list[bool]:
        rows = zip(*batch.values(), strict=True)
        return [all(v is not None and (not isinstance(v, str) or v.strip()) for v in row) for row in rows]

    return dataset.filter(keep, batched=True)


def _dedupe(dataset: datasets.Dataset) -> datasets.Dataset:
    """Keep the first occurrence of each identical row (order-preserving, so deterministic)."""
    seen: set[str] = set()
    keep = []
    for row in dataset.to_pandas().itertuples(index=False):
        key = repr(tuple(row))
        keep.append(key not in seen)
        seen.add(key)
    return dataset.select([i for i, k in enumerate(keep) if k])


@dataclass(frozen=True)
class Preprocessor:
    """A preprocessing step a task.yaml may name: `apply(dataset, seed, **settings)` maps a Dataset to a Dataset
    (`seed` is `data.split_seed`); `check(settings)` says what is wrong with its settings, or None."""

    apply: Callable[..., datasets.Dataset]
    check: Callable[[dict[str, Any]], str | None] = lambda settings: (
        f"takes no settings, got {', '.join(settings)}" if settings else None)


PREPROCESSORS: dict[str, Preprocessor] = {
    "strip": Preprocessor(lambda ds, seed: ds.map(_strip, batched=True)),
    "lowercase": Preprocessor(lambda ds, seed: ds.map(_lowercase, batched=True)),
    "drop_empty": Preprocessor(lambda ds, seed: _drop_empty(ds)),
    "dedupe": Preprocessor(lambda ds, seed: _dedupe(ds)),
    "span_corruption": Preprocessor(span_corruption.span_corruption_step, span_corruption.check_settings),
}


@dataclass(frozen=True)
class Task:
    """A task record: what task.yaml declares plus its templates. Data is loaded on demand."""

    name: str
    folder: Path
    source: dict[str, Any]
    templates: dict[str, Template]
    description: str = ""
    license: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train"})
    carve: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CARVE))
    answer_choices: list[str] | str | None = None
    metrics: tuple[str, ...] = ()
    cap: int | None = None
    held_out: bool = False
    preprocess: tuple[tuple[str, dict[str, Any]], ...] = ()
    """(step name, its settings) in order."""
    shuffle_options: bool = False
    normalize: str = "squad"
    style: str = "flanpipe"
    yaml_text: str = ""

    @property
    def yaml_path(self) -> Path:
        return self.folder / "task.yaml"

    @property
    def forward_templates(self) -> list[Template]:
        return [t for t in self.templates.values() if not t.inversion]

    @property
    def inversion_templates(self) -> list[Template]:
        return [t for t in self.templates.values() if t.inversion]

    @property
    def has_choices(self) -> bool:
        return self.answer_choices is not None or any(t.answer_choices is not None for t in self.templates.values())

    @cached_property
    def fingerprint(self) -> str:
        """Hash of task.yaml and every template's text: part of every cache key built from this task."""
        templates = [(name, t.input_source, t.target_source, t.answer_choices, t.inversion)
                     for name, t in sorted(self.templates.items())]
        return content_hash(self.yaml_text, templates, length=64)

    def template(self, name: str) -> Template:
        if name not in self.templates:
            raise UserError(f"task {self.name!r} has no template {name!r}; templates: {', '.join(self.templates)}")
        return self.templates[name]

    def available(self, cache_dir: Path) -> tuple[bool, str]:
        """Whether the data can be loaded now, and if not, how to get it."""
        if "builtin" in self.source:
            name = self.source["builtin"]
            if builtin_data_path(cache_dir, name).exists():
                return True, ""
            how = BUILTIN_SOURCES[name].how_to_get
            return False, f"built-in data {name!r} not fetched yet: run `flanpipe data` (make data); {how}"
        return True, ""


def load_task(folder: Path) -> Task:
    """Read and check one task folder. Every fault names task.yaml or the template file and the key."""
    yaml_path = folder / "task.yaml"
    if yaml_path.exists() and not yaml_path.is_file():
        raise UserError(f"{yaml_path}: cannot read the task.yaml (it is a folder); a task needs a task.yaml file")
    if not yaml_path.is_file():
        raise UserError(f"{folder}: not a task folder (no task.yaml)")
    spec = read_yaml(yaml_path, "task.yaml")
    text = yaml_path.read_text(encoding="utf-8")
    if not isinstance(spec, dict):
        raise UserError(f"{yaml_path}: must be a mapping with at least a 'source' key")
    unknown = sorted(set(spec) - set(TASK_KEYS))
    if unknown:
        raise UserError(f"{yaml_path}: unknown key {unknown[0]!r}; valid keys: {', '.join(TASK_KEYS)}")
    source = _check_source(spec.get("source"), yaml_path)
    style = spec.get("style", "flanpipe")
    if style not in STYLES:
        raise UserError(f"{yaml_path}: style: unknown template style {style!r}; valid: {', '.join(STYLES)}")
    templates = {path.stem: load_template(path, style) for path in sorted(folder.glob("*.jinja"))}
    if not templates:
        raise UserError(f"{folder}: no templates; add at least one <name>.jinja file (input, a line '|||', target)")
    splits = _check_mapping(spec, "splits", yaml_path, {"train": "train"})
    for split in splits:
        if split not in SPLITS:
            raise UserError(f"{yaml_path}: splits: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if "train" not in splits:
        raise UserError(f"{yaml_path}: splits must name the source's train split (splits: {{train: ...}})")
    carve = _check_carve(spec, splits, yaml_path)
    metrics = tuple(_check_list(spec, "metrics", yaml_path))
    for metric in metrics:
        if metric not in METRICS:
            raise UserError(f"{yaml_path}: metrics: unknown metric {metric!r}; valid: {', '.join(METRICS)}")
    for template in templates.values():
        for metric in template.metrics:
            if metric not in metrics:
                raise UserError(f"{template.path}: metrics: {metric!r} is not one of the task's metrics "
                                f"({', '.join(metrics) or 'none'}); add it to {yaml_path.name}'s metrics")
    preprocess = _check_preprocess(spec.get("preprocess", []), yaml_path)
    answer_choices = spec.get("answer_choices")
    if answer_choices is not None and not (
        isinstance(answer_choices, str)
        or (isinstance(answer_choices, list) and answer_choices and all(isinstance(c, str) for c in answer_choices))
    ):
        raise UserError(f"{yaml_path}: answer_choices must be a non-empty list of strings or a Jinja string 'a ||| b'")
    cap = spec.get("cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise UserError(f"{yaml_path}: cap must be an integer >= 1, got {cap!r}")
    normalize = spec.get("normalize", "squad")
    if normalize not in NORMALIZERS:
        raise UserError(f"{yaml_path}: normalize: unknown normaliser {normalize!r}; valid: {', '.join(NORMALIZERS)}")
    for flag in ("held_out", "shuffle_options"):
        if not isinstance(spec.get(flag, False), bool):
            raise UserError(f"{yaml_path}: {flag} must be true or false")
    return Task(
        name=folder.name,
        folder=folder,
        source=source,
        templates=templates,
        description=str(spec.get("description", "")),
        license=str(spec.get("license", "")),
        fields=_check_mapping(spec, "fields", yaml_path, {}),
        splits=splits,
        carve=carve,
        answer_choices=answer_choices,
        metrics=metrics,
        cap=cap,
        held_out=spec.get("held_out", False),
        preprocess=preprocess,
        shuffle_options=spec.get("shuffle_options", False),
        normalize=normalize,
        style=style,
        yaml_text=text,
    )


def _check_source(source: Any, yaml_path: Path) -> dict[str, Any]:
    if source is None:
        raise UserError(
            f"{yaml_path}: missing 'source'; add e.g. source: {{files: data.jsonl}} or {{path: super_glue, name: rte}}"
        )
    if not isinstance(source, dict) or sum(kind in source for kind in SOURCE_KINDS) != 1:
        raise UserError(f"{yaml_path}: source must have exactly one of {', '.join(SOURCE_KINDS)}; got {source!r}")
    if "builtin" in source:
        if source["builtin"] not in BUILTIN_SOURCES:
            known = ", ".join(BUILTIN_SOURCES)
            raise UserError(f"{yaml_path}: source.builtin: unknown built-in {source['builtin']!r}; known: {known}")
    if "files" in source:
        files = source["files"]
        if not isinstance(files, str | list | dict):
            raise UserError(f"{yaml_path}: source.files must be a path, a list of paths, or split -> path(s)")
    return dict(source)


def _check_mapping(spec: dict, key: str, yaml_path: Path, default: dict) -> dict:
    value = spec.get(key, default)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise UserError(f"{yaml_path}: {key} must be a mapping of names to names, got {value!r}")
    return dict(value)


def _check_list(spec: dict, key: str, yaml_path: Path) -> list[str]:
    value = spec.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{yaml_path}: {key} must be a list of names, got {value!r}")
    return value


def _check_preprocess(steps: Any, yaml_path: Path) -> tuple[tuple[str, dict[str, Any]], ...]:
    if not isinstance(steps, list):
        raise UserError(f"{yaml_path}: preprocess must be a list of steps, got {steps!r}")
    checked = []
    for step in steps:
        if isinstance(step, dict) and len(step) == 1:
            (name, settings), = step.items()
        else:
            name, settings = step, {}
        if not isinstance(name, str) or not isinstance(settings, dict):
            raise UserError(f"{yaml_path}: preprocess: {step!r} is not a step; write a name (dedupe) or a name with "
                            "settings ({span_corruption: {noise_density: 0.15}})")
        if name not in PREPROCESSORS:
            raise UserError(f"{yaml_path}: preprocess: unknown step {name!r}; valid: {', '.join(PREPROCESSORS)}")
        problem = PREPROCESSORS[name].check(settings)
        if problem:
            raise UserError(f"{yaml_path}: preprocess: {name}: {problem}")
        checked.append((name, dict(settings)))
    return tuple(checked)


def _check_carve(spec: dict, splits: dict, yaml_path: Path) -> dict[str, float]:
    carve = spec.get("carve", {s: f for s, f in DEFAULT_CARVE.items() if s not in splits})
    if not isinstance(carve, dict):
        raise UserError(f"{yaml_path}: carve must be a mapping like {{validation: 0.05, test: 500}}")
    for split, amount in carve.items():
        if split not in ("validation", "test"):
            raise UserError(f"{yaml_path}: carve: can only carve validation or test, not {split!r}")
        if split in splits:
            raise UserError(f"{yaml_path}: carve: {split!r} is already a source split; remove one of them")
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount <= 0:
            raise UserError(f"{yaml_path}: carve.{split} must be a fraction in (0, 1) or a count >= 1")
    return carve


def load_tasks(directory: Path) -> dict[str, Task]:
    """Every task folder (a folder holding task.yaml) directly under `directory`, by name."""
    if not directory.is_dir():
        raise UserError(f"{directory}: tasks folder not found")
    return {folder.name: load_task(folder) for folder in sorted(directory.iterdir()) if (folder / "task.yaml").exists()}


def get_task(tasks: dict[str, Task], name: str) -> Task:
    if name not in tasks:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(tasks) or '(none)'}")
    return tasks[name]
