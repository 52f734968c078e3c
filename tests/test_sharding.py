"""Every launcher we document gives the run one process gives: DDP, FSDP v2 and FSDP v1 on 2 CPU processes (gloo).

FSDP runs through accelerate's own FSDP path (`accelerate launch --config_file configs/accelerate/fsdp.yaml`),
made to run on CPU by the test-only shim `tests/cpu_fsdp.py` (its docstring says what it overrides and why that
is faithful to the GPU path). Each launcher trains the tiny world for 12 steps with an evaluation every 4 (losses,
sample generations; rank classification and generation metrics at the start and the end), then resumes from its
step-9 checkpoint. Set FLANPIPE_SHARDING_TABLE=path to write the Markdown table the README quotes.

On a machine with GPUs (`bench/gpu_check.sh`) the same tests compare one GPU with FSDP v2, FSDP v1 and DeepSpeed
ZeRO-2 (when deepspeed is installed) on as many GPUs as there are (at most 2), launched as users launch them,
without the shim.
"""

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import launch, losses, run_distributed, settings
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
GPUS = min(torch.cuda.device_count(), 2)
PROCESSES = str(GPUS or 2)


def accelerate_launch(config: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / config), "--mixed_precision", "no", "--num_processes", PROCESSES,
            *options]


FSDP1 = ("--fsdp_version", "1", "--fsdp_cpu_ram_efficient_loading", "false", "--fsdp_sync_module_states", "false",
         "--fsdp_use_orig_params", "true")
LAUNCHERS = {"1 process": None}
if GPUS != 1:  # data parallel needs a device per process
    LAUNCHERS[f"DDP {PROCESSES}"] = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     f"--nproc_per_node={PROCESSES}"]
LAUNCHERS[f"FSDP2 {PROCESSES}"] = accelerate_launch("fsdp.yaml")
LAUNCHERS[f"FSDP1 {PROCESSES}"] = accelerate_launch("fsdp.yaml", *FSDP1)
if GPUS and importlib.util.find_spec("deepspeed"):
    LAUNCHERS[f"DeepSpeed ZeRO-2 {PROCESSES}"] = accelerate_launch("deepspeed_zero2.yaml")
LOSS_TOLERANCE = 1e-5  # relative; measured differences are ~1e-7 (float sums in another order)
WEIGHT_TOLERANCE = 1e-5  # absolute, on the final weights


def run(launcher: str, run_dir: Path, arguments: list[str]):
    if LAUNCHERS[launcher] is None:
        return launch(arguments)
    module = ["-m", "cpu_fsdp"] if "FSDP" in launcher and not GPUS else ["-m", "pipeline.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))}
    return run_distributed([*LAUNCHERS[launcher], *module, "train", *arguments], env)


@pytest.fixture(scope="module")
def matrix(world, tmp_path_factory):
    """launcher -> {"dir", "resumed", "seconds"}: a full 12-step run and a run resumed from its step-9 checkpoint."""
    root = tmp_path_factory.mktemp("sharding")
    tasks = root / "tasks"
    shutil.copytree(world["tasks"], tasks)
    colour = tasks / "colour" / "task.yaml"
    colour.write_text(colour.read_text().replace("metrics: [accuracy]", "metrics: [accuracy, rank_classification]"))
    results = {}
    for number, launcher in enumerate(LAUNCHERS):
        run_dir, cache = root / f"run{number}", root / f"cache{number}"  # own caches: base scores are computed
        arguments = settings(world, run_dir, f"data.templates_dir={tasks}", f"data.cache_dir={cache}",
                             "train.eval_every=4", "eval.samples=2")
        started = time.perf_counter()
        result = run(launcher, run_dir, arguments)
        seconds = time.perf_counter() - started
        assert result.returncode == 0, f"{launcher}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        resumed = root / f"resumed{number}"
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copytree(run_dir / "checkpoints" / "step-9", resumed / "checkpoints" / "step-9")
        result = run(launcher, resumed, [a.replace(str(run_dir), str(resumed)) for a in arguments])
        assert result.returncode == 0, f"{launcher} resumed: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        assert "resumed from" in result.stdout + result.stderr
        results[launcher] = {"dir": run_dir, "resumed": resumed, "seconds": seconds, "output": result.stdout}
    return results


def evaluations(run_dir: Path) -> tuple[dict[int, float], dict[int, list[str]]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    eval_losses = {r["step"]: r["aggregate/loss_trained"] for r in records if "aggregate/loss_trained" in r}
    samples = {r["step"]: [s["prediction"] for s in r["samples"]] for r in records if "samples" in r}
    return eval_losses, samples


def scores(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "eval" / name).read_text())["tasks"]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_training_losses_equal_one_process(matrix, launcher):
    one, got = losses(matrix["1 process"]["dir"]), losses(matrix[launcher]["dir"])
    assert sorted(got) == list(range(1, 13))  # the losses at steps 1 and 12 are in the README's table
    for step in one:
        assert got[step] == pytest.approx(one[step], rel=LOSS_TOLERANCE), step


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_weight_trains_tied_weights_stay_tied_and_plain_transformers_loads_it(world, matrix, launcher):
    run_dir = matrix[launcher]["dir"]
    base = AutoModelForSeq2SeqLM.from_pretrained(world["model"]).state_dict()
    model = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "final")
    tuned = model.state_dict()
    unchanged = [name for name, value in tuned.items() if torch.equal(value, base[name])]
    assert unchanged == []
    saved = final_weights(run_dir)
    shared = saved["shared.weight"]
    for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        assert name not in saved or torch.equal(saved[name], shared), name  # one matrix, trained as one
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    reference = final_weights(matrix["1 process"]["dir"])
    for name, value in saved.items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=WEIGHT_TOLERANCE)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_validation_loss_rank_accuracy_and_generations_equal_one_process(matrix, launcher):
    one_dir, got_dir = matrix["1 process"]["dir"], matrix[launcher]["dir"]
    for name in ("base_validation.json", "validation.json"):
        one, got = scores(one_dir, name), scores(got_dir, name)
        assert "rank_accuracy" in got["colour"]["metrics"]
        for task in one:
            assert got[task]["metrics"] == one[task]["metrics"], (name, task)
            assert got[task]["loss"] == pytest.approx(one[task]["loss"], rel=LOSS_TOLERANCE), (name, task)
    (one_losses, one_samples), (got_losses, got_samples) = evaluations(one_dir), evaluations(got_dir)
    assert sorted(got_losses) == [0, 4, 8, 12] and got_samples == one_samples
    for step, loss in one_losses.items():
        assert got_losses[step] == pytest.approx(loss, rel=LOSS_TOLERANCE), step


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_resume_from_a_checkpoint_is_bitwise_on_the_same_launcher(matrix, launcher):
    full, resumed = losses(matrix[launcher]["dir"]), losses(matrix[launcher]["resumed"])
    assert sorted(resumed) == [10, 11, 12]
    assert {step: full[step] for step in resumed} == resumed


def test_the_table(matrix):
    """The README's table, written where FLANPIPE_SHARDING_TABLE says (and checked to be complete)."""
    one = losses(matrix["1 process"]["dir"])
    device = f"{torch.cuda.get_device_name()}, nccl" if GPUS else "CPU, gloo"
    rows = [f"| launcher ({device}) | loss step 1 | loss step 12 | max rel. loss diff. vs 1 process | "
            "final weights max abs. diff. | validation loss, rank acc., generations | resume | wall s |",
            "|---|---|---|---|---|---|---|---|"]
    reference = final_weights(matrix["1 process"]["dir"])
    for launcher, result in matrix.items():
        got = losses(result["dir"])
        relative = max(abs(got[s] - one[s]) / one[s] for s in one)
        weights = max(float((value - reference[name]).abs().max()) for name, value in final_weights(result["dir"]).items())
        same_scores = scores(result["dir"], "validation.json") == scores(matrix["1 process"]["dir"], "validation.json")
        bitwise = all(losses(result["resumed"])[s] == got[s] for s in (10, 11, 12))
        rows.append(f"| {launcher} | {got[1]:.6f} | {got[12]:.6f} | {relative:.1e} | {weights:.1e} | "
                    f"{'identical' if same_scores else 'equal within tolerance'} | "
                    f"{'bitwise' if bitwise else 'differs'} | {result['seconds']:.1f} |")
    assert len(rows) == 2 + len(LAUNCHERS)
    if os.environ.get("FLANPIPE_SHARDING_TABLE"):
        Path(os.environ["FLANPIPE_SHARDING_TABLE"]).write_text("\n".join(rows) + "\n")


def test_an_fsdp_request_that_would_run_as_ddp_is_refused(world, tmp_path):
    """accelerate turns an FSDP request on CPU into DDP without a word; flanpipe says so and stops."""
    result = launch(settings(world, tmp_path / "refused"), env={"ACCELERATE_USE_FSDP": "true"})
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("flanpipe train: error:")]
    assert "FSDP was requested" in line and "runs this as NO on device" in line
    assert not (tmp_path / "refused" / "checkpoints").exists()


def test_flanpipe_eval_reads_an_fsdp_checkpoint_like_the_final_model(world, matrix, tmp_path):
    run_dir = matrix[next(name for name in LAUNCHERS if name.startswith("FSDP2"))]["dir"]
    assert (run_dir / "checkpoints" / "step-12" / "pytorch_model_fsdp.bin").exists()
    tasks = run_dir.parent / "tasks"
    found = {}
    for name, target in (("final", run_dir / "final"), ("checkpoint", run_dir / "checkpoints" / "step-12")):
        out = tmp_path / f"{name}.json"
        result = launch([str(target), "--split", "validation", "--limit", "8", "--base", "none", "--out", str(out),
                         *[s for s in settings(world, tmp_path) if not s.startswith(("run.dir=", "data.mixture="))],
                         f"data.templates_dir={tasks}"], command="eval")
        assert result.returncode == 0, result.stdout + result.stderr
        found[name] = json.loads(out.read_text())["tasks"]
    assert found["checkpoint"] == found["final"]
