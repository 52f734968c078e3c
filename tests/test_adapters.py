"""Adapters through peft (`pipeline.adapters`, `peft.method`): LoRA and IA3 train only their own weights, resume
bitwise after SIGKILL, train alike on 1 and 2 processes, and end as an adapter folder and a merged model that
plain transformers loads and that scores as the adapters do."""

import json
import random
import shutil

import pytest
import torch
from conftest import kill_and_resume, launch, losses, settings
from safetensors.torch import load_file

from pipeline.adapters import add_adapters, parameter_counts
from pipeline.config import PeftConfig
from pipeline.errors import UserError
from pipeline.modeling import load_model_and_tokenizer

LORA = ("peft.method=lora", "train.lr=1e-2")


def fresh_model(world):
    model, _ = load_model_and_tokenizer(str(world["model"]))
    return model


def test_lora_defaults_to_every_linear_layer_but_the_head_and_freezes_the_rest(world):
    model = add_adapters(fresh_model(world), PeftConfig(method="lora", rank=4))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[1] for name in trainable}
    assert adapted == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}  # the embedded T5 v1.1: gated feed-forward
    assert not any("lm_head" in name or "shared" in name for name in trainable)
    counts = parameter_counts(model)
    assert 0 < counts["trainable_parameters"] < counts["parameters"] / 5


def test_ia3_uses_peft_defaults_and_starts_as_the_identity(world):
    base = fresh_model(world)
    ids = torch.tensor([[5, 6, 7, 1]])
    expected = base(input_ids=ids, decoder_input_ids=ids).logits
    model = add_adapters(base, PeftConfig(method="ia3"))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("ia3_l" in name for name in trainable)
    assert torch.allclose(model(input_ids=ids, decoder_input_ids=ids).logits, expected, atol=1e-5)


@pytest.mark.parametrize(("settings_", "message"), [
    ({"method": "lora", "target_modules": ["nosuch"]}, "Target modules {'nosuch'} not found"),
    ({"method": "ia3", "target_modules": ["shared"]}, "peft.method=ia3"),
])
def test_a_setting_peft_cannot_apply_is_one_user_error(world, settings_, message):
    with pytest.raises(UserError, match="peft.target_modules") as error:
        add_adapters(fresh_model(world), PeftConfig(**settings_))
    assert message in str(error.value)


@pytest.mark.parametrize(("key", "value"), [("rank", 0), ("alpha", 0), ("dropout", 1.0)])
def test_bad_numbers_are_refused(key, value):
    with pytest.raises(UserError, match=f"peft.{key}"):
        PeftConfig(method="lora", **{key: value})


slow = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(world, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lora")
    result = launch(settings(world, run_dir, *LORA))
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir, result


@slow
def test_lora_trains_only_the_adapters_and_writes_adapter_and_merged_folders(world, lora_run):
    run_dir, result = lora_run
    assert "trained: lora" in result.stdout + result.stderr
    steps = losses(run_dir)
    assert sum(list(steps.values())[-3:]) < sum(list(steps.values())[:3])  # the loss falls
    checkpoint = load_file(str(run_dir / "checkpoints" / "step-12" / "model.safetensors"))
    assert checkpoint and all(".lora_" in name for name in checkpoint)  # only the adapters are saved

    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    base = fresh_model(world)
    original = {name: value.clone() for name, value in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, str(run_dir / "adapter")).get_base_model()
    changed = {name for name, value in tuned.state_dict().items()
               if name.replace(".base_layer", "") in original and not torch.equal(value, original[
                   name.replace(".base_layer", "")])}
    assert not changed  # the base weights are the base model's
    assert any(value.abs().sum() > 0 for name, value in tuned.state_dict().items() if ".lora_B." in name)
    merged = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "final")  # plain transformers, no peft
    assert not any("lora" in name for name in merged.state_dict())
    ids = torch.tensor([[5, 6, 7, 1]])
    assert torch.allclose(merged(input_ids=ids, decoder_input_ids=ids).logits,
                          tuned(input_ids=ids, decoder_input_ids=ids).logits, atol=1e-5)


@slow
def test_adapter_folder_merged_model_and_checkpoint_score_alike(world, lora_run, tmp_path):
    run_dir, _ = lora_run
    scores = {}
    for name, target in (("adapter", run_dir / "adapter"), ("merged", run_dir), ("checkpoint",
                         run_dir / "checkpoints" / "step-12")):
        out = tmp_path / f"{name}.json"
        result = launch([str(target), f"data.templates_dir={world['tasks']}", f"data.cache_dir={world['cache']}",
                         "data.max_input_length=64", "data.max_target_length=16", "--limit", "20", "--base",
                         "none", "--out", str(out)], command="eval")
        assert result.returncode == 0, result.stdout + result.stderr
        scores[name] = json.loads(out.read_text())["tasks"]
    for name in ("merged", "checkpoint"):
        for task, entry in scores["adapter"].items():
            assert scores[name][task]["metrics"] == entry["metrics"], (name, task)
            assert scores[name][task]["loss"] == pytest.approx(entry["loss"], rel=1e-5), (name, task)


@slow
def test_lora_resumes_bitwise_after_sigkill(world, lora_run, tmp_path):
    kill_and_resume(world, tmp_path / "killed", random.Random().randint(4, 8), *LORA)
    assert losses(tmp_path / "killed") == losses(lora_run[0])


@slow
def test_lora_on_two_processes_trains_as_on_one(world, lora_run, tmp_path):
    result = launch(settings(world, tmp_path / "two", *LORA), nproc=2)
    assert result.returncode == 0, result.stdout + result.stderr
    one, two = losses(lora_run[0]), losses(tmp_path / "two")
    assert one.keys() == two.keys()
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), step


@slow
def test_a_full_fine_tuning_checkpoint_is_not_resumed_as_lora(world, lora_run, tmp_path):
    result = launch(settings(world, tmp_path / "other", "peft.method=none",
                             f"train.resume={lora_run[0] / 'checkpoints' / 'step-12'}"))
    assert result.returncode == 2
    assert "cannot resume: it was trained with peft.method='lora'" in result.stderr


@slow
def test_a_bad_peft_setting_exits_2_with_one_line_and_writes_nothing(world, tmp_path):
    result = launch(settings(world, tmp_path / "bad", "peft.method=lora", "peft.target_modules=[nosuch]"))
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("flanpipe train: error:")]
    assert "peft.target_modules" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "bad").exists()


@slow
def test_a_lora_checkpoint_of_one_process_resumes_on_two(world, lora_run, tmp_path):
    """The adapters are loaded by name, whatever wrapper (DDP's `module.`) saved or loads them."""
    run_dir = tmp_path / "moved"
    shutil.copytree(lora_run[0], run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-12")
    result = launch(settings(world, run_dir, *LORA), nproc=2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed from" in result.stdout + result.stderr and "step-9" in result.stdout + result.stderr
    one, resumed = losses(lora_run[0]), losses(run_dir)
    for step in (10, 11, 12):
        assert resumed[step] == pytest.approx(one[step], rel=1e-4), step
