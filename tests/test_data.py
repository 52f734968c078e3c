"""Tokenization, padding, length grouping, packing, and the packed forward against the unpacked one."""

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from pipeline.config import load_config
from pipeline.data.collate import (
    LABEL_PAD,
    PackingCollator,
    PaddingCollator,
    count_tokens,
    length_grouped_batches,
    make_collator,
    pack_rows,
)
from pipeline.data.tokenize import TruncationStats, encode_texts, tokenize_batch
from pipeline.forward import Seq2SeqLogits, example_loss_sums, seq2seq_forward, token_losses


def padding_efficiency(batch):
    real, total = count_tokens(batch)
    return real / total


def per_example_losses(logits, labels, example_ids=None, num_examples=None):
    """Mean token loss of each example, in the order of the collated features."""
    batch = {"labels": labels}
    if example_ids is not None:
        batch["target_example_ids"] = example_ids
    if num_examples is not None:
        batch["task"] = [""] * num_examples
    sums, counts = example_loss_sums(token_losses(logits, labels), batch)
    return sums / counts.clamp_min(1)


def token_mean_loss(logits, labels):
    return token_losses(logits, labels).sum() / (labels != LABEL_PAD).sum()


def tokenize_dataset(dataset, tokenizer, max_input_length, max_target_length):
    return dataset.map(lambda rows: tokenize_batch(tokenizer, rows["input"], rows["target"], max_input_length,
                                                   max_target_length), batched=True)

SENTENCES = [
    "is this review positive or negative ?",
    "the film was a quiet sharp and oddly moving portrait of grief",
    "positive",
    "negative",
    "translate to french : the cat sat on the mat",
    "le chat est assis sur le tapis",
    "question : what colour is the sky ? answer : blue",
    "summarize : a long story about a dog who walked to the park and back again",
    "yes",
    "no",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    words = sorted({word for sentence in SENTENCES for word in sentence.split()})
    vocab = {token: i for i, token in enumerate(["<pad>", "</s>", "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_t5(vocab_size: int, attention: str = "sdpa", tied: bool = True) -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    config = T5Config(vocab_size=vocab_size, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                      d_kv=8, feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0,
                      eos_token_id=1, tie_word_embeddings=tied)
    model = T5ForConditionalGeneration(config).eval()
    model.set_attn_implementation(attention)
    return model


def features(tokenizer, pairs, max_input_length=32, max_target_length=16):
    inputs, targets = zip(*pairs, strict=True)
    columns = tokenize_batch(tokenizer, inputs, targets, max_input_length, max_target_length)
    return [{"input_ids": i, "labels": t, "task": f"task{n % 3}"}
            for n, (i, t) in enumerate(zip(columns["input_ids"], columns["labels"], strict=True))]


# Eight examples of varied lengths: short classification prompts and longer generation ones.
PAIRS = [
    (SENTENCES[0] + " " + SENTENCES[1], "positive"),
    (SENTENCES[4], SENTENCES[5]),
    (SENTENCES[6], "blue"),
    (SENTENCES[7], "a dog walked to the park"),
    ("yes or no ?", "yes"),
    (SENTENCES[1], "negative"),
    (SENTENCES[7] + " " + SENTENCES[1], "the dog"),
    ("no", "no"),
]


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
    assert (packing.input_row_length, packing.target_row_length, packing.pad_to_multiple_of) == (256, 64, 8)


# --- the packed forward equals the unpacked one -------------------------------------------------------------


def segment_logits(packed_logits, batch, example):
    return packed_logits[batch["target_example_ids"] == example]


@pytest.mark.parametrize(("attention", "tied"), [("sdpa", True), ("sdpa", False), ("eager", True), ("eager", False)])
def test_packed_losses_and_logits_equal_unpacked(tokenizer, attention, tied):
    model = tiny_t5(len(tokenizer), attention, tied)
    rows = features(tokenizer, PAIRS)
    padded = PaddingCollator(tokenizer)(rows)
    packed = PackingCollator(input_row_length=32, target_row_length=16)(rows)
    assert packed["input_ids"].shape[0] <= len(rows) // 2  # really packed
    with torch.no_grad():
        padded_logits = seq2seq_forward(model, padded)
        packed_logits = seq2seq_forward(model, packed)
        reference = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                          labels=padded["labels"])

    unpacked_losses = per_example_losses(padded_logits, padded["labels"])
    packed_losses = per_example_losses(packed_logits, packed["labels"], packed["target_example_ids"], len(rows))
    torch.testing.assert_close(packed_losses, unpacked_losses, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(token_mean_loss(packed_logits, packed["labels"]), reference.loss,
                               rtol=1e-5, atol=1e-5)
    for example, row in enumerate(rows):
        n = len(row["labels"])
        torch.testing.assert_close(segment_logits(packed_logits, packed, example), padded_logits[example, :n],
                                   rtol=1e-5, atol=1e-5)


def test_no_example_sees_another_in_a_packed_row(tokenizer):
    model = tiny_t5(len(tokenizer))
    rows = features(tokenizer, PAIRS)
    packing = PackingCollator(input_row_length=32, target_row_length=16)
    batch = packing(rows)
    row_of = {e: r for r in range(batch["labels"].shape[0]) for e in batch["target_example_ids"][r].tolist()}
    victim = next(e for e in range(len(rows)) if [row_of[o] for o in range(len(rows))].count(row_of[e]) > 1)
    neighbours = [e for e in range(len(rows)) if e != victim and row_of[e] == row_of[victim]]

    changed = [dict(row) for row in rows]
    changed[victim]["input_ids"] = [(t + 5) % len(tokenizer) for t in rows[victim]["input_ids"][:-1]] + [1]
    changed[victim]["labels"] = [(t + 7) % len(tokenizer) for t in rows[victim]["labels"][:-1]] + [1]
    changed_batch = packing(changed)
    assert torch.equal(changed_batch["encoder_segment_ids"], batch["encoder_segment_ids"])  # same layout
    with torch.no_grad():
        before, after = seq2seq_forward(model, batch), seq2seq_forward(model, changed_batch)
    for example in neighbours:
        assert torch.equal(segment_logits(before, batch, example), segment_logits(after, changed_batch, example))
    assert not torch.allclose(segment_logits(before, batch, victim), segment_logits(after, changed_batch, victim))


def test_packed_and_padded_gradients_agree_through_the_wrapper(tokenizer):
    rows = features(tokenizer, PAIRS)
    gradients = []
    for collate in (PaddingCollator(tokenizer), PackingCollator(input_row_length=32, target_row_length=16)):
        model = Seq2SeqLogits(tiny_t5(len(tokenizer)))
        batch = collate(rows)
        token_mean_loss(model(batch), batch["labels"]).backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-4, atol=1e-6)
