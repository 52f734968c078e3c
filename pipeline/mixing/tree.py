"""Resolved mixtures: mixture files walked into a tree of tasks and sub-mixtures, each with its share.

    mixture = load_mixture("default", RegistryStats(tasks, cache_dir), Path("task_mixtures"))
    mixture.shares                                # task name -> target share of the whole mixture

What no single file can check is checked here: unknown names, cycles, tasks listed twice, held-out tasks that are
also trained on. Inspect a mixture with `flanpipe mixture default --steps 100000`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.mixing.mixture_file import (
    MixtureFile,
    TaskStats,
    VariantShares,
    find_mixture_file,
    is_mixture_path,
    known_mixtures,
    placeholder_stats,
    read_mixture_file,
)
from pipeline.mixing.rates import STRATEGIES, rule_parameters
from pipeline.tasks.splits import MAX_BAD_ROW_FRACTION, load_split


@dataclass(frozen=True)
class Node:
    """A member of a resolved mixture tree: a task (leaf) or a mixture (with children)."""

    name: str
    n: int
    """Training examples (a mixture: the sum over its tasks)."""
    weight: float
    cap: float | None
    """The cap its level's rule applied to it (None: no cap, or the rule uses none)."""
    variants: VariantShares
    """For a task, the shares that can occur for it; for a mixture, its resolved shares."""
    rate: float = 1.0
    """Share within its parent (1 for the root)."""
    share: float = 1.0
    """Share of the whole mixture."""
    file: Path | None = None
    """The mixture file (None for a task)."""
    rule: str | None = None
    """The rule among its children (None for a task)."""
    rule_parameters: tuple[tuple[str, float], ...] = ()
    """The `rate:` parameters its file gives the rule."""
    stats: TaskStats | None = None
    """The task (None for a mixture)."""
    children: tuple[Node, ...] = ()

    def walk(self) -> Iterator[Node]:
        """This node and all below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class Mixture:
    """A mixture resolved against the tasks: the tree with every node's share, the held-out tasks."""

    name: str
    root: Node
    held_out: tuple[str, ...]

    @cached_property
    def leaves(self) -> tuple[Node, ...]:
        """The tasks, in file order (depth first)."""
        return tuple(node for node in self.root.walk() if node.stats is not None)

    @property
    def shares(self) -> dict[str, float]:
        """Task name -> target share of the whole mixture."""
        return {leaf.name: leaf.share for leaf in self.leaves}


class RegistryStats(Mapping[str, TaskStats]):
    """The task registry seen as TaskStats, computed on first use: a mixture only loads the data of the
    tasks it names, and a task whose data is not available fails with how to get it."""

    def __init__(self, tasks: Mapping[str, Any], cache_dir: Path, split_seed: int = 0,
                 max_bad_row_fraction: float = MAX_BAD_ROW_FRACTION) -> None:
        self.tasks = tasks
        self.cache_dir = cache_dir
        self.split_seed = split_seed
        self.max_bad_row_fraction = max_bad_row_fraction
        self._stats: dict[str, TaskStats] = {}

    def __getitem__(self, name: str) -> TaskStats:
        if name not in self._stats:
            task = self.tasks[name]
            available, why = task.available(self.cache_dir)
            if not available:
                raise UserError(f"task {name!r}: {why}")
            self._stats[name] = TaskStats(
                name, n=len(load_split(task, "train", self.cache_dir, self.split_seed, self.max_bad_row_fraction)),
                templates=tuple(t.name for t in task.forward_templates),
                inversion_templates=tuple(t.name for t in task.inversion_templates),
                has_choices=task.has_choices, cap=task.cap, held_out=task.held_out,
            )
        return self._stats[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)


def load_mixture(name_or_path: str | Path, tasks: Mapping[str, TaskStats], mixtures_dir: Path) -> Mixture:
    """Resolve a mixture (a name in `mixtures_dir` or a path) against the tasks; bad input raises UserError.

    A member is a task if `tasks` has it, else the mixture file `mixtures_dir/<member>.yaml` (also for a
    mixture given by path). A task may appear only once in the whole tree.
    """
    return _Resolver(tasks, Path(mixtures_dir)).mixture(name_or_path)


def check_mixture_file(name_or_path: str | Path, mixtures_dir: Path) -> Mixture:
    """Check a mixture's structure without its tasks (lint, hub-only mixtures): every file, key, bound,
    nesting and held-out rule. A member that is no mixture file is taken to be a task with one example, so
    shares are real only where the rules ignore sizes (explicit, uniform)."""
    return _Resolver(None, Path(mixtures_dir)).mixture(name_or_path)


class _Resolver:
    """Walks mixture files into a tree of Nodes, checking what no single file can: unknown names, cycles,
    tasks listed twice, held-out tasks that are also trained on."""

    def __init__(self, tasks: Mapping[str, TaskStats] | None, mixtures_dir: Path) -> None:
        self.tasks = tasks
        self.mixtures_dir = mixtures_dir
        self.listed_in: dict[str, Path] = {}  # trained task -> the file whose members list it
        self.held_out_in: dict[str, Path] = {}  # held-out task -> the file that holds it out

    def mixture(self, name_or_path: str | Path) -> Mixture:
        path = find_mixture_file(name_or_path, self.mixtures_dir)
        name = path.stem if is_mixture_path(name_or_path) else str(name_or_path)
        root = self._node(name, path, weight=1.0, cap=None, inherited=VariantShares(), stack=())
        for task, file in self.held_out_in.items():
            if task in self.listed_in:
                raise UserError(f"{file}: held_out: task {task!r} is also trained on (members of "
                                f"{self.listed_in[task]}); remove it from one of them")
            if self.tasks is not None and task not in self.tasks:
                raise UserError(f"{file}: held_out: unknown task {task!r}; known tasks: {', '.join(self.tasks)}")
        return Mixture(name=name, root=_with_shares(root, 1.0), held_out=tuple(self.held_out_in))

    def _node(self, name: str, path: Path, weight: float, cap: float | None, inherited: VariantShares,
              stack: tuple[Path, ...]) -> Node:
        """The node for the mixture file `path`, its members resolved and their rates at its level set."""
        spec = read_mixture_file(path)
        stack = (*stack, path.resolve())
        variants = replace(inherited, **spec.variants)
        for task in spec.held_out:
            self.held_out_in.setdefault(task, path)
        uses_cap = "cap" in rule_parameters(spec.rule)
        children = []
        for member, overrides in spec.members.items():
            where = f"{path}: members.{member}"
            member_weight = overrides.get("weight", 1.0)
            member_file, stats = self._lookup(member, where)
            task_cap = stats.cap if stats is not None else None
            member_cap = overrides.get("cap", task_cap or spec.rate.get("cap")) if uses_cap else None
            if stats is None:
                if member_file.resolve() in stack:
                    chain = " -> ".join(p.name for p in (*stack, member_file))
                    raise UserError(f"{where}: cycle of mixtures {chain}; a mixture cannot contain itself")
                child = self._node(member, member_file, member_weight, member_cap, variants, stack)
            else:
                if member in self.listed_in:
                    raise UserError(f"{where}: task {member!r} is also listed in {self.listed_in[member]}; "
                                    "list each task once in a mixture tree")
                if stats.held_out:
                    raise UserError(f"{where}: task {member!r} is held out (held_out: true in its task.yaml) "
                                    "and is never trained on; remove it from members")
                self.listed_in[member] = path
                child = Node(member, stats.n, member_weight, member_cap, variants.for_task(stats), stats=stats)
            children.append(child)
        rates = _level_rates(spec, children)
        for child, rate in zip(children, rates, strict=True):
            if rate > 0 and child.n == 0:
                raise UserError(f"{path}: members.{child.name}: has no training examples but a rate of "
                                f"{rate:.3g}; give it weight: 0 or remove it")
        return Node(
            name, sum(child.n for child in children), weight, cap, variants, file=path, rule=spec.rule,
            rule_parameters=tuple(spec.rate.items()),
            children=tuple(replace(child, rate=float(rate)) for child, rate in zip(children, rates, strict=True)),
        )

    def _lookup(self, member: str, where: str) -> tuple[Path | None, TaskStats | None]:
        """(mixture file, None) or (None, task stats) for a member name."""
        if self.tasks is not None and member in self.tasks:
            return None, self.tasks[member]
        candidate = self.mixtures_dir / f"{member}.yaml"
        if candidate.is_file():
            return candidate, None
        if self.tasks is None:
            return None, placeholder_stats(member)
        raise UserError(f"{where}: unknown task or mixture {member!r}; known tasks: {', '.join(self.tasks)}; "
                        f"known mixtures: {', '.join(known_mixtures(self.mixtures_dir))}")


def _level_rates(spec: MixtureFile, children: list[Node]) -> np.ndarray:
    """The members' rates at one level under the file's rule, normalised to sum to 1."""
    parameters = dict(spec.rate)
    if "cap" in rule_parameters(spec.rule):
        parameters["cap"] = np.array([math.inf if c.cap is None else c.cap for c in children])
    sizes = np.array([child.n for child in children], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        rates = np.array([child.weight for child in children]) * STRATEGIES[spec.rule](sizes, **parameters)
        total = rates.sum()
    if not (np.all(np.isfinite(rates)) and np.isfinite(total)):
        raise UserError(f"{spec.path}: members: the rates overflow (a weight, size ** (1 / temperature) or their sum "
                        "is not a finite number); use a larger rate.temperature or smaller weights")
    if not total > 0:
        raise UserError(f"{spec.path}: members: every member's rate is 0 (zero weights or no examples); "
                        "give at least one member a positive weight and some training examples")
    return rates / total


def _with_shares(node: Node, share: float) -> Node:
    children = tuple(_with_shares(child, share * child.rate) for child in node.children)
    return replace(node, share=share, children=children)
