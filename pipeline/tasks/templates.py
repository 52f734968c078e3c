"""Prompt templates: load a `.jinja` file, split its source on the line `|||`, render input and target safely.

A template file is the input (Jinja), a line holding only `|||`, then the target (Jinja). An optional leading
Jinja comment holding a YAML mapping carries metadata, e.g. `{# inversion: true #}`. The source is split
*before* rendering, so a `|||` inside the data can never move the boundary.

Templates are code written by other people, so they render in Jinja's immutable sandbox with StrictUndefined:
a misspelled field is an error naming task, template and field, and reaching for `__class__` & co. is refused
when the file is loaded. Randomness inside a template (`choice`, `random`, option order) is seeded per example
from (seed, task, template, index), so rendering is reproducible whatever the process count or order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes
import yaml
from jinja2.sandbox import SecurityError

from pipeline.errors import UserError
from pipeline.tasks.sandbox import LimitedSandbox, RenderLimit, limit_filters, time_limit

SEPARATOR = "|||"
METADATA_KEYS = {
    "answer_choices": "answer choices for this template only: a list, or a Jinja string 'a ||| b' over the example",
    "inversion": "true for an input-inversion template (FLAN): given the answer, produce the input",
    "description": "one line saying what the template asks",
    "metadata": "free-form mapping kept as is (e.g. promptsource's id, metrics, original_task)",
}
# Names the renderer itself provides to every template.
PROVIDED_VARIABLES = frozenset({"answer_choices", "options"})
_LEADING_COMMENT = re.compile(r"\A\s*\{#-?(.*?)-?#\}[ \t]*\n?", re.DOTALL)
_SEPARATOR_LINE = re.compile(r"^[ \t]*\|\|\|[ \t]*$", re.MULTILINE)
_UNSAFE_NAME = re.compile(r"^_|^(mro|func_globals|gi_frame|f_globals|im_func)$")


class _SeededRandom:
    """The per-example random source, created only when a template asks for randomness (most never do)."""

    def __init__(self, key: str):
        self.key = key
        self._rng: random.Random | None = None

    def get(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random(self.key)  # str seeds hash with sha512: stable across processes
        return self._rng


@jinja2.pass_context
def _choice_filter(context: jinja2.runtime.Context, items: Sequence[Any]) -> Any:
    """promptsource's `choice` filter, seeded per example instead of from the global random state."""
    items = list(items)
    if not items:
        raise UserError("the choice filter got an empty list")
    return context["__rng__"].get().choice(items)


@jinja2.pass_context
def _shuffle_filter(context: jinja2.runtime.Context, items: Sequence[Any]) -> list[Any]:
    shuffled = list(items)
    context["__rng__"].get().shuffle(shuffled)
    return shuffled


def _most_frequent(items: Sequence[Any]) -> list[Any]:
    """promptsource's `most_frequent` filter: the items tied for the highest count, in first-seen order."""
    counts = Counter(items).most_common()
    return [item for item, count in counts if count == counts[0][1]]


def make_environment() -> LimitedSandbox:
    """The one Jinja environment templates render in: sandboxed with limits on size and time
    (`pipeline.tasks.sandbox`), strict, no autoescaping (text, not HTML)."""
    env = LimitedSandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    limit_filters(env)
    env.filters["choice"] = _choice_filter
    env.filters["random"] = _choice_filter  # Jinja's own `random` uses the global random state
    env.filters["shuffle"] = _shuffle_filter
    env.filters["most_frequent"] = _most_frequent
    env.globals["zip"] = zip  # promptsource pairs lists: {% for q, a in zip(questions, answers) %}
    return env


ENVIRONMENT = make_environment()


@dataclass(frozen=True)
class Template:
    """One phrasing of a task: input and target Jinja sources plus metadata, compiled once."""

    name: str
    input_source: str
    target_source: str
    path: str = "<string>"
    answer_choices: list[str] | str | None = None
    inversion: bool = False
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part, source in (("input", self.input_source), ("target", self.target_source)):
            check_template_source(source, self.path, part)

    def __reduce__(self):
        # Compiled Jinja objects do not pickle; worker processes (datasets.map num_proc) recompile from source.
        return (Template, tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    @cached_property
    def _compiled(self) -> tuple[jinja2.Template, jinja2.Template]:
        return ENVIRONMENT.from_string(self.input_source), ENVIRONMENT.from_string(self.target_source)

    @cached_property
    def variables(self) -> frozenset[str]:
        """The example fields this template reads (not counting what the renderer provides)."""
        names: set[str] = set()
        for source in (self.input_source, self.target_source):
            names |= jinja2.meta.find_undeclared_variables(ENVIRONMENT.parse(source))
        if isinstance(self.answer_choices, str):
            names |= jinja2.meta.find_undeclared_variables(ENVIRONMENT.parse(self.answer_choices))
        return frozenset(names - PROVIDED_VARIABLES)

    @cached_property
    def target_variables(self) -> frozenset[str]:
        """The example fields the target side reads: a blank one would make a blank target."""
        return frozenset(jinja2.meta.find_undeclared_variables(ENVIRONMENT.parse(self.target_source))
                         - PROVIDED_VARIABLES)

    @cached_property
    def places_options(self) -> bool:
        """Whether the template puts `{{ options }}` itself; otherwise the options variant appends them."""
        return "options" in jinja2.meta.find_undeclared_variables(ENVIRONMENT.parse(self.input_source))

    def render(
        self, example: Mapping[str, Any], *, rng_key: str, answer_choices: Sequence[str] = (), options: str = ""
    ) -> tuple[str, str]:
        """Render (input, target) for one example. Errors name the template and the field at fault."""
        context = {**example, "answer_choices": list(answer_choices), "options": options}
        context["__rng__"] = _SeededRandom(rng_key)
        input_template, target_template = self._compiled
        with _errors_named(self.path, "", example), time_limit():
            return input_template.render(context).strip(), target_template.render(context).strip()

    def render_choices(self, example: Mapping[str, Any], *, rng_key: str) -> list[str] | None:
        return render_answer_choices(self.answer_choices, example, rng_key=rng_key, path=self.path)


def render_answer_choices(
    spec: list[str] | str | None, example: Mapping[str, Any], *, rng_key: str, path: str
) -> list[str] | None:
    """The answer choices for one example: a list as is, or a Jinja string over the example split on `|||`."""
    if spec is None or isinstance(spec, list):
        return spec
    template = _compile_choices(spec, path)
    context = {**example, "__rng__": _SeededRandom(rng_key)}
    with _errors_named(path, "answer_choices: ", example), time_limit():
        rendered = template.render(context)
    return [choice.strip() for choice in rendered.split(SEPARATOR)]


@contextlib.contextmanager
def _errors_named(path: str, part: str, example: Mapping[str, Any]) -> Iterator[None]:
    """Any error while rendering one example becomes a UserError naming the template (and the field at fault)."""
    try:
        yield
    except jinja2.UndefinedError as error:
        raise UserError(f"{path}: {part}{error.message}; fields available: {_field_list(example)}") from None
    except RenderLimit as error:
        raise UserError(f"{path}: {part}refused: {error}; simplify the template") from None
    except SecurityError as error:
        raise UserError(f"{path}: {part}refused by the sandbox: {error}") from None
    except UserError as error:
        raise UserError(f"{path}: {part}{error}") from None
    except Exception as error:  # a template error on one example: say which template, keep the cause
        raise UserError(f"{path}: {part}rendering failed: {type(error).__name__}: {error}") from None


@functools.lru_cache(maxsize=256)
def _compile_choices(spec: str, path: str) -> jinja2.Template:
    check_template_source(spec, path, "answer_choices")
    return ENVIRONMENT.from_string(spec)


def _field_list(example: Mapping[str, Any]) -> str:
    return ", ".join(sorted(key for key in example if not key.startswith("__"))) or "(none)"


def check_template_source(source: str, path: str, part: str) -> None:
    """Parse a Jinja source and refuse sandbox escapes up front, so bad templates fail at load time."""
    try:
        ast = ENVIRONMENT.parse(source)
    except jinja2.TemplateSyntaxError as error:
        raise UserError(f"{path}: Jinja syntax error in the {part} at line {error.lineno}: {error.message}") from None
    for node in ast.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem, jinja2.nodes.Name)):
        name = getattr(node, "attr", None) or getattr(node, "name", None)
        if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Const):
            name = node.arg.value
        if isinstance(name, str) and (_UNSAFE_NAME.search(name) or (type(node) is jinja2.nodes.Name and name == "self")):
            raise UserError(
                f"{path}: refused: the {part} reaches for {name!r}, which the sandbox forbids "
                "(templates may only read example fields)"
            )


def parse_template(text: str, *, name: str, path: str = "<string>") -> Template:
    """Split a template file's text into metadata, input and target, and compile it."""
    metadata: dict[str, Any] = {}
    match = _LEADING_COMMENT.match(text)
    if match:
        try:
            parsed = yaml.safe_load(match.group(1).strip())
        except yaml.YAMLError:
            parsed = None  # an ordinary comment, not metadata
        if isinstance(parsed, dict):
            unknown = sorted(set(parsed) - set(METADATA_KEYS))
            if unknown:
                raise UserError(
                    f"{path}: unknown metadata key {unknown[0]!r} in the leading comment; "
                    f"valid keys: {', '.join(METADATA_KEYS)}"
                )
            metadata = parsed
            text = text[match.end() :]
    parts = _SEPARATOR_LINE.split(text)
    if len(parts) != 2:
        found = len(parts) - 1
        raise UserError(
            f"{path}: expected exactly one line holding only '{SEPARATOR}' between input and target, found {found}"
        )
    input_source, target_source = (part.strip("\n") for part in parts)
    if not input_source.strip() or not target_source.strip():
        side = "input" if not input_source.strip() else "target"
        raise UserError(f"{path}: the {side} side of '{SEPARATOR}' is empty")
    answer_choices = metadata.get("answer_choices")
    if answer_choices is not None and not (
        isinstance(answer_choices, str)
        or (isinstance(answer_choices, list) and all(isinstance(c, str) for c in answer_choices))
    ):
        raise UserError(f"{path}: answer_choices must be a list of strings or a Jinja string 'a ||| b'")
    if not isinstance(metadata.get("inversion", False), bool):
        raise UserError(f"{path}: inversion must be true or false")
    return Template(
        name=name,
        input_source=input_source,
        target_source=target_source,
        path=path,
        answer_choices=answer_choices,
        inversion=metadata.get("inversion", False),
        description=str(metadata.get("description", "")),
        metadata=dict(metadata.get("metadata") or {}),
    )


def load_template(path: Path) -> Template:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read template ({error})") from None
    return parse_template(text, name=path.stem, path=str(path))


def format_template_file(template: Template) -> str:
    """The file text for a template (the inverse of `parse_template`), used by importers."""
    metadata = {
        key: value
        for key, value in (
            ("description", template.description),
            ("answer_choices", template.answer_choices),
            ("inversion", template.inversion),
            ("metadata", template.metadata),
        )
        if value
    }
    header = ""
    if metadata:
        header = "{#\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "#}\n"
    return f"{header}{template.input_source}\n{SEPARATOR}\n{template.target_source}\n"
