"""End-to-end training on a tiny local model and two tiny tasks: exact resume after SIGKILL, 1 vs 2 processes,
the final model, SIGTERM, NaN, and bad input. Each run takes seconds; the module takes about a minute."""

import json
import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import kill_and_resume, launch, losses, settings

from pipeline.checkpoints import complete_checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    result = launch(settings(world, run_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir, result


def test_run_outputs_logs_and_final_model(reference):
    run_dir, result = reference
    assert "done: 12 steps" in result.stdout + result.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/colour/loss" in r and "train/echo/loss" in r for r in records)
    assert any("eval/colour/loss" in r for r in records) and any("samples" in r for r in records)
    norms = [r["batch/grad_norm"] for r in records if "batch/grad_norm" in r]
    assert len(norms) == 12 and all(0 < norm < float("inf") for norm in norms)  # log_every=1
    shares = [r["batch/data_share"] for r in records if "batch/data_share" in r]
    assert shares and all(0 < share < 1 for share in shares)
    assert re.search(r"\(data path \d+\.\d% of step time\)", result.stdout + result.stderr)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-12", "step-9"]  # keep_last=2
    assert (run_dir / "checkpoints" / "step-12" / "model.safetensors").exists()

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "final")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    output = model.generate(**tokenizer(["Repeat: red green"], return_tensors="pt"), max_new_tokens=5)
    assert output.shape[0] == 1 and output.shape[1] > 1


@pytest.mark.parametrize("prefetch", [False, True])
def test_sigkill_at_a_random_step_then_resume_gives_identical_losses(world, reference, tmp_path, prefetch):
    """With `data.prefetch` the next batch is prepared ahead in a thread: nothing may change."""
    kill_and_resume(world, tmp_path / "killed", random.Random().randint(4, 8), f"data.prefetch={prefetch}")
    assert losses(tmp_path / "killed") == losses(reference[0])  # bitwise: same data order, same weights, same RNG


def test_length_windows_resume_exactly_inside_a_window_and_match_two_processes(world, reference, tmp_path):
    """`data.length_window=4`: checkpoints every 3 steps fall inside windows (steps 3, 6, 9); the resumed run,
    prefetching too, must draw its window again and continue bitwise; 2 processes train like 1."""
    window = ("data.length_window=4",)
    whole = launch(settings(world, tmp_path / "whole", *window))
    assert whole.returncode == 0, whole.stdout + whole.stderr
    expected = losses(tmp_path / "whole")
    assert expected != losses(reference[0])  # the batches were regrouped
    kill_and_resume(world, tmp_path / "killed", random.Random().randint(4, 8), *window, "data.prefetch=true")
    assert losses(tmp_path / "killed") == expected
    two = launch(settings(world, tmp_path / "two", *window), nproc=2)
    assert two.returncode == 0, two.stdout + two.stderr
    for step, loss in losses(tmp_path / "two").items():
        assert loss == pytest.approx(expected[step], rel=1e-4), step


def test_two_processes_match_one(world, reference, tmp_path):
    run_dir = tmp_path / "two"
    result = launch(settings(world, run_dir), nproc=2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 process(es), MULTI_CPU" in result.stdout + result.stderr
    one, two = losses(reference[0]), losses(run_dir)
    assert one.keys() == two.keys()
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), step
    norms = [{r["step"]: r["batch/grad_norm"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "batch/grad_norm" in r} for run in (reference[0], run_dir)]
    assert norms[0].keys() == norms[1].keys() and norms[0]
    for step, norm in norms[0].items():  # the gradient norm of the global batch, not of one process's share
        assert norms[1][step] == pytest.approx(norm, rel=1e-3), step


def test_sigterm_saves_a_checkpoint_and_resume_continues(world, tmp_path):
    run_dir = tmp_path / "term"
    process = launch(settings(world, run_dir, "train.max_steps=400", "train.save_every=0"), wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and not ((run_dir / "metrics.jsonl").exists() and losses(run_dir)):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "stopped by SIGTERM" in output
    (step, _), = complete_checkpoints(run_dir)
    assert 1 <= step < 400


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model.name=no/such-model-here"], "no/such-model-here"),
        (["data.mixture=missing"], "unknown task or mixture 'nosuchtask'"),
        (["run.dir=/proc/flanpipe-run"], "cannot write there"),
    ],
)
def test_bad_input_exits_2_with_one_line(world, tmp_path, extra, message):
    result = launch(settings(world, tmp_path / "bad", *extra), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stdout + result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("flanpipe train: error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_resume_with_incompatible_config_is_refused(world, reference, tmp_path):
    result = launch(settings(world, tmp_path / "other", f"train.resume={reference[0] / 'checkpoints' / 'step-12'}",
                             "train.batch_size=4"))
    assert result.returncode == 2
    assert "cannot resume: it was trained with train.batch_size=8, this run has 4" in result.stderr
    assert not (tmp_path / "other" / "checkpoints").exists()


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(world, tmp_path):
    run_dir = tmp_path / "nan"
    result = launch(settings(world, run_dir, "train.lr=1e30", "train.warmup_steps=0", "train.save_every=1",
                             "train.max_grad_norm=0"))
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("flanpipe train: error:")]
    assert "the loss is nan" in line or "the loss is inf" in line
    step = int(line.split("step ")[1].split(":")[0])
    assert [s for s, _ in complete_checkpoints(run_dir)] == list(range(max(1, step - 2), step))


def test_a_lone_process_under_a_multi_process_launcher_is_refused(monkeypatch, tmp_path):
    """`accelerate launch --num_processes 2` without a working process group starts independent trainings."""
    from pipeline.config import load_config
    from pipeline.errors import UserError
    from pipeline.train import runtime as train_module

    class LoneAccelerator:
        num_processes = 1

        def __init__(self, **kwargs):
            pass

    monkeypatch.setattr(train_module, "Accelerator", LoneAccelerator)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="runs alone .* started independent trainings"):
        train_module.make_accelerator(load_config(None, ["log.trackers=[jsonl]"]), tmp_path)


class _OneProcess:
    num_processes = 1
    device = "cpu"

    @staticmethod
    def reduce(tensor, reduction):
        return tensor


@pytest.mark.parametrize(
    ("loss_per", "expected"),
    [
        ("token", [[1 / 15, 1 / 15], [1 / 15]]),  # 2 + 3 + 10 target tokens
        ("example", [[1 / (2 * 3), 1 / (3 * 3)], [1 / (10 * 3)]]),
        ("task", [[1 / (2.5 * 3), 1 / (2.5 * 3)], [1 / (10 * 3)]]),  # task a: 2.5 tokens per example
    ],
)
def test_loss_weights_per_token_example_and_task(loss_per, expected):
    import torch

    from pipeline.train.loss import loss_weights

    def micro_batch(tasks, lengths):
        labels = torch.full((len(tasks), max(lengths)), -100)
        for row, length in enumerate(lengths):
            labels[row, :length] = 5
        return {"task": tasks, "labels": labels}

    batches = [micro_batch(["a", "a"], [2, 3]), micro_batch(["b"], [10])]
    weights = loss_weights(_OneProcess(), batches, loss_per)
    assert [w.tolist() for w in weights] == [pytest.approx(e) for e in expected]
    tokens = [torch.tensor([2.0, 3.0]), torch.tensor([10.0])]
    assert sum(float((w * t).sum()) for w, t in zip(weights, tokens, strict=True)) == pytest.approx(1.0)
    if loss_per != "token":  # each task's share of the loss is its share of the examples
        assert float((weights[0] * tokens[0]).sum()) == pytest.approx(2 / 3)


def test_two_processes_match_one_with_task_weighted_loss(world, tmp_path):
    one = launch(settings(world, tmp_path / "one", "train.loss_per=task"))
    two = launch(settings(world, tmp_path / "two", "train.loss_per=task"), nproc=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    expected, got = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert expected.keys() == got.keys()
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes torchrun started (its children, by their RANK variable)."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((int(item.split(b"=")[1]) for item in environ if item.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = pid
    return ranks


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(world, tmp_path):
    run_dir = tmp_path / "term-one-rank"
    process = launch(settings(world, run_dir, "train.max_steps=400", "train.save_every=0"), nproc=2, wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and not ((run_dir / "metrics.jsonl").exists() and losses(run_dir)):
        time.sleep(0.05)
    ranks = worker_pids(process.pid)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGTERM)  # the rank that neither logs nor writes the checkpoint's files
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output  # both workers exited cleanly: no collective was left waiting
    (stopped,) = re.findall(r"stopped by a signal to another process at step (\d+)", output)
    (step, checkpoint), = complete_checkpoints(run_dir)
    assert step == int(stopped) < 400
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {"random_states_0.pkl",
                                                                        "random_states_1.pkl"}
    assert json.loads((checkpoint / "train_state.json").read_text())["step"] == step


def test_two_processes_score_like_one_with_periodic_evaluation(world, tmp_path):
    """Validation losses, generations and rank classification at the start, every 4 steps and at the end."""
    tasks = tmp_path / "tasks"
    shutil.copytree(world["tasks"], tasks)
    colour = tasks / "colour" / "task.yaml"
    colour.write_text(colour.read_text().replace("metrics: [accuracy]", "metrics: [accuracy, rank_classification]"))
    runs = {}
    for nproc in (1, 2):
        run_dir = tmp_path / f"x{nproc}"
        result = launch(settings(world, run_dir, f"data.templates_dir={tasks}", "train.eval_every=4",
                                 "eval.samples=2", f"data.cache_dir={tmp_path / f'cache{nproc}'}"), nproc=nproc)
        assert result.returncode == 0, result.stdout + result.stderr
        runs[nproc] = run_dir
    for name in ("base_validation.json", "validation.json"):
        one, two = (json.loads((runs[n] / "eval" / name).read_text())["tasks"] for n in (1, 2))
        assert set(one["colour"]["metrics"]) == {"accuracy", "rank_accuracy"}
        for task in one:
            assert two[task]["n"] == one[task]["n"] and two[task]["metrics"] == one[task]["metrics"], (name, task)
            assert two[task]["loss"] == pytest.approx(one[task]["loss"], rel=1e-4), (name, task)

    def evaluations(run_dir):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses = {r["step"]: r["aggregate/loss_trained"] for r in records if "aggregate/loss_trained" in r}
        samples = {r["step"]: [s["prediction"] for s in r["samples"]] for r in records if "samples" in r}
        return losses, samples

    (losses_one, samples_one), (losses_two, samples_two) = evaluations(runs[1]), evaluations(runs[2])
    assert sorted(losses_one) == sorted(losses_two) == [0, 4, 8, 12]
    assert samples_two == samples_one
    for step, loss in losses_one.items():
        assert losses_two[step] == pytest.approx(loss, rel=1e-4), step


def test_torch_threads_split_the_cores_among_local_processes(monkeypatch):
    from pipeline.train.runtime import torch_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert torch_threads(0) == 2 and torch_threads(3) == 3  # the setting wins
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert torch_threads(0) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert torch_threads(0) == 3


def test_the_closing_line_stays_one_short_line_with_many_tasks():
    from pipeline.train.loop import _summary_line

    start = {f"task{i:04d}": 9.0 for i in range(1000)}
    end = {task: 5.0 + (i == 7) * 4.5 for i, task in enumerate(start)}
    line = _summary_line({"steps": 10, "tokens": 1000, "seconds": 3.0, "data_share": 0.01, "validation_loss_start": start,
                          "validation_loss_end": end, "run_dir": "runs/x"})
    assert len(line) < 400 and "mean over 1000 tasks 9.00→5.00" in line and "task0007 9.00→9.50" in line
    few = _summary_line({"steps": 10, "tokens": 1000, "seconds": 3.0, "data_share": 0.01, "validation_loss_start": {"a": 2.0},
                         "validation_loss_end": {"a": 1.0}, "run_dir": "runs/x"})
    assert "a 2.00→1.00" in few
