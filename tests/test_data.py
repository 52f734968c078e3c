"""pipeline/data/: tokenization, padding, length grouping, packing (the forward over packed batches: test_forward.py)."""

import random

import datasets
import pytest
from seq2seq_helpers import PAIRS, SENTENCES, features, word_tokenizer

from pipeline.config import load_config
from pipeline.data.collate import (
    LABEL_PAD,
    PackingCollator,
    PaddingCollator,
    count_tokens,
    length_grouped_batches,
    make_collator,
    pack_rows,
    padded_area,
    plan_rows,
)
from pipeline.data.tokenize import TruncationStats, check_tokenizer, encode_texts, shown, tokenize_batch
from pipeline.errors import UserError


def padding_efficiency(batch):
    real, total = count_tokens(batch)
    return real / total


def tokenize_dataset(dataset, tokenizer, max_input_length, max_target_length):
    return dataset.map(lambda rows: tokenize_batch(tokenizer, rows["input"], rows["target"], max_input_length,
                                                   max_target_length), batched=True)

@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


# --- tokenization -------------------------------------------------------------------------------------------


def test_encode_texts_appends_eos_and_truncates_counting(tokenizer):
    ids, truncated = encode_texts(tokenizer, ["positive", SENTENCES[1]], max_length=5)
    assert ids[0] == [tokenizer.convert_tokens_to_ids("positive"), 1]
    assert len(ids[1]) == 5 and ids[1][-1] == 1 and truncated == [False, True]
    assert tokenizer.decode(ids[1][:-1]) == "the film was a"

    tokenizer.truncation_side = "left"
    try:
        (kept_end,), _ = encode_texts(tokenizer, [SENTENCES[1]], max_length=4)
    finally:
        tokenizer.truncation_side = "right"
    assert tokenizer.decode(kept_end[:-1]) == "portrait of grief"


def test_tokenize_dataset_keeps_columns_and_truncation_is_counted(tokenizer):
    rendered = datasets.Dataset.from_dict({"input": [SENTENCES[1], "yes or no ?", SENTENCES[7]],
                                           "target": ["positive", SENTENCES[7], "no"],
                                           "task": ["a", "b", "c"]})
    tokenized = tokenize_dataset(rendered, tokenizer, max_input_length=8, max_target_length=4)
    assert tokenized["task"] == ["a", "b", "c"]
    assert all(row[-1] == 1 for row in tokenized["labels"])
    stats = TruncationStats.of(tokenized)
    assert stats == TruncationStats(examples=3, inputs_truncated=2, targets_truncated=1)
    assert "inputs truncated 2 (66.7%), targets truncated 1 (33.3%)" in stats.message()
    assert (stats + stats).targets_truncated == 2


# --- padding ------------------------------------------------------------------------------------------------


def test_padding_collator_pads_labels_with_minus_100_and_shifts_decoder_inputs(tokenizer):
    rows = features(tokenizer, PAIRS[:3])
    batch = PaddingCollator(tokenizer)(rows)
    longest_target = max(len(r["labels"]) for r in rows)
    assert batch["labels"].shape == (3, longest_target)
    assert batch["input_ids"].shape == (3, max(len(r["input_ids"]) for r in rows))
    for row, labels, decoder_inputs, mask in zip(rows, batch["labels"], batch["decoder_input_ids"],
                                                 batch["attention_mask"], strict=True):
        n = len(row["labels"])
        assert labels[:n].tolist() == row["labels"] and (labels[n:] == LABEL_PAD).all()
        assert decoder_inputs[:n].tolist() == [0, *row["labels"][:-1]]
        assert (decoder_inputs >= 0).all()
        assert int(mask.sum()) == len(row["input_ids"])
    assert batch["task"] == ["task0", "task1", "task2"]

    padded8 = PaddingCollator(tokenizer, pad_to_multiple_of=8)(rows)
    assert padded8["input_ids"].shape[1] % 8 == 0 and padded8["labels"].shape[1] % 8 == 0
    assert count_tokens(padded8)[0] == count_tokens(batch)[0]
    assert padding_efficiency(padded8) < padding_efficiency(batch) <= 1.0


def test_length_grouped_batches_is_deterministic_and_groups_similar_lengths():
    lengths = [5, 40, 7, 38, 6, 41, 39, 8]
    groups = length_grouped_batches(lengths, batch_size=4)
    assert groups == length_grouped_batches(list(lengths), batch_size=4)
    assert sorted(i for group in groups for i in group) == list(range(8))
    assert {lengths[i] for i in groups[0]} == {38, 39, 40, 41}
    assert length_grouped_batches([(3, 1), (3, 2), (1, 9)], 1) == [[1], [0], [2]]


# --- packing ------------------------------------------------------------------------------------------------


def test_pack_rows_respects_both_row_lengths():
    lengths = [(10, 2), (6, 2), (5, 9), (4, 1), (3, 3), (12, 1)]
    rows = pack_rows(lengths, input_row_length=16, target_row_length=10)
    assert sorted(i for row in rows for i in row) == list(range(6))
    for row in rows:
        assert sum(lengths[i][0] for i in row) <= 16 and sum(lengths[i][1] for i in row) <= 10
    assert len(rows) < len(lengths)
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([(17, 1)], input_row_length=16, target_row_length=10)


def test_packing_collator_restarts_decoder_inputs_at_every_segment(tokenizer):
    rows = features(tokenizer, PAIRS)
    batch = PackingCollator(input_row_length=32, target_row_length=16)(rows)
    assert batch["input_ids"].shape[0] < len(rows) and batch["task"] == [r["task"] for r in rows]
    seen = []
    for r in range(batch["input_ids"].shape[0]):
        for segment in batch["decoder_segment_ids"][r].unique().tolist():
            if segment == 0:
                assert (batch["labels"][r][batch["decoder_segment_ids"][r] == 0] == LABEL_PAD).all()
                continue
            on_target = batch["decoder_segment_ids"][r] == segment
            (example,) = batch["target_example_ids"][r][on_target].unique().tolist()
            seen.append(example)
            assert batch["labels"][r][on_target].tolist() == rows[example]["labels"]
            assert batch["decoder_input_ids"][r][on_target].tolist() == [0, *rows[example]["labels"][:-1]]
            on_input = batch["encoder_segment_ids"][r] == segment
            assert batch["input_ids"][r][on_input].tolist() == rows[example]["input_ids"]
    assert sorted(seen) == list(range(len(rows)))
    assert (batch["target_example_ids"][batch["labels"] == LABEL_PAD] == -1).all()
    assert padding_efficiency(batch) > padding_efficiency(PaddingCollator(tokenizer)(rows))


def test_make_collator_follows_data_packing(tokenizer):
    assert isinstance(make_collator(load_config().data, tokenizer, 0), PaddingCollator)
    packing = make_collator(load_config(overrides=["data.packing=true", "data.pad_to_multiple_of=8"]).data,
                            tokenizer, 0)
    assert isinstance(packing, PackingCollator)
    assert (packing.input_row_length, packing.target_row_length, packing.pad_to_multiple_of) == (256, 128, 8)


def test_plan_rows_fits_each_batch_and_pads_less_than_first_fit():
    rng = random.Random(0)
    for _ in range(50):
        # Like the default mixture: mostly short labels, some long targets, inputs up to the cap.
        lengths = [(rng.randint(10, 256), rng.choice([2, 3, rng.randint(5, 64)])) for _ in range(rng.randint(1, 40))]
        rows = plan_rows(lengths, 256, 128, multiple=8)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        for row in rows:
            assert sum(lengths[i][0] for i in row) <= 256 and sum(lengths[i][1] for i in row) <= 128
        assert padded_area(lengths, rows, 8) <= padded_area(lengths, pack_rows(lengths, 256, 128), 8)
        assert plan_rows(lengths, 256, 128, multiple=8) == rows  # a pure function of the lengths
    # Even loads: first fit fills a row to 250 tokens beside one of 50, so both rows are 250 wide; spread
    # evenly, the rows hold 200 and 100 and the batch is 200 wide (targets: 1 token each, 2 per row).
    lengths = [(200, 1), (50, 1), (50, 1)]
    assert pack_rows(lengths, 256, 64) == [[0, 1], [2]] and padded_area(lengths, pack_rows(lengths, 256, 64)) == 2 * (250 + 2)
    assert padded_area(lengths, plan_rows(lengths, 256, 64)) == 2 * (200 + 2)
    with pytest.raises(ValueError, match="does not fit"):
        plan_rows([(300, 1)], 256, 64)


@pytest.mark.parametrize("setting", ["data.packed_input_length=100", "data.packed_target_length=10",
                                     "data.packed_input_length=-1"])
def test_packed_row_lengths_below_the_example_caps_are_refused(setting):
    with pytest.raises(UserError, match="packed_"):
        load_config(overrides=[setting])


def test_check_tokenizer_finds_unknown_and_dropped_characters(tokenizer):
    texts = ["the film was good", "yes\nno {x}"]  # the word-level tokenizer knows neither `\n`-joined words nor {x}
    check = check_tokenizer(tokenizer, texts)
    assert 0 < check.unk_rate < 1
    assert "{" in check.lost and "x" in check.lost
    assert shown(["\n", "{"]) == "\\n {"
