"""The batch format: dynamic padding, length grouping and encoder-decoder packing. Nothing else builds batches.

    collate = make_collator(data_config, tokenizer, model.config.decoder_start_token_id)
    batch = collate(features)        # features: rows with input_ids, labels (each ending with eos), task

**Padding** (`PaddingCollator`) wraps `transformers.DataCollatorForSeq2Seq`: pad to the longest row of the
batch (optionally to a multiple of `pad_to_multiple_of`), labels padded with -100, and `decoder_input_ids`
are the labels shifted right behind the decoder start token (pad, id 0, for T5). `length_grouped_batches`
orders a window of examples (a rank's share of a global batch) into micro-batches of similar length:
deterministic, and the set of examples per optimizer step is unchanged.

**Packing** (`PackingCollator`, `data.packing=true`) puts several examples in one row. The row widths come
from the batch itself (`plan_rows`): for a few row counts, from the fewest that the caps allow
(`input_row_length` / `target_row_length`: `data.packed_input_length` / `data.packed_target_length`), the
examples are spread over the rows so that both sides' loads are even (longest first, each into the row it
fills least), each side's width is its fullest row, and the plan with the fewest padded tokens wins. A fixed
4:1 row shape (FLAN's T5X packing) runs out on one side first whenever the batch's own ratio differs: on the
default mixture it filled 66-68% of the positions, planned rows 91-92% (`bench/bench_packing.py`). Each row carries segment ids (1, 2, ... per example, 0 on
padding) for both sides, and decoder inputs restart at every segment with the start token, so a segment's
decoder inputs are exactly its unpacked ones. The forward pass that keeps packed examples apart is
`pipeline.forward`.

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


def _check_fits(lengths: Sequence[tuple[int, int]], input_row_length: int, target_row_length: int) -> None:
    for n_in, n_out in lengths:
        if n_in > input_row_length or n_out > target_row_length:
            raise ValueError(f"an example of {n_in} input / {n_out} target tokens does not fit a packed row of "
                             f"{input_row_length} / {target_row_length}; the row lengths must be at least "
                             "data.max_input_length / data.max_target_length")


def pack_rows(lengths: Sequence[tuple[int, int]], input_row_length: int, target_row_length: int
              ) -> list[list[int]]:
    """First-fit decreasing: example positions per row, each row holding at most `input_row_length` input
    tokens and `target_row_length` target tokens. Deterministic (ties keep their order)."""
    _check_fits(lengths, input_row_length, target_row_length)
    rows: list[list[int]] = []
    room: list[list[int]] = []  # [input tokens left, target tokens left] per row
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
        n_in, n_out = lengths[i]
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


def spread_rows(lengths: Sequence[tuple[int, int]], count: int, input_row_length: int, target_row_length: int
                ) -> list[list[int]] | None:
    """Example positions over exactly `count` rows with even loads on both sides: longest first (by its share
    of each side's total), each into the row whose fuller side ends up least full relative to the even load;
    None when some example fits no row under the caps. Deterministic (ties go to the first row)."""
    total_in = sum(n for n, _ in lengths) or 1
    total_out = sum(n for _, n in lengths) or 1
    even_in, even_out = total_in / count, total_out / count
    rows: list[list[int]] = [[] for _ in range(count)]
    loads = [[0, 0] for _ in range(count)]
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i][0] / even_in + lengths[i][1] / even_out,
                    reverse=True):
        n_in, n_out = lengths[i]
        best, best_fill = -1, math.inf
        for r, (load_in, load_out) in enumerate(loads):
            if load_in + n_in > input_row_length or load_out + n_out > target_row_length:
                continue
            fill = max((load_in + n_in) / even_in, (load_out + n_out) / even_out)
            if fill < best_fill:
                best, best_fill = r, fill
        if best < 0:
            return None
        rows[best].append(i)
        loads[best][0] += n_in
        loads[best][1] += n_out
    return [row for row in rows if row]


def padded_area(lengths: Sequence[tuple[int, int]], rows: Sequence[Sequence[int]], multiple: int | None = None
                ) -> int:
    """Encoder plus decoder positions of the packed batch `rows` makes (each side as wide as its fullest row)."""
    width_in = round_up(max(sum(lengths[i][0] for i in row) for row in rows), multiple)
    width_out = round_up(max(sum(lengths[i][1] for i in row) for row in rows), multiple)
    return len(rows) * (width_in + width_out)


PLANNED_ROW_COUNTS = 2
"""Row counts `plan_rows` tries, from the fewest the caps allow: more rows are narrower (attention costs grow
with the square of the width), and beyond a few the padded area only grows."""


def plan_rows(lengths: Sequence[tuple[int, int]], input_row_length: int, target_row_length: int,
              multiple: int | None = None) -> list[list[int]]:
    """Example positions per packed row, with the fewest padded positions among `spread_rows` over a few row
    counts and first-fit decreasing under the caps (the fallback, always feasible). Rows never exceed
    `input_row_length` / `target_row_length`. A pure function of the lengths. Cost (pure Python, measured on
    default-mixture lengths with rows of 256/128): 32 examples 0.2 ms (92% of positions real; first-fit 77%),
    256 examples 3.3 ms (94%; 81%), 1,024 examples 38 ms (97%; 82%); `data.prefetch` runs it beside the step."""
    if not lengths:
        return []
    _check_fits(lengths, input_row_length, target_row_length)
    candidates = [pack_rows(lengths, input_row_length, target_row_length)]
    fewest = max(math.ceil(sum(n for n, _ in lengths) / input_row_length),
                 math.ceil(sum(n for _, n in lengths) / target_row_length), 1)
    for count in range(fewest, min(fewest + PLANNED_ROW_COUNTS, len(lengths) + 1)):
        rows = spread_rows(lengths, count, input_row_length, target_row_length)
        if rows is not None:
            candidates.append(rows)
    # min() keeps the first of equal areas: first-fit decreasing, then fewer rows.
    return min(candidates, key=lambda rows: padded_area(lengths, rows, multiple))


PACKED_FIELDS: dict[str, tuple[str, int | None]] = {
    "input_ids": ("encoder", None), "encoder_segment_ids": ("encoder", 0), "decoder_input_ids": ("decoder", None),
    "labels": ("decoder", LABEL_PAD), "decoder_segment_ids": ("decoder", 0), "target_example_ids": ("decoder", -1),
}
"""A packed batch's tensors: the side each spans and its padding value (None: the pad token)."""


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
        rows = plan_rows(example_lengths(features), self.input_row_length, self.target_row_length,
                         self.pad_to_multiple_of)
        columns: dict[str, list[list[int]]] = {name: [] for name in PACKED_FIELDS}
        for row in rows:
            values: dict[str, list[int]] = {name: [] for name in PACKED_FIELDS}
            for segment, i in enumerate(sorted(row), start=1):
                source, target = features[i]["input_ids"], features[i]["labels"]
                values["input_ids"] += source
                values["encoder_segment_ids"] += [segment] * len(source)
                values["labels"] += target
                values["decoder_input_ids"] += decoder_inputs(target, self.decoder_start_token_id)
                values["decoder_segment_ids"] += [segment] * len(target)
                values["target_example_ids"] += [i] * len(target)
            for name, column in columns.items():
                column.append(values[name])
        widths = {side: round_up(max(map(len, columns[name])), self.pad_to_multiple_of)
                  for name, (side, _) in PACKED_FIELDS.items()}
        tensors = {}
        for name, (side, fill) in PACKED_FIELDS.items():
            fill = self.pad_token_id if fill is None else fill
            # One tensor from padded lists: faster than filling a tensor slice by slice.
            tensors[name] = torch.tensor([row + [fill] * (widths[side] - len(row)) for row in columns[name]],
                                         dtype=torch.long)
        return {**tensors, "task": [f.get("task", "") for f in features]}


def make_collator(data: DataConfig, tokenizer: PreTrainedTokenizerBase, decoder_start_token_id: int
                  ) -> PaddingCollator | PackingCollator:
    """The collator `data.packing` asks for, sized from the data config."""
    multiple = data.pad_to_multiple_of or None
    if data.packing:
        return PackingCollator(*data.packed_row_lengths(), tokenizer.pad_token_id, decoder_start_token_id, multiple)
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
