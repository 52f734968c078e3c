"""What the dashboards show: a short run read back from its TensorBoard event files, metrics.jsonl and the wandb
offline run (per-task scores at every evaluation, aggregates, target and realized shares, one TensorBoard run
with its hparams and layout), the aggregates computed by hand, and the report at many tasks."""

import json
import struct

import pytest
from conftest import launch, settings

from pipeline.dashboard import custom_scalars_layout, evaluation_values, mixture_values, primary_metric
from pipeline.report import write_run_report


def result(loss, **metrics):
    return {"loss": loss, "metrics": metrics}


def test_evaluation_values_names_every_task_and_aggregates_over_tasks():
    base = {"a": result(3.0, rank_accuracy=50.0, accuracy=10.0), "b": result(2.0, bleu=5.0),
            "c": result(4.0, exact_match=20.0), "h": result(1.0, rougeL=30.0, rouge1=40.0)}
    now = {"a": result(2.0, rank_accuracy=60.0, accuracy=0.0), "b": result(1.0, bleu=4.0),
           "c": result(3.0, exact_match=10.0), "h": result(1.5, rougeL=20.0, rouge1=45.0)}
    values = evaluation_values(now, held_out={"h"}, base=base)
    assert values["eval/a/rank_accuracy"] == 60.0 and values["eval/a/loss"] == 2.0
    assert values["held_out/h/rouge1"] == 45.0 and "eval/h/loss" not in values
    assert values["aggregate/score_trained"] == pytest.approx((60 + 4 + 10) / 3)  # primary: rank_accuracy, bleu, em
    assert values["aggregate/score_held_out"] == 20.0  # rougeL, not rouge1
    assert values["aggregate/loss_trained"] == pytest.approx(2.0) and values["aggregate/loss_held_out"] == 1.5
    assert values["aggregate/tasks_below_base"] == 3  # b -1, c -10, h -10; a +10
    assert values["aggregate/worst5_delta"] == pytest.approx((10 - 1 - 10 - 10) / 4)
    assert "aggregate/tasks_below_base" not in evaluation_values(now, held_out=set())  # no base: no deltas
    assert primary_metric({}) is None


def test_mixture_values_put_target_and_realized_on_one_step():
    values = mixture_values({"a": 0.75, "b": 0.25}, {"a": 0.5, "b": 0.5})
    assert values["mixture/a/target"] == 0.75 and values["mixture/b/realized"] == 0.5
    assert values["aggregate/mixture_distance"] == pytest.approx(0.25)


def test_layout_has_a_chart_per_task_only_while_tasks_are_few():
    assert len(custom_scalars_layout(["a", "b"])["Mixture"]) == 3
    assert len(custom_scalars_layout([f"t{i}" for i in range(1000)])["Mixture"]) == 1


@pytest.fixture(scope="module")
def dashboard_run(world, tmp_path_factory):
    """12 steps, evaluated at 0 (the base model), 6 and 12, on all three trackers, with `echo` held out."""
    mixtures = tmp_path_factory.mktemp("mixtures")
    (mixtures / "dash.yaml").write_text("members: {colour: {}}\nheld_out: [echo]\n")
    run_dir = tmp_path_factory.mktemp("dashboard") / "dash"
    result = launch(settings(world, run_dir, f"data.mixtures_dir={mixtures}", "data.mixture=dash",
                             "train.eval_every=6", "log.trackers=[jsonl,tensorboard,wandb]", "run.name=dash"),
                    env={"WANDB_MODE": "", "WANDB_API_KEY": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def test_metrics_jsonl_has_scores_over_time_and_shares(dashboard_run):
    records = [json.loads(line) for line in (dashboard_run / "metrics.jsonl").read_text().splitlines()]
    steps = lambda key: sorted(r["step"] for r in records if key in r)  # noqa: E731
    for key in ("eval/colour/accuracy", "eval/colour/loss", "held_out/echo/exact_match",
                "held_out/echo/loss", "aggregate/score_trained", "aggregate/score_held_out", "aggregate/loss_trained"):
        assert steps(key) == [0, 6, 12], key
    assert steps("aggregate/tasks_below_base") == [0, 6, 12]
    assert not any(key.startswith("eval/echo") for r in records for key in r)  # held out: its own prefix
    assert steps("batch/grad_norm") == list(range(1, 13)) and steps("batch/lr") == list(range(1, 13))
    assert steps("mixture/colour/target") == steps("mixture/colour/realized") == list(range(1, 13))
    assert all(r["mixture/colour/target"] == 1.0 for r in records if "mixture/colour/target" in r)
    samples = [sample for r in records for sample in r.get("samples", [])]
    assert {s["step"] for s in samples} == {0, 6, 12} and {s["task"] for s in samples} == {"colour", "echo"}
    assert all(isinstance(s["correct"], bool) and s["held_out"] == (s["task"] == "echo") for s in samples)
    summary = json.loads((dashboard_run / "summary.json").read_text())
    assert summary["steps"] == 12 and "score_trained" in summary
    assert not any(key.startswith("summary/") for r in records for key in r)  # summary values are not history


def test_tensorboard_is_one_run_with_scores_hparams_and_layout(dashboard_run):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(dashboard_run / "tensorboard"))
    multiplexer.Reload()
    assert list(multiplexer.Runs()) == ["dash"]  # one run, named as the run; no timestamped hparams run beside it
    accumulator = multiplexer.GetAccumulator("dash")
    tags = set(accumulator.Tags()["scalars"])
    steps = lambda tag: [event.step for event in accumulator.Scalars(tag)]  # noqa: E731
    assert steps("eval/colour/accuracy") == [0, 6, 12] and steps("held_out/echo/exact_match") == [0, 6, 12]
    assert {"batch/loss", "batch/grad_norm", "batch/lr", "batch/tokens_per_second", "aggregate/score_trained",
            "aggregate/mixture_distance", "mixture/colour/target", "mixture/colour/realized"} <= tags
    assert not [tag for tag in tags if tag.startswith(("summary/", "train/examples"))]
    assert sorted({tag.split("/")[0] for tag in tags})[:2] == ["aggregate", "batch"]  # the groups opened first
    assert set(accumulator.Tags()["tensors"]) >= {"samples/colour/text_summary", "samples/echo/text_summary"}

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["train.max_steps"].number_value == 12 and hparams["data.packing"].string_value == "false"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {info.name.tag for info in experiment.metric_infos} >= {"aggregate/score_trained", "batch/loss"}
    assert "custom_scalars__config__" in accumulator.Tags()["tensors"]


def test_wandb_run_is_named_grouped_and_tagged(dashboard_run):
    (run,) = (dashboard_run / "wandb").glob("offline-run-*")  # offline without an API key
    from wandb.proto import wandb_internal_pb2

    records = [wandb_internal_pb2.Record.FromString(data) for data in wandb_records(next(run.glob("*.wandb")))]
    (info,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert info.display_name == "dash" and info.run_group == "dash" and "tasks:1" in info.tags
    defined = {r.metric.glob_name for r in records if r.WhichOneof("record_type") == "metric" and r.metric.glob_name}
    assert {"aggregate/score_*", "eval/*", "held_out/*"} <= defined
    summary = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for r in records if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    assert summary.get("steps") == 12
    (table,) = sorted(run.glob("files/media/table/samples_12_*.table.json"))  # the growing table, at its last step
    table = json.loads(table.read_text())
    assert table["columns"][:2] == ["step", "task"] and "correct" in table["columns"]


def wandb_records(path):
    """The records of a wandb run file: LevelDB's log format (32 KiB blocks of chunks: CRC, length, type) after a
    7-byte header. wandb 0.31 writes it from Go and ships no Python reader."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, records, pending = 7, [], b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a chunk header is padding
            position += 32768 - position % 32768
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        if kind == 1:  # a whole record
            records.append(chunk)
        elif kind in (2, 3):  # first or middle part
            pending = (pending if kind == 3 else b"") + chunk
        elif kind == 4:  # last part
            records.append(pending + chunk)
    return records


def test_report_of_a_run_reads_well(dashboard_run):
    path = write_run_report(dashboard_run)
    text = path.read_text()
    for section in ("The run at a glance", "Scores over training", "Training loss per task",
                    "Validation loss per task", "Mixture shares", "Scores per task", "Sample generations"):
        assert section in text, section
    assert "| task | metric | base | tuned | delta | flag |" in text
    assert {p.name for p in path.parent.glob("*.png")} == {
        "overview.png", "task_scores.png", "train_loss.png", "validation_loss.png", "mixture_shares.png", "scores.png"}
    assert (path.parent / "scores.csv").read_text().startswith("task,metric,base,tuned,delta\n")


def test_report_of_a_thousand_tasks_shows_the_spread_and_both_ends(tmp_path):
    """A synthetic run of 1,000 tasks: the tables list the ends, not every task; every task is in scores.csv."""
    tasks = [f"task{i:04d}" for i in range(1000)]
    records, base, final = [], {}, {}
    for step in (0, 50, 100):
        record = {"step": step}
        for i, task in enumerate(tasks):
            score = (i % 97) + step * ((i % 7) - 3) / 100
            record[f"eval/{task}/exact_match"] = score
            record[f"eval/{task}/loss"] = 3.0 - step / 100 + (i % 13) / 10
            if step:
                record[f"train/{task}/loss"] = 3.5 - step / 100
                record[f"mixture/{task}/target"] = 1 / 1000
                record[f"mixture/{task}/realized"] = (1 + ((i % 5) - 2) / 10) / 1000
            (base if step == 0 else final)[task] = result(record[f"eval/{task}/loss"], exact_match=score)
        records.append(record)
    run_dir = tmp_path / "big"
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "eval" / "base_validation.json").write_text(json.dumps({"tasks": base}))
    (run_dir / "eval" / "validation.json").write_text(json.dumps({"tasks": final, "base": {"tasks": base}}))
    text = write_run_report(run_dir).read_text()
    table = text.split("## Scores per task")[1]
    assert table.count("| task | metric |") == 1 and 10 <= table.count("\n| task0") <= 12
    assert "scores.csv" in table and len((run_dir / "report" / "scores.csv").read_text().splitlines()) == 1001
    assert {p.name for p in (run_dir / "report").glob("*.png")} >= {"score_changes.png", "validation_loss.png",
                                                                      "mixture_shares.png", "task_scores.png"}
    assert len(text) < 20_000
