"""Mixture files (`task_mixtures/*.yaml`, format: the header of `task_mixtures/default.yaml`), read and checked
one at a time, and what the mixer knows of a task. Resolving the nesting is `pipeline.mixing.tree`.

Variants (FLAN's template styles) are independent draws per example, not members: the share of few-shot
prompts, of prompts listing the answer options (tasks with answer choices only) and of input-inversion
templates (tasks that have them only). A mixture file sets any of them; unset ones are inherited from the
enclosing mixture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.files import read_yaml
from pipeline.mixing.rates import REQUIRED, STRATEGIES, checked_number, rule_parameters


@dataclass(frozen=True)
class TaskStats:
    """A task as the mixer sees it (built from a `pipeline.tasks.task.Task` and its train split's size)."""

    name: str
    n: int
    """Number of training examples."""
    templates: tuple[str, ...]
    """Forward template names; each draw picks one uniformly."""
    inversion_templates: tuple[str, ...] = ()
    """Input-inversion template names (given the answer, produce the input)."""
    has_choices: bool = False
    """The task has answer choices, so the options variant applies."""
    cap: int | None = None
    """The task's own examples-proportional cap from task.yaml."""
    held_out: bool = False
    """Evaluated, never trained on (task.yaml `held_out: true`)."""

    def __post_init__(self) -> None:
        if self.n < 0 or not self.templates or (self.cap is not None and self.cap < 1):
            raise ValueError(f"TaskStats {self.name!r}: needs n >= 0, at least one template, cap None or >= 1")


def placeholder_stats(name: str) -> TaskStats:
    """Stands in for a task that is not present (hub tasks, linting): one example, one template."""
    return TaskStats(name, n=1, templates=("template",))


FILE_KEYS = ("rate", "members", "variants", "held_out")
MEMBER_KEYS = ("weight", "cap")
DEFAULT_RULE = "examples_proportional"


@dataclass(frozen=True)
class VariantShares:
    """FLAN's template variants, as shares of a task's draws; each applies only where the task allows it."""

    few_shot: float = 0.0
    """Share of draws rendered few-shot (the rest are zero-shot)."""
    options: float = 1.0
    """Share of draws that list the answer options (tasks with answer choices only)."""
    inversion: float = 0.0
    """Share of draws that use an input-inversion template (tasks that have one only)."""

    def for_task(self, stats: TaskStats) -> VariantShares:
        """The shares that can actually occur for this task."""
        return VariantShares(
            few_shot=self.few_shot,
            options=self.options if stats.has_choices else 0.0,
            inversion=self.inversion if stats.inversion_templates else 0.0,
        )


@dataclass(frozen=True)
class MixtureFile:
    """One mixture file, checked but not resolved: members are still names."""

    path: Path
    rule: str
    rate: dict[str, float]
    """The rule's parameters as the file gives them."""
    members: dict[str, dict[str, float]]
    """Member name -> its overrides (weight, cap)."""
    variants: dict[str, float]
    """Only the variant shares this file sets (the rest are inherited)."""
    held_out: tuple[str, ...]


def read_mixture_file(path: Path) -> MixtureFile:
    """Parse and check one mixture file; every fault names the file and the key."""
    spec = read_yaml(path, "mixture file")
    if not isinstance(spec, dict):
        raise UserError(f"{path}: a mixture file must be a mapping with at least `members:`")
    unknown = sorted(set(spec) - set(FILE_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r}; valid keys: {', '.join(FILE_KEYS)}")
    rule, rate = _read_rate(spec.get("rate", {}), path)
    return MixtureFile(
        path=path,
        rule=rule,
        rate=rate,
        members=_read_members(spec.get("members"), rule, path),
        variants=_read_variants(spec.get("variants", {}), path),
        held_out=_read_held_out(spec.get("held_out", []), path),
    )


def _read_rate(block: Any, path: Path) -> tuple[str, dict[str, float]]:
    if not isinstance(block, dict):
        raise UserError(f"{path}: rate must be a mapping like {{rule: examples_proportional, cap: 3000}}")
    rule = block.get("rule", DEFAULT_RULE)
    if rule not in STRATEGIES:
        raise UserError(f"{path}: rate.rule: unknown rule {rule!r}; valid: {', '.join(STRATEGIES)}")
    accepted = rule_parameters(rule)
    rate = {}
    for key, value in block.items():
        if key == "rule":
            continue
        if key not in accepted:
            takes = ", ".join(accepted) or "no parameters"
            raise UserError(f"{path}: rate.{key} is not used by rule {rule} (it takes: {takes})")
        rate[key] = checked_number(value, key, f"{path}: rate.{key}")
    for key, default in accepted.items():
        if default is REQUIRED and key not in rate:
            raise UserError(f"{path}: rate.{key} is required by rule {rule}")
    return rule, rate


def _read_members(block: Any, rule: str, path: Path) -> dict[str, dict[str, float]]:
    if not block:
        raise UserError(f"{path}: members: empty mixture; list at least one task or mixture, e.g. members: {{rte: {{}}}}")
    if not isinstance(block, dict):
        raise UserError(f"{path}: members must be a mapping of task or mixture names to {{weight: W, cap: C}}")
    members = {}
    for name, overrides in block.items():
        where = f"{path}: members.{name}"
        overrides = {} if overrides is None else overrides
        if not isinstance(name, str) or not isinstance(overrides, dict):
            raise UserError(f"{where} must be a name mapped to {{}} or {{weight: W, cap: C}}, got {overrides!r}")
        for key in overrides:
            if key not in MEMBER_KEYS:
                raise UserError(f"{where}: unknown key {key!r}; valid: {', '.join(MEMBER_KEYS)}")
        if "cap" in overrides and "cap" not in rule_parameters(rule):
            raise UserError(f"{where}.cap: rule {rule} does not use caps; remove it or use examples_proportional")
        if rule == "explicit" and "weight" not in overrides:
            raise UserError(f"{where}: rule explicit needs a weight for every member; add weight: W")
        members[name] = {key: checked_number(value, key, f"{where}.{key}") for key, value in overrides.items()}
    return members


def _read_variants(block: Any, path: Path) -> dict[str, float]:
    valid = ("zero_shot", *(f.name for f in fields(VariantShares)))
    if not isinstance(block, dict):
        raise UserError(f"{path}: variants must be a mapping like {{few_shot: 0.5, options: 0.5, inversion: 0.1}}")
    shares = {}
    for key, value in block.items():
        if key not in valid:
            raise UserError(f"{path}: variants: unknown key {key!r}; valid: {', '.join(valid)}")
        shares[key] = checked_number(value, "share", f"{path}: variants.{key}")
    if "zero_shot" in shares:
        zero_shot = shares.pop("zero_shot")
        if "few_shot" in shares and not math.isclose(zero_shot + shares["few_shot"], 1.0):
            raise UserError(f"{path}: variants.zero_shot and variants.few_shot must sum to 1; give only one of them")
        shares["few_shot"] = 1.0 - zero_shot
    return shares


def _read_held_out(block: Any, path: Path) -> tuple[str, ...]:
    if not isinstance(block, list) or not all(isinstance(name, str) for name in block):
        raise UserError(f"{path}: held_out must be a list of task names, got {block!r}")
    return tuple(block)


def known_mixtures(mixtures_dir: Path) -> list[str]:
    """Every mixture name under a folder (`single/sentiment` for a file in a subfolder)."""
    return sorted(p.relative_to(mixtures_dir).with_suffix("").as_posix() for p in mixtures_dir.rglob("*.yaml"))


def is_mixture_path(name_or_path: str | Path) -> bool:
    return str(name_or_path).endswith((".yaml", ".yml"))


def find_mixture_file(name_or_path: str | Path, mixtures_dir: Path) -> Path:
    """A path to a .yaml file as given, else `mixtures_dir/<name>.yaml` (names may contain `/`)."""
    path = Path(name_or_path)
    if is_mixture_path(name_or_path):
        if not path.is_file():
            raise UserError(f"{path}: mixture file not found")
        return path
    candidate = mixtures_dir / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = ", ".join(known_mixtures(mixtures_dir)) if mixtures_dir.is_dir() else "(no folder)"
        raise UserError(f"unknown mixture {str(name_or_path)!r}: no file {candidate}; known mixtures: {known}")
    return candidate
