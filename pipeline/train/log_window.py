"""Training logs: per-task loss sums and counts between log lines (`LogWindow`), and the line itself (`log_step`).

Every value is reduced over processes before it is logged, so a log line describes the global batch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from accelerate import Accelerator

from pipeline.dashboard import mixture_values
from pipeline.data.tokenize import TruncationStats
from pipeline.forward import example_loss_sums
from pipeline.mixing.sampler import MixtureSampler


class LogWindow:
    """Per-task loss sums and token counts since the last log line, reduced over processes when flushed; and the
    share of step time spent on the data path (drawing, rendering, tokenizing, collating), per window and over
    the session (evaluations and checkpoints between steps are not step time)."""

    def __init__(self) -> None:
        self.session_seconds = [0.0, 0.0]  # data path, whole steps
        self._reset()

    def _reset(self) -> None:
        self.step_seconds = [0.0, 0.0]
        self.grad_norms: list[torch.Tensor] = []  # kept on the device: no sync per step
        self.sums: dict[str, float] = defaultdict(float)
        self.tokens: dict[str, int] = defaultdict(int)
        self.real_tokens = self.all_tokens = 0
        self._step_sum = 0.0
        self._step_tokens = 0
        self._step_real = 0

    def add(self, micro_batch: dict[str, Any], per_token: torch.Tensor) -> None:
        sums, counts = example_loss_sums(per_token.detach(), micro_batch)
        per_example_sum, per_example_tokens = sums.tolist(), [int(c) for c in counts.tolist()]
        for task, loss_sum, tokens in zip(micro_batch["task"], per_example_sum, per_example_tokens, strict=True):
            self.sums[task] += loss_sum
            self.tokens[task] += tokens
        self._step_sum += sum(per_example_sum)
        self._step_tokens += sum(per_example_tokens)
        self._step_real += int(micro_batch["real_tokens"])
        self.real_tokens += int(micro_batch["real_tokens"])
        self.all_tokens += int(micro_batch["all_tokens"])

    def add_grad_norm(self, norm: torch.Tensor | float | None) -> None:
        """The gradient norm of a step (before clipping), as `clip_grad_norm_` returns it."""
        if norm is not None:
            self.grad_norms.append(torch.as_tensor(norm).detach().float())

    def time_step(self, data_seconds: float, step_seconds: float) -> None:
        """One step's wall time and the part of it the data path took."""
        self.step_seconds[0] += data_seconds
        self.step_seconds[1] += step_seconds

    def session_data_share(self, accelerator: Accelerator) -> float:
        """Share of this session's step time spent on the data path, over all processes (collective)."""
        seconds = [a + b for a, b in zip(self.session_seconds, self.step_seconds, strict=True)]
        data, steps = accelerator.reduce(torch.tensor(seconds, dtype=torch.float64), "sum").tolist()
        return data / max(1e-9, steps)

    def last_step_loss(self, accelerator: Accelerator) -> float:
        totals = accelerator.reduce(torch.tensor([self._step_sum, float(self._step_tokens)]), "sum")
        self._step_sum, self._step_tokens = 0.0, 0
        return float(totals[0] / max(1.0, float(totals[1])))

    def step_real_tokens(self, accelerator: Accelerator) -> int:
        total = int(accelerator.reduce(torch.tensor(self._step_real), "sum"))
        self._step_real = 0
        return total

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        names = sorted(self.sums)
        names = accelerator.gather_for_metrics(names, use_gather_object=True) if accelerator.num_processes > 1 else names
        names = sorted(set(names))
        local = torch.tensor(
            [[self.sums.get(n, 0.0), self.tokens.get(n, 0)] for n in names]
            + [[float(self.real_tokens), float(self.all_tokens)], self.step_seconds],
            dtype=torch.float64,
        )
        totals = accelerator.reduce(local, "sum")
        values: dict[str, float] = {}
        loss_sum = token_count = 0.0
        for name, (task_sum, task_tokens) in zip(names, totals[:-2].tolist(), strict=True):
            values[f"train/{name}/loss"] = task_sum / max(1.0, task_tokens)
            loss_sum, token_count = loss_sum + task_sum, token_count + task_tokens
        real, padded = totals[-2].tolist()
        data_seconds, step_seconds = totals[-1].tolist()
        values["batch/loss"] = loss_sum / max(1.0, token_count)
        values["batch/padding_efficiency"] = real / max(1.0, padded)
        # over the steps' own time (summed over processes, which run side by side): evaluations and checkpoints
        # between steps do not dent it
        values["batch/tokens_per_second"] = real * accelerator.num_processes / max(1e-9, step_seconds)
        values["batch/data_share"] = data_seconds / max(1e-9, step_seconds)
        if self.grad_norms:  # the same on every process: computed over the synchronised gradients
            norms = torch.stack([norm.to(self.grad_norms[0].device) for norm in self.grad_norms])
            values["batch/grad_norm"] = float(norms.mean())
            values["batch/grad_norm_max"] = float(norms.max())
        self.session_seconds = [a + b for a, b in zip(self.session_seconds, self.step_seconds, strict=True)]
        self._reset()
        return values


def log_step(accelerator: Accelerator, step: int, tokens_seen: int, window: LogWindow, sampler: MixtureSampler,
             scheduler: Any, truncation: TruncationStats) -> None:
    """Blended and per-task loss, target and realized shares, lr, tokens/s, padding, truncation (collective)."""
    values = window.flush(accelerator)
    values["batch/lr"] = scheduler.get_last_lr()[0]
    values["batch/tokens_seen"] = tokens_seen
    # `truncation` counts this process since it started; summed over processes here
    counts = accelerator.reduce(torch.tensor([truncation.inputs_truncated, truncation.targets_truncated]), "sum")
    values["batch/truncated_inputs"], values["batch/truncated_targets"] = counts.tolist()
    values.update(mixture_values(sampler.mixture.shares, sampler.realized_shares()))
    accelerator.log(values, step=step)
