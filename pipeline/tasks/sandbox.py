"""The sandbox templates render in: Jinja's immutable sandbox, with limits on size and time.

Templates are other people's code. Jinja's sandbox already refuses attribute escapes (`__class__` & co.), calls
to unsafe methods and ranges over 100,000 items; what it does not bound is how much a template computes:
`{{ 'a' * 10**9 }}`, `{{ 10**100000000 }}`, `{{ x.center(10**9) }}`, a doubling recursive macro, nested loops over
large ranges. So every value an operator, call, macro or filter produces is held to `MAX_TEXT` characters (or
items), integer powers to `MAX_POWER_BITS` bits, and each render to `MAX_RENDER_SECONDS` of wall time. Sizes
are checked before the work where Python would do it in one C call (a product, a power, a width), since no
timer interrupts those; everything else is checked as it returns. A template over a limit is refused with
`RenderLimit`, which names the limit; the renderer adds the template's path. tests/test_templates.py holds the
bombs this was measured on.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment, SecurityError

MAX_TEXT = 1_000_000
"""Longest string (or list) any one operation may produce while rendering; a real prompt is a few thousand."""
MAX_POWER_BITS = 100_000
"""Largest integer a `**` may produce, in bits (10**30000 is fine; 10**100000000 would take minutes)."""
MAX_RENDER_SECONDS = 2.0
"""Wall time one example's render may take (typical: tens of microseconds)."""
# Filters whose integer arguments are widths or counts of what they produce.
_WIDTH_FILTERS = ("center", "indent", "wordwrap", "truncate", "format", "batch", "slice")
_LARGE_NUMBER = re.compile(r"\d{7,}")


class RenderLimit(SecurityError):
    """A template went over a render limit (size or time)."""


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict | set) else 0


def _check_size(value: Any, what: str) -> Any:
    if _size(value) > MAX_TEXT:
        raise RenderLimit(f"{what} produced {_size(value):,} characters or items (the limit is {MAX_TEXT:,})")
    return value


def _check_operands(operator: str, left: Any, right: Any) -> None:
    numbers = (int, float)
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
        if right * math.log2(abs(left)) > MAX_POWER_BITS:
            raise RenderLimit(f"{left} ** {right} would have more than {MAX_POWER_BITS:,} bits")
    if operator == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(count, int) and not isinstance(count, bool) and _size(sequence) * count > MAX_TEXT:
                raise RenderLimit(f"repeating a value {count:,} times would pass {MAX_TEXT:,} characters")
    if operator == "+" and not isinstance(left, numbers) and _size(left) + _size(right) > MAX_TEXT:
        raise RenderLimit(f"joining two values would pass {MAX_TEXT:,} characters")
    if operator == "%" and isinstance(left, str) and _LARGE_NUMBER.search(left):
        raise RenderLimit("a % format with a width or precision of a million or more")


def _check_arguments(name: str, args: tuple, kwargs: dict) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_TEXT:
            raise RenderLimit(f"{name}() with an argument of {value:,} (widths and counts are limited to {MAX_TEXT:,})")
        if isinstance(value, str) and name == "format" and _LARGE_NUMBER.search(value):
            raise RenderLimit("a format with a width or precision of a million or more")


class _Limits:
    """Every operator, call and filter result of a Jinja sandbox held to the size limits (a mixin)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_operands(operator, left, right)
        return _check_size(super().call_binop(context, operator, left, right), f"the operator {operator}")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's names)
        name = getattr(__obj, "__name__", type(__obj).__name__)
        if isinstance(getattr(__obj, "__self__", None), str) or name == "format":
            _check_arguments(name, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        return _check_size(result, f"{name}()")


    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`'{:>30}'.format(x)` and `format_map`: the sandbox hands them out wrapped, from here."""
        wrapped = super().wrap_str_format(value)
        owner = getattr(value, "__self__", None)
        if wrapped is None or not isinstance(owner, str):
            return wrapped
        if _LARGE_NUMBER.search(owner):
            raise RenderLimit("a format with a width or precision of a million or more")

        def limited(*args: Any, **kwargs: Any) -> str:
            return _check_size(wrapped(*args, **kwargs), "str.format")

        return limited


class LimitedSandbox(_Limits, ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with the limits: flanpipe's own templates, which never mutate anything."""


class LocalSandbox(_Limits, SandboxedEnvironment):
    """Jinja's sandbox with the limits, where templates may mutate lists and dicts (`{% set _ = xs.append(x) %}`,
    promptsource's idiom). Attribute walks are refused as in the immutable one; the renderer hands such a
    template copies of the example's containers, so every container it can mutate is its own."""


def limited_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose integer arguments and result are held to the size limits."""

    def limited(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(name, args[1:], kwargs)
        return _check_size(function(*args, **kwargs), f"the {name} filter")

    for attribute in ("jinja_pass_arg",):  # Jinja's pass_context / pass_environment markers
        if hasattr(function, attribute):
            setattr(limited, attribute, getattr(function, attribute))
    return limited


def limit_filters(environment: _Limits) -> None:
    for name in _WIDTH_FILTERS:
        if name in environment.filters:
            environment.filters[name] = limited_filter(name, environment.filters[name])


class _Timeout(BaseException):
    """Raised by the timer inside the template's code; a BaseException, so no `except Exception` swallows it."""


class _Timer:
    armed = False
    """Whether a render is being timed (a stray SIGALRM outside one is ignored)."""


def _expire(signum: int, frame: Any) -> None:
    if _Timer.armed:
        raise _Timeout


@contextlib.contextmanager
def time_limit(seconds: float = MAX_RENDER_SECONDS) -> Iterator[None]:
    """Raise `RenderLimit` when the block runs longer than `seconds` (an interval timer, SIGALRM; the handler is
    installed once, so a render pays two `setitimer` calls). Only the main thread receives signals, so elsewhere
    the block runs unlimited in time (sizes are still limited)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGALRM) is not _expire:
        signal.signal(signal.SIGALRM, _expire)
    _Timer.armed = True
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Timeout:
        raise RenderLimit(f"rendering one example took more than {seconds:g} s (a loop or recursion too large)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _Timer.armed = False
