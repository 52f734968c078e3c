"""The Jinja environments templates render in, and promptsource's rendering conventions.

flanpipe's own environment is Jinja's immutable sandbox with StrictUndefined; promptsource's (for task folders
with `style: promptsource`) renders a missing field as '' and lets a template mutate its own lists, as
promptsource's environment does. Both hold every value a template computes to the sandbox's limits
(`pipeline.tasks.sandbox`) and provide promptsource's helpers: `choice` and `random` (seeded per example through
the `__rng__` the renderer puts in the context), `most_frequent`, `zip`, and `highlight` in promptsource's.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from pipeline.errors import UserError
from pipeline.tasks.sandbox import LimitedSandbox, LocalSandbox, limit_filters

SEPARATOR = "|||"
STYLES = ("flanpipe", "promptsource")
PROMPTSOURCE_TRUNCATE = 2048
"""promptsource truncates every `{{ }}` to this many characters (its TEXT_VAR_LENGTH)."""
PIPE_PROTECTOR = "3ed2dface8203c4c9dfb1a5dc58e41e0"
"""What promptsource writes in place of a `|||` inside the data while rendering (its `pipe_protector`)."""

class SeededRandom:
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
def _random_filter(context: jinja2.runtime.Context, items: Sequence[Any]) -> Any:
    """Jinja's `random` filter (undefined for an empty list), seeded per example."""
    items = list(items)
    if not items:
        return context.environment.undefined("No random item, sequence was empty.")
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


def _highlight(text: str) -> str:
    """promptsource's `highlight` filter (its web app's colouring)."""
    return "<span style='color: #F08080'>" + text + "</span>"


def make_environment(style: str = "flanpipe") -> LimitedSandbox | LocalSandbox:
    """The Jinja environment templates render in: sandboxed with limits on size and time (`pipeline.tasks.sandbox`),
    no autoescaping (text, not HTML). flanpipe's own is strict and immutable; promptsource's renders a missing
    field as '' and lets templates mutate their own lists, as promptsource's environment does."""
    if style == "promptsource":
        env = LocalSandbox(autoescape=False, keep_trailing_newline=False)
        env.filters["highlight"] = _highlight
    else:
        env = LimitedSandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    limit_filters(env)
    env.filters["choice"] = _choice_filter
    env.filters["random"] = _random_filter  # Jinja's own `random` uses the global random state
    env.filters["shuffle"] = _shuffle_filter
    env.filters["most_frequent"] = _most_frequent
    env.globals["zip"] = zip  # promptsource pairs lists: {% for q, a in zip(questions, answers) %}
    return env


ENVIRONMENT = make_environment()
PROMPTSOURCE_ENVIRONMENT = make_environment("promptsource")


def environment(style: str) -> LimitedSandbox | LocalSandbox:
    return PROMPTSOURCE_ENVIRONMENT if style == "promptsource" else ENVIRONMENT


def promptsource_source(jinja: str) -> str:
    """The source promptsource compiles: every `}}` (wherever it is) becomes `| string | truncate(2048) }}`."""
    return jinja.replace("}}", f" | string | truncate({PROMPTSOURCE_TRUNCATE}) }}}}")


def escape_pipes(example: Mapping[str, Any]) -> dict[str, Any]:
    """promptsource's `_escape_pipe` on the example's own text fields, and a copy of its containers, so a template
    that mutates a list mutates its own."""
    return {key: value.replace(SEPARATOR, PIPE_PROTECTOR) if isinstance(value, str)
            else copy.deepcopy(value) if isinstance(value, list | dict) else value
            for key, value in example.items()}
