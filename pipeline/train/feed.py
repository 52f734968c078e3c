"""The training feed: the mixture sampler's draws become this process's micro-batches.

    feed = TrainingFeed(tasks, mixture.shares, Batcher(tokenizer, cfg.data, start_token), cfg.data, cfg.run.seed)
    micro_batches = feed.micro_batches(draws.for_rank(rank, world_size), accumulation_steps)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.config import DataConfig
from pipeline.data.batcher import Batcher
from pipeline.data.collate import example_lengths, length_grouped_batches
from pipeline.mixing.sampler import Draw, DrawBatch
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

    def render(self, draws: Sequence[Draw]) -> list[RenderedExample]:
        return [
            render_example(
                self.tasks[draw.task], self.tasks[draw.task].templates[draw.template],
                self.splits[draw.task][draw.example], index=draw.example, seed=self.seed,
                variant=Variant(few_shot=draw.few_shot, options=draw.options), exemplars=self.pools[draw.task],
                k=self.data.few_shot_k, max_input_length=self.data.max_input_length,
            )
            for draw in draws
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
