"""`flanpipe lint`: check task folders, template files and mixture files before anyone trains on them.

For each task: task.yaml is valid; every template parses, has exactly one `|||`, and passes the sandbox check;
on sample rows of the real data (when it is available), every variable a template reads exists, input and
target render non-empty, and classification targets are among the answer choices; template phrasings are
unique within a task and task names unique across the folders linted. Problems are collected, one line each,
naming the file, so one run shows everything to fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.errors import UserError
from pipeline.mixing.tree import check_mixture_file
from pipeline.tasks.rendering import VARIANTS, render_example
from pipeline.tasks.splits import NotCached, hub_offline, load_split
from pipeline.tasks.task import Task, load_task
from pipeline.tasks.templates import load_template

SAMPLE_ROWS = 20


def lint_paths(paths: Iterable[Path], data: DataConfig, seed: int = 0) -> tuple[list[str], int]:
    """Lint every path (rendering sample rows with `seed`); returns (problems, number of files checked)."""
    problems: list[str] = []
    checked = 0
    seen_tasks: dict[str, Path] = {}
    for path in paths:
        for kind, target in _expand(path):
            checked += 1
            try:
                if kind == "task":
                    task = load_task(target)
                    if task.name in seen_tasks:
                        problems.append(f"{target}: task name {task.name!r} is also used by {seen_tasks[task.name]}")
                    seen_tasks[task.name] = target
                    checked += len(task.templates)
                    problems.extend(lint_task(task, data, seed))
                elif kind == "template":
                    load_template(target)
                else:
                    check_mixture_file(target, data.mixtures_path())
            except UserError as error:
                problems.append(str(error))
    if checked == 0:
        problems.append(f"nothing to lint under {', '.join(map(str, paths))} (no task.yaml, .jinja or mixture .yaml)")
    return problems, checked


def _expand(path: Path) -> Iterable[tuple[str, Path]]:
    """Classify a path (or the files under a folder) as task folders, template files or mixture files."""
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir() and (path / "task.yaml").exists():
        yield "task", path
    elif path.is_dir():
        for child in sorted(path.iterdir()):
            if child.is_dir() or child.suffix in (".jinja", ".yaml", ".yml"):
                yield from _expand(child)
    elif path.suffix == ".jinja":
        yield "template", path
    elif path.name == "task.yaml":
        yield "task", path.parent
    elif path.suffix in (".yaml", ".yml"):
        yield "mixture", path


def lint_task(task: Task, data: DataConfig, seed: int = 0) -> list[str]:
    problems = []
    phrasings: dict[tuple[str, str], str] = {}
    for template in task.templates.values():
        key = (template.input_source.strip(), template.target_source.strip())
        if key in phrasings:
            problems.append(f"{template.path}: same text as template {phrasings[key]!r}; phrasings must differ")
        phrasings[key] = template.name
    if not task.forward_templates:
        problems.append(f"{task.folder}: every template is an inversion; add at least one forward template")
    available, _ = task.available(data.cache_path())
    if not available:
        return problems  # the data is not here: the templates were checked statically when they loaded
    try:
        with hub_offline():  # a hub dataset is linted from the local cache; without it, statically as above
            rows = load_split(task, "train", data.cache_path(), data.split_seed, data.max_bad_row_fraction)
    except NotCached:
        return problems
    rows = rows.select(range(min(SAMPLE_ROWS, len(rows))))
    columns = set(rows.column_names)
    for template in task.templates.values():
        missing = sorted(template.variables - columns)
        if missing:
            problems.append(
                f"{template.path}: reads {', '.join(missing)}, not in the data of task {task.name!r}; "
                f"fields: {', '.join(sorted(columns))}"
            )
            continue
        for index, example in enumerate(rows):
            try:
                for variant in VARIANTS[:2]:  # zero-shot with and without options
                    rendered = render_example(task, template, example, index=index, seed=seed, variant=variant)
                    if rendered.dropped:  # a promptsource-style example without a pair: dropped, as in P3
                        break
                    if not rendered.input.strip() or not rendered.target.strip():
                        side = "input" if not rendered.input.strip() else "target"
                        problems.append(f"{template.path}: example {index} renders an empty {side}")
                        break
            except UserError as error:
                problems.append(str(error))
                break
    return problems
