"""The rate rules that give each member of a mixture level its share, and the bounds of a mixture file's numbers.

Rates (seqio/FLAN). At each level of a mixture, member i gets weight_i × rule(n_i, ...), normalised over the
level; a sub-mixture's total share is its rate at the parent level, split among its own members by its own
rule. The general rule is weight × min(n × scale, cap) ** (1 / temperature); `STRATEGIES` holds its named cases.
- n counts a task's training *examples*, not examples × templates: as in FLAN, each draw picks one of the task's
  templates uniformly, so adding a phrasing changes the variety, never the task's share.
- A sub-mixture is one member at its parent's level: its n is the sum of its tasks' n, and the parent's rule
  and cap apply to it as to a task (FLAN 2022 gives its sub-mixtures explicit weights instead).
- The cap of a member is the most specific one given: the member's own `cap:` in the mixture file, else the
  task's `cap:` in its task.yaml, else the level's `rate.cap`, else none. (seqio has only the mixture's cap;
  FLAN 2022 sets one per sub-mixture, which is `rate.cap` in each sub-mixture file.)

A rule maps the members' example counts to unnormalised rates; the mixture multiplies by each member's weight.
The `rate:` block of a mixture file passes the rule's keyword parameters, so a rule's signature is also the list
of keys it accepts (a parameter without a default is a required key). A new rule is a function plus a
`STRATEGIES` entry.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.errors import UserError


def examples_proportional(n: np.ndarray, cap: np.ndarray | float = math.inf, scale: float = 1.0,
                          temperature: float = 1.0) -> np.ndarray:
    """seqio's `mixing_rate_num_examples`: min(n × scale, cap) ** (1 / temperature); FLAN uses temperature 1."""
    return np.minimum(n * scale, cap) ** (1.0 / temperature)


def temperature_sampling(n: np.ndarray, temperature: float, cap: np.ndarray | float = math.inf,
                         scale: float = 1.0) -> np.ndarray:
    """The same rule with the temperature required (mT5/XLM-R style): T=1 is proportional, T→∞ is uniform."""
    return examples_proportional(n, cap, scale, temperature)


def uniform(n: np.ndarray) -> np.ndarray:
    """Every member the same rate, whatever its size (weights still multiply)."""
    return np.ones(len(n))


def explicit(n: np.ndarray) -> np.ndarray:
    """Only the weights count; the mixture file must give every member one (FLAN 2022's top level)."""
    return uniform(n)


STRATEGIES: dict[str, Callable[..., np.ndarray]] = {
    "examples_proportional": examples_proportional,
    "temperature": temperature_sampling,
    "uniform": uniform,
    "explicit": explicit,
}

REQUIRED = inspect.Parameter.empty


def rule_parameters(rule: str) -> dict[str, Any]:
    """The `rate:` keys a rule takes, each with its default (`REQUIRED` where it has none)."""
    parameters = inspect.signature(STRATEGIES[rule]).parameters
    return {name: p.default for name, p in parameters.items() if name != "n"}


# Every number a mixture file may hold, with the bound it must meet.
NUMBER_BOUNDS: dict[str, tuple[Callable[[float], bool], str]] = {
    "cap": (lambda v: v >= 1, "a number >= 1 (leave it out for no cap)"),
    "scale": (lambda v: v > 0, "a number > 0"),
    "temperature": (lambda v: v > 0, "a number > 0 (1 is proportional; larger flattens toward uniform)"),
    "weight": (lambda v: v >= 0, "a number >= 0"),
    "share": (lambda v: 0 <= v <= 1, "a share between 0 and 1"),
}


def checked_number(value: Any, bound: str, where: str) -> float:
    check, wanted = NUMBER_BOUNDS[bound]
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads `1e-3` and `1.0e308` (no dot, or no exponent sign) as strings
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not check(value):
        raise UserError(f"{where} must be {wanted}, got {value!r}")
    return float(value)
