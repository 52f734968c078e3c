"""pipeline/evaluate/scoring.py: rank classification scores against a naive per-choice loss, through the one
forward path."""

import pytest
import torch

from pipeline.evaluate.scoring import rank_classification_scores
from pipeline.metrics import rank_classification


@pytest.fixture(scope="module")
def tiny_t5():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = "is the review positive or negative great awful film yes no maybe it was a very good bad".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: i + 3 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config).eval(), tokenizer


RANK_INPUTS = ["is the review positive or negative great film", "it was a very bad film", "awful"]
RANK_CHOICES = [["positive", "negative"], ["yes", "no", "maybe it was"], ["very good film"]]


def naive_scores(model, tokenizer, inputs, choices):
    scores = []
    with torch.no_grad():
        for text, options in zip(inputs, choices, strict=True):
            input_ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"] + [1]])
            row = []
            for choice in options:
                labels = torch.tensor([tokenizer(choice, add_special_tokens=False)["input_ids"] + [1]])
                row.append(-model(input_ids=input_ids, labels=labels).loss.item() * labels.shape[1])
            scores.append(row)
    return scores


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_rank_scores_equal_a_naive_per_choice_loss(tiny_t5, batch_size):
    model, tokenizer = tiny_t5
    ours = rank_classification_scores(model, tokenizer, RANK_INPUTS, RANK_CHOICES, batch_size=batch_size)
    expected = naive_scores(model, tokenizer, RANK_INPUTS, RANK_CHOICES)
    assert [len(row) for row in ours] == [2, 3, 1]
    for row, expected_row in zip(ours, expected, strict=True):
        assert row == pytest.approx(expected_row, abs=1e-4)


def test_rank_scores_length_normalised_divide_by_token_count_with_eos(tiny_t5):
    model, tokenizer = tiny_t5
    summed = rank_classification_scores(model, tokenizer, RANK_INPUTS, RANK_CHOICES)
    normalised = rank_classification_scores(model, tokenizer, RANK_INPUTS, RANK_CHOICES, length_normalize=True)
    for options, sums, means in zip(RANK_CHOICES, summed, normalised, strict=True):
        counts = [len(choice.split()) + 1 for choice in options]  # one token per word, plus eos
        assert means == pytest.approx([s / n for s, n in zip(sums, counts, strict=True)], abs=1e-5)


def test_rank_scores_leave_a_training_model_in_training_mode_and_are_deterministic(tiny_t5):
    model, tokenizer = tiny_t5
    model.train()
    try:
        first = rank_classification_scores(model, tokenizer, RANK_INPUTS, RANK_CHOICES)
        assert model.training
        assert rank_classification_scores(model, tokenizer, RANK_INPUTS, RANK_CHOICES) == first
    finally:
        model.eval()


def test_rank_classification_finds_the_choice_a_biased_model_prefers(tiny_t5):
    # Every next-token logit of "negative" raised by 20: a choice holding it scores about -20 (its eos is
    # now unlikely), any other about -40, wherever "negative" sits among the choices.
    model, tokenizer = tiny_t5
    negative = tokenizer.convert_tokens_to_ids("negative")

    def favour_negative(module, args, logits):
        return logits + 20.0 * torch.nn.functional.one_hot(torch.tensor(negative), logits.shape[-1])

    choices = [["positive", "negative"], ["negative", "yes", "no"], ["no", "maybe", "negative"]]
    handle = model.lm_head.register_forward_hook(favour_negative)
    try:
        scores = rank_classification_scores(model, tokenizer, RANK_INPUTS, choices, batch_size=4)
    finally:
        handle.remove()
    assert rank_classification(scores, [1, 0, 2]) == {"rank_accuracy": 100.0}
    assert rank_classification(scores, [0, 0, 0]) == {"rank_accuracy": pytest.approx(100 / 3)}


def test_rank_scores_run_the_encoder_once_per_input(tiny_t5):
    model, tokenizer = tiny_t5
    encoded_rows = []
    handle = model.encoder.register_forward_hook(lambda module, args, kwargs, output: encoded_rows.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        rank_classification_scores(model, tokenizer, RANK_INPUTS, RANK_CHOICES, batch_size=5)
    finally:
        handle.remove()
    assert encoded_rows == [2, 1]  # groups of at most 5 (input, choice) pairs: 2 + 3 choices, then 1
