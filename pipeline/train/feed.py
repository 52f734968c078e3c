"""The training feed: the mixture sampler's draws become this process's micro-batches.

    feed = TrainingFeed(tasks, mixture.shares, Batcher(tokenizer, cfg.data, start_token), cfg.data, cfg.run.seed)
    micro_batches = feed.micro_batches(draws.for_rank(rank, world_size), accumulation_steps)

    steps = StepSource(feed, sampler, cfg.train.batch_size, rank, world_size, accumulation_steps, prefetch=True)
    draws, micro_batches = steps.next()      # the sampler's next global batch and this process's share of it
    steps.close()                            # or: with StepSource(...) as steps:
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.batcher import Batcher
from pipeline.data.collate import example_lengths, length_grouped_batches
from pipeline.data.tokenize import TruncationStats
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
        return [
            render_example(
                self.tasks[draw.task], self.tasks[draw.task].templates[draw.template], row, index=draw.example,
                seed=self.seed, variant=Variant(few_shot=draw.few_shot, options=draw.options),
                exemplars=self.pools[draw.task], k=self.data.few_shot_k, max_input_length=self.data.max_input_length,
            )
            for draw, row in zip(draws, self.rows(draws), strict=True)
        ]

    def micro_batches(self, batch: DrawBatch, accumulation_steps: int) -> list[dict[str, Any]]:
        """This process's slice of a global batch as `accumulation_steps` collated micro-batches."""
        features = self.batcher.tokenize(self.render(batch.draws()))
        size = math.ceil(len(features) / accumulation_steps)
        if self.data.group_by_length:
            groups = length_grouped_batches(example_lengths(features), size)
        else:
            groups = [list(range(start, min(start + size, len(features)))) for start in range(0, len(features), size)]
        return [self.batcher.collate([features[i] for i in group]) for group in groups]


class StepSource:
    """Each step's global batch of draws and this process's micro-batches, optionally prepared one step ahead in
    a background thread (`data.prefetch`): while step s trains, a copy of the sampler draws step s+1 and the
    thread renders, tokenizes and collates it. The run's own sampler still draws every batch when its step
    comes (its state, saved in checkpoints, is that of the steps taken), and each prepared batch is checked
    against that draw, so prefetching changes no batch, loss or resume point. `truncation` counts the
    examples of the steps taken, not of a batch prepared ahead."""

    def __init__(self, feed: TrainingFeed, sampler: MixtureSampler, batch_size: int, rank: int, world_size: int,
                 accumulation_steps: int, prefetch: bool):
        self.feed, self.sampler, self.batch_size = feed, sampler, batch_size
        self.rank, self.world_size, self.accumulation_steps = rank, world_size, accumulation_steps
        self.truncation = TruncationStats(0, 0, 0)
        self._ahead = copy.deepcopy(sampler) if prefetch else None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="flanpipe-prefetch") if prefetch else None
        self._pending: Future | None = None

    def _prepare(self, draws: DrawBatch) -> tuple[DrawBatch, list[dict[str, Any]], TruncationStats]:
        before = self.feed.batcher.truncation
        micro_batches = self.feed.micro_batches(draws.for_rank(self.rank, self.world_size), self.accumulation_steps)
        return draws, micro_batches, self.feed.batcher.truncation - before

    def _prepare_ahead(self) -> tuple[DrawBatch, list[dict[str, Any]], TruncationStats]:
        return self._prepare(self._ahead.next_batch(self.batch_size))

    def next(self) -> tuple[DrawBatch, list[dict[str, Any]]]:
        draws = self.sampler.next_batch(self.batch_size)
        if self._pool is None:
            _, micro_batches, truncation = self._prepare(draws)
        else:
            pending = self._pending or self._pool.submit(self._prepare_ahead)
            ahead, micro_batches, truncation = pending.result()
            if not all(np.array_equal(getattr(draws, name), getattr(ahead, name)) for name in ("task", "example",
                                                                                            "template")):
                raise RuntimeError("prefetch: the batch prepared ahead differs from the sampler's (a bug)")
            self._pending = self._pool.submit(self._prepare_ahead)
        self.truncation = self.truncation + truncation
        return draws, micro_batches

    def close(self) -> None:
        """Stop the background thread (a batch being prepared ahead is finished and dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> StepSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
