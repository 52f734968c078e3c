"""The training objective's weights: how much each example's summed token loss counts in a global batch.

`train.loss_per` picks the rule; the weights are normalised over the *global* batch (every process, every
micro-batch), so the objective means the same for any number of processes or accumulation steps.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from pipeline.forward import example_loss_sums


def loss_weights(accelerator: Accelerator, micro_batches: list[dict[str, Any]], loss_per: str) -> list[torch.Tensor]:
    """Per micro-batch, the weight of each example's summed token loss, normalised over the global batch:

    - `token`: 1 / (target tokens in the global batch): every token weighs the same (T5's loss);
    - `example`: 1 / (its own tokens × examples): each example weighs the same, a one-token label as much
      as a paragraph; labels of different lengths then weigh differently per token (a 3-token label's
      tokens each count 2/3 of a 2-token label's), which biases the model towards the shorter label;
    - `task`: 1 / (its task's mean tokens per example × examples): each task's share of the loss is its
      share of the examples, as with `example`, spread evenly over that task's tokens, so within a task
      every token weighs the same and no label is favoured for its length.
    """
    tokens = [example_loss_sums(torch.ones(mb["labels"].shape), mb)[1] for mb in micro_batches]
    if loss_per == "token":
        total = accelerator.reduce(torch.tensor(float(sum(t.sum() for t in tokens)), device=accelerator.device), "sum")
        return [torch.full_like(t, 1.0 / max(1.0, float(total))) for t in tokens]
    examples = sum(len(t) for t in tokens)
    total = int(accelerator.reduce(torch.tensor(examples, device=accelerator.device), "sum"))
    if loss_per == "example":
        return [1.0 / (t.clamp_min(1) * total) for t in tokens]
    pairs = [pair for mb, counts in zip(micro_batches, tokens, strict=True)
             for pair in zip(mb["task"], counts.tolist(), strict=True)]  # (task, tokens) of each example
    if accelerator.num_processes > 1:
        pairs = gather_object(pairs)  # every process's examples: the global batch
    per_task: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # task -> [examples, tokens]
    for task, count in pairs:
        per_task[task][0] += 1
        per_task[task][1] += count
    mean_tokens = {task: max(1.0, count / n) for task, (n, count) in per_task.items()}
    return [torch.tensor([1.0 / (mean_tokens[task] * total) for task in mb["task"]]) for mb in micro_batches]
