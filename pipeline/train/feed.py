"""The training feed: the mixture sampler's draws become this process's micro-batches.

    feed = TrainingFeed(tasks, mixture.shares, Batcher(tokenizer, cfg.data, start_token), cfg.data, cfg.run.seed)
    features = feed.batcher.tokenize(feed.render(draws.for_rank(rank, world_size).draws()))
    micro_batches = feed.micro_batches(features, accumulation_steps)

    with StepSource(feed, sampler, batch_size, rank, world_size, accumulation_steps, prefetch=True) as steps:
        draws, micro_batches = steps.next()  # the sampler's next global batch and this process's share of it
        checkpoint["steps"] = steps.state_dict()
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.batcher import Batcher
from pipeline.data.collate import example_lengths, length_grouped_batches
from pipeline.data.tokenize import TruncationStats
from pipeline.errors import UserError
from pipeline.mixing.sampler import Draw, DrawBatch, MixtureSampler
from pipeline.tasks.rendering import ExemplarPool, RenderedExample, Variant, render_example
from pipeline.tasks.splits import load_split
from pipeline.tasks.task import Task


class TrainingFeed:
    """Turns the mixture sampler's draws into micro-batches: render each (task, example, template, variant)
    from the task's train split, tokenize, optionally group by length, collate.

    Rendering happens here, per draw, rather than from a pre-rendered table: a draw picks one of T templates
    and up to 4 variants, so materialising every combination would cost n × T × 4 rows per task, while
    rendering a batch's draws takes a few milliseconds, under 1% of a training step on this model.
    """

    def __init__(self, tasks: Mapping[str, Task], task_names: Sequence[str], batcher: Batcher, data: DataConfig,
                 seed: int):
        self.data = data
        self.seed = seed
        self.batcher = batcher
        self.tasks = {name: tasks[name] for name in task_names}
        self.splits = {name: load_split(task, "train", data.cache_path(), data.split_seed, data.max_bad_row_fraction)
                       for name, task in self.tasks.items()}
        self.pools = {name: ExemplarPool(split, same_split=True) for name, split in self.splits.items()}
        self.dropped = 0
        """Draws whose example made no pair and took a stand-in (`_stand_in`), on this process."""

    def rows(self, draws: Sequence[Draw]) -> list[dict[str, Any]]:
        """The train rows of `draws`, read with one Arrow query per task (a query costs as much as ~30 rows)."""
        wanted: dict[str, list[int]] = {}
        for position, draw in enumerate(draws):
            wanted.setdefault(draw.task, []).append(position)
        rows: list[dict[str, Any]] = [{}] * len(draws)
        for task, positions in wanted.items():
            columns = self.splits[task][[draws[p].example for p in positions]]
            for offset, position in enumerate(positions):
                rows[position] = {name: values[offset] for name, values in columns.items()}
        return rows

    def render(self, draws: Sequence[Draw]) -> list[RenderedExample]:
        rendered = [self._render(draw, draw.template, draw.example, row)
                    for draw, row in zip(draws, self.rows(draws), strict=True)]
        for position, example in enumerate(rendered):
            if example.dropped:
                rendered[position] = self._stand_in(draws[position])
        return rendered

    def _render(self, draw: Draw, template: str, index: int, row: Mapping[str, Any]) -> RenderedExample:
        task = self.tasks[draw.task]
        return render_example(
            task, task.templates[template], row, index=index, seed=self.seed,
            variant=Variant(few_shot=draw.few_shot, options=draw.options), exemplars=self.pools[draw.task],
            k=self.data.few_shot_k, max_input_length=self.data.max_input_length,
        )

    def _stand_in(self, draw: Draw) -> RenderedExample:
        """A drawn promptsource-style example that makes no pair under its template (P3 dropped these): the same
        example under the task's next template that makes one, else the next example's. A pure function of the
        draw, so batches stay the same whatever the process count; counted in `dropped`."""
        self.dropped += 1
        task = self.tasks[draw.task]
        names = [t.name for t in task.forward_templates]
        split = self.splits[draw.task]
        first = names.index(draw.template) if draw.template in names else 0
        for offset in range(len(split)):
            index = (draw.example + offset) % len(split)
            row = split[index]
            for turn in range(1 if offset == 0 else 0, len(names)):
                rendered = self._render(draw, names[(first + turn) % len(names)], index, row)
                if not rendered.dropped:
                    return rendered
        raise UserError(f"task {draw.task!r}: no example of its train split renders an input and a target under any "
                        f"template; check its templates with `flanpipe render {draw.task}`")

    def micro_batches(self, features: Sequence[Mapping[str, Any]], accumulation_steps: int) -> list[dict[str, Any]]:
        """Tokenized features (this process's share of a global batch) as `accumulation_steps` collated
        micro-batches (grouped by length if asked)."""
        size = math.ceil(len(features) / accumulation_steps)
        if self.data.group_by_length:
            groups = length_grouped_batches(example_lengths(features), size)
        else:
            groups = [list(range(start, min(start + size, len(features)))) for start in range(0, len(features), size)]
        return [self.batcher.collate([features[i] for i in group]) for group in groups]


@dataclass
class PreparedStep:
    """One step's data for this process: the global batch's draws (as the sampler drew them for that step),
    its micro-batches, their truncation counts, and the sampler state at the start of the step's length window
    (None outside windows)."""

    draws: DrawBatch
    micro_batches: list[dict[str, Any]]
    truncation: TruncationStats
    window_start: dict[str, Any] | None


class StepSource:
    """Each step's global batch of draws and this process's micro-batches.

    The batches come from a copy of the run's sampler; the run's own sampler still draws every batch when its
    step comes (its state, saved in checkpoints, is that of the steps taken, and its counts give the realized
    shares), and each step's draws are checked against that draw. Two options change when work happens:

    - `prefetch`: while step s trains, a background thread tokenizes and collates step s+1, rendered just
      before in the main thread (where the templates' time limit works). Nothing else changes: batches,
      losses and resume points are the same. Length windows prepare each window at its first step.
    - `length_window` W > 1: the examples of W consecutive global batches are grouped by length (as the
      Trainer's `group_by_length` does over 50 batches): at every W-th step the window's W batches are drawn,
      rendered and tokenized (all of them, on every process, as the grouping is global), sorted by (input,
      target) length, cut into W global batches, and those are taken in an order shuffled by (seed, window).
      Each step then trains on other examples than the sampler drew for it, the same ones over the window.
      A checkpoint inside a window keeps the sampler state at the window's start (`state_dict`), so a resumed
      run draws the same window again and continues exactly.
    """

    def __init__(self, feed: TrainingFeed, sampler: MixtureSampler, batch_size: int, rank: int, world_size: int,
                 accumulation_steps: int, *, prefetch: bool = False, length_window: int = 1):
        self.feed, self.sampler, self.batch_size = feed, sampler, batch_size
        self.rank, self.world_size, self.accumulation_steps = rank, world_size, accumulation_steps
        self.length_window = length_window
        self.truncation = TruncationStats(0, 0, 0)
        """Truncated examples of this process's share of the steps taken (not of batches prepared ahead)."""
        prefetching = prefetch and length_window == 1  # a window is prepared at its first step
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="flanpipe-prefetch") if prefetching else None
        self._pending: Future | None = None
        self._data: MixtureSampler | None = None  # the copy that draws the batches prepared here
        self._resume_window: dict[str, Any] | None = None
        self._taken_window: dict[str, Any] | None = None
        self._window: list[PreparedStep] = []  # the current window's steps not yet taken

    # --- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint after the steps taken needs besides the sampler's state."""
        inside = self.length_window > 1 and self.sampler.step % self.length_window
        return {"window_start": self._taken_window} if inside else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()` output (call before the first `next`, after the sampler is restored)."""
        self._resume_window = state.get("window_start")
        if self.length_window > 1 and self.sampler.step % self.length_window and self._resume_window is None:
            raise ValueError("resuming inside a length window needs the sampler state at the window's start")

    # --- batches ---------------------------------------------------------------------------------------------

    def next(self) -> tuple[DrawBatch, list[dict[str, Any]]]:
        if self._data is None:  # the first step (of this process's session)
            self._data = copy.deepcopy(self.sampler)
            taken = self._data.step % self.length_window
            if taken:  # resumed inside a length window: draw it again from its start, drop the steps taken
                self._data.load_state_dict(self._resume_window)
                self._window = self._prepare_window()[taken:]
        draws = self.sampler.next_batch(self.batch_size)
        if self.length_window > 1:
            if not self._window:
                self._window = self._prepare_window()
            prepared = self._window.pop(0)
        elif self._pool is None:
            prepared = self._finish(*self._render_next())
        else:
            prepared = (self._pending or self._pool.submit(self._finish, *self._render_next())).result()
            # The next step is rendered here, in the main thread (the templates' time limit is a signal, which
            # only the main thread receives), and tokenized and collated in the background while this one trains.
            self._pending = self._pool.submit(self._finish, *self._render_next())
        if not all(np.array_equal(getattr(draws, name), getattr(prepared.draws, name))
                   for name in ("task", "example", "template")):
            raise RuntimeError("the batch prepared for this step is not the sampler's (a bug in StepSource)")
        self.truncation = self.truncation + prepared.truncation
        self._taken_window = prepared.window_start
        return draws, prepared.micro_batches

    def _render_next(self) -> tuple[DrawBatch, list[RenderedExample]]:
        """The copy's next global batch and this process's share of it, rendered."""
        draws = self._data.next_batch(self.batch_size)
        return draws, self.feed.render(draws.for_rank(self.rank, self.world_size).draws())

    def _finish(self, draws: DrawBatch, rendered: list[RenderedExample]) -> PreparedStep:
        """Tokenize and collate a rendered step (in the background thread when prefetching)."""
        features = self.feed.batcher.tokenize(rendered)
        micro_batches = self.feed.micro_batches(features, self.accumulation_steps)
        return PreparedStep(draws, micro_batches, truncation_of(features), None)

    def _prepare_window(self) -> list[PreparedStep]:
        """The W steps of a length window starting at the copy's current step (see the class docstring)."""
        start = self._data.state_dict()
        index = self._data.step // self.length_window
        draws = [self._data.next_batch(self.batch_size) for _ in range(self.length_window)]
        features = [f for batch in draws for f in self.feed.batcher.tokenize(self.feed.render(batch.draws()))]
        share = self.batch_size // self.world_size
        steps = []
        batches = regroup_by_length(features, self.batch_size, (self.feed.seed, index))
        for batch_draws, batch in zip(draws, batches, strict=True):
            mine = batch[self.rank * share:(self.rank + 1) * share]
            micro_batches = self.feed.micro_batches(mine, self.accumulation_steps)
            steps.append(PreparedStep(batch_draws, micro_batches, truncation_of(mine), start))
        return steps

    def close(self) -> None:
        """Stop the background thread (a batch being prepared ahead is finished and dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> StepSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def regroup_by_length(features: Sequence[Mapping[str, Any]], batch_size: int, seed: tuple[int, ...]
                      ) -> list[list[Mapping[str, Any]]]:
    """Tokenized examples regrouped into batches of `batch_size` of similar length: sorted longest first by
    (input, target) length (ties keep their order), cut into batches, the batches in an order shuffled by
    `seed` (so that no run sees its batches from longest to shortest)."""
    batches = [[features[i] for i in group] for group in length_grouped_batches(example_lengths(features), batch_size)]
    return [batches[i] for i in np.random.default_rng(list(seed)).permutation(len(batches))]


def truncation_of(features: Sequence[Mapping[str, Any]]) -> TruncationStats:
    """Truncation counts of tokenized features (`Batcher.tokenize` marks each)."""
    return TruncationStats(len(features), sum(f["input_truncated"] for f in features),
                           sum(f["target_truncated"] for f in features))
