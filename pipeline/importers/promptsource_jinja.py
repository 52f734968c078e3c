"""Splitting a promptsource template's jinja at its one `|||` into input and target sources, and the checks
that make a template fail at import rather than at render time (see `pipeline.importers.promptsource`).

promptsource writes `|||` inline and splits the *rendered* text; our files split the *source*. The jinja is
scanned into text, `{{ }}`, `{% %}`, `{# #}` and raw segments; the one `|||` must sit in text. `{% if %}`
blocks open at the split are closed at the end of the input and reopened at the start of the target, and the
input's statement tags are replayed in the target when it reads a variable they set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jinja2
import jinja2.meta
import jinja2.nodes

from pipeline.errors import UserError
from pipeline.tasks.templates import ENVIRONMENT, SEPARATOR, check_template_source

RANDOM_FILTERS = frozenset({"choice", "random", "shuffle"})
_ENDRAW = re.compile(r"\{%[-+]?\s*endraw\s*[-+]?%\}")
_TAG_ENDS = {"{{": "}}", "{%": "%}", "{#": "#}"}
_TAG_START = re.compile(r"\{[{%#]")


@dataclass(frozen=True)
class _Segment:
    kind: str  # "data", "{{", "{%", "{#" or "raw"
    start: int
    end: int
    keyword: str = ""  # first word of a {% %} tag


def split_promptsource_jinja(jinja: str, where: str) -> tuple[str, str]:
    """Split promptsource's jinja at its one `|||` into (input, target) sources that each compile on their own."""
    check_jinja(jinja, where)
    segments = scan_tags(jinja, where)
    found = [
        segment.start + offset
        for segment in segments
        if segment.kind == "data"
        for offset in _occurrences(jinja[segment.start : segment.end], SEPARATOR)
    ]
    if len(found) != 1:
        raise UserError(
            f"{where}: expected exactly one '{SEPARATOR}' between input and target outside {{{{ }}}}/{{% %}} tags, "
            f"found {len(found)}; edit the template's jinja so it has one"
        )
    position = found[0]
    input_text, target_text = jinja[:position], jinja[position + len(SEPARATOR) :]
    if not input_text.strip() or not target_text.strip():
        side = "input" if not input_text.strip() else "target"
        raise UserError(f"{where}: the {side} side of '{SEPARATOR}' is empty; edit the template's jinja")
    before = [s for s in segments if s.end <= position or (s.kind == "data" and s.start <= position)]
    open_blocks = _open_blocks(jinja, before, where)
    closers = "".join("{% endif %}" for _ in open_blocks)
    reopen = "".join(tag for block in open_blocks for tag in block)
    prelude = reopen
    if open_blocks or "{%" in input_text:
        assigned = _assigned_names(_statement_tags(jinja, before) + closers, where)
        needed = undeclared_names(reopen + target_text, where) & assigned
        if needed:
            prelude = _statement_tags(jinja, before)
            why = f"reads {', '.join(sorted(needed))}, set before '{SEPARATOR}'"
            _refuse_randomness(prelude + closers, where, why)
        elif reopen:
            _refuse_randomness(reopen + closers, where, f"is inside an {{% if %}} around '{SEPARATOR}'")
    return (input_text + closers).strip(), (prelude + target_text).strip()


def _occurrences(text: str, needle: str) -> list[int]:
    """Non-overlapping offsets, as str.split counts them."""
    offsets, start = [], text.find(needle)
    while start != -1:
        offsets.append(start)
        start = text.find(needle, start + len(needle))
    return offsets


def scan_tags(source: str, where: str) -> list[_Segment]:
    """Cut Jinja source into text and tags, the way Jinja's lexer does (strings and brackets inside tags)."""
    segments: list[_Segment] = []
    index, length = 0, len(source)
    while index < length:
        match = _TAG_START.search(source, index)
        start, opener = (match.start(), match.group()) if match else (length, "")
        if start > index:
            segments.append(_Segment("data", index, start))
        if not opener:
            break
        end = _tag_end(source, start, opener, where)
        keyword = ""
        if opener == "{%":
            words = source[start + 2 : end - 2].strip("-+ \t\n").split()
            keyword = words[0] if words else ""
        segments.append(_Segment(opener, start, end, keyword))
        index = end
        if keyword == "raw":
            match = _ENDRAW.search(source, end)
            if match is None:
                raise UserError(f"{where}: {{% raw %}} without {{% endraw %}}")
            segments.append(_Segment("raw", end, match.end()))
            index = match.end()
    return segments


def _tag_end(source: str, start: int, opener: str, where: str) -> int:
    closer = _TAG_ENDS[opener]
    if opener == "{#":
        end = source.find(closer, start + 2)
        if end == -1:
            raise UserError(f"{where}: unterminated {{# comment")
        return end + 2
    index, depth, quote = start + 2, 0, ""
    while index < len(source):
        char = source[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif depth == 0 and source.startswith(closer, index):
            return index + 2
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
        index += 1
    raise UserError(f"{where}: unterminated {opener} tag")


def _open_blocks(source: str, segments: list[_Segment], where: str) -> list[list[str]]:
    """The blocks still open where `|||` sits: for each, its opening tag and any elif/else tags so far."""
    stack: list[tuple[str, list[str]]] = []
    for segment in segments:
        if segment.kind != "{%":
            continue
        keyword, tag = segment.keyword, source[segment.start : segment.end]
        if keyword.startswith("end") and stack:
            stack.pop()
        elif keyword in ("elif", "else") and stack:
            stack[-1][1].append(tag)
        elif _opens_block(keyword, tag):
            stack.append((keyword, [tag]))
    for keyword, _ in stack:
        if keyword != "if":
            raise UserError(
                f"{where}: '{SEPARATOR}' sits inside a {{% {keyword} %}} block; only {{% if %}} blocks can be split "
                f"into input and target; move '{SEPARATOR}' outside it"
            )
    return [tags for _, tags in stack]


def _opens_block(keyword: str, tag: str) -> bool:
    if keyword == "set":
        return "=" not in re.sub(r"(['\"]).*?\1", "", tag)  # `{% set x %}...{% endset %}` is a block
    return keyword in ("if", "for", "macro", "call", "filter", "with", "block", "autoescape", "trans")


def _statement_tags(source: str, segments: list[_Segment]) -> str:
    """The input's `{% %}` tags without its text, block-sets and macros whole: replays its assignments."""
    parts: list[str] = []
    skip_until = -1
    for index, segment in enumerate(segments):
        if segment.start < skip_until or segment.kind != "{%":
            continue
        tag = source[segment.start : segment.end]
        if segment.keyword == "raw":  # its text and {% endraw %} are one "raw" segment, skipped with the text
            continue
        if segment.keyword in ("macro", "set") and _opens_block(segment.keyword, tag):
            end = _matching_end(segments[index:], segment.keyword)
            if end is not None:
                parts.append(source[segment.start : end])
                skip_until = end
                continue
        parts.append(tag)
    return "".join(parts)


def _matching_end(segments: list[_Segment], keyword: str) -> int | None:
    depth = 0
    for segment in segments:
        if segment.kind == "{%" and segment.keyword in (keyword, f"end{keyword}"):
            depth += 1 if segment.keyword == keyword else -1
            if depth == 0:
                return segment.end
    return None


def _parse(source: str, where: str) -> jinja2.nodes.Template:
    try:
        return ENVIRONMENT.parse(source)
    except jinja2.TemplateSyntaxError as error:
        raise UserError(
            f"{where}: the jinja cannot be split at '{SEPARATOR}' ({error.message}); move '{SEPARATOR}' to the top level"
        ) from None


def _assigned_names(source: str, where: str) -> set[str]:
    names: set[str] = set()
    for node in _parse(source, where).find_all((jinja2.nodes.Assign, jinja2.nodes.AssignBlock, jinja2.nodes.Macro)):
        if isinstance(node, jinja2.nodes.Macro):
            names.add(node.name)
        else:
            names |= {n.name for n in node.target.find_all((jinja2.nodes.Name, jinja2.nodes.NSRef))}
            if isinstance(node.target, jinja2.nodes.Name | jinja2.nodes.NSRef):
                names.add(node.target.name)
    return names


def undeclared_names(source: str, where: str) -> set[str]:
    return set(jinja2.meta.find_undeclared_variables(_parse(source, where)))


def _refuse_randomness(source: str, where: str, why: str) -> None:
    for node in _parse(source, where).find_all(jinja2.nodes.Filter):
        if node.name in RANDOM_FILTERS:
            raise UserError(
                f"{where}: the target {why}, which draws with the '{node.name}' filter; flanpipe renders input and "
                f"target separately, so the two draws would differ; edit the template to draw in one side only"
            )


def check_jinja(source: str, where: str) -> None:
    """Syntax, the sandbox's refusals, and helpers our environment lacks: errors at import, not at render."""
    try:
        ast = ENVIRONMENT.parse(source)
    except jinja2.TemplateSyntaxError as error:
        raise UserError(f"{where}: Jinja syntax error at line {error.lineno}: {error.message}") from None
    check_template_source(source, where, "jinja")
    missing = ""
    for node in ast.find_all((jinja2.nodes.Filter, jinja2.nodes.Test)):
        if isinstance(node, jinja2.nodes.Filter) and node.name not in ENVIRONMENT.filters:
            missing = f"the filter '{node.name}'"
        elif isinstance(node, jinja2.nodes.Test) and node.name not in ENVIRONMENT.tests:
            missing = f"the test '{node.name}'"
        if missing:
            break
    else:  # only now can Jinja work out the undeclared names (it compiles, and fails on unknown filters)
        undeclared = jinja2.meta.find_undeclared_variables(ast)  # leaves out the environment's globals
        for node in ast.find_all(jinja2.nodes.Call):
            # Data fields are never callable, so calling an undeclared name means a helper we lack (e.g. zip).
            name = node.node.name if isinstance(node.node, jinja2.nodes.Name) else ""
            if name in undeclared:
                missing = f"the function '{name}()'"
                break
    if missing:
        raise UserError(
            f"{where}: uses {missing}, which flanpipe's template environment does not provide "
            "(see pipeline.tasks.templates.make_environment); edit the template or add the helper there"
        )
