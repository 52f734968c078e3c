"""Prompt templates: load a `.jinja` file, split its source on the line `|||`, render input and target safely.

A template file is the input (Jinja), a line holding only `|||`, then the target (Jinja). An optional leading
Jinja comment holding a YAML mapping carries metadata, e.g. `{# inversion: true #}`. The source is split
*before* rendering, so a `|||` inside the data can never move the boundary.

Templates are code written by other people, so they render in Jinja's immutable sandbox with StrictUndefined:
a misspelled field is an error naming task, template and field, and reaching for `__class__` & co. is refused
when the file is loaded. Randomness inside a template (`choice`, `random`, option order) is seeded per example
from (seed, task, template, index), so rendering is reproducible whatever the process count or order.

Templates imported from promptsource (task.yaml `style: promptsource`) keep the semantics of promptsource's
`Template.apply`: the file holds the jinja as promptsource wrote it, `|||` inline; it renders in one pass and the
*output* is split at `|||` (a `|||` in the data is escaped first, as promptsource does); every `{{ }}` is
truncated to 2,048 characters; a missing field renders as ''; template-local lists and dicts may be mutated.
An example that does not render into exactly one input and one non-empty target is dropped (`Dropped`), as P3
was built. Randomness (`choice`, `random`) is still seeded per example: one stream, answer choices then template.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
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
from pipeline.tasks.environment import (
    ENVIRONMENT,
    PIPE_PROTECTOR,
    PROMPTSOURCE_ENVIRONMENT,
    SEPARATOR,
    SeededRandom,
    environment,
    escape_pipes,
    promptsource_source,
)
from pipeline.tasks.sandbox import RenderLimit, time_limit

METADATA_KEYS = {
    "answer_choices": "answer choices for this template only: a list, or a Jinja string 'a ||| b' over the example",
    "inversion": "true for an input-inversion template (FLAN): given the answer, produce the input",
    "description": "one line saying what the template asks",
    "metrics": "the task's metrics this template is scored by (default: all of them), e.g. [accuracy]",
    "metadata": "free-form mapping kept as is (e.g. promptsource's id, metrics, original_task)",
}
# Names the renderer itself provides to every template.
PROVIDED_VARIABLES = frozenset({"answer_choices", "options"})
_LEADING_COMMENT = re.compile(r"\A\s*\{#-?(.*?)-?#\}[ \t]*\n?", re.DOTALL)
_SEPARATOR_LINE = re.compile(r"^[ \t]*\|\|\|[ \t]*$", re.MULTILINE)
_UNSAFE_NAME = re.compile(r"^_|^(mro|func_globals|gi_frame|f_globals|im_func)$")
_UNSAFE_VARIABLE = re.compile(r"^__|^self$")  # a local `_name` is fine; `__rng__` & co. are the renderer's


class Dropped(Exception):
    """A promptsource-style example that does not make a training pair (P3 dropped these); says why."""


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
    metrics: tuple[str, ...] = ()
    style: str = "flanpipe"
    """"promptsource": `input_source` is the whole jinja, `|||` inline, and `target_source` is empty."""

    def __post_init__(self) -> None:
        if self.style == "promptsource":  # what compiles is the truncating rewrite: it holds every name of the jinja
            check_template_source(promptsource_source(self.input_source), self.path, "jinja", self.style)
            return
        for part, source in (("input", self.input_source), ("target", self.target_source)):
            check_template_source(source, self.path, part)

    def __reduce__(self):
        # Compiled Jinja objects do not pickle; worker processes (datasets.map num_proc) recompile from source.
        return (Template, tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    @cached_property
    def _compiled(self) -> tuple[jinja2.Template, jinja2.Template | None]:
        if self.style == "promptsource":
            return PROMPTSOURCE_ENVIRONMENT.from_string(promptsource_source(self.input_source)), None
        return ENVIRONMENT.from_string(self.input_source), ENVIRONMENT.from_string(self.target_source)

    @cached_property
    def variables(self) -> frozenset[str]:
        """The example fields this template reads (not counting what the renderer provides)."""
        names: set[str] = set()
        for source in (self.input_source, self.target_source):
            names |= jinja2.meta.find_undeclared_variables(environment(self.style).parse(source))
        if isinstance(self.answer_choices, str):
            names |= jinja2.meta.find_undeclared_variables(environment(self.style).parse(self.answer_choices))
        return frozenset(names - ({"answer_choices"} if self.style == "promptsource" else PROVIDED_VARIABLES))

    @cached_property
    def target_variables(self) -> frozenset[str]:
        """The example fields the target side reads: a blank one would make a blank target (a promptsource-style
        template has no target side: a blank target drops its example)."""
        return frozenset(jinja2.meta.find_undeclared_variables(ENVIRONMENT.parse(self.target_source))
                         - PROVIDED_VARIABLES)

    @cached_property
    def places_options(self) -> bool:
        """Whether the template puts `{{ options }}` itself; otherwise the options variant appends them."""
        return self.style == "flanpipe" and "options" in jinja2.meta.find_undeclared_variables(
            ENVIRONMENT.parse(self.input_source))

    @property
    def lists_choices(self) -> bool:
        """Whether the prompt already lists the answer choices, so the options variant adds nothing:
        `{{ options }}`, or promptsource's `choices_in_prompt`."""
        return self.places_options or self.metadata.get("choices_in_prompt") is True

    def render(
        self, example: Mapping[str, Any], *, rng_key: str, answer_choices: Sequence[str] | None = (),
        options: str = "", rng: SeededRandom | None = None,
    ) -> tuple[str, str]:
        """Render (input, target) for one example. Errors name the template and the field at fault; a
        promptsource-style example that makes no pair raises `Dropped`."""
        rng = rng or SeededRandom(rng_key)
        if self.style == "promptsource":
            parts = self.promptsource_parts(example, answer_choices, rng)
            if len(parts) != 2:
                raise Dropped(f"renders {len(parts)} parts, not input {SEPARATOR} target")
            if not parts[0] or not parts[1]:
                raise Dropped(f"renders an empty {'input' if not parts[0] else 'target'}")
            return parts[0], parts[1]
        context = {**example, "answer_choices": list(answer_choices or ()), "options": options, "__rng__": rng}
        input_template, target_template = self._compiled
        with _errors_named(self.path, "", example), time_limit():
            return input_template.render(context).strip(), target_template.render(context).strip()

    def promptsource_parts(self, example: Mapping[str, Any], answer_choices: Sequence[str] | None,
                           rng: SeededRandom) -> list[str]:
        """What promptsource's `Template.apply` returns: the rendered text split at `|||`, each part stripped."""
        context = escape_pipes(example)
        context["answer_choices"] = None if answer_choices is None else list(answer_choices)
        context["__rng__"] = rng
        with _errors_named(self.path, "", example), time_limit():
            rendered = self._compiled[0].render(context)
        return [part.replace(PIPE_PROTECTOR, SEPARATOR).strip() for part in rendered.split(SEPARATOR)]

    def render_choices(self, example: Mapping[str, Any], *, rng_key: str,
                       rng: SeededRandom | None = None) -> list[str] | None:
        return render_answer_choices(self.answer_choices, example, rng_key=rng_key, path=self.path, style=self.style,
                                     rng=rng)


def render_answer_choices(
    spec: list[str] | str | None, example: Mapping[str, Any], *, rng_key: str, path: str, style: str = "flanpipe",
    rng: SeededRandom | None = None,
) -> list[str] | None:
    """The answer choices for one example: a list as is, or a Jinja string over the example split on `|||`
    (promptsource's style escapes a `|||` in the data first, as its `get_answer_choices_list` does)."""
    if spec is None or isinstance(spec, list):
        return spec
    template = _compile_choices(spec, path, style)
    promptsource = style == "promptsource"
    context = escape_pipes(example) if promptsource else {**example}
    context["__rng__"] = rng or SeededRandom(rng_key)
    with _errors_named(path, "answer_choices: ", example), time_limit():
        rendered = template.render(context)
    choices = [choice.strip() for choice in rendered.split(SEPARATOR)]
    return [choice.replace(PIPE_PROTECTOR, SEPARATOR) for choice in choices] if promptsource else choices


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


@functools.lru_cache(maxsize=4096)
def _compile_choices(spec: str, path: str, style: str = "flanpipe") -> jinja2.Template:
    check_template_source(spec, path, "answer_choices", style)
    return environment(style).from_string(spec)


def _field_list(example: Mapping[str, Any]) -> str:
    return ", ".join(sorted(key for key in example if not key.startswith("__"))) or "(none)"


def check_template_source(source: str, path: str, part: str, style: str = "flanpipe") -> None:
    """Parse a Jinja source and refuse sandbox escapes up front, so bad templates fail at load time: attributes
    and keys starting with `_`, and variables starting with `__` (a local `_blank` is fine)."""
    try:
        ast = environment(style).parse(source)
    except jinja2.TemplateSyntaxError as error:
        raise UserError(f"{path}: Jinja syntax error in the {part} at line {error.lineno}: {error.message}") from None
    for node in ast.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem, jinja2.nodes.Name)):
        name = getattr(node, "attr", None) or getattr(node, "name", None)
        if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Const):
            name = node.arg.value
        unsafe = _UNSAFE_VARIABLE if type(node) is jinja2.nodes.Name else _UNSAFE_NAME
        if isinstance(name, str) and unsafe.search(name):
            raise UserError(
                f"{path}: refused: the {part} reaches for {name!r}, which the sandbox forbids "
                "(templates may only read example fields)"
            )
    missing = _missing_helper(ast, environment(style))
    if missing:
        raise UserError(
            f"{path}: the {part} uses {missing}, which flanpipe's template environment does not provide "
            "(see pipeline.tasks.environment.make_environment); edit the template or add the helper there"
        )


def _missing_helper(ast: jinja2.nodes.Template, env: jinja2.Environment) -> str:
    """The first filter, test or function a template calls that `env` lacks ("" when none): found when the file
    is read, not at the first example that reaches it."""
    for node in ast.find_all((jinja2.nodes.Filter, jinja2.nodes.Test)):
        if isinstance(node, jinja2.nodes.Filter) and node.name not in env.filters:
            return f"the filter '{node.name}'"
        if isinstance(node, jinja2.nodes.Test) and node.name not in env.tests:
            return f"the test '{node.name}'"
    # Only now can Jinja list the undeclared names (it compiles, and fails on unknown filters). Data fields are
    # never callable, so calling an undeclared name means a helper the environment lacks (e.g. `enumerate`).
    undeclared = jinja2.meta.find_undeclared_variables(ast)
    for node in ast.find_all(jinja2.nodes.Call):
        if isinstance(node.node, jinja2.nodes.Name) and node.node.name in undeclared:
            return f"the function '{node.node.name}()'"
    return ""


def parse_template(text: str, *, name: str, path: str = "<string>", style: str = "flanpipe") -> Template:
    """Split a template file's text into metadata, input and target, and compile it. A promptsource-style file is
    not split: after the metadata comment, the whole text is the jinja."""
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
    metrics = metadata.get("metrics") or []
    if not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise UserError(f"{path}: metrics must be a list of metric names, e.g. [accuracy]")
    if style == "promptsource":
        if SEPARATOR not in text:
            raise UserError(f"{path}: no '{SEPARATOR}' in the jinja; promptsource templates hold input {SEPARATOR} target")
        parts = [text, ""]
    else:
        parts = _SEPARATOR_LINE.split(text)
    if len(parts) != 2:
        found = len(parts) - 1
        raise UserError(
            f"{path}: expected exactly one line holding only '{SEPARATOR}' between input and target, found {found}"
        )
    input_source, target_source = parts if style == "promptsource" else (part.strip("\n") for part in parts)
    if style == "flanpipe" and (not input_source.strip() or not target_source.strip()):
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
        metrics=tuple(metrics),
        style=style,
    )


def load_template(path: Path, style: str = "flanpipe") -> Template:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read template ({error})") from None
    return parse_template(text, name=path.stem, path=str(path), style=style)


def format_template_file(template: Template) -> str:
    """The file text for a template (the inverse of `parse_template`), used by importers."""
    metadata = {
        key: value
        for key, value in (
            ("description", template.description),
            ("answer_choices", template.answer_choices),
            ("inversion", template.inversion),
            ("metrics", list(template.metrics)),
            ("metadata", template.metadata),
        )
        if value
    }
    header = ""
    if metadata:
        header = "{#\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "#}\n"
    if template.style == "promptsource":
        return f"{header}{template.input_source}"  # the jinja as written: its whitespace is part of the output
    return f"{header}{template.input_source}\n{SEPARATOR}\n{template.target_source}\n"
