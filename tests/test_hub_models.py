"""The models users tune, in the hub's own format (tests/hub_models.py): FLAN-T5 / T5 v1.1 (untied), the original
T5 (tied), mT5 and BART. Each trains a few steps on the tiny world, resumes bitwise from a checkpoint, scores the
same from its checkpoint as from its final model, reloads in plain transformers with the same logits, and packs
exactly where packing is right (T5's relative positions) and is refused where it is not (BART's absolute ones).
Set FLANPIPE_HUB_TABLE=path to write the Markdown table the README quotes."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import launch, losses, settings
from hub_models import FAMILIES, make_hub_model
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

from pipeline.data.collate import PackingCollator, PaddingCollator
from pipeline.data.tokenize import tokenize_batch
from pipeline.forward import Seq2SeqLogits, example_loss_sums, generate, token_losses
from pipeline.modeling import load_model_and_tokenizer, load_weights

pytestmark = pytest.mark.slow

STEPS = 6
PASSED: dict[tuple[str, str], str] = {}  # (family, column) -> the table cell, set by a test when it passes


@pytest.fixture(scope="module")
def hub(world, tmp_path_factory):
    """family -> {"model", "run", "resumed", "output"}: trained for 6 steps (checkpoints at 3 and 6), and resumed
    from step 3."""
    root = tmp_path_factory.mktemp("hub")
    rows = [json.loads(line) for line in (world["tasks"] / "colour" / "data.jsonl").read_text().splitlines()]
    texts = [f"Is it colourful? Repeat: Copy the words: Colourful? OPTIONS: yes no {row['text']}" for row in rows]
    found = {}
    for family in FAMILIES:
        model = make_hub_model(family, root / family, texts * 3)
        run_dir, resumed = root / f"run-{family}", root / f"resumed-{family}"
        arguments = settings(world, run_dir, f"model.name={model}", f"train.max_steps={STEPS}",
                             f"data.cache_dir={root / 'cache'}")
        result = launch(arguments)
        assert result.returncode == 0, f"{family}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copytree(run_dir / "checkpoints" / "step-3", resumed / "checkpoints" / "step-3")
        again = launch([a.replace(str(run_dir), str(resumed)) for a in arguments])
        assert again.returncode == 0, f"{family} resumed: {again.stdout[-2000:]}{again.stderr[-2000:]}"
        found[family] = {"model": model, "run": run_dir, "resumed": resumed, "output": result.stdout + result.stderr}
    return found


def world_settings(world):
    return [s for s in settings(world, world["root"]) if not s.startswith(("run.dir=", "data.mixture="))]


@pytest.mark.parametrize("family", FAMILIES)
def test_trains_and_resumes_bitwise(hub, family):
    full, resumed = losses(hub[family]["run"]), losses(hub[family]["resumed"])
    assert sorted(full) == list(range(1, STEPS + 1)) and sorted(resumed) == [4, 5, 6]
    assert {step: full[step] for step in resumed} == resumed
    assert "tie_word_embeddings" not in hub[family]["output"]  # transformers' misleading untied-head warning


def evaluate(world, hub, family, target, out):
    result = launch([str(target), "--split", "validation", "--limit", "8", "--base", "none", "--out", str(out),
                     *world_settings(world), f"data.cache_dir={hub[family]['run'].parent / 'cache'}"],
                    command="eval")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(out.read_text())["tasks"]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_scores_like_the_final_model(world, hub, family, tmp_path):
    """Regression: an untied checkpoint (FLAN-T5, T5 v1.1, mT5) used to be scored with its trained head replaced by
    the input embedding (`tie_weights()` after loading), a different model."""
    run_dir = hub[family]["run"]
    final = evaluate(world, hub, family, run_dir / "final", tmp_path / "final.json")
    checkpoint = evaluate(world, hub, family, run_dir / "checkpoints" / f"step-{STEPS}", tmp_path / "step.json")
    assert checkpoint == final
    PASSED[family, "eval"] = "equal"


def batch(tokenizer, model):
    pairs = [("Is it colourful? red green blue", "yes"), ("Repeat: quick slow", "quick slow"),
             ("Copy the words: dark warm cold soft", "dark warm cold soft"), ("Colourful? old new", "no")]
    columns = tokenize_batch(tokenizer, [p[0] for p in pairs], [p[1] for p in pairs], 64, 16)
    return [{"input_ids": i, "labels": t, "task": "t"} for i, t in zip(columns["input_ids"], columns["labels"],
                                                                        strict=True)]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_final_model_reloads_in_plain_transformers_with_the_checkpoints_logits(hub, family):
    run_dir = hub[family]["run"]
    final = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    from_checkpoint = AutoModelForSeq2SeqLM.from_pretrained(hub[family]["model"]).eval()
    load_weights(from_checkpoint, run_dir / "checkpoints" / f"step-{STEPS}", family)
    rows = PaddingCollator(tokenizer, decoder_start_token_id=final.config.decoder_start_token_id)(
        batch(tokenizer, final))
    with torch.no_grad():
        expected = Seq2SeqLogits(from_checkpoint)(rows)
        got = Seq2SeqLogits(final)(rows)
    assert torch.equal(got, expected)
    untied = family != "t5" and family != "bart"
    assert (final.lm_head.weight is not final.get_input_embeddings().weight) == untied
    config = json.loads((run_dir / "final" / "config.json").read_text())
    assert config.get("tie_word_embeddings", True) == (not untied)  # what the hub's configs say, for any reader
    if family != "bart":
        assert (run_dir / "final" / "spiece.model").exists()
    PASSED[family, "logits"] = "identical"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "bart"])
def test_packing_equals_unpacked_on_t5_models(hub, family):
    model = AutoModelForSeq2SeqLM.from_pretrained(hub[family]["model"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(hub[family]["model"])
    rows = batch(tokenizer, model)
    padded = PaddingCollator(tokenizer)(rows)
    packed = PackingCollator(input_row_length=64, target_row_length=16)(rows)
    assert packed["input_ids"].shape[0] < len(rows)
    with torch.no_grad():
        unpacked_sums, _ = example_loss_sums(token_losses(Seq2SeqLogits(model)(padded), padded["labels"]), padded)
        packed_sums, _ = example_loss_sums(token_losses(Seq2SeqLogits(model)(packed), packed["labels"]), packed)
    torch.testing.assert_close(packed_sums, unpacked_sums, rtol=1e-5, atol=1e-5)
    PASSED[family, "packing"] = "packed = unpacked (1e-5)"


def test_packing_is_refused_for_bart(world, hub, tmp_path):
    """Regression: BART's learned absolute positions run over a whole packed row; packing used to train it wrongly
    without a word."""
    result = launch(settings(world, tmp_path / "packed", f"model.name={hub['bart']['model']}", "data.packing=true"))
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("flanpipe train: error:")]
    assert "data.packing=true: bart models number positions over the whole packed row" in line
    assert not (tmp_path / "packed" / "checkpoints").exists()
    PASSED["bart", "packing"] = "refused (absolute positions)"


def test_bart_generates_as_it_was_trained_not_with_its_checkpoints_constraints(hub):
    """bart-base's generation config forces `<s>` after the decoder start and bans repeated trigrams; training
    feeds `</s> target`, so evaluation generates greedily from `</s>` with no inherited constraint."""
    model = AutoModelForSeq2SeqLM.from_pretrained(hub["bart"]["model"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(hub["bart"]["model"])
    encoded = dict(tokenizer.pad({"input_ids": [row["input_ids"] for row in batch(tokenizer, model)]},
                                 return_tensors="pt"))
    with torch.no_grad():
        inherited = model.generate(**encoded, max_new_tokens=6)
        ours = generate(model, encoded, max_new_tokens=6)
        model.generation_config = GenerationConfig(decoder_start_token_id=2, eos_token_id=2, pad_token_id=1)
        greedy = model.generate(**encoded, max_new_tokens=6)
    assert (inherited[:, 1] == 0).all()  # the checkpoint's config forces <s> after the decoder start
    assert not (ours[:, 1] == 0).all() and torch.equal(ours, greedy)


def test_the_table(hub, world, tmp_path):
    rows = ["| model | tokenizer | train | resume | checkpoint eval = final eval | reload logits equal | packing |",
            "|---|---|---|---|---|---|---|"]
    for family in FAMILIES:
        tokenizer = type(AutoTokenizer.from_pretrained(hub[family]["model"])).__name__
        full, resumed = losses(hub[family]["run"]), losses(hub[family]["resumed"])
        bitwise = all(full[s] == resumed[s] for s in resumed)
        cells = [PASSED.get((family, column), "not run") for column in ("eval", "logits", "packing")]
        rows.append(f"| {family} | {tokenizer} | loss {full[1]:.3f} -> {full[STEPS]:.3f} | "
                    f"{'bitwise' if bitwise else 'differs'} | {' | '.join(cells)} |")
    if os.environ.get("FLANPIPE_HUB_TABLE"):
        Path(os.environ["FLANPIPE_HUB_TABLE"]).write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_adapters_attach_to_every_family_with_their_defaults(hub, family, method):
    """`peft.method` with no target modules: LoRA on every linear layer but the head, IA3 where peft puts it."""
    from pipeline.adapters import add_adapters
    from pipeline.config import PeftConfig

    model, tokenizer = load_model_and_tokenizer(str(hub[family]["model"]))
    inputs = {**tokenizer(["Is it colourful? red green blue"], return_tensors="pt"),
              "decoder_input_ids": torch.tensor([[model.config.decoder_start_token_id, 5, 6]])}
    with torch.no_grad():
        before = model(**inputs).logits
    model = add_adapters(model, PeftConfig(method=method))
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and all(("lora_" if method == "lora" else "ia3_l") in name for name in trainable)
    with torch.no_grad():  # both start as the identity: the base model's logits
        assert torch.allclose(model(**inputs).logits, before, atol=1e-5)
