"""Rendered examples to model-ready tensors: tokenize, collate (padded or packed), count real tokens.

    batcher = Batcher(tokenizer, cfg.data, model.config.decoder_start_token_id)
    batch = batcher.collate(examples)         # examples: objects with .input, .target, .task
    encoded = batcher.encode_inputs(["a prompt"])   # for generation, encoded exactly as in training
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from pipeline.data.collate import count_tokens, make_collator
from pipeline.data.tokenize import encode_texts, tokenize_batch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from pipeline.config import DataConfig


class Example(Protocol):
    """What the batcher reads of a rendered example (`pipeline.tasks.rendering.RenderedExample` is one)."""

    task: str
    input: str
    target: str


class Batcher:
    """Rendered examples -> tokenized, collated tensors (padded or packed, as `data.packing` says), with
    `real_tokens` / `all_tokens` for padding efficiency; tokenized rows say whether each side was truncated."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, data: DataConfig, decoder_start_token_id: int):
        self.tokenizer = tokenizer
        self.data = data
        self.collator = make_collator(data, tokenizer, decoder_start_token_id)

    def tokenize(self, examples: Sequence[Example]) -> list[dict[str, Any]]:
        tokens = tokenize_batch(self.tokenizer, [e.input for e in examples], [e.target for e in examples],
                                self.data.max_input_length, self.data.max_target_length)
        return [{"input_ids": ids, "labels": labels, "task": example.task, "input_truncated": cut_input,
                 "target_truncated": cut_target}
                for ids, labels, example, cut_input, cut_target in zip(
                    tokens["input_ids"], tokens["labels"], examples, tokens["input_truncated"],
                    tokens["target_truncated"], strict=True)]

    def collate(self, examples: Sequence[Example] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        features = self.tokenize(examples) if examples and not isinstance(examples[0], Mapping) else examples
        batch = self.collator(features)
        batch["real_tokens"], batch["all_tokens"] = count_tokens(batch)
        return batch

    def encode_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded `input_ids` / `attention_mask` for generation, encoded exactly as in training."""
        ids, _ = encode_texts(self.tokenizer, texts, self.data.max_input_length)
        return dict(self.tokenizer.pad({"input_ids": ids}, return_tensors="pt"))
