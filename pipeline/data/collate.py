"""The batch format: dynamic padding, length grouping and encoder-decoder packing. Nothing else builds batches.

    collate = make_collator(data_config, tokenizer, model.config.decoder_start_token_id)
    batch = collate(features)        # features: rows with input_ids, labels (each ending with eos), task

**Padding** (`PaddingCollator`) wraps `transformers.DataCollatorForSeq2Seq`: pad to the longest row of the
batch (optionally to a multiple of `pad_to_multiple_of`), labels padded with -100, and `decoder_input_ids`
are the labels shifted right behind the decoder start token (pad, id 0, for T5). `length_grouped_batches`
orders a window of examples (a rank's share of a global batch) into micro-batches of similar length:
deterministic, and the set of examples per optimizer step is unchanged.

**Packing** (`PackingCollator`, `data.packing=true`) puts several examples in one row, first-fit decreasing:
examples sorted longest first, each placed in the first row where both its input fits in
`input_row_length` encoder tokens and its target in `target_row_length` decoder tokens (defaults:
`max_input_length` and `max_target_length`, the 4:1 shape FLAN's T5X packing used). Each row carries
segment ids (1, 2, ... per example, 0 on padding) for both sides, and decoder inputs restart at every
segment with the start token, so a segment's decoder inputs are exactly its unpacked ones. The forward pass
that keeps packed examples apart is `pipeline.forward`.

Costs of packing: attention is computed densely over each packed row and the masked blocks are wasted, so
attention FLOPs grow with row length (rows × L² instead of examples × l²); the feed-forward and projections,
most of a small-sequence T5's work, only see fewer pad tokens. The number of rows varies from batch to batch,
so the loss must be a sum over examples or tokens, never a mean over rows. `bench/bench_packing.py` prints the
trade-off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import DataCollatorForSeq2Seq

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from pipeline.config import DataConfig

LABEL_PAD = -100
"""Label id ignored by the loss (torch's `cross_entropy` default `ignore_index`)."""


def decoder_inputs(target_ids: Sequence[int], decoder_start_token_id: int) -> list[int]:
    """Teacher-forcing decoder inputs of one target: the start token, then the target without its last token."""
    return [decoder_start_token_id, *target_ids[:-1]]


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder inputs of a right-padded label batch (as `T5PreTrainedModel._shift_right`, without the model)."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == LABEL_PAD, pad_token_id)


def round_up(length: int, multiple: int | None) -> int:
    return length if not multiple else math.ceil(length / multiple) * multiple


@dataclass
class PaddingCollator:
    """Pad a list of tokenized rows to the longest in the batch: `input_ids`, `attention_mask`, `labels`
    (-100 on padding), `decoder_input_ids`, and `task` (a list of names, one per row, for per-task losses)."""

    tokenizer: PreTrainedTokenizerBase
    pad_to_multiple_of: int | None = None
    decoder_start_token_id: int | None = None
    """Defaults to the pad id, T5's decoder start token."""

    def __post_init__(self) -> None:
        if self.tokenizer.padding_side != "right":
            raise ValueError("PaddingCollator needs tokenizer.padding_side == 'right' (decoder inputs are shifted "
                             "labels); set it before building the collator")
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.tokenizer.pad_token_id
        self._pad = DataCollatorForSeq2Seq(self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of or None,
                                           label_pad_token_id=LABEL_PAD)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = dict(self._pad([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]))
        batch["decoder_input_ids"] = shift_right(batch["labels"], self.decoder_start_token_id,
                                                 self.tokenizer.pad_token_id)
        batch["task"] = [f.get("task", "") for f in features]
        return batch


def length_grouped_batches(lengths: Sequence[int | tuple[int, ...]], batch_size: int) -> list[list[int]]:
    """Split positions 0..n-1 into batches of `batch_size` holding similar lengths (longest first), so each
    batch pads less. Ties keep their order, so the grouping is a pure function of the lengths."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)  # sorted() is stable
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def example_lengths(features: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """(input length, target length) of each row: the key for `length_grouped_batches`."""
    return [(len(f["input_ids"]), len(f["labels"])) for f in features]


def pack_rows(lengths: Sequence[tuple[int, int]], input_row_length: int, target_row_length: int
              ) -> list[list[int]]:
    """First-fit decreasing: example positions per row, each row holding at most `input_row_length` input
    tokens and `target_row_length` target tokens. Deterministic (ties keep their order)."""
    rows: list[list[int]] = []
    room: list[list[int]] = []  # [input tokens left, target tokens left] per row
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        n_in, n_out = lengths[i]
        if n_in > input_row_length or n_out > target_row_length:
            raise ValueError(f"an example of {n_in} input / {n_out} target tokens does not fit a packed row of "
                             f"{input_row_length} / {target_row_length}; the row lengths must be at least "
                             "data.max_input_length / data.max_target_length")
        for row, left in zip(rows, room, strict=True):
            if n_in <= left[0] and n_out <= left[1]:
                row.append(i)
                left[0] -= n_in
                left[1] -= n_out
                break
        else:
            rows.append([i])
            room.append([input_row_length - n_in, target_row_length - n_out])
    return rows


@dataclass
class PackingCollator:
    """Pack tokenized rows several per row (see the module docstring). Returns `input_ids`,
    `encoder_segment_ids`, `decoder_input_ids`, `labels` (-100 on padding), `decoder_segment_ids` (segments
    numbered 1.. per row, 0 = padding), `target_example_ids` (position of each label's example in
    `features`, -1 on padding) and `task` (one name per example, in the order of `features`)."""

    input_row_length: int
    target_row_length: int
    pad_token_id: int = 0
    decoder_start_token_id: int = 0
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        rows = pack_rows(example_lengths(features), self.input_row_length, self.target_row_length)
        input_width = round_up(max(sum(len(features[i]["input_ids"]) for i in row) for row in rows),
                               self.pad_to_multiple_of)
        target_width = round_up(max(sum(len(features[i]["labels"]) for i in row) for row in rows),
                                self.pad_to_multiple_of)
        shape_in, shape_out = (len(rows), input_width), (len(rows), target_width)
        input_ids = torch.full(shape_in, self.pad_token_id, dtype=torch.long)
        encoder_segment_ids = torch.zeros(shape_in, dtype=torch.long)
        decoder_input_ids = torch.full(shape_out, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape_out, LABEL_PAD, dtype=torch.long)
        decoder_segment_ids = torch.zeros(shape_out, dtype=torch.long)
        target_example_ids = torch.full(shape_out, -1, dtype=torch.long)
        for r, row in enumerate(rows):
            at_in = at_out = 0
            for segment, i in enumerate(sorted(row), start=1):
                source, target = features[i]["input_ids"], features[i]["labels"]
                end_in, end_out = at_in + len(source), at_out + len(target)
                input_ids[r, at_in:end_in] = torch.as_tensor(source)
                encoder_segment_ids[r, at_in:end_in] = segment
                labels[r, at_out:end_out] = torch.as_tensor(target)
                decoder_input_ids[r, at_out:end_out] = torch.as_tensor(
                    decoder_inputs(target, self.decoder_start_token_id))
                decoder_segment_ids[r, at_out:end_out] = segment
                target_example_ids[r, at_out:end_out] = i
                at_in, at_out = end_in, end_out
        return {"input_ids": input_ids, "encoder_segment_ids": encoder_segment_ids,
                "decoder_input_ids": decoder_input_ids, "labels": labels,
                "decoder_segment_ids": decoder_segment_ids, "target_example_ids": target_example_ids,
                "task": [f.get("task", "") for f in features]}


def make_collator(data: DataConfig, tokenizer: PreTrainedTokenizerBase, decoder_start_token_id: int
                  ) -> PaddingCollator | PackingCollator:
    """The collator `data.packing` asks for, sized from the data config."""
    multiple = data.pad_to_multiple_of or None
    if data.packing:
        return PackingCollator(data.max_input_length, data.max_target_length, tokenizer.pad_token_id,
                               decoder_start_token_id, multiple)
    return PaddingCollator(tokenizer, multiple, decoder_start_token_id)


def count_tokens(batch: Mapping[str, Any]) -> tuple[int, int]:
    """(real tokens, all tokens) of a padded or packed batch, encoder and decoder sides together; sum these
    over steps for an overall efficiency rather than averaging per-batch ratios."""
    labels = batch["labels"]
    encoder_real = batch["encoder_segment_ids"] > 0 if "encoder_segment_ids" in batch else batch["attention_mask"]
    real = int(encoder_real.sum()) + int((labels != LABEL_PAD).sum())
    return real, batch["input_ids"].numel() + labels.numel()


def choice_batch(inputs: Sequence[Sequence[int]], choices: Sequence[Sequence[Sequence[int]]], pad_token_id: int,
                 decoder_start_token_id: int) -> dict[str, torch.Tensor]:
    """A batch for scoring answer choices (rank classification): each input once (`input_ids`,
    `attention_mask`), one decoder row per (input, choice) pair (`decoder_input_ids`, `labels` with -100 on
    padding), and `choice_owner`, the input of each row; `pipeline.forward` runs the encoder once per input."""
    rows = [choice for options in choices for choice in options]
    input_ids = torch.full((len(inputs), max(map(len, inputs))), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, ids in enumerate(inputs):
        input_ids[i, : len(ids)] = torch.as_tensor(ids)
        attention_mask[i, : len(ids)] = 1
    labels = torch.full((len(rows), max(map(len, rows))), LABEL_PAD, dtype=torch.long)
    for i, ids in enumerate(rows):
        labels[i, : len(ids)] = torch.as_tensor(ids)
    owner = torch.tensor([i for i, options in enumerate(choices) for _ in options], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "choice_owner": owner,
            "decoder_input_ids": shift_right(labels, decoder_start_token_id, pad_token_id)}
