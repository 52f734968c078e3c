"""`flanpipe eval`, `flanpipe report` and `flanpipe forgetting --quick` end to end on the tiny world."""

import json
import shutil

import pytest
from conftest import WORDS, launch, settings, write_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(world, tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluated")
    result = launch(settings(world, path, "train.max_steps=6"))
    assert result.returncode == 0, result.stdout + result.stderr
    return path


def world_settings(world):
    return [s for s in settings(world, world["root"]) if not s.startswith(("run.dir=", "data.mixture="))]


def test_eval_writes_per_task_scores_beside_the_base(world, run_dir, tmp_path):
    out = tmp_path / "results.json"
    result = launch([str(run_dir), "--split", "test", "--limit", "8", "--out", str(out), *world_settings(world)],
                    command="eval")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["split"] == "test" and report["base"]["model"] == str(world["model"])
    colour, echo = report["tasks"]["colour"], report["tasks"]["echo"]
    assert colour["n"] == 8 and set(colour["metrics"]) == {"accuracy"} and colour["loss"] > 0
    assert set(echo["metrics"]) == {"exact_match"}
    assert set(report["delta"]["colour"]) == {"accuracy"}
    assert "colour" in result.stdout and "base" in result.stdout  # the printed table


def test_damaged_cached_base_scores_are_reported_and_scored_again(world, run_dir, tmp_path):
    reports = []
    for damage in (None, "truncate"):
        if damage:
            for cached in (world["cache"] / "eval").glob("scores-*.json"):
                cached.write_text(cached.read_text()[:30])
        out = tmp_path / f"{damage}.json"
        result = launch([str(run_dir), "--split", "test", "--limit", "4", "--out", str(out), *world_settings(world)],
                        command="eval")
        assert result.returncode == 0, result.stdout + result.stderr
        assert ("cached scores" in result.stderr) == bool(damage)
        reports.append(json.loads(out.read_text())["base"])
    assert reports[0] == reports[1]


def test_eval_of_a_checkpoint_equals_eval_of_the_final_model(world, run_dir, tmp_path):
    scores = {}
    for name, target in (("final", run_dir / "final"), ("checkpoint", run_dir / "checkpoints" / "step-6")):
        out = tmp_path / f"{name}.json"
        result = launch([str(target), "--split", "validation", "--limit", "8", "--base", "none", "--out", str(out),
                         *world_settings(world)], command="eval")
        assert result.returncode == 0, result.stdout + result.stderr
        scores[name] = json.loads(out.read_text())["tasks"]
    assert scores["final"] == scores["checkpoint"]


def test_forgetting_quick_runs_every_strategy_and_reuses_finished_stages(world, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(world["tasks"], tasks)
    # a corpus as the world's tiny model can read it: 4 sentinels, so texts of at most 12 words (one or two spans)
    write_task(tasks, "corpus", "source: {files: data.jsonl}\npreprocess: [{span_corruption: {max_words: 12}}]\n"
               "carve: {validation: 10, test: 10}\n", {"denoise": "{{ inputs }}\n|||\n{{ targets }}\n"},
               [{"text": f"{word} is a colour and so is {other} or maybe not"} for word, other in
                zip(WORDS * 8, WORDS[3:] * 8 + WORDS[:3] * 8, strict=True)])
    out = tmp_path / "forgetting"
    command = ["--quick", "--tasks", "colour", "echo", "--general", "corpus", "--out", str(out),
               *world_settings(world), f"data.templates_dir={tasks}"]
    result = launch(command, command="forgetting")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "forgetting.json").read_text())
    assert list(report["rows"]) == ["full", "lora", "replay", "pretraining_replay", "multitask"]
    assert list(report["rows"]["full"]) == ["base", "colour", "echo"] and list(report["rows"]["multitask"]) == [
        "base", "all"]
    for rows in report["rows"].values():  # every task and the corpus scored after every stage
        assert all(set(scores) == {"colour", "echo", "corpus"} for scores in rows.values())
    assert report["rows"]["full"]["base"] == report["rows"]["lora"]["base"]  # one base for every strategy
    replay = (out / "replay" / "2-echo.yaml").read_text()
    assert "echo: {weight: 0.95}" in replay and "colour: {weight: 0.05}" in replay
    assert "corpus: {weight: 0.05}" in (out / "pretraining_replay" / "2-echo.yaml").read_text()
    assert (out / "lora" / "1-colour" / "adapter" / "adapter_config.json").exists()
    summary = report["summary"]
    assert summary["full"]["forgetting_score"] is not None and summary["multitask"]["forgetting_score"] is None
    text = (out / "forgetting.md").read_text()
    assert "## Summary" in text and "forgetting (score)" in text
    assert all((out / name).exists() for name in ("forgetting_score.png", "forgetting_loss.png", "learn_vs_forget.png"))
    again = launch(command, command="forgetting")  # every stage is finished: nothing is trained again
    assert again.returncode == 0 and "training" not in again.stdout, again.stdout


def test_input_reliance_scores_each_target_after_its_own_and_another_input(world, run_dir):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "bench" / "input_reliance.py"
    result = subprocess.run([sys.executable, str(script), str(run_dir), "--limit", "8", *world_settings(world)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"colour", "echo"}
    for n, own, other, difference in rows.values():
        assert int(n) == 8 and float(other) - float(own) == pytest.approx(float(difference), abs=2e-3)
    assert any(float(difference) != 0 for *_, difference in rows.values())  # the inputs really were swapped


def test_validation_losses_mix_tasks_in_batches_and_honour_the_budgets(world, tmp_path):
    """Losses and scores from batches that mix tasks equal each task's own; `per_task` scores each task's first
    rows; sample generations come from at most `eval.sample_tasks` tasks and reuse the scored predictions."""
    from accelerate import Accelerator

    from pipeline.config import load_config
    from pipeline.data.batcher import Batcher
    from pipeline.evaluate.evaluator import Evaluator
    from pipeline.forward import Seq2SeqLogits
    from pipeline.modeling import load_model
    from pipeline.tasks.task import load_tasks

    cfg = load_config(overrides=[*settings(world, tmp_path), "eval.batch_size=5", "eval.sample_tasks=1"])
    tasks = load_tasks(cfg.data.templates_path())
    model, tokenizer = load_model(cfg.model, cfg.data)
    model = Seq2SeqLogits(model)
    accelerator = Accelerator(cpu=True)

    def evaluator(names):
        return Evaluator(tasks, names, Batcher(tokenizer, cfg.data, model.model.config.decoder_start_token_id),
                         cfg.eval, cfg.data)

    both = evaluator(["colour", "echo"])
    mixed, mixed_two = both.validation_losses(accelerator, model), both.validation_losses(accelerator, model, per_task=2)
    for task in ("colour", "echo"):
        alone = evaluator([task])
        assert mixed[task] == pytest.approx(alone.validation_losses(accelerator, model)[task], rel=1e-6)
        alone.rows[task] = alone.rows[task][:2]
        assert mixed_two[task] == pytest.approx(alone.validation_losses(accelerator, model)[task], rel=1e-6)
    assert mixed["colour"] != mixed_two["colour"]
    samples = both.samples(accelerator, model)
    assert {sample["task"] for sample in samples} == {"colour"} and len(samples) == cfg.eval.samples
    # generations of all tasks share batches, grouped by answer length: the same scores as each task alone
    scored = both.scores(accelerator, model, keep_predictions=True)
    for task in ("colour", "echo"):
        assert scored[task]["metrics"] == evaluator([task]).scores(accelerator, model)[task]["metrics"]
        assert len(scored[task]["predictions"]) == len(both.rows[task])
    reused = both.samples(accelerator, model, scored)
    assert [s["prediction"] for s in reused] == scored["colour"]["predictions"][: cfg.eval.samples]
    assert all(s["correct"] == (s["prediction"] == s["target"]) for s in reused)
