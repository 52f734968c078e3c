"""Rank classification (T0's method): score each answer choice by its log-likelihood given the input.

    scores = rank_classification_scores(model, tokenizer, inputs, choices)   # list[list[float]]
    pipeline.metrics.rank_classification(scores, gold)                       # {"rank_accuracy": ...}

Each choice is scored by the summed log-likelihood of its tokens given the input, teacher-forced, through the
one forward path (`pipeline.forward`, so a prepared DDP/FSDP model is scored as it is). Inputs and choices are
encoded with `pipeline.data.tokenize.encode_texts`, exactly as in training, so each choice's tokens end with eos
and eos is scored: the model was trained to end targets there, and it tells "yes" from the prefix of "yes, but"
(T0's own evaluation code does the same: its targets carry T5's eos). `length_normalize=True` divides a choice's
sum by its token count (eos included). The encoder runs once per input; its output is repeated for each choice,
so an input with k choices costs one encoder pass and k decoder rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pipeline.data.collate import LABEL_PAD, choice_batch
from pipeline.data.tokenize import encode_texts
from pipeline.forward import as_forward, inner_model, token_losses


def _choice_groups(choices: Sequence[Sequence[str]], batch_size: int) -> list[range]:
    """Consecutive runs of inputs whose choices add up to at most `batch_size` decoder rows (an input's
    choices are never split, so an input with more choices than that is a run of its own)."""
    groups, start, rows = [], 0, 0
    for index, options in enumerate(choices):
        if index > start and rows + len(options) > batch_size:
            groups.append(range(start, index))
            start, rows = index, 0
        rows += len(options)
    if start < len(choices):
        groups.append(range(start, len(choices)))
    return groups


def rank_classification_scores(model: Any, tokenizer: Any, inputs: Sequence[str],
                               choices: Sequence[Sequence[str]], *, length_normalize: bool = False,
                               batch_size: int = 32, max_input_length: int = 512,
                               max_target_length: int = 128) -> list[list[float]]:
    """Per input, per choice: the summed log-probability (float32) of the choice's tokens, eos included, given
    the input; divided by the token count when `length_normalize`. `model` is a prepared (wrapped) model or a
    bare transformers encoder-decoder (T5, BART, ...); `batch_size` counts (input, choice) pairs per batch."""
    if len(inputs) != len(choices):
        raise ValueError(f"{len(inputs)} inputs but {len(choices)} choice lists")
    if any(not options for options in choices):
        raise ValueError("every input needs at least one choice")
    forward = as_forward(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start_token = inner_model(forward).config.decoder_start_token_id
    device = next(forward.parameters()).device
    input_ids, _ = encode_texts(tokenizer, inputs, max_input_length)
    was_training = model.training  # the caller's model: a fresh wrapper would report training mode
    forward.eval()  # dropout would make the scores random
    scores: list[list[float]] = []
    try:
        with torch.inference_mode():
            for group in _choice_groups(choices, batch_size):
                choice_ids = [encode_texts(tokenizer, choices[i], max_target_length)[0] for i in group]
                batch = choice_batch([input_ids[i] for i in group], choice_ids, pad, start_token)
                batch = {key: value.to(device) for key, value in batch.items()}
                labels = batch["labels"]
                totals = -token_losses(forward(batch), labels).sum(-1)
                if length_normalize:
                    totals = totals / (labels != LABEL_PAD).sum(-1)
                flat = totals.tolist()
                for i in group:
                    scores.append(flat[: len(choices[i])])
                    flat = flat[len(choices[i]) :]
    finally:
        model.train(was_training)
    return scores
