"""T5's pre-training objective as a preprocessing step: span corruption of plain text.

    inputs, targets = corrupt("the quick brown fox jumps over the lazy dog", seed=0)
    # inputs  "the quick brown fox jumps <extra_id_0> lazy dog"   (one span of two words dropped, say)
    # targets "<extra_id_0> over the"

A task names it in task.yaml, `preprocess: [{span_corruption: {noise_density: 0.15}}]`; every row's `text` becomes
`inputs` and `targets` (longer texts first split into pieces of at most `max_words` words), which its template
renders (`{{ inputs }} ||| {{ targets }}`), so the rows mix, pack and evaluate like any task's.

The mask follows seqio's `random_spans_noise_mask` (T5's `span_corruption`): round(length × noise_density) noise
units (at least 1, at most length - 1) in round(noise / mean_noise_span_length) spans (at least 1); the noise and
the non-noise units are each cut into that many non-empty spans uniformly at random, and the spans interleave
starting with non-noise, so the text always ends in a noise span. Each noise span becomes one sentinel in the
inputs (`<extra_id_0>`, `<extra_id_1>`, ... in order, T5's names), and the targets are each sentinel followed by
the span it hides. Rounding is half-to-even, as TF's.

The units are whitespace-separated words, not the tokenizer's pieces: corruption happens before tokenization (as
every preprocessing step does), so a row is the same for any tokenizer whose vocabulary has T5's sentinels (T5,
mT5, FLAN-T5, flanpipe/t5-tiny). A mean span of 3 words is about 4 pieces of the embedded tokenizer.
Deterministic per (seed, text): the draw is seeded by both.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.files import stable_seed

if TYPE_CHECKING:
    import datasets

SENTINEL = "<extra_id_{}>"
DEFAULTS: dict[str, Any] = {"noise_density": 0.15, "mean_noise_span_length": 3.0, "max_words": 150,
                            "field": "text"}
"""T5's noise density and mean span length; `max_words` keeps inputs inside 256 tokens of the embedded tokenizer."""
MAX_SENTINELS = 100
"""T5's vocabularies hold `<extra_id_0>` .. `<extra_id_99>`."""


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: random.Random) -> list[bool]:
    """Which of `length` units are noise (True), in spans as seqio's `random_spans_noise_mask` draws them."""
    if length == 0:
        return []
    padded = max(length, 2)  # seqio's: a single unit is masked as the first of two
    noise = min(max(round(padded * noise_density), 1), padded - 1)
    spans = max(round(noise / mean_noise_span_length), 1)
    spans = min(spans, padded - noise)  # each noise span needs a non-noise span before it
    noise_lengths = _random_segmentation(noise, spans, rng)
    kept_lengths = _random_segmentation(padded - noise, spans, rng)
    mask: list[bool] = []
    for kept, hidden in zip(kept_lengths, noise_lengths, strict=True):
        mask += [False] * kept + [True] * hidden
    return mask[:length]


def _random_segmentation(items: int, segments: int, rng: random.Random) -> list[int]:
    """`items` cut into `segments` non-empty runs, every such cut equally likely (seqio's: shuffle the
    segments - 1 boundaries among the items - 1 gaps)."""
    boundaries = [True] * (segments - 1) + [False] * (items - segments)
    rng.shuffle(boundaries)
    lengths, run = [], 1
    for boundary in boundaries:
        if boundary:
            lengths.append(run)
            run = 0
        run += 1
    return [*lengths, run]


def corrupt_words(words: Sequence[str], mask: Sequence[bool]) -> tuple[str, str]:
    """(inputs, targets): each noise span replaced by the next sentinel in the inputs; the targets are each
    sentinel followed by the words it replaced."""
    inputs: list[str] = []
    targets: list[str] = []
    sentinel = -1
    for position, (word, hidden) in enumerate(zip(words, mask, strict=True)):
        if hidden:
            if position == 0 or not mask[position - 1]:
                sentinel += 1
                inputs.append(SENTINEL.format(sentinel))
                targets.append(SENTINEL.format(sentinel))
            targets.append(word)
        else:
            inputs.append(word)
    return " ".join(inputs), " ".join(targets)


def corrupt(text: str, seed: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
            ) -> tuple[str, str]:
    """(inputs, targets) of one text, drawn from (seed, text) alone."""
    words = text.split()
    rng = random.Random(stable_seed(seed, "span_corruption", text))
    return corrupt_words(words, random_spans_noise_mask(len(words), noise_density, mean_noise_span_length, rng))


def check_settings(settings: dict[str, Any]) -> str | None:
    """What is wrong with a step's settings (None: nothing), in words that name the key."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        return f"unknown setting {unknown[0]!r}; valid: {', '.join(DEFAULTS)}"
    values = {**DEFAULTS, **settings}
    numbers = {key: values[key] for key in ("noise_density", "mean_noise_span_length", "max_words")}
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in numbers.values()):
        return "noise_density, mean_noise_span_length and max_words must be numbers"
    if not 0 < values["noise_density"] < 1:
        return f"noise_density must be between 0 and 1 (T5: 0.15), got {values['noise_density']}"
    if values["mean_noise_span_length"] < 1:
        return f"mean_noise_span_length must be >= 1 (T5: 3.0), got {values['mean_noise_span_length']}"
    if not isinstance(values["max_words"], int) or values["max_words"] < 2:
        return f"max_words must be an integer >= 2, got {values['max_words']}"
    spans = round(values["max_words"] * values["noise_density"] / values["mean_noise_span_length"])
    if spans > MAX_SENTINELS:
        return f"max_words={values['max_words']} would need {spans} sentinels; T5 has {MAX_SENTINELS}: lower it"
    if not isinstance(values["field"], str):
        return f"field must be a column name, got {values['field']!r}"
    return None


def span_corruption_step(dataset: datasets.Dataset, seed: int, **settings: Any) -> datasets.Dataset:
    """The preprocessing step: each row's text (`field`) split into equal pieces of at most `max_words` words,
    each piece one row of `inputs` and `targets` (every other column dropped; texts under two words skipped)."""
    values = {**DEFAULTS, **settings}
    field, width = values["field"], values["max_words"]
    if field not in dataset.column_names:
        raise KeyError(field)

    def rows(batch: dict[str, list]) -> dict[str, list]:
        inputs, targets = [], []
        for text in batch[field]:
            words = (text or "").split()
            if len(words) < 2:  # nothing would be left to read beside the hidden word
                continue
            pieces = -(-len(words) // width)
            size = -(-len(words) // pieces)  # equal pieces: no one-word remainder
            for start in range(0, len(words), size):
                piece = " ".join(words[start:start + size])
                corrupted = corrupt(piece, seed, values["noise_density"], values["mean_noise_span_length"])
                inputs.append(corrupted[0])
                targets.append(corrupted[1])
        return {"inputs": inputs, "targets": targets}

    return dataset.map(rows, batched=True, remove_columns=dataset.column_names)
