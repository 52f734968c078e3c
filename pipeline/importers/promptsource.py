"""Import promptsource's templates (bigscience-workshop/promptsource) as flanpipe task folders.

    flanpipe import-promptsource promptsource-0.2.3.tar.gz --out templates/     # the whole library: 279 files
    flanpipe import-promptsource promptsource/templates/ --out templates/       # a folder holding templates.yaml files
    flanpipe import-promptsource promptsource/templates/samsum/templates.yaml   # one file

promptsource does not install on Python 3.11, but its source distribution on PyPI ships every templates.yaml;
this module reads them from the archive, a folder or one file. One task folder per templates.yaml:

- **Rendering**: the task is `style: promptsource` (`pipeline.tasks.templates`): each template file holds the
  jinja exactly as promptsource wrote it, `|||` inline, and renders as promptsource's `Template.apply` does
  (one pass, the output split at `|||`, every `{{ }}` truncated to 2,048 characters, '' for a missing field,
  seeded `choice`). An example that makes no input/target pair is dropped, as in P3.
- **Reading**: a `yaml.SafeLoader` subclass turns promptsource's `!Template` / `!TemplateMetadata` tags into plain
  dicts; any other tag is refused, so reading a file never builds Python objects.
- **Dataset and subset** come from the folder path, as promptsource's `TemplateCollection` takes them
  (`templates/<dataset>/[<subset>/]templates.yaml`, `templates/<user>/<dataset>/...` for the user namespaces);
  the file's own `dataset:`/`subset:` keys are used only for a lone file outside a `templates/` folder.
- **Per-template skip**: a template that cannot render here (no `|||`, a Jinja syntax error, a helper our
  environment lacks, a call the sandbox refuses) is left out with its reason, listed in task.yaml's header and
  in the summary; the rest of the file is imported.
- **Metrics per template**, as promptsource tags them: its names mapped by `METRIC_NAMES` (Squad, Trivia QA and
  COQA F1 become exact_match, the closest string metric we have), plus rank_classification for a template with
  answer choices. A template whose metrics all lack an equivalent (Other, correlations, AUC...) is scored by
  rouge (or rank_classification, with answer choices) and task.yaml's header says so. The task's `metrics` is
  the union; `flanpipe eval` scores each template's rows by its own.
- **Names**: a template's file stem is a snake_case slug of its name, made unique with `_2`, `_3`...; the name,
  id, reference and promptsource metadata (original_task, choices_in_prompt, metrics, languages) go under
  `metadata:` in the file's leading comment. `choices_in_prompt: true` keeps the options variant from listing
  the choices a second time. Task name: `<dataset>_<subset>` in snake_case.

Every file of an import is read and converted before anything is written; a file that cannot be read refuses
the whole import. Each folder is written to a staging folder, loaded with `load_task`, and renamed into place;
an existing task folder is replaced only with `force`.
"""

from __future__ import annotations

import re
import tarfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.files import staged_folder
from pipeline.metrics import METRICS
from pipeline.tasks.task import load_task
from pipeline.tasks.templates import (
    SEPARATOR,
    Template,
    check_template_source,
    format_template_file,
    parse_template,
)

# promptsource metric name (lowercased) -> ours; names not listed have no equivalent.
METRIC_NAMES = {
    "accuracy": "accuracy",
    "rouge": "rouge",
    "bleu": "bleu",
    "squad": "exact_match",
    "trivia qa": "exact_match",
    "coqa f1": "exact_match",
}
DEFAULT_SPLITS = {"train": "train", "validation": "validation"}
# promptsource's TemplateCollection reads these top-level folders as user namespaces (`Zaid/coqa_expanded`).
USER_NAMESPACES = ("Zaid", "craffel")
MAX_SLUG_LENGTH = 64
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_SDIST_TEMPLATES = re.compile(r"^[^/]+/promptsource/templates/(.+)/templates\.yaml$")


class _PromptsourceLoader(yaml.SafeLoader):
    """SafeLoader plus promptsource's two tags, both read as plain mappings."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, f"{node.tag} must tag a mapping", node.start_mark)
    return loader.construct_mapping(node, deep=True)


_PromptsourceLoader.add_constructor("!Template", _construct_mapping)
_PromptsourceLoader.add_constructor("!TemplateMetadata", _construct_mapping)


@dataclass
class ImportedFile:
    """One templates.yaml: where it came from, the task it became, and the templates left out (name, why)."""

    file: str
    task: str
    dataset: str
    subset: str | None
    templates: dict[str, Template] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    task_yaml: str = ""
    folder: Path | None = None

    @property
    def total(self) -> int:
        return len(self.templates) + len(self.skipped)


def import_promptsource(path: Path, out_dir: Path, task_name: str | None = None,
                        force: bool = False) -> list[ImportedFile]:
    """Convert every promptsource templates.yaml at `path` (a file, a folder, or the sdist archive) into a task
    folder under `out_dir`; returns what each file became. Nothing is written unless every file reads."""
    sources = list(_sources(path))
    if not sources:
        raise UserError(f"{path}: no promptsource templates.yaml there (a templates.yaml, a folder of them, or "
                        "promptsource's sdist: pip download --no-deps --no-binary :all: promptsource==0.2.3)")
    if task_name and len(sources) > 1:
        raise UserError(f"{path}: --task names one task; {len(sources)} files are imported from there")
    imported, names = [], set()
    for display, parts, text in sources:
        spec = read_promptsource_text(text, display)
        dataset, subset = _dataset_and_subset(parts, spec)
        name = _check_task_name(task_name, display) if task_name else snake_case(
            "_".join(filter(None, [dataset, subset])))
        if not name:
            raise UserError(f"{display}: cannot make a task name from dataset {dataset!r}; pass --task NAME")
        name = _unique(name, names)
        names.add(name)
        result = ImportedFile(display, name, dataset, subset)
        result.templates, result.skipped = convert_templates(spec["templates"], display)
        result.task_yaml = _task_yaml(result)
        imported.append(result)
    for result in imported:
        folder = out_dir / result.task
        if (folder.exists() or folder.is_symlink()) and not force:
            raise UserError(f"{folder}: task folder already exists; pass --force to overwrite it"
                            + (", or --task NAME" if len(imported) == 1 else ""))
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            raise UserError(f"{folder}: exists and is not a folder; remove it first")
    for result in imported:
        if result.templates:
            result.folder = out_dir / result.task
            files = {f"{slug}.jinja": format_template_file(t) for slug, t in result.templates.items()}
            _write_atomically(result.folder, {**files, "task.yaml": result.task_yaml})
    return imported


def _sources(path: Path) -> Iterator[tuple[str, tuple[str, ...] | None, str]]:
    """(file shown in messages, its dataset folder parts or None, its text) for each templates.yaml at `path`."""
    if path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            for member in sorted(archive.getmembers(), key=lambda m: m.name):
                match = _SDIST_TEMPLATES.match(member.name)
                if match and member.isfile():
                    yield f"{path}:{member.name}", tuple(match.group(1).split("/")), _decode(
                        archive.extractfile(member).read(), f"{path}:{member.name}")
    elif path.is_file():
        yield str(path), _folder_parts(path.resolve()), _read(path)
    elif path.is_dir():
        for file in sorted(path.rglob("templates.yaml")):
            yield str(file), _folder_parts(file.resolve()) or file.parent.relative_to(path).parts or None, _read(file)
    else:
        raise UserError(f"{path}: no such file or folder")


def _folder_parts(file: Path) -> tuple[str, ...] | None:
    """The folders between the last one named `templates` and the file, as promptsource lays them out."""
    parents = file.parent.parts
    if "templates" not in parents:
        return None
    last = len(parents) - 1 - parents[::-1].index("templates")
    return parents[last + 1 :] or None


def _read(file: Path) -> str:
    try:
        return _decode(file.read_bytes(), str(file))
    except OSError as error:
        raise UserError(f"{file}: cannot read promptsource file ({error})") from None


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{where}: not UTF-8 text ({error})") from None


def _dataset_and_subset(parts: tuple[str, ...] | None, spec: dict[str, Any]) -> tuple[str, str | None]:
    """promptsource's own rule: the folder is the dataset (two folders under a user namespace), a subfolder the
    subset. Only a lone file outside a `templates/` folder goes by its `dataset:`/`subset:` keys."""
    if not parts:
        return spec["dataset"], spec.get("subset")
    width = 2 if parts[0] in USER_NAMESPACES or str(spec["dataset"]).startswith(f"{parts[0]}/") else 1
    dataset = "/".join(parts[:width])
    subset = "/".join(parts[width:]) or None
    return dataset, subset


def read_promptsource_file(file: Path) -> dict[str, Any]:
    return read_promptsource_text(_read(file), str(file))


def read_promptsource_text(text: str, where: str) -> dict[str, Any]:
    """The file's top-level mapping, checked: `dataset` (str), optional `subset`, and a non-empty `templates`."""
    try:
        spec = yaml.load(text, Loader=_PromptsourceLoader)  # a SafeLoader subclass: builds no objects
    except yaml.constructor.ConstructorError as error:
        line = f" line {error.problem_mark.line + 1}:" if error.problem_mark else ""
        raise UserError(
            f"{where}:{line} refused: {error.problem}; only promptsource's !Template and !TemplateMetadata tags are "
            "read (no Python objects are built); remove that tag"
        ) from None
    except yaml.YAMLError as error:
        raise UserError(f"{where}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(spec, dict):
        raise UserError(f"{where}: not a promptsource templates.yaml (expected a mapping with dataset: and templates:)")
    dataset = spec.get("dataset")
    if not isinstance(dataset, str) or not dataset.strip():
        raise UserError(
            f"{where}: missing the top-level 'dataset:' key (the hub dataset name, e.g. 'dataset: samsum'); "
            "is this a promptsource templates.yaml?"
        )
    subset = spec.get("subset")
    if subset is not None and not isinstance(subset, str):
        raise UserError(f"{where}: 'subset:' must be the hub subset name (a string), got {subset!r}")
    templates = spec.get("templates")
    if not isinstance(templates, dict) or not templates:
        raise UserError(f"{where}: 'templates:' must be a non-empty mapping of template id -> !Template")
    return spec


def convert_templates(templates: dict[Any, Any], where: str) -> tuple[dict[str, Template], list[tuple[str, str]]]:
    """The templates that render here, keyed by a unique snake_case slug of their name (file order), and the
    (name, reason) of each left out."""
    converted: dict[str, Template] = {}
    skipped: list[tuple[str, str]] = []
    for key, raw in templates.items():
        name = raw.get("name") if isinstance(raw, dict) else None
        label = name if isinstance(name, str) and name.strip() else str(key)
        try:
            if not isinstance(raw, dict):
                raise UserError(f"expected a !Template mapping, got {type(raw).__name__}")
            if not isinstance(name, str) or not name.strip():
                raise UserError("missing 'name' (the template's free-text name)")
            slug = _unique(snake_case(name)[:MAX_SLUG_LENGTH].strip("_") or "template", converted)
            converted[slug] = convert_template(raw, key=str(key), slug=slug, where=f"{where}: template {name!r}")
        except UserError as error:
            skipped.append((label, str(error).removeprefix(f"{where}: template {name!r}: ")))
    return converted, skipped


def convert_template(raw: dict[str, Any], *, key: str, slug: str, where: str) -> Template:
    """One promptsource template as our Template (style promptsource), checked to round-trip through its file."""
    jinja = raw.get("jinja")
    if not isinstance(jinja, str) or not jinja.strip():
        raise UserError(f"{where}: missing 'jinja' (the template text, input ||| target)")
    if SEPARATOR not in jinja:
        raise UserError(f"{where}: no '{SEPARATOR}' in the jinja, so no example would have a target")
    answer_choices = raw.get("answer_choices")
    if answer_choices is not None and not (
        (isinstance(answer_choices, list) and answer_choices and all(isinstance(c, str) for c in answer_choices))
        or (isinstance(answer_choices, str) and answer_choices.strip())
    ):
        raise UserError(f"{where}: answer_choices must be a Jinja string 'a ||| b', a list of strings, or null")
    metadata = _template_metadata(raw, key, where)
    metrics, _ = template_metrics(metadata.get("metrics") or [], answer_choices is not None)
    template = Template(name=slug, input_source=jinja, target_source="", path=where, answer_choices=answer_choices,
                        metadata=metadata, metrics=tuple(metrics), style="promptsource")
    if isinstance(answer_choices, str):
        check_template_source(answer_choices, where, "answer_choices", "promptsource")
    reread = parse_template(format_template_file(template), name=slug, path=where, style="promptsource")
    compared = ("input_source", "answer_choices", "metadata", "metrics")
    if any(getattr(reread, part) != getattr(template, part) for part in compared):
        raise UserError(f"{where}: does not survive conversion to a .jinja file (a '#}}' in its name or metadata?)")
    return template


def template_metrics(names: list[str], has_choices: bool) -> tuple[list[str], list[str]]:
    """(our metrics for a template tagged with promptsource's `names`, the names without an equivalent)."""
    mapped = {METRIC_NAMES[n.lower()] for n in names if n.lower() in METRIC_NAMES}
    unmapped = [n for n in names if n.lower() not in METRIC_NAMES]
    if has_choices:
        mapped.add("rank_classification")
    if not mapped:
        mapped.add("rouge")
    return [metric for metric in METRICS if metric in mapped], unmapped


def _template_metadata(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise UserError(f"{where}: metadata must be a !TemplateMetadata mapping")
    metrics = metadata.get("metrics")
    if metrics is not None and not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise UserError(f"{where}: metadata.metrics must be a list of metric names, got {metrics!r}")
    kept = {"name": raw["name"], "id": str(raw.get("id") or key), "reference": raw.get("reference")}
    kept |= {k: v for k, v in metadata.items() if k not in kept}
    return {k: v for k, v in kept.items() if v is not None and v != ""}


def _check_task_name(name: str, where: str) -> str:
    if not _TASK_NAME.fullmatch(name):
        raise UserError(
            f"{where}: --task {name!r} is not a task folder name; use letters, digits, '_' and '-' "
            f"(e.g. {snake_case(name) or 'my_task'!r})"
        )
    return name


def snake_case(text: str) -> str:
    """ASCII snake_case: 'Summarize this dialogue:' -> 'summarize_this_dialogue', 'Zaid/coqa' -> 'zaid_coqa'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^0-9a-zA-Z]+", "_", ascii_text).strip("_").lower()


def _unique(slug: str, taken: Any) -> str:
    candidate, number = slug, 2
    while candidate in taken or candidate == "task":
        candidate, number = f"{slug}_{number}", number + 1
    return candidate


# --- writing -------------------------------------------------------------------------------------------


def _task_yaml(result: ImportedFile) -> str:
    hub = f"{result.dataset}/{result.subset}" if result.subset else result.dataset
    header = [
        f"# Imported from {' '.join(result.file.split())} by flanpipe import-promptsource; "
        f"preview: flanpipe render {result.task} -n 3",
        f"# Check `splits` against the hub dataset {hub}: its split names, and whether its test split has labels",
        f"# (test is carved from train unless listed). Then: flanpipe lint templates/{result.task}",
    ]
    substituted = []
    for slug, template in result.templates.items():
        names = template.metadata.get("metrics") or []
        _, unmapped = template_metrics(names, template.answer_choices is not None)
        if unmapped and len(unmapped) == len(names):
            substituted.append(f"{slug} ({', '.join(unmapped)} -> {', '.join(template.metrics)})")
    if substituted:
        header.append("# promptsource metrics with no flanpipe equivalent, scored instead by: " + "; ".join(substituted))
    for name, why in result.skipped:
        header.append(f"# skipped template {' '.join(name.split())!r}: {' '.join(why.split())}")
    metrics = {metric for template in result.templates.values() for metric in template.metrics}
    spec: dict[str, Any] = {
        "description": f"promptsource templates for {hub}",
        "style": "promptsource",
        "source": {"path": result.dataset, **({"name": result.subset} if result.subset else {})},
        "splits": dict(DEFAULT_SPLITS),
        "metrics": [metric for metric in METRICS if metric in metrics],
    }
    body = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, allow_unicode=True, width=1000)
    return "\n".join(header) + "\n" + body


def _write_atomically(folder: Path, files: dict[str, str]) -> None:
    """Write into a staged folder, check that it loads, then rename it into place."""
    try:
        with staged_folder(folder) as staging:
            for name, text in files.items():
                (staging / name).write_text(text, encoding="utf-8")
            load_task(staging)
    except OSError as error:
        raise UserError(f"{folder.parent}: cannot write the task folder there ({error})") from None


def summary_table(imported: list[ImportedFile]) -> str:
    """What an import did, in a few lines whatever the number of files: totals, then each skipped template."""
    templates = sum(result.total for result in imported)
    written = sum(len(result.templates) for result in imported)
    tasks = sum(1 for result in imported if result.folder)
    lines = [
        "| files | templates | imported | skipped | task folders |",
        "|---:|---:|---:|---:|---:|",
        f"| {len(imported)} | {templates} | {written} | {templates - written} | {tasks} |",
    ]
    skipped = [(result, name, why) for result in imported for name, why in result.skipped]
    if skipped:
        lines.append("")
        lines += [f"skipped: {result.task}: {name!r}: {' '.join(why.split())}" for result, name, why in skipped]
    empty = [result.file for result in imported if not result.folder]
    lines += [f"no task folder (every template skipped): {file}" for file in empty]
    return "\n".join(lines)

