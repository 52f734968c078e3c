"""Import a promptsource `templates.yaml` (bigscience-workshop/promptsource) as a flanpipe task folder.

    flanpipe import-promptsource promptsource/templates/samsum/templates.yaml --out templates/
    # -> templates/samsum/task.yaml + one .jinja per template; then `flanpipe render samsum -n 3`

promptsource is not on PyPI, so its files are read here directly. What this module owns:

- **Reading**: a `yaml.SafeLoader` subclass turns promptsource's `!Template` / `!TemplateMetadata` tags into plain
  dicts; any other tag (`!!python/object:...` & co.) is refused, so reading a file never builds Python objects.
- **Splitting**: promptsource writes `|||` inline (`Summarize: {{dialogue}}|||{{summary}}`) and splits the
  *rendered* text; our files need `|||` on a line of its own and split the *source*. The jinja must hold exactly
  one `|||` in its text (not counting `{{ }}`, `{% %}`, `{# #}` and raw blocks). When that `|||` sits inside
  `{% if %}` blocks (promptsource's "only for some examples" idiom), the blocks are closed at the end of the
  input and reopened at the start of the target; examples outside the `if` then render an empty input and
  target, as in promptsource (P3 skipped those). When the target reads a variable `{% set %}` before `|||`, the
  input's statement tags (not its text) are repeated at the start of the target so the variable exists there;
  this is refused if those tags draw random numbers (the two draws would differ), and a `|||` inside
  `{% for %}` or any block other than `if` is refused.
- **Helpers**: promptsource's environment adds the `choice` and `most_frequent` filters and the `zip` global.
  Ours provides seeded `choice`/`random`/`shuffle`; a template using a filter, test or function our environment
  lacks is refused at import with the helper's name, not at render time.
- **Reserved fields**: our renderer provides `options` (the options block) to every template, which would hide a
  data field of that name (race has one). Templates reading it read `dataset_options` instead, and task.yaml
  gets `fields: {dataset_options: options}` to rename the column.
- **Names**: a template's file stem is a snake_case slug of its free-text name, made unique with `_2`, `_3`...;
  the original name, id, reference and promptsource metadata (original_task, choices_in_prompt, metrics,
  languages, ...) go under `metadata:` in the template's leading comment. `original_task: false` templates are
  imported like the rest (they are valid phrasings); the flag is kept. `answer_choices` is kept as written (a
  Jinja string split on `|||`, or a list).
- **task.yaml**: `source: {path: <dataset>, name: <subset>}`, a stub `splits: {train: train, validation:
  validation}` (many hub datasets ship an unlabeled test split, so test is carved from train by default; check
  the split names against the hub dataset), and `metrics`: the union over templates of promptsource's metric
  names mapped by `METRIC_NAMES` (Accuracy -> accuracy; ROUGE -> rouge; BLEU -> bleu; Squad, Trivia QA and
  COQA F1 -> exact_match, the closest string metric we have), plus `rank_classification` when any template has
  answer choices. Metrics without an equivalent (correlations, AUC, MultiRC, Edit Distance, Mean Reciprocal
  Rank, Other) are skipped and listed in task.yaml's header. Default task name: `<dataset>_<subset>` in
  snake_case (slashes become underscores).

Every template is converted and checked to round-trip through `parse_template` before anything is written; the
folder is then written to a temporary folder, loaded with `load_task`, and renamed into place. An existing
task folder is replaced only with `force`.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.files import staged_folder
from pipeline.importers.promptsource_jinja import (
    check_jinja,
    scan_tags,
    split_promptsource_jinja,
    undeclared_names,
)
from pipeline.metrics import METRICS
from pipeline.tasks.task import load_task
from pipeline.tasks.templates import (
    ENVIRONMENT,
    PROVIDED_VARIABLES,
    SEPARATOR,
    Template,
    format_template_file,
    parse_template,
)

# promptsource metric name (lowercased) -> ours; names not listed have no equivalent and are skipped.
METRIC_NAMES = {
    "accuracy": "accuracy",
    "rouge": "rouge",
    "bleu": "bleu",
    "squad": "exact_match",
    "trivia qa": "exact_match",
    "coqa f1": "exact_match",
}
DEFAULT_SPLITS = {"train": "train", "validation": "validation"}
# Data fields whose names our renderer takes for itself (`options` is the options block): templates reading one
# read `dataset_<name>` instead, and task.yaml's `fields` renames the column (e.g. race's `options`).
# promptsource itself refuses examples holding `answer_choices`, so no template reads such a field.
RENAMED_FIELDS = {name: f"dataset_{name}" for name in sorted(PROVIDED_VARIABLES - {"answer_choices"})}
MAX_SLUG_LENGTH = 64
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class _PromptsourceLoader(yaml.SafeLoader):
    """SafeLoader plus promptsource's two tags, both read as plain mappings."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, f"{node.tag} must tag a mapping", node.start_mark)
    return loader.construct_mapping(node, deep=True)


_PromptsourceLoader.add_constructor("!Template", _construct_mapping)
_PromptsourceLoader.add_constructor("!TemplateMetadata", _construct_mapping)


def import_promptsource(file: Path, out_dir: Path, task_name: str | None = None, force: bool = False) -> Path:
    """Convert a promptsource templates.yaml into `out_dir/<task>/` and return that folder."""
    spec = read_promptsource_file(file)
    dataset, subset = spec["dataset"], spec.get("subset")
    name = _check_task_name(task_name, file) if task_name else snake_case("_".join(filter(None, [dataset, subset])))
    if not name:
        raise UserError(f"{file}: cannot make a task name from dataset {dataset!r}; pass --task NAME")
    folder = out_dir / name
    if folder.exists() and not force:
        raise UserError(f"{folder}: task folder already exists; pass --force to overwrite it, or --task NAME")

    files: dict[str, str] = {}
    metrics: set[str] = set()
    skipped_metrics: set[str] = set()
    templates = convert_templates(spec["templates"], file)
    fields = {
        new: old for old, new in RENAMED_FIELDS.items() if any(new in t.variables for t in templates.values())
    }
    for slug, template in templates.items():
        files[f"{slug}.jinja"] = format_template_file(template)
        for metric in template.metadata.get("metrics") or []:
            mapped = METRIC_NAMES.get(metric.lower())
            if mapped:
                metrics.add(mapped)
            else:
                skipped_metrics.add(metric)
        if template.answer_choices is not None:
            metrics.add("rank_classification")
    files["task.yaml"] = _task_yaml(file, folder, dataset, subset, fields, metrics, skipped_metrics)
    _write_atomically(folder, files, force)
    return folder


def read_promptsource_file(file: Path) -> dict[str, Any]:
    """The file's top-level mapping, checked: `dataset` (str), optional `subset`, and a non-empty `templates`."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{file}: cannot read promptsource file ({error})") from None
    try:
        spec = yaml.load(text, Loader=_PromptsourceLoader)  # a SafeLoader subclass: builds no objects
    except yaml.constructor.ConstructorError as error:
        line = f" line {error.problem_mark.line + 1}:" if error.problem_mark else ""
        raise UserError(
            f"{file}:{line} refused: {error.problem}; only promptsource's !Template and !TemplateMetadata tags are "
            "read (no Python objects are built); remove that tag"
        ) from None
    except yaml.YAMLError as error:
        raise UserError(f"{file}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(spec, dict):
        raise UserError(f"{file}: not a promptsource templates.yaml (expected a mapping with dataset: and templates:)")
    dataset = spec.get("dataset")
    if not isinstance(dataset, str) or not dataset.strip():
        raise UserError(
            f"{file}: missing the top-level 'dataset:' key (the hub dataset name, e.g. 'dataset: samsum'); "
            "is this a promptsource templates.yaml?"
        )
    subset = spec.get("subset")
    if subset is not None and not isinstance(subset, str):
        raise UserError(f"{file}: 'subset:' must be the hub subset name (a string), got {subset!r}")
    templates = spec.get("templates")
    if not isinstance(templates, dict) or not templates:
        raise UserError(f"{file}: 'templates:' must be a non-empty mapping of template id -> !Template")
    return spec


def convert_templates(templates: dict[Any, Any], file: Path) -> dict[str, Template]:
    """Each promptsource template as our Template, keyed by a unique snake_case slug of its name (file order)."""
    converted: dict[str, Template] = {}
    for key, raw in templates.items():
        if not isinstance(raw, dict):
            raise UserError(f"{file}: templates.{key}: expected a !Template mapping, got {type(raw).__name__}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{file}: templates.{key}: missing 'name' (the template's free-text name)")
        where = f"{file}: template {name!r}"
        jinja = raw.get("jinja")
        if not isinstance(jinja, str):
            raise UserError(f"{where}: missing 'jinja' (the template text, input ||| target)")
        slug = _unique(snake_case(name)[:MAX_SLUG_LENGTH].strip("_") or "template", converted)
        converted[slug] = convert_template(raw, key=str(key), slug=slug, where=where)
    return converted


def convert_template(raw: dict[str, Any], *, key: str, slug: str, where: str) -> Template:
    """One promptsource template as our Template, checked to round-trip through the file format."""
    answer_choices = raw.get("answer_choices")
    jinja = raw["jinja"]
    check_jinja(jinja, where)
    if answer_choices is not None:
        if isinstance(answer_choices, list) and answer_choices and all(isinstance(c, str) for c in answer_choices):
            pass
        elif isinstance(answer_choices, str) and answer_choices.strip():
            check_jinja(answer_choices, f"{where}: answer_choices")
            answer_choices = _rename_fields(answer_choices, f"{where}: answer_choices")
        else:
            raise UserError(f"{where}: answer_choices must be a Jinja string 'a ||| b', a list of strings, or null")
    input_source, target_source = split_promptsource_jinja(_rename_fields(jinja, where), where)
    template = Template(
        name=slug,
        input_source=input_source,
        target_source=target_source,
        path=where,
        answer_choices=answer_choices,
        metadata=_template_metadata(raw, key, where),
    )
    reread = parse_template(format_template_file(template), name=slug, path=where)
    compared = ("input_source", "target_source", "answer_choices", "metadata")
    if any(getattr(reread, part) != getattr(template, part) for part in compared):
        raise UserError(
            f"{where}: does not survive conversion to a .jinja file (a line holding only '{SEPARATOR}' or '#}}' "
            "inside a tag, comment or metadata value?); edit the template"
        )
    return template


def _rename_fields(source: str, where: str) -> str:
    """Rename the data fields in `RENAMED_FIELDS` where the source reads them (names inside tags, not `x.name`)."""
    undeclared = undeclared_names(source, where)
    for old, new in RENAMED_FIELDS.items():
        if old not in undeclared:
            continue
        if new in undeclared:
            raise UserError(f"{where}: reads both '{old}' and '{new}'; flanpipe renames the field '{old}' to '{new}'")
        parts, last = [], 0
        for segment in scan_tags(source, where):
            if segment.kind in ("{{", "{%"):
                tokens, previous = [], ""
                for _, kind, value in ENVIRONMENT.lex(source[segment.start : segment.end]):
                    if kind == "name" and value == old and previous != ".":
                        value = new
                    tokens.append(value)
                    previous = value if kind != "whitespace" else previous
                parts += [source[last : segment.start], "".join(tokens)]
                last = segment.end
        source = "".join([*parts, source[last:]])
    return source


def _template_metadata(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise UserError(f"{where}: metadata must be a !TemplateMetadata mapping")
    metrics = metadata.get("metrics")
    if metrics is not None and not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise UserError(f"{where}: metadata.metrics must be a list of metric names, got {metrics!r}")
    reference = raw.get("reference")
    kept = {"name": raw["name"], "id": str(raw.get("id") or key), "reference": reference}
    kept |= {k: v for k, v in metadata.items() if k not in kept}
    return {k: v for k, v in kept.items() if v is not None and v != ""}


def _check_task_name(name: str, file: Path) -> str:
    if not _TASK_NAME.fullmatch(name):
        raise UserError(
            f"{file}: --task {name!r} is not a task folder name; use letters, digits, '_' and '-' "
            f"(e.g. {snake_case(name) or 'my_task'!r})"
        )
    return name


def snake_case(text: str) -> str:
    """ASCII snake_case: 'Summarize this dialogue:' -> 'summarize_this_dialogue', 'Zaid/coqa' -> 'zaid_coqa'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^0-9a-zA-Z]+", "_", ascii_text).strip("_").lower()


def _unique(slug: str, taken: dict[str, Any]) -> str:
    candidate, number = slug, 2
    while candidate in taken or candidate == "task":
        candidate, number = f"{slug}_{number}", number + 1
    return candidate


# --- writing -------------------------------------------------------------------------------------------


def _task_yaml(
    file: Path,
    folder: Path,
    dataset: str,
    subset: str | None,
    fields: dict[str, str],
    metrics: set[str],
    skipped_metrics: set[str],
) -> str:
    hub = f"{dataset}/{subset}" if subset else dataset
    header = [
        f"# Imported from {' '.join(str(file).split())} by flanpipe import-promptsource; "
        f"preview: flanpipe render {folder.name} -n 3",
        f"# Check `source` and `splits` against the hub dataset {hub}: its split names, and whether its test split",
        f"# has labels (test is carved from train unless listed). Then: flanpipe lint {folder}",
    ]
    if skipped_metrics:
        header.append(f"# promptsource metrics with no flanpipe equivalent (skipped): {', '.join(sorted(skipped_metrics))}")
    spec: dict[str, Any] = {
        "description": f"promptsource templates for {hub}",
        "source": {"path": dataset, **({"name": subset} if subset else {})},
        "splits": dict(DEFAULT_SPLITS),
    }
    if fields:
        spec["fields"] = fields
    if metrics:
        spec["metrics"] = [metric for metric in METRICS if metric in metrics]
    body = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, allow_unicode=True, width=1000)
    return "\n".join(header) + "\n" + body


def _write_atomically(folder: Path, files: dict[str, str], force: bool) -> None:
    """Write into a staged folder, check that it loads, then rename it into place."""
    if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder; remove it first")
    try:
        with staged_folder(folder) as staging:
            for name, text in files.items():
                (staging / name).write_text(text, encoding="utf-8")
            load_task(staging)
            if folder.exists() and not force:
                raise UserError(f"{folder}: task folder already exists; pass --force to overwrite it, or --task NAME")
    except OSError as error:
        raise UserError(f"{folder.parent}: cannot write the task folder there ({error})") from None
