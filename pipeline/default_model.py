"""The embedded default model, `flanpipe/t5-tiny`: a small T5 v1.1-style model and a Unigram tokenizer, created
locally once (no hub), cached under `<cache_dir>/models/t5-tiny-<hash>`.

    folder = create_default_model(out_dir, texts, DefaultModelSpec(), seed=0)
    folder = default_model_dir(cache_dir, spec, text_fingerprint(texts), seed)   # where it is cached

The hash covers its shape, seed and tokenizer text. It is a T5 v1.1-style model (gated-GELU feed-forward,
relative position buckets, no biases) built from a `T5Config`, with a Unigram tokenizer trained by `tokenizers`
on the built-in task text, following T5's conventions (pad=0, eos=1, unk=2, `<extra_id_N>` sentinels at the top
of the vocabulary, `</s>` appended to every text). Both are written with `save_pretrained`, so the folder loads
with plain transformers like any hub model. Loading (and creating it on first use) is `pipeline.modeling`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import UnigramTrainer
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from pipeline.errors import UserError
from pipeline.files import content_hash, staged_folder, verify_manifest

DEFAULT_MODEL = "flanpipe/t5-tiny"
PRETRAINED_MODEL = "flanpipe/t5-tiny-pretrained"
"""The default after T5's span-corruption pre-training on the built-in corpus (`flanpipe base`, configs/base.yaml)."""
# Bump when the recipe below changes (tokenizer pipeline, init, saved files): cached defaults are rebuilt.
DEFAULT_RECIPE_VERSION = 1
# Unigram training time grows with the text (~10-20 s per MB on 2 CPU cores); 2 MB is plenty for a ~4k vocab.
TOKENIZER_MAX_CHARS = 2_000_000
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: T5's order
PROVENANCE_FILE = "flanpipe_default.json"


@dataclass(frozen=True)
class DefaultModelSpec:
    """The embedded default's shape; every field is part of its cache key.

    Embeddings are tied (input, output and both stacks share one matrix, logits scaled by d_model**-0.5 as in
    the original T5): transformers 5 always ties T5's `lm_head` when building from a config (its
    `tie_word_embeddings=False` only turns the scaling off), and an untied head would add a second
    0.5M-parameter matrix to a 1.7M-parameter model.
    """

    vocab_size: int = 4096
    """Tokenizer size including the 3 special tokens and the sentinels; also the embedding matrix's rows."""
    d_model: int = 128
    """Width of the residual stream."""
    d_ff: int = 512
    """Width of the gated-GELU feed-forward layers."""
    num_layers: int = 2
    """Encoder blocks."""
    num_decoder_layers: int = 2
    """Decoder blocks."""
    num_heads: int = 4
    """Attention heads per layer."""
    d_kv: int = 32
    """Width of each attention head (T5 does not require num_heads * d_kv == d_model)."""
    extra_ids: int = 100
    """Sentinel tokens `<extra_id_0>`.. at the top of the vocabulary, as in T5 (2.4% of a 4k vocabulary)."""
    dropout_rate: float = 0.0
    """T5 v1.1 pretrains without dropout; a model trained from scratch for a few minutes (about one pass over
    the data) underfits rather than overfits, so dropout would mostly slow it down."""

    def __post_init__(self) -> None:
        for name in ("d_model", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "d_kv"):
            if getattr(self, name) < 1:
                raise UserError(f"default model: {name} must be >= 1, got {getattr(self, name)}")
        if self.extra_ids < 0:
            raise UserError(f"default model: extra_ids must be >= 0, got {self.extra_ids}")
        if self.vocab_size - self.extra_ids - len(SPECIAL_TOKENS) < 64:
            raise UserError(
                f"default model: vocab_size {self.vocab_size} leaves too few pieces after {self.extra_ids} "
                f"sentinels and {len(SPECIAL_TOKENS)} special tokens; raise vocab_size or lower extra_ids"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise UserError(f"default model: dropout_rate must be in [0, 1), got {self.dropout_rate}")

    def t5_config(self) -> Any:
        """The `T5Config` for this shape: v1.1 style (gated-GELU), T5's token ids."""
        return T5Config(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers,
            num_heads=self.num_heads,
            d_kv=self.d_kv,
            dropout_rate=self.dropout_rate,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=True,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )


DEFAULT_SPEC = DefaultModelSpec()


def text_fingerprint(texts: Iterable[str]) -> str:
    """A short hash of a sequence of texts (length-prefixed, so the boundaries count)."""
    return content_hash(list(texts))


def default_model_dir(cache_dir: Path, spec: DefaultModelSpec, text_fingerprint: str, seed: int = 0) -> Path:
    """Where the default model for this spec, text and seed lives: `<cache_dir>/models/t5-tiny-<hash>`."""
    key = {
        "recipe": DEFAULT_RECIPE_VERSION,
        "spec": dataclasses.asdict(spec),
        "texts": text_fingerprint,
        "seed": seed,
        "tokenizer_max_chars": TOKENIZER_MAX_CHARS,
    }
    digest = content_hash(key, length=12)
    return Path(cache_dir).expanduser() / "models" / f"t5-tiny-{digest}"


def create_default_model(
    out_dir: Path,
    texts: Iterable[str] | Callable[[], Iterable[str]],
    spec: DefaultModelSpec = DefaultModelSpec(),
    seed: int = 0,
) -> Path:
    """Train the tokenizer, build the model from `spec.t5_config()` and save both into `out_dir`.

    Deterministic given `texts`, `spec` and `seed`. Written into a temporary sibling folder and renamed into
    place with a manifest, so `out_dir` is either absent or complete; if another process finished it first, its
    copy is kept (same inputs, same result). A damaged `out_dir` (one that fails `verify_manifest`) is replaced.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and verify_manifest(out_dir) is None:
        raise UserError(f"{out_dir}: already exists; delete it to create the default model again")
    print(f"creating the default model {DEFAULT_MODEL} in {out_dir} (once)", file=sys.stderr, flush=True)
    corpus = _subsample(list(texts() if callable(texts) else texts), TOKENIZER_MAX_CHARS)
    tokenizer = train_default_tokenizer(corpus, spec.vocab_size, spec.extra_ids)
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's generator
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(spec.t5_config())
    provenance = {
        "name": DEFAULT_MODEL,
        "recipe": DEFAULT_RECIPE_VERSION,
        "spec": dataclasses.asdict(spec),
        "seed": seed,
        "tokenizer_texts": len(corpus),
        "tokenizer_chars": sum(map(len, corpus)),
        "tokenizer_vocab": len(tokenizer),
        "parameters": count_parameters(model),
    }

    with staged_folder(out_dir, keep_existing=not out_dir.exists(), manifest=True) as staging:
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out_dir


def _subsample(texts: list[str], max_chars: int) -> list[str]:
    """Evenly spaced texts adding up to about `max_chars`, drawn from the whole (task-ordered) sequence."""
    total = sum(map(len, texts))
    if total <= max_chars:
        return texts
    stride = total / max_chars
    return [texts[int(i * stride)] for i in range(int(len(texts) / stride))]


def train_default_tokenizer(texts: Iterable[str], vocab_size: int, extra_ids: int) -> PreTrainedTokenizerFast:
    """Train a Unigram tokenizer with T5's conventions on `texts`.

    ids 0, 1, 2 are `<pad>`, `</s>`, `<unk>`; then the learned pieces; then the sentinels, `<extra_id_0>` last
    (highest id) as in T5. NFKC normalization, SentencePiece-style `▁` word boundaries (Metaspace), and
    `</s>` appended to every encoded text. Newlines are kept as text (T5's own vocabulary drops them): the
    prompt templates use them. With too little text the vocabulary comes out smaller than asked.
    """
    pieces = vocab_size - extra_ids
    if pieces <= len(SPECIAL_TOKENS):
        raise UserError(f"tokenizer: vocab_size {vocab_size} must exceed extra_ids {extra_ids} + 3 specials")
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise UserError("tokenizer: no text to train on; is the built-in task data empty? (`flanpipe data`)")

    def with_pipeline(model: models.Unigram) -> Tokenizer:
        tokenizer = Tokenizer(model)
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        return tokenizer

    trained = with_pipeline(models.Unigram())
    trainer = UnigramTrainer(
        vocab_size=pieces, special_tokens=list(SPECIAL_TOKENS), unk_token="<unk>", show_progress=False
    )
    trained.train_from_iterator(texts, trainer)
    learned = json.loads(trained.to_str())["model"]["vocab"][len(SPECIAL_TOKENS) :]
    vocab = [(token, 0.0) for token in SPECIAL_TOKENS] + _canonical(learned)
    tokenizer = with_pipeline(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index("<unk>")))
    sentinels = [f"<extra_id_{i}>" for i in range(extra_ids)]
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in reversed(sentinels)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=sentinels,
        model_max_length=512,
    )


def _canonical(pieces: list[list[Any]]) -> list[tuple[str, float]]:
    """The trained pieces in an order and with scores that do not depend on the run.

    The `tokenizers` Unigram trainer iterates hash maps: scores differ in the last bits from run to run, and
    the characters it must keep get score `min + k * 1e-4` in arbitrary order k. Rounding the learned scores
    and giving those characters (the band just above the minimum; learned pieces sit ~1 nat higher) one
    shared score makes the result a function of the text alone; ids then follow the scores, best first.
    """
    lowest = min(score for _, score in pieces)
    canonical = [(piece, round(lowest if score < lowest + 0.5 else score, 6)) for piece, score in pieces]
    return sorted(canonical, key=lambda item: (-item[1], item[0]))


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
