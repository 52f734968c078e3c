"""The MixtureSampler: which (task, example, template, variant) fills each position of each global batch.

    sampler = MixtureSampler(mixture, seed=0)
    draws = sampler.next_batch(64)               # the same global batch on every rank ...
    mine = draws.for_rank(rank, world_size)      # ... and each rank takes its contiguous slice
    checkpoint["sampler"] = sampler.state_dict() # JSON; load_state_dict() continues the identical sequence

Sampling. The sampler is a pure function of (seed, step) plus a small state: the PCG64 generator's state and,
per task, an epoch and a cursor into that epoch's permutation of the task's examples. A permutation is seeded
from (seed, task, epoch) by a stable hash, so no example repeats within a task's epoch and the order of a
task's examples does not depend on the mixture, the batch size or the process. Drawing is vectorised per
global batch (numpy), at millions of draws per second. Each task's current-epoch permutation is held in
memory (4 bytes per training example), built when the sampler is created and when the task's epoch ends. Speed: `python bench/bench_mixing.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from pipeline.errors import UserError
from pipeline.files import stable_seed
from pipeline.mixing.tree import Mixture


class Draw(NamedTuple):
    """One position of a batch, by name (DrawBatch holds the same as arrays)."""

    task: str
    example: int
    template: str
    few_shot: bool
    options: bool
    inverted: bool


BATCH_ARRAYS = ("task", "example", "template", "few_shot", "options", "inverted")


@dataclass  # not frozen: a frozen dataclass's __init__ alone would cost a tenth of a small batch's draw time
class DrawBatch:
    """A batch of draws as parallel arrays; `task` indexes `task_names`, `template` indexes `template_names`."""

    task: np.ndarray
    example: np.ndarray
    """Index into the task's train split."""
    template: np.ndarray
    few_shot: np.ndarray
    options: np.ndarray
    inverted: np.ndarray
    """The template is an input-inversion template."""
    task_names: tuple[str, ...]
    template_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.task)

    def for_rank(self, rank: int, world_size: int) -> DrawBatch:
        """This rank's contiguous slice of a global batch (the global batch is drawn identically on all ranks)."""
        size, remainder = divmod(len(self), world_size)
        if remainder:
            raise UserError(f"a global batch of {len(self)} does not split evenly over {world_size} processes; "
                            "make the global batch size a multiple of the number of processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        return replace(self, **{name: getattr(self, name)[rank * size:(rank + 1) * size] for name in BATCH_ARRAYS})

    def draws(self) -> list[Draw]:
        """One Draw per position, by name (a Python loop: for inspection, not for the training loop)."""
        return [
            Draw(self.task_names[t], int(e), self.template_names[p], bool(f), bool(o), bool(i))
            for t, e, p, f, o, i in zip(*(getattr(self, name) for name in BATCH_ARRAYS), strict=True)
        ]


STATE_FORMAT = 1


class MixtureSampler:
    """Draws (task, example, template, variant) for each position of each global batch; see the module doc.

    `homogeneous=True` draws one task per batch (every position from the same task) instead of one per
    position. `counts[k, inverted, few_shot, options]` counts what was drawn, for reports and trackers.
    """

    def __init__(self, mixture: Mixture, seed: int = 0, homogeneous: bool = False) -> None:
        self.mixture = mixture
        self.seed = seed
        self.homogeneous = homogeneous
        self.step = 0
        leaves = mixture.leaves
        self.task_names = tuple(leaf.name for leaf in leaves)
        self._cumulative = np.cumsum([leaf.share for leaf in leaves])
        self._cumulative /= self._cumulative[-1]  # exactly 1.0 at the end, so a uniform in [0, 1) picks a task
        self._few_shot = np.array([leaf.variants.few_shot for leaf in leaves])
        self._options = np.array([leaf.variants.options for leaf in leaves])
        self._inversion = np.array([leaf.variants.inversion for leaf in leaves])
        # All template names in one table; row 2k + inverted of the offset/count tables locates task k's
        # forward (inverted=0) or inversion (inverted=1) templates in it.
        names: list[str] = []
        offsets, counts = [], []
        for leaf in leaves:
            for group in (leaf.stats.templates, leaf.stats.inversion_templates):
                offsets.append(len(names))
                counts.append(len(group))
                names.extend(group)
        self.template_names = tuple(names)
        self._template_offset, self._template_count = np.array(offsets), np.array(counts)
        self._generator = np.random.Generator(np.random.PCG64(stable_seed(seed, "mixture sampler")))
        self.counts = np.zeros((len(leaves), 2, 2, 2), dtype=np.int64)
        # Per task: its size, epoch, cursor, and its current epoch's permutation, all tasks' permutations end to
        # end in one array (task k's at _starts[k]), so that a batch's examples are one gather.
        self._sizes = np.array([leaf.n for leaf in leaves], dtype=np.int64)
        self._epochs = np.zeros(len(leaves), dtype=np.int64)
        self._cursors = np.zeros(len(leaves), dtype=np.int64)
        self._starts = np.cumsum(self._sizes) - self._sizes
        self._epoch_ends = np.maximum(self._sizes, 1)  # (a task without examples is never drawn)
        self._permutations = np.empty(int(self._sizes.sum()), dtype=np.int32)
        self._build_permutations()

    # -- drawing --

    def next_batch(self, size: int) -> DrawBatch:
        """The next global batch of `size` draws (call with the same size on every rank)."""
        uniforms = self._generator.random((5, size))
        picks = uniforms[0, :1] if self.homogeneous else uniforms[0]
        tasks = np.searchsorted(self._cumulative, picks, side="right")
        if self.homogeneous:
            tasks = np.repeat(tasks, size)
        inverted = uniforms[1] < self._inversion[tasks]
        few_shot = uniforms[3] < self._few_shot[tasks]
        options = uniforms[4] < self._options[tasks]
        kind = tasks * 2 + inverted
        template = self._template_offset[kind] + (uniforms[2] * self._template_count[kind]).astype(np.int64)
        cells = kind * 4 + few_shot * 2 + options  # index into counts viewed as [task, inverted, few_shot, options]
        self.counts += np.bincount(cells, minlength=self.counts.size).reshape(self.counts.shape)
        self.step += 1
        return DrawBatch(tasks, self._examples(tasks), template, few_shot, options, inverted,
                     self.task_names, self.template_names)

    def draw(self, count: int, batch_size: int = 128) -> None:
        """Advance by `count` draws in global batches of `batch_size`, counting them (for reports)."""
        while count > 0:
            self.next_batch(min(batch_size, count))
            count -= batch_size

    def _examples(self, tasks: np.ndarray) -> np.ndarray:
        """Example indices for the positions of a batch: each task's next examples, in position order."""
        per_task = np.bincount(tasks, minlength=len(self.task_names))
        order = np.argsort(tasks, kind="stable")  # positions grouped by task, in position order within a task
        if np.any(self._cursors + per_task >= self._epoch_ends):
            return self._examples_across_epochs(per_task, order)
        # The common case, vectorised: no task reaches the end of its epoch in this batch. Position i of the
        # grouped order is task k's draw number i - first[k] in this batch, so it takes permutation entry
        # _starts[k] + _cursors[k] + i - first[k].
        first = np.cumsum(per_task) - per_task
        examples = np.empty(len(tasks), dtype=np.int64)
        examples[order] = self._permutations[(self._starts + self._cursors - first)[tasks[order]]
                                             + np.arange(len(tasks))]
        self._cursors += per_task
        return examples

    def _examples_across_epochs(self, per_task: np.ndarray, order: np.ndarray) -> np.ndarray:
        """The same as the vectorised case, task by task, for batches where some task ends an epoch."""
        examples = np.empty(len(order), dtype=np.int64)
        start = 0
        for k in np.flatnonzero(per_task):
            stop = start + per_task[k]
            examples[order[start:stop]] = self._take(k, int(per_task[k]))
            start = stop
        return examples

    def _take(self, k: int, count: int) -> np.ndarray:
        """The next `count` examples of task k, moving to a fresh permutation at the end of each epoch."""
        pieces = []
        while count:
            cursor = int(self._cursors[k])
            taken = min(count, int(self._sizes[k]) - cursor)
            pieces.append(self._permutation(k)[cursor:cursor + taken].copy())  # the next epoch reuses the memory
            count -= taken
            self._cursors[k] = cursor + taken
            if self._cursors[k] == self._sizes[k]:
                self._epochs[k] += 1
                self._cursors[k] = 0
                self._build_permutations([k])
        return np.concatenate(pieces)

    def _permutation(self, k: int) -> np.ndarray:
        return self._permutations[self._starts[k]:self._starts[k] + self._sizes[k]]

    def _build_permutations(self, tasks: Iterable[int] | None = None) -> None:
        """Write the current epoch's permutation of each task (all by default), seeded from (seed, task, epoch)."""
        for k in range(len(self.task_names)) if tasks is None else tasks:
            seed = stable_seed(self.seed, self.task_names[k], int(self._epochs[k]))
            self._permutation(k)[:] = np.random.Generator(np.random.PCG64(seed)).permutation(int(self._sizes[k]))

    # -- realized proportions --

    @property
    def draws(self) -> int:
        return int(self.counts.sum())

    def realized_shares(self) -> dict[str, float]:
        """Task name -> share of all draws so far (what the trainer logs beside `mixture.shares`)."""
        per_task = self.counts.reshape(len(self.task_names), -1).sum(axis=1)
        return dict(zip(self.task_names, (per_task / max(1, per_task.sum())).tolist(), strict=True))

    # -- checkpoints --

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the identical sequence, as JSON-serialisable values."""
        return {
            "format": STATE_FORMAT,
            "seed": self.seed,
            "homogeneous": self.homogeneous,
            "step": self.step,
            "generator": self._generator.bit_generator.state,
            "tasks": {
                name: {"n": int(self._sizes[k]), "epoch": int(self._epochs[k]), "cursor": int(self._cursors[k]),
                       "counts": self.counts[k].ravel().tolist()}
                for k, name in enumerate(self.task_names)
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()` output; refuses a state saved for other tasks, sizes or settings."""
        expected = {"format": STATE_FORMAT, "seed": self.seed, "homogeneous": self.homogeneous,
                    "tasks": {name: int(self._sizes[k]) for k, name in enumerate(self.task_names)}}
        saved = {key: state.get(key) for key in ("format", "seed", "homogeneous")}
        saved["tasks"] = {name: task["n"] for name, task in state.get("tasks", {}).items()}
        for key, value in expected.items():
            if saved[key] != value:
                raise UserError(f"sampler state: saved {key} {saved[key]!r} differs from this run's {value!r}; "
                                "resume with the same mixture, data and seed, or start a new run")
        self.step = int(state["step"])
        self._generator.bit_generator.state = state["generator"]
        for k, name in enumerate(self.task_names):
            task = state["tasks"][name]
            self._epochs[k], self._cursors[k] = int(task["epoch"]), int(task["cursor"])
            self.counts[k] = np.array(task["counts"], dtype=np.int64).reshape(self.counts.shape[1:])
        self._build_permutations()
