"""Synthetic dataset rows for a promptsource template, built from how its jinja uses each variable.

promptsource's templates read hub datasets we cannot download here. To render every one of them, each variable
the template reads gets a value of the shape its use asks for: a string for `x.split()` or `x | lower`, a
number for `x == 1` or `answer_choices[x]`, a list for `for a in x` or `x | join`, a mapping for `x.text` or
`x['text']` (with those keys, shaped the same way, recursively). `rows` gives a few variants (indexes 0, 1, 2;
lists of three, two or no items; one string holding `|||`, one longer than promptsource's 2,048-character
truncation), so both sides of an `{% if %}` and promptsource's escaping and truncation are exercised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes

STRING_METHODS = {"split", "strip", "lower", "upper", "replace", "capitalize", "title", "startswith", "endswith",
                  "rstrip", "lstrip", "find", "format", "rsplit", "splitlines", "isdigit", "isupper", "islower"}
DICT_METHODS = {"keys", "items", "values", "get"}
LIST_METHODS = {"append", "extend", "insert", "pop", "remove"}
LIST_FILTERS = {"join", "length", "count", "first", "last", "random", "choice", "sum", "unique", "sort", "list",
                "most_frequent", "batch", "slice", "reject", "select", "rejectattr", "min", "max"}
RECORD_LIST_FILTERS = {"map", "selectattr"}
STRING_FILTERS = {"lower", "upper", "replace", "trim", "title", "capitalize", "truncate", "wordcount", "striptags",
                  "center", "indent", "wordwrap", "urlize", "e", "escape"}
NUMBER_FILTERS = {"round", "abs", "float", "filesizeformat"}
ENVIRONMENT = jinja2.Environment()
ENVIRONMENT.filters.update(dict.fromkeys(("choice", "most_frequent", "highlight"), lambda value: value))  # promptsource's, for parsing only


@dataclass
class Shape:
    """What a variable's uses say it is; `kind` is str, int, list or dict (str when nothing says otherwise)."""

    kind: str = ""
    keys: dict[Any, Shape] = field(default_factory=dict)
    item: Shape | None = None
    equals: list[Any] = field(default_factory=list)
    contains: list[str] = field(default_factory=list)
    """Text the string must hold (`x.index("<")`)."""
    min_items: int = 0
    indexed_only: bool = False
    """Only `x[0]` says it is a list so far (a string would do as well)."""
    numeric: bool = False
    """A string that `| int` or `| float` reads as a number."""

    def want(self, kind: str) -> Shape:
        # A later, stronger use wins: a list or dict beats str or int (`x | length` then `x[0].text`).
        rank = {"": 0, "str": 1, "int": 2, "list": 3, "dict": 4}
        if rank[kind] > rank[self.kind] and not (self.kind == "dict" and kind == "list"):
            self.kind = kind
        elif kind == "str" and self.kind == "list" and self.indexed_only:  # `x[-2]` then `x.split()`: a string
            self.kind = "str"
        self.indexed_only = self.indexed_only and kind == "list"
        return self

    def element(self) -> Shape:
        self.want("list")
        self.indexed_only = False
        if self.item is None:
            self.item = Shape()
        return self.item

    def key(self, name: Any) -> Shape:
        if isinstance(name, int) and self.kind == "str":  # a character
            return Shape()
        if isinstance(name, int) and self.kind != "dict":
            self.min_items = max(self.min_items, name + 1 if name >= 0 else -name)
            fresh = self.kind == ""
            element = self.element()
            self.indexed_only = fresh or self.indexed_only
            return element
        self.want("dict")
        return self.keys.setdefault(name, Shape())


class _Inference:
    def __init__(self) -> None:
        self.shapes: dict[str, Shape] = {}
        self.globals: dict[str, Shape] = {}  # `{% set answer = answers | choice %}` outside loops
        self.members: list[tuple[Shape, str]] = []  # (list, variable): `list.index(variable)` needs a member
        self.aliases: list[dict[str, Shape]] = []

    def shape_of(self, node: jinja2.nodes.Node) -> Shape | None:
        """The shape an expression refers to, when it is a variable or a path into one."""
        if isinstance(node, jinja2.nodes.Name):
            for scope in [self.globals, *self.aliases][::-1]:
                if node.name in scope:
                    return scope[node.name]
            return self.shapes.get(node.name)
        if isinstance(node, jinja2.nodes.Getattr):
            owner = self.shape_of(node.node)
            if owner is None:
                return None
            if node.attr in STRING_METHODS:
                owner.want("str")
                return None
            if node.attr in DICT_METHODS:
                owner.want("dict")
                return None
            if node.attr in ("index", "count"):  # both strings and lists have them: the call's argument decides
                return None
            if node.attr in LIST_METHODS:
                owner.element()
                return None
            return owner.key(node.attr)
        if isinstance(node, jinja2.nodes.Getitem):
            owner = self.shape_of(node.node)
            if owner is None:
                return None
            if isinstance(node.arg, jinja2.nodes.Const):
                return owner.key(node.arg.value)
            if isinstance(node.arg, jinja2.nodes.Slice):  # strings and lists both slice; the bounds are numbers
                for bound in (node.arg.start, node.arg.stop, node.arg.step):
                    shape = self.shape_of(bound) if bound is not None else None
                    if shape is not None:
                        shape.want("int")
                return None
            index = self.shape_of(node.arg)
            if index is not None:
                index.want("int")
            return owner.element()
        if isinstance(node, jinja2.nodes.Filter) and node.name in ("list", "sort", "unique", "reverse") and node.node:
            return self.shape_of(node.node)
        return None

    def visit(self, node: jinja2.nodes.Node) -> None:
        if isinstance(node, jinja2.nodes.For):
            self.visit(node.iter)
            shape = self.shape_of(node.iter)
            scope: dict[str, Shape] = {}
            call = node.iter if isinstance(node.iter, jinja2.nodes.Call) else None
            if call is not None and isinstance(call.node, jinja2.nodes.Getattr) and call.node.attr == "items":
                owner = self.shape_of(call.node.node)
                if owner is not None:
                    owner.want("dict")
            if isinstance(node.iter, jinja2.nodes.Call) and isinstance(node.iter.node, jinja2.nodes.Name) \
                    and node.iter.node.name == "zip" and isinstance(node.target, jinja2.nodes.Tuple):
                for argument, target in zip(node.iter.args, node.target.items, strict=False):
                    inner = self.shape_of(argument)
                    if inner is not None and isinstance(target, jinja2.nodes.Name):
                        scope[target.name] = inner.element()
            elif shape is not None:
                element = shape.element()
                if isinstance(node.target, jinja2.nodes.Name):
                    scope[node.target.name] = element
            self.aliases.append(scope)
            for child in [*node.body, *node.else_]:
                self.visit(child)
            if node.test is not None:
                self.visit(node.test)
            self.aliases.pop()
            return
        if isinstance(node, jinja2.nodes.Call) and isinstance(node.node, jinja2.nodes.Getattr) \
                and node.node.attr == "index" and node.args and isinstance(node.args[0], jinja2.nodes.Name):
            owner = self.shape_of(node.node.node)
            if owner is not None:
                owner.element()
                self.members.append((owner, node.args[0].name))
        if isinstance(node, jinja2.nodes.Call) and isinstance(node.node, jinja2.nodes.Getattr) \
                and node.node.attr in ("index", "find", "split") and node.args \
                and isinstance(node.args[0], jinja2.nodes.Const) and isinstance(node.args[0].value, str):
            owner = self.shape_of(node.node.node)
            if owner is not None:
                owner.want("str")
                owner.contains.append(node.args[0].value)
        if isinstance(node, jinja2.nodes.Assign) and isinstance(node.target, jinja2.nodes.Name):
            self.visit(node.node)
            source = node.node
            if isinstance(source, jinja2.nodes.Filter) and source.name in ("choice", "random", "first", "last") \
                    and source.node is not None:
                owner = self.shape_of(source.node)
                alias = owner.element() if owner is not None else None
            else:
                alias = self.shape_of(source)
            if alias is not None:
                (self.aliases[-1] if self.aliases else self.globals)[node.target.name] = alias
            return
        if isinstance(node, jinja2.nodes.Filter) and node.node is not None:
            shape = self.shape_of(node.node)
            if shape is not None:
                if node.name in RECORD_LIST_FILTERS:
                    attribute = next((k.value.value for k in node.kwargs if k.key == "attribute"
                                      and isinstance(k.value, jinja2.nodes.Const)), None)
                    if attribute is not None:
                        shape.element().key(attribute)
                    else:
                        shape.element()
                elif node.name in LIST_FILTERS:
                    shape.element()
                elif node.name in STRING_FILTERS:
                    shape.want("str")
                elif node.name in NUMBER_FILTERS:
                    shape.want("int")
                elif node.name in ("int", "float") and shape.kind in ("", "str"):
                    shape.numeric = True
                elif node.name in ("dictsort",):
                    shape.want("dict")
        if isinstance(node, jinja2.nodes.Compare):
            operands = [node.expr, *(op.expr for op in node.ops)]
            for left, right in zip(operands, operands[1:], strict=False):
                for one, other in ((left, right), (right, left)):
                    shape = self.shape_of(one)
                    if shape is not None and isinstance(other, jinja2.nodes.Const):
                        value = other.value
                        if isinstance(value, bool) or value is None:
                            continue
                        shape.want("int" if isinstance(value, int | float) else "str")
                        shape.equals.append(value)
            for op in node.ops:
                if op.op in ("in", "notin"):
                    container = self.shape_of(op.expr)
                    if container is not None and container.kind not in ("str", "dict"):
                        container.element()
        if isinstance(node, jinja2.nodes.BinExpr) and not isinstance(node, jinja2.nodes.Concat):
            for side, other in ((node.left, node.right), (node.right, node.left)):
                shape = self.shape_of(side)
                if shape is not None and (node.operator in ("-", "/", "//", "**") or (
                        isinstance(other, jinja2.nodes.Const) and isinstance(other.value, int | float))):
                    shape.want("int")
        self.shape_of(node) if isinstance(node, jinja2.nodes.Getattr | jinja2.nodes.Getitem) else None
        for child in node.iter_child_nodes():
            self.visit(child)


def infer_shapes(sources: list[str]) -> tuple[dict[str, Shape], list[tuple[Shape, str]]]:
    """Each undeclared variable of the sources (jinja and answer choices) with the shape its uses ask for, and
    the (list, variable) pairs where the variable must be one of the list's items."""
    inference = _Inference()
    asts = [ENVIRONMENT.parse(source) for source in sources]
    for ast in asts:
        for name in jinja2.meta.find_undeclared_variables(ast):
            inference.shapes.setdefault(name, Shape())
    inference.shapes.pop("answer_choices", None)
    inference.shapes.pop("zip", None)
    for ast in asts:
        inference.visit(ast)
    return inference.shapes, inference.members


def value(shape: Shape, name: str, variant: int, made: dict[int, Any] | None = None) -> Any:
    """A value of the shape; `variant` picks which (see the module docstring). `made` records each shape's value."""
    made = {} if made is None else made
    made[id(shape)] = _value(shape, name, variant, made)
    return made[id(shape)]


def _value(shape: Shape, name: str, variant: int, made: dict[int, Any]) -> Any:
    if shape.kind == "int":
        numbers = [v for v in shape.equals if isinstance(v, int | float)]
        return ([0, 1, 2] if not numbers else [*numbers, 0])[variant % (3 if not numbers else len(numbers) + 1)]
    if shape.kind == "list":
        count = max((5, 2, 0)[variant % 3], shape.min_items)
        return [value(shape.item or Shape(), f"{name}{i}", variant + i, made) for i in range(count)]
    if shape.kind == "dict":
        return {key: value(inner, f"{name}_{key}", variant, made) for key, inner in shape.keys.items()}
    if shape.numeric:
        return str(variant)
    strings = [v for v in shape.equals if isinstance(v, str)]
    if strings and variant < len(strings):
        return strings[variant]
    text = f"{name} text number {variant}, with words. And a second sentence" + "".join(
        f" {part}x" for part in shape.contains)
    if variant == 1:
        text += " holding a ||| separator"
    if variant == 2:
        text = " ".join([text] * 60)  # over promptsource's 2,048-character truncation
    return text


def rows(sources: list[str], count: int = 3) -> list[dict[str, Any]]:
    shapes, members = infer_shapes(sources)
    result = []
    for variant in range(count):
        made: dict[int, Any] = {}
        row = {name: value(shape, name, variant, made) for name, shape in sorted(shapes.items())}
        for owner, name in members:
            items = made.get(id(owner))
            if name in row and isinstance(items, list) and items:
                row[name] = items[variant % len(items)]
        result.append(row)
    return result
