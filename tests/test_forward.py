"""pipeline/forward.py: the packed forward against the unpacked one (logits, losses, gradients), and no example
sees another in a packed row."""

import pytest
import torch
from seq2seq_helpers import PAIRS, features, tiny_t5, word_tokenizer

from pipeline.data.collate import LABEL_PAD, PackingCollator, PaddingCollator
from pipeline.forward import (
    Seq2SeqLogits,
    example_loss_sums,
    inner_model,
    model_weight_name,
    seq2seq_forward,
    token_losses,
)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


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


def test_a_compiled_model_is_peeled_and_its_weight_names_are_the_models(tokenizer):
    """`train.compile=true` wraps Seq2SeqLogits in torch.compile's module: saving and scoring must see through it
    (its `_orig_mod.` prefix, and DDP's `module.`, on every saved name)."""
    model = tiny_t5(len(tokenizer), "sdpa", True)
    compiled = torch.compile(Seq2SeqLogits(model))  # compiles at the first call: nothing runs here
    assert inner_model(compiled) is model
    names = {model_weight_name(name) for name in compiled.state_dict()}
    assert names == set(model.state_dict())
    assert model_weight_name("module._orig_mod.model.shared.weight") == "shared.weight"
