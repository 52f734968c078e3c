"""Tokenization for training and evaluation: token ids ending with eos, truncated to the configured lengths,
with truncation counted.

    ids, truncated = encode_texts(tokenizer, ["a prompt"], max_length=256)
    columns = tokenize_batch(tokenizer, inputs, targets, 256, 64)   # a datasets.map(batched=True) function
    TruncationStats.of(columns).message()

`encode_texts` appends `</s>` (T5's convention, done here rather than by the tokenizer's post-processor so every
tokenizer behaves the same) and truncates to the configured length, eos included, keeping the start (or the
end when `tokenizer.truncation_side == "left"`). Each row records whether it was truncated; `TruncationStats`
counts them so the trainer logs it: truncation is never silent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
                 ) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each text ending with eos, at most `max_length` long (eos included), and whether each was
    truncated. Shared by training and evaluation so a prompt is encoded the same way in both."""
    return _ending_with_eos(tokenizer, tokenizer(list(texts), add_special_tokens=False)["input_ids"], max_length)


def _ending_with_eos(tokenizer: PreTrainedTokenizerBase, token_lists: Sequence[list[int]], max_length: int
                     ) -> tuple[list[list[int]], list[bool]]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; T5-style training needs one to end inputs and targets")
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    keep_end = getattr(tokenizer, "truncation_side", "right") == "left"
    ids, truncated = [], []
    for tokens in token_lists:
        cut = len(tokens) + 1 > max_length
        if cut:
            room = max_length - 1
            tokens = tokens[len(tokens) - room:] if keep_end else tokens[:room]
        ids.append([*tokens, eos])
        truncated.append(cut)
    return ids, truncated


def tokenize_batch(tokenizer: PreTrainedTokenizerBase, inputs: Sequence[str], targets: Sequence[str],
                   max_input_length: int, max_target_length: int) -> dict[str, list]:
    """Columns `input_ids`, `labels` (unpadded, each ending with eos), `input_truncated`, `target_truncated`;
    usable as the function of `datasets.map(batched=True)`. Inputs and targets go to the tokenizer in one call
    (each is encoded exactly as `encode_texts` encodes it)."""
    token_lists = tokenizer([*inputs, *targets], add_special_tokens=False)["input_ids"]
    input_ids, input_truncated = _ending_with_eos(tokenizer, token_lists[:len(inputs)], max_input_length)
    labels, target_truncated = _ending_with_eos(tokenizer, token_lists[len(inputs):], max_target_length)
    return {"input_ids": input_ids, "labels": labels,
            "input_truncated": input_truncated, "target_truncated": target_truncated}


@dataclass(frozen=True)
class TruncationStats:
    """How many examples lost tokens to truncation; the trainer logs this once per dataset."""

    examples: int
    inputs_truncated: int
    targets_truncated: int

    @classmethod
    def of(cls, rows: datasets.Dataset | Mapping[str, Sequence[bool]]) -> TruncationStats:
        """Count the truncation flags of a tokenized dataset or of a `tokenize_batch` result."""
        inputs, targets = rows["input_truncated"], rows["target_truncated"]
        return cls(len(inputs), int(sum(inputs)), int(sum(targets)))

    def __add__(self, other: TruncationStats) -> TruncationStats:
        return TruncationStats(self.examples + other.examples, self.inputs_truncated + other.inputs_truncated,
                               self.targets_truncated + other.targets_truncated)

    def message(self, what: str = "examples") -> str:
        def share(count: int) -> str:
            return f"{count:,} ({100 * count / max(self.examples, 1):.1f}%)"

        return (f"{what}: {self.examples:,} tokenized; inputs truncated {share(self.inputs_truncated)}, "
                f"targets truncated {share(self.targets_truncated)}")


@dataclass(frozen=True)
class TokenizerCheck:
    """What a tokenizer does to a sample of rendered text."""

    unk_rate: float
    """Share of the sample's tokens that are the unknown token."""
    lost: tuple[str, ...]
    """Characters that become the unknown token."""
    dropped: tuple[str, ...]
    """Characters that vanish or change without an unknown token (T5's vocabulary turns newlines into spaces)."""


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> TokenizerCheck:
    """Encode a sample of rendered prompts and targets; find the characters the model never sees as written."""
    unknown = tokenizer.unk_token_id
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    tokens = sum(map(len, encoded))
    unknowns = sum(ids.count(unknown) for ids in encoded) if unknown is not None else 0
    lost, dropped = [], []
    for character in sorted(set("".join(texts)) - {" "}):
        ids = tokenizer(f"a{character}b", add_special_tokens=False)["input_ids"]
        if unknown is not None and unknown in ids:
            lost.append(character)
        elif character not in tokenizer.decode(ids):
            dropped.append(character)
    return TokenizerCheck(unknowns / max(1, tokens), tuple(lost), tuple(dropped))


def shown(characters: Sequence[str]) -> str:
    """Characters as a reader can see them in one line (a newline as \\n, a tab as \\t)."""
    return " ".join(repr(c)[1:-1] for c in characters)
