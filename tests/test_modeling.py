"""Tests for pipeline/modeling.py and pipeline/default_model.py: the default tokenizer's T5 conventions, the
default model's creation and
caching, loading through plain transformers (T5 and BART), and one-line errors for models that cannot work."""

import collections
import json
import pathlib
import pydoc
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    T5ForConditionalGeneration,
)

from pipeline import modeling
from pipeline.default_model import (
    DEFAULT_MODEL,
    DefaultModelSpec,
    count_parameters,
    create_default_model,
    default_model_dir,
    text_fingerprint,
    train_default_tokenizer,
)
from pipeline.errors import UserError
from pipeline.modeling import load_model_and_tokenizer

TINY = DefaultModelSpec(
    vocab_size=320, d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16,
    extra_ids=10,
)


def english_text() -> list[str]:
    """~130 KB of real English available offline: help pages of a few stdlib modules."""
    modules = (json, textwrap, pathlib, collections)
    pages = [pydoc.render_doc(module, renderer=pydoc.plaintext) for module in modules]
    return [paragraph for page in pages for paragraph in page.split("\n\n") if paragraph.strip()]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return english_text()


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_default_tokenizer(texts, vocab_size=300, extra_ids=10)


@pytest.fixture(scope="module")
def tiny_default(texts, tmp_path_factory) -> Path:
    return create_default_model(tmp_path_factory.mktemp("default") / "t5-tiny", texts, TINY, seed=0)


# --- the tokenizer ------------------------------------------------------------------------------------------


def test_tokenizer_follows_t5_conventions(tokenizer):
    assert len(tokenizer) == 300
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    # Sentinels sit at the top of the vocabulary, <extra_id_0> highest, as in T5.
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == 299
    assert tokenizer.convert_tokens_to_ids("<extra_id_9>") == 290
    ids = tokenizer("Fill <extra_id_0> in").input_ids
    assert 299 in ids and ids.count(1) == 1 and ids[-1] == 1  # a sentinel is one token; </s> appended once
    assert tokenizer("☃").input_ids[-2:] == [2, 1]  # an unseen character is <unk>


def test_tokenizer_round_trips_text(tokenizer):
    text = "Return a list of the values.\nThe answer is: yes, it is  better."
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    batch = tokenizer(["short", "a much longer sentence here"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, -1].item() == 0 and batch.attention_mask[0, -1].item() == 0  # padded with 0


def test_tokenizer_training_is_deterministic(texts, tokenizer):
    def trained() -> dict:
        return json.loads(train_default_tokenizer(texts, 300, 10).backend_tokenizer.to_str())

    first, again = trained(), trained()
    assert first == again
    assert first["model"] == json.loads(tokenizer.backend_tokenizer.to_str())["model"]


def test_tokenizer_rejects_empty_text():
    with pytest.raises(UserError, match="no text"):
        train_default_tokenizer(["", "  "], vocab_size=300, extra_ids=10)


def test_spec_rejects_a_vocabulary_too_small_for_its_sentinels():
    with pytest.raises(UserError, match="vocab_size"):
        DefaultModelSpec(vocab_size=120, extra_ids=100)


# --- the default model --------------------------------------------------------------------------------------


def test_default_model_loads_and_generates_with_plain_transformers(tiny_default, tokenizer):
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_default)
    loaded = AutoTokenizer.from_pretrained(tiny_default)
    assert isinstance(model, T5ForConditionalGeneration)
    assert model.config.feed_forward_proj == "gated-gelu"
    assert (model.config.vocab_size, model.config.d_model, model.config.num_layers) == (320, 32, 1)
    config = model.config
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)
    assert len(loaded) == 320 and loaded.convert_tokens_to_ids("<extra_id_0>") == 319
    assert loaded("Return the value.").input_ids[-1] == 1
    batch = loaded(["Return the value.", "yes"], padding=True, return_tensors="pt")
    output = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert output.shape[0] == 2 and output[0, 0].item() == 0  # decoding starts from <pad>, as in T5
    assert isinstance(loaded.decode(output[0], skip_special_tokens=True), str)


def test_create_is_deterministic(texts, tiny_default, tmp_path):
    again = create_default_model(tmp_path / "again", texts, TINY, seed=0)
    other_seed = create_default_model(tmp_path / "other", texts, TINY, seed=1)
    weights, same, different = (load_file(f / "model.safetensors") for f in (tiny_default, again, other_seed))
    assert weights.keys() == same.keys()
    assert all(torch.equal(weights[key], same[key]) for key in weights)
    assert not torch.equal(weights["shared.weight"], different["shared.weight"])
    assert (tiny_default / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary folders are gone


def test_create_refuses_an_existing_folder(texts, tiny_default):
    with pytest.raises(UserError, match="already exists"):
        create_default_model(tiny_default, texts, TINY)


def test_a_damaged_default_model_is_reported_and_built_again(texts, tmp_path, capsys):
    def load():
        return load_model_and_tokenizer(DEFAULT_MODEL, cache_dir=tmp_path, default_texts=lambda: texts, spec=TINY)

    expected = [tensor.clone() for tensor in load()[0].state_dict().values()]  # copied: the file is mapped
    folder = default_model_dir(tmp_path, TINY, text_fingerprint(texts))
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])  # truncated
    again, _ = load()
    assert "default model" in capsys.readouterr().err and weights.read_bytes() == original
    assert all(torch.equal(a, b) for a, b in zip(expected, again.state_dict().values(), strict=True))
    (folder / "tokenizer.json").write_text("{}")  # edited: same check, built again
    load()
    assert "(tokenizer.json has 2 bytes" in capsys.readouterr().err
    assert not list(tmp_path.glob("models/.*"))


def test_default_is_created_once_and_cached(texts, tmp_path, monkeypatch):
    created = []
    real_create = modeling.create_default_model
    def counting_create(*args, **kwargs):
        created.append(args[0])
        return real_create(*args, **kwargs)

    monkeypatch.setattr(modeling, "create_default_model", counting_create)
    for _ in range(2):
        model, tokenizer = load_model_and_tokenizer(
            DEFAULT_MODEL, cache_dir=tmp_path, default_texts=lambda: texts, spec=TINY
        )
    assert len(created) == 1
    assert isinstance(model, T5ForConditionalGeneration) and model.config.d_model == 32
    folder = default_model_dir(tmp_path, TINY, text_fingerprint(texts))
    assert folder.parent == tmp_path / "models" and folder.name.startswith("t5-tiny-")
    assert json.loads((folder / "flanpipe_default.json").read_text())["spec"]["d_model"] == 32
    # A known fingerprint finds the cached copy without reading the text.
    load_model_and_tokenizer(
        DEFAULT_MODEL, cache_dir=tmp_path, default_texts=lambda: pytest.fail("read the text"), spec=TINY,
        texts_fingerprint=text_fingerprint(texts),
    )
    assert len(created) == 1


def test_default_model_dir_depends_on_everything_that_shapes_the_model(tmp_path):
    base = default_model_dir(tmp_path, TINY, "abc")
    assert base == default_model_dir(tmp_path, TINY, "abc", seed=0)
    assert base != default_model_dir(tmp_path, TINY, "abd")
    assert base != default_model_dir(tmp_path, TINY, "abc", seed=1)
    assert base != default_model_dir(tmp_path, DefaultModelSpec(), "abc")


def test_default_needs_its_texts(tmp_path):
    with pytest.raises(ValueError, match="default_texts"):
        load_model_and_tokenizer(DEFAULT_MODEL, cache_dir=tmp_path)


# --- loading any checkpoint ---------------------------------------------------------------------------------


def test_bart_style_model_loads_through_the_same_path(tokenizer, tmp_path):
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=1, decoder_start_token_id=1, forced_eos_token_id=1,
    )
    BartForConditionalGeneration(config).save_pretrained(tmp_path / "bart")
    tokenizer.save_pretrained(tmp_path / "bart")
    model, loaded = load_model_and_tokenizer(str(tmp_path / "bart"))
    assert isinstance(model, BartForConditionalGeneration)
    output = model.generate(**loaded(["Return the value."], return_tensors="pt"), max_new_tokens=3)
    assert output.shape[0] == 1


def test_trust_remote_code_is_off_by_default_and_passed_through(tiny_default, monkeypatch):
    seen = []
    for auto in (AutoConfig, AutoTokenizer, AutoModelForSeq2SeqLM):
        real = auto.from_pretrained

        def record(*args, _real=real, _auto=auto, **kwargs):
            seen.append((_auto.__name__, kwargs.get("trust_remote_code")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", record)
    load_model_and_tokenizer(str(tiny_default))
    assert set(seen) == {("AutoConfig", False), ("AutoTokenizer", False), ("AutoModelForSeq2SeqLM", False)}
    seen.clear()
    load_model_and_tokenizer(str(tiny_default), trust_remote_code=True)
    assert set(seen) == {("AutoConfig", True), ("AutoTokenizer", True), ("AutoModelForSeq2SeqLM", True)}


def test_dtype_is_passed_through(tiny_default):
    model, _ = load_model_and_tokenizer(str(tiny_default), torch_dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16


def test_missing_local_folder_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="no such folder") as caught:
        load_model_and_tokenizer(str(tmp_path / "nope"))
    assert "\n" not in str(caught.value) and DEFAULT_MODEL in str(caught.value)
    with pytest.raises(UserError, match="no config.json"):
        load_model_and_tokenizer(str(tmp_path))


def test_unreachable_hub_name_is_a_one_line_user_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no network retries
    with pytest.raises(UserError, match="flanpipe-tests/no-such-model") as caught:
        load_model_and_tokenizer("flanpipe-tests/no-such-model")
    message = str(caught.value)
    assert "\n" not in message and "model.name=" in message and DEFAULT_MODEL in message


def test_decoder_only_model_is_a_user_error(tmp_path):
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="encoder-decoder") as caught:
        load_model_and_tokenizer(str(tmp_path))
    assert "gpt2" in str(caught.value) and "\n" not in str(caught.value)


# --- inspecting models --------------------------------------------------------------------------------------


def test_count_parameters_counts_tied_embeddings_once(tiny_default):
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_default)
    assert model.lm_head.weight is model.shared.weight
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(model) < sum(t.numel() for t in model.state_dict().values())
    model.shared.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 320 * 32


def test_tokenizer_larger_than_the_model_vocabulary_is_a_user_error(tokenizer, tmp_path):
    spec = DefaultModelSpec(**{**TINY.__dict__, "vocab_size": 200, "extra_ids": 0})
    T5ForConditionalGeneration(spec.t5_config()).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)  # 300 tokens
    with pytest.raises(UserError, match="300 tokens but the model embeds only 200"):
        load_model_and_tokenizer(str(tmp_path))


def test_weights_fingerprint_follows_the_weights_not_the_path(tiny_default, tmp_path):
    """The base-score cache is keyed by it: weights replaced in place must not bring back the old scores."""
    from pipeline.modeling import weights_fingerprint

    folder = tmp_path / "model"
    shutil.copytree(tiny_default, folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    before = weights_fingerprint(model)
    assert weights_fingerprint(AutoModelForSeq2SeqLM.from_pretrained(folder)) == before
    with torch.no_grad():
        model.shared.weight.mul_(2)
    model.save_pretrained(folder)
    assert weights_fingerprint(AutoModelForSeq2SeqLM.from_pretrained(folder)) != before


def test_the_pretrained_base_is_named_until_built_then_loaded_from_its_run(tiny_default, tmp_path, monkeypatch):
    from pipeline.config import load_config

    data = load_config(None, [f"data.cache_dir={tmp_path / 'cache'}"]).data
    model_config = load_config(None, ["model.name=flanpipe/t5-tiny-pretrained"]).model
    with pytest.raises(UserError, match=r"flanpipe/t5-tiny-pretrained is not built yet .* run `make base`"):
        modeling.load_model(model_config, data)
    run_dir = modeling.pretrained_run_dir(modeling.shipped_base_recipe(data))
    assert run_dir.parent == tmp_path / "cache" / "models" and "-pretrained-" in run_dir.name
    other = load_config(modeling.SHIPPED_CONFIGS / "base.yaml", [f"data.cache_dir={tmp_path / 'cache'}",
                                                               "train.max_steps=7", "run.dir=elsewhere"])
    assert modeling.pretrained_run_dir(other) != run_dir  # another recipe is another base; where it runs is not
    assert modeling.pretrained_run_dir(load_config(modeling.SHIPPED_CONFIGS / "base.yaml", [
        f"data.cache_dir={tmp_path / 'cache'}", "run.dir=elsewhere", "log.trackers=[jsonl]"])) == run_dir
    shutil.copytree(tiny_default, run_dir / "final")  # what `flanpipe base` leaves: the run's final model
    model, _ = modeling.load_model(model_config, data)
    assert Path(model.config.name_or_path) == run_dir / "final"
