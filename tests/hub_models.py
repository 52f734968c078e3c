"""Checkpoints in the hub's own format, made locally: the real classes, tokenizer types, tying and generation-config
conventions of FLAN-T5 / T5 v1.1, the original T5, mT5 and BART, at a few thousand parameters.

    folder = make_hub_model("flan-t5", tmp_path / "flan-t5", texts)

- T5 family: a SentencePiece unigram model trained with `sentencepiece` on `texts` (pad 0, eos 1, unk 2, no bos),
  shipped as `spiece.model` only, so loading goes through transformers' conversion as it does for the hub's
  folders; 100 sentinels on top, as the hub's T5 tokenizers have.
  - flan-t5: T5 v1.1 shape (gated-GELU), `tie_word_embeddings: false` and a separate `lm_head` (FLAN-T5, T5 v1.1);
  - t5: the original T5 (ReLU feed-forward, tied embeddings, logits rescaled by d_model**-0.5);
  - mt5: `MT5ForConditionalGeneration`, untied, gated-GELU.
- BART: a byte-level BPE tokenizer (`vocab.json` + `merges.txt`) and bart-base's generation config conventions
  (`forced_bos_token_id: 0`, `no_repeat_ngram_size: 3`, decoder start `</s>`).
"""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GenerationConfig,
    MT5Config,
    MT5ForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

FAMILIES = ("flan-t5", "t5", "mt5", "bart")
SMALL = {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2, "d_kv": 16}


def _spiece(folder: Path, texts: list[str], vocab_size: int = 200) -> int:
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(" ".join(text.split()) for text in texts))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    corpus.unlink()
    (folder / "spiece.vocab").unlink()
    return sentencepiece.SentencePieceProcessor(model_file=str(folder / "spiece.model")).get_piece_size() + 100


def make_hub_model(family: str, folder: Path, texts: list[str]) -> Path:
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    ids = {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
    if family in ("flan-t5", "t5", "mt5"):
        vocab = _spiece(folder, texts)
        if family == "mt5":
            model = MT5ForConditionalGeneration(MT5Config(vocab_size=vocab, feed_forward_proj="gated-gelu",
                                                          tie_word_embeddings=False, **SMALL, **ids))
        else:
            gated = family == "flan-t5"
            model = T5ForConditionalGeneration(T5Config(vocab_size=vocab, tie_word_embeddings=not gated,
                                                        feed_forward_proj="gated-gelu" if gated else "relu",
                                                        **SMALL, **ids))
        if family != "t5":  # the hub's untied checkpoints: a head of its own, not a copy of the embedding
            with torch.no_grad():
                model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.5)
        model.save_pretrained(folder)
        if family != "t5":  # and a config that says so, as the hub's does
            config = json.loads((folder / "config.json").read_text())
            config["tie_word_embeddings"] = False
            (folder / "config.json").write_text(json.dumps(config, indent=2))
        return folder
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(texts, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer.save_model(str(folder))
    config = BartConfig(vocab_size=tokenizer.get_vocab_size(), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        decoder_start_token_id=2, forced_eos_token_id=2)
    model = BartForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, decoder_start_token_id=2,
                                               forced_bos_token_id=0, forced_eos_token_id=2, no_repeat_ngram_size=3,
                                               num_beams=4, early_stopping=True)
    model.save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BartTokenizer"}))
    return folder
