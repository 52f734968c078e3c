"""Shared by test_data.py and test_forward.py: a word-level tokenizer, a tiny T5, and eight examples of varied
lengths."""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from pipeline.data.tokenize import tokenize_batch

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


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over SENTENCES with T5's special ids (pad 0, eos 1, unk 2)."""
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
