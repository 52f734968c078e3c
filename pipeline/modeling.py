"""Models and tokenizers: every way flanpipe gets a model, in one place.

    model, tokenizer = load_model(cfg.model, cfg.data)                          # what a run is configured with
    model, tokenizer = load_model_and_tokenizer("google/flan-t5-small")        # a hub name or a local folder
    load_weights(model, checkpoint_folder, "flanpipe/t5-tiny")                 # a training checkpoint's weights

Every model goes through `AutoConfig` / `AutoTokenizer` / `AutoModelForSeq2SeqLM`, so T5, T5 v1.1, FLAN-T5,
mT5 and BART load the same way. `trust_remote_code` stays off unless the caller turns it on. `DEFAULT_MODEL`
("flanpipe/t5-tiny") cannot be downloaded: it is created on first use (`pipeline.default_model`) from the
*shipped* built-in suite's text, whatever `data.templates_dir` says, so every run shares one base model.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import (
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as transformers_logging

from pipeline.config import (
    SHIPPED_CONFIGS,
    SHIPPED_TEMPLATES,
    Config,
    DataConfig,
    ModelConfig,
    default_cache_dir,
    load_config,
)
from pipeline.default_model import (
    DEFAULT_MODEL,
    DEFAULT_SPEC,
    PRETRAINED_MODEL,
    DefaultModelSpec,
    create_default_model,
    default_model_dir,
    text_fingerprint,
)
from pipeline.errors import UserError, one_line
from pipeline.files import content_hash, usable_cache
from pipeline.forward import model_weight_name
from pipeline.tasks.rendering import sample_texts, texts_fingerprint
from pipeline.tasks.task import load_tasks


class _UntiedHeadNotice(logging.Filter):
    """transformers 5 reads T5's `tie_word_embeddings: false` as "tie, without rescaling" and then warns, on every
    load of FLAN-T5, T5 v1.1 and mT5, that their separate `lm_head` is not tied and the config should say
    `tie_word_embeddings=False`, which it does. The head is loaded untied, as it should be."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "but both are present in the checkpoints with different values" not in record.getMessage()


logging.getLogger("transformers.modeling_utils").addFilter(_UntiedHeadNotice())


def load_model(model: ModelConfig, data: DataConfig, tokenizer_only: bool = False
               ) -> tuple[PreTrainedModel | None, PreTrainedTokenizerBase]:
    """The configured model and tokenizer (the model None with `tokenizer_only`). The embedded default is
    created from the *shipped* built-in suite's text (cached under `data.cache_dir`), so every run and evaluation
    shares one base model; its pre-trained version is what `flanpipe base` built from it."""
    cache_dir = data.cache_path()
    if model.name == PRETRAINED_MODEL:
        final = pretrained_run_dir(shipped_base_recipe(data)) / "final"
        if not (final / "config.json").is_file():
            raise UserError(f"{PRETRAINED_MODEL} is not built yet in {cache_dir}: run `make base` (flanpipe base), "
                            f"once; or use model.name={DEFAULT_MODEL}")
        return load_model_and_tokenizer(final, cache_dir=cache_dir, tokenizer_only=tokenizer_only)
    if model.name != DEFAULT_MODEL:
        return load_model_and_tokenizer(model.name, trust_remote_code=model.trust_remote_code, cache_dir=cache_dir,
                                        tokenizer_only=tokenizer_only)
    tasks = load_tasks(SHIPPED_TEMPLATES)
    return load_model_and_tokenizer(
        model.name, cache_dir=cache_dir, tokenizer_only=tokenizer_only,
        default_texts=lambda: sample_texts(tasks, cache_dir, split_seed=data.split_seed),
        texts_fingerprint=texts_fingerprint(tasks, cache_dir, data.split_seed),
    )


def pretrained_run_dir(recipe: Config) -> Path:
    """Where `flanpipe base` trains a pre-trained base by `recipe` (its model is `final/`), in the recipe's cache,
    keyed by the embedded default it starts from and by every setting but where things are written and logged: a
    new default, recipe or override is a new base. `PRETRAINED_MODEL` is the shipped recipe's (configs/base.yaml)."""
    data = recipe.data
    tasks = load_tasks(SHIPPED_TEMPLATES)
    default = default_model_dir(data.cache_path(), DEFAULT_SPEC, texts_fingerprint(tasks, data.cache_path(),
                                                                                  data.split_seed), 0)
    settings = recipe.to_dict()
    del settings["log"], settings["run"]["name"], settings["run"]["dir"], settings["run"]["threads"]
    del settings["data"]["cache_dir"]
    return default.with_name(f"{default.name}-pretrained-{content_hash(settings, length=8)}")


def shipped_base_recipe(data: DataConfig) -> Config:
    """configs/base.yaml, the recipe of `PRETRAINED_MODEL`, with `data`'s cache."""
    return load_config(SHIPPED_CONFIGS / "base.yaml", [f"data.cache_dir={data.cache_path()}"])


def weights_fingerprint(model: PreTrainedModel) -> str:
    """What a model's cached scores are keyed by: its name and, for a local folder, its config and weight files
    (name, size, modification time and first MiB, which holds a safetensors file's header), so weights replaced
    in place are scored again; for a hub model, the revision it was loaded at."""
    name = str(model.config.name_or_path)
    folder = Path(name)
    if not folder.is_dir():
        return content_hash(name, getattr(model.config, "_commit_hash", None))
    files = []
    for path in sorted(folder.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".json") and path.is_file():
            with open(path, "rb") as handle:
                head = hashlib.sha256(handle.read(1 << 20)).hexdigest()
            stat = path.stat()
            files.append((path.name, stat.st_size, stat.st_mtime_ns, head))
    return content_hash(name, files)


def load_weights(model: PreTrainedModel, checkpoint: Path, model_name: str) -> None:
    """Load a training checkpoint's weights into `model`: `model.safetensors` (one process, DDP) or
    `pytorch_model_fsdp.bin` (FSDP's full state dict). Saved from `Seq2SeqLogits` (and any wrapper: `model_weight_name`).
    A checkpoint of an adapter run holds only the adapters: give a model with them added (frozen base).
    Weights that do not fit, or a checkpoint saved as sharded FSDP state, are a UserError naming the folder."""
    if (checkpoint / "model.safetensors").is_file():
        weights = load_file(str(checkpoint / "model.safetensors"))
    elif (checkpoint / "pytorch_model_fsdp.bin").is_file():
        weights = torch.load(checkpoint / "pytorch_model_fsdp.bin", map_location="cpu", weights_only=True)
    elif any(checkpoint.glob("pytorch_model_fsdp_*")):
        raise UserError(f"{checkpoint}: the weights were saved as sharded FSDP state (fsdp_state_dict_type: "
                        "SHARDED_STATE_DICT), which only a run on the same processes reads; evaluate the run's final "
                        "model (<run>/final), or train with fsdp_state_dict_type: FULL_STATE_DICT")
    else:
        raise UserError(f"{checkpoint}: no model weights (model.safetensors or pytorch_model_fsdp.bin) in this "
                        "checkpoint; it may have been written by another tool")
    weights = {model_weight_name(key): value for key, value in weights.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    if unexpected or [k for k in missing if k not in frozen and "embed_tokens" not in k and "lm_head" not in k]:
        raise UserError(f"{checkpoint}: the checkpoint's weights do not fit {model_name} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    # No `tie_weights()` here: names a tied model shares are one Parameter, so loading one loads all; and on an
    # untied model (FLAN-T5, T5 v1.1, mT5) transformers 5 would re-tie the trained `lm_head` to the embedding.


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    cache_dir: Path | None = None,
    default_texts: Callable[[], Iterable[str]] | None = None,
    torch_dtype: str | torch.dtype | None = None,
    spec: DefaultModelSpec = DEFAULT_SPEC,
    seed: int = 0,
    texts_fingerprint: str | None = None,
    tokenizer_only: bool = False,
) -> tuple[PreTrainedModel | None, PreTrainedTokenizerBase]:
    """Load an encoder-decoder model and its tokenizer by hub name or local folder (not the weights, with
    `tokenizer_only`).

    `DEFAULT_MODEL` creates the embedded default on first use (from `spec`, `seed` and the text that
    `default_texts()` yields, under `cache_dir`, default $FLANPIPE_CACHE) and loads it from there afterwards.
    `texts_fingerprint` (e.g. a hash of the task data) saves reading the text just to find the cached copy.
    `torch_dtype` ("float32", "bfloat16", "auto" or a torch.dtype) is passed to transformers as `dtype`.
    """
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        if default_texts is None:
            raise ValueError(f"{DEFAULT_MODEL} is created from the built-in task text: pass default_texts")
        if cache_dir is None:
            cache_dir = default_cache_dir()
        fingerprint = texts_fingerprint or text_fingerprint(default_texts())
        folder = default_model_dir(Path(cache_dir), spec, fingerprint, seed)
        if not usable_cache(folder, "default model"):
            create_default_model(folder, default_texts, spec, seed)
        name, trust_remote_code = str(folder), False
    return _load_pretrained(name, trust_remote_code=trust_remote_code, dtype=torch_dtype,
                            tokenizer_only=tokenizer_only)


def _load_pretrained(
    name: str, *, trust_remote_code: bool, dtype: str | torch.dtype | None, tokenizer_only: bool = False
) -> tuple[PreTrainedModel | None, PreTrainedTokenizerBase]:
    _check_local_folder(name)
    hint = f"set model.name to a local folder holding a saved model, or model.name={DEFAULT_MODEL}"
    try:
        with _quiet_loading():  # a refused config must not log its complaints before our one line
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:  # transformers reports unreachable/unknown models with these
        raise UserError(f"model {name!r}: cannot load its config ({one_line(error)}); {hint}") from error
    if type(config) not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING and "AutoModelForSeq2SeqLM" not in (
        getattr(config, "auto_map", None) or {}
    ):
        raise UserError(
            f"model {name!r} is a {config.model_type!r} model, but flanpipe needs an encoder-decoder "
            f"(text-to-text) model such as T5, FLAN-T5, mT5 or BART; {hint}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise UserError(f"model {name!r}: cannot load its tokenizer ({one_line(error)}); {hint}") from error
    if tokenizer_only:
        return None, tokenizer
    kwargs: dict[str, Any] = {"config": config, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with _quiet_loading():
            model, info = AutoModelForSeq2SeqLM.from_pretrained(name, output_loading_info=True, **kwargs)
    except (OSError, RuntimeError, SafetensorError) as error:  # missing, truncated, or shaped unlike config.json
        if "mismatched_sizes" in str(error):
            raise UserError(f"model {name!r}: its weights do not fit its config.json (a size such as vocab_size or "
                            "d_model differs from the saved tensors); restore the config.json saved with the "
                            "weights") from None
        raise UserError(f"model {name!r}: cannot load its weights ({one_line(error)}); the weights file may be "
                        f"truncated or damaged: save or download the model again, or {hint}") from None
    if info["missing_keys"]:  # the report transformers would log, said once
        missing = sorted(info["missing_keys"])
        print(f"flanpipe: model {name!r}: {len(missing)} weight(s) not in the saved files were initialised at "
              f"random ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})", file=sys.stderr, flush=True)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(
            f"model {name!r}: its tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}; "
            f"the folder's tokenizer files belong to another model"
        )
    return model, tokenizer


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers logs a weights/config mismatch as a multi-line report, after a progress bar, before raising;
    the error line we raise says it once (and loading a local model takes seconds, not minutes)."""
    level, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)
        if bars:
            transformers_logging.enable_progress_bar()


def _check_local_folder(name: str) -> None:
    """A name that is clearly a path must be a folder with a config.json; say so before transformers
    mistakes it for a malformed hub name."""
    path = Path(name).expanduser()
    looks_like_path = name.startswith(("/", "./", "../", "~")) or path.exists()
    if not looks_like_path:
        return
    if not path.is_dir():
        raise UserError(
            f"model {name!r}: no such folder; give a folder written by save_pretrained, a hub name such as "
            f"google/flan-t5-small, or model.name={DEFAULT_MODEL}"
        )
    if not (path / "config.json").is_file():
        raise UserError(
            f"model {name!r}: the folder has no config.json; give a folder written by save_pretrained "
            f"(config.json, weights and tokenizer files), or model.name={DEFAULT_MODEL}"
        )
