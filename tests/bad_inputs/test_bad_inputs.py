"""Bad input: one line naming the setting, flag or file and how to fix it; exit 2; no traceback; nothing written.

Each case runs `flanpipe` in-process (`pipeline.cli.main`) with the run folder, cache and a copy of the test tasks
under tmp_path, and checks the error line, the exit status and that the run folder was never created.
"""

import pytest
from conftest import write_task

from pipeline.cli import main

# (command and its arguments, text the one error line must contain)
SETTINGS = [
    (["train.lr=nan"], "train.lr must be a finite number > 0"),
    (["train.lr=inf"], "train.lr must be a finite number > 0"),
    (["train.lr=0"], "train.lr must be a finite number > 0"),
    (["train.lr=-1e-3"], "train.lr must be a finite number > 0"),
    (["train.weight_decay=-0.1"], "train.weight_decay must be a finite number >= 0"),
    (["train.max_grad_norm=-1"], "train.max_grad_norm must be a finite number >= 0"),
    (["train.max_grad_norm=nan"], "train.max_grad_norm must be a finite number >= 0"),
    (["train.max_steps=0"], "train.max_steps must be >= 1"),
    (["train.batch_size=-8"], "train.batch_size must be >= 1"),
    (["train.warmup_steps=-1"], "train.warmup_steps must be >= 0"),
    (["train.keep_last=0"], "train.keep_last must be >= 1"),
    (["eval.batch_size=0"], "eval.batch_size must be a finite number >= 1"),
    (["eval.num_beams=0"], "eval.num_beams must be a finite number >= 1"),
    (["eval.max_new_tokens=-5"], "eval.max_new_tokens must be a finite number >= 1"),
    (["eval.max_examples=-1"], "eval.max_examples must be a finite number >= 0"),
    (["eval.samples=-2"], "eval.samples must be a finite number >= 0"),
    (["data.pad_to_multiple_of=-8"], "data.pad_to_multiple_of must be a finite number >= 0"),
    (["data.max_unk_rate=1.5"], "data.max_unk_rate must be between 0 and 1"),
    (["data.few_shot_k=-1"], "data.few_shot_k must be >= 0"),
    (["data.max_input_length=4"], "data.max_input_length must be >= 8"),
    (["data.num_proc=0"], "data.num_proc must be >= 1"),
    (["run.threads=-1"], "run.threads must be a finite number >= 0"),
    (["train.optimizer=sgd"], "train.optimizer='sgd' is not one of: adafactor, adamw"),
    (["train.schedule=exponential"], "is not one of: constant, linear, cosine"),
    (["train.loss_per=row"], "is not one of: token, example, task"),
    (["train.max_steps=many"], "train.max_steps='many' must be of type int"),
    (["train.nosuchkey=1"], "unknown key 'train.nosuchkey'"),
    (["nosuchsection.key=1"], "unknown key 'nosuchsection'"),
    (["log.trackers=[mlflow]"], "log.trackers: unknown tracker 'mlflow'"),
    (["trainlr=1"], "expected section.key=value"),
    (["data.mixture=nosuchmixture"], "unknown mixture 'nosuchmixture'"),
    (["data.mixture=overflow"], "the rates overflow"),
    (["data.mixture=hot"], "the rates overflow"),
    (["data.mixture=empty"], "members: empty mixture"),
    (["data.mixture=heldtrained"], "is also trained on"),
    (["model.name=./no/such/folder"], "no such folder"),
    (["data.templates_dir=/no/such/tasks"], "/no/such/tasks: tasks folder not found"),
    (["train.resume=/no/such/checkpoint"], "not a complete checkpoint folder"),
    (["run.dir=/proc/flanpipe-run"], "cannot write there"),
]
COMMANDS = [
    (["render", "tiny", "-n", "-1"], "-n must be at least 0"),
    (["render", "nosuchtask"], "unknown task 'nosuchtask'"),
    (["render", "tiny", "--variant", "three_shot"], "unknown variant 'three_shot'"),
    (["render", "tiny", "--split", "dev"], "unknown split 'dev'"),
    (["render", "tiny", "--template", "nosuch"], "has no template 'nosuch'"),
    (["mixture", "mix", "--steps", "-5"], "--steps must be at least 0"),
    (["mixture", "nosuchmixture"], "unknown mixture 'nosuchmixture'"),
    (["eval", "flanpipe/t5-tiny", "--limit", "-3"], "--limit must be at least 1"),
    (["eval", "flanpipe/t5-tiny", "--limit", "0"], "--limit must be at least 1"),
    (["lint", "no/such/path"], "no/such/path: no such file or folder"),
    (["import-promptsource", "no/such/templates.yaml"], "no such file or folder"),
]


@pytest.fixture
def project(tmp_path, tasks_dir, cache_dir):
    mixtures = tmp_path / "mixtures"
    mixtures.mkdir()
    (mixtures / "mix.yaml").write_text("members: {tiny: {}}\n")
    (mixtures / "overflow.yaml").write_text("members: {tiny: {weight: 1.0e308}, other: {weight: 1.0e308}}\n")
    (mixtures / "hot.yaml").write_text("rate: {rule: temperature, temperature: 1.0e-9}\nmembers: {tiny: {}}\n")
    (mixtures / "empty.yaml").write_text("members: {}\n")
    (mixtures / "heldtrained.yaml").write_text("members: {tiny: {}}\nheld_out: [tiny]\n")
    write_task(tasks_dir, "other", "source: {files: data.jsonl}\ncarve: {validation: 2, test: 2}\n",
               {"t": "{{ text }}\n|||\n{{ label }}\n"}, [{"text": f"t{i}", "label": "x"} for i in range(20)])
    return [f"data.templates_dir={tasks_dir}", f"data.mixtures_dir={mixtures}", f"run.dir={tmp_path / 'run'}",
            "log.trackers=[jsonl]"]


def run(capsys, arguments):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


@pytest.mark.parametrize(("overrides", "message"), SETTINGS, ids=[" ".join(case[0]) for case in SETTINGS])
def test_a_bad_setting_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, project, overrides, message):
    code, err = run(capsys, ["train", *project, "data.mixture=mix", *overrides])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("flanpipe train: error: "), err
    assert message in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("arguments", "message"), COMMANDS, ids=[" ".join(case[0]) for case in COMMANDS])
def test_a_bad_command_line_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, project, arguments, message):
    code, err = run(capsys, [*arguments, *project])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "error: " in lines[0], err
    assert message in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _replace_data(project_root, text: bytes):
    (project_root / "tasks" / "tiny" / "data.jsonl").write_bytes(text)


# (what is broken, how to break it (given tmp_path), command, text the one error line must contain)
FILES = [
    ("task.yaml not UTF-8", lambda root: (root / "tasks" / "tiny" / "task.yaml").write_bytes(b"source: \xff\xfe\n"),
     ["render", "tiny"], "task.yaml is not UTF-8 text"),
    ("task.yaml is a folder", lambda root: ((root / "tasks" / "tiny" / "task.yaml").unlink(),
                                            (root / "tasks" / "tiny" / "task.yaml").mkdir()),
     ["render", "tiny"], "cannot read the task.yaml"),
    ("template not UTF-8", lambda root: (root / "tasks" / "tiny" / "ask.jinja").write_bytes(b"\xff |||\nx\n"),
     ["render", "tiny"], "ask.jinja: cannot read template"),
    ("mixture not UTF-8", lambda root: (root / "mixtures" / "mix.yaml").write_bytes(b"members: {\xff: {}}\n"),
     ["mixture", "mix"], "mixture file is not UTF-8 text"),
    ("mixture weight as text", lambda root: (root / "mixtures" / "mix.yaml").write_text("members: {tiny: {weight: heavy}}\n"),
     ["mixture", "mix"], "members.tiny.weight must be a number >= 0, got 'heavy'"),
    ("a broken JSONL line", lambda root: _replace_data(root, b'{"text": "a", "label": "positive"}\n{"text": \n'),
     ["render", "tiny"], "source.files: cannot read"),
    ("CSV text in a .jsonl", lambda root: _replace_data(root, b"text,label\na,positive\n"),
     ["render", "tiny"], "source.files: cannot read"),
    ("an empty data file", lambda root: _replace_data(root, b""),
     ["render", "tiny"], "tiny"),
    ("a missing data file", lambda root: (root / "tasks" / "tiny" / "data.jsonl").unlink(),
     ["render", "tiny"], "source.files: data.jsonl not found"),
    ("a preset that is not UTF-8", lambda root: (root / "preset.yaml").write_bytes(b"train: {lr: \xff}\n"),
     ["train", "-c", "PRESET"], "config file is not UTF-8 text"),
    ("a preset that is a folder", lambda root: (root / "preset.yaml").mkdir(),
     ["train", "-c", "PRESET"], "cannot read the config file"),
    ("a preset that is a list", lambda root: (root / "preset.yaml").write_text("- 1\n- 2\n"),
     ["train", "-c", "PRESET"], "a config file must be a mapping"),
]


@pytest.mark.parametrize(("broken", "breaking", "arguments", "message"), FILES, ids=[case[0] for case in FILES])
def test_a_broken_file_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, project, broken, breaking, arguments,
                                                             message):
    breaking(tmp_path)
    arguments = [str(tmp_path / "preset.yaml") if a == "PRESET" else a for a in arguments]
    code, err = run(capsys, [*arguments, *project])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "error: " in lines[0], err
    assert message in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _rows_with_nulls(root, count: int, bad_label=None) -> None:
    import json

    rows = [{"text": f"sentence {i}", "label": bad_label if i < count else ("positive" if i % 2 else "negative")}
            for i in range(200)]
    (root / "tasks" / "tiny" / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_too_many_rows_missing_a_field_refuse_the_task(capsys, tmp_path, project):
    _rows_with_nulls(tmp_path, 20)  # 10% of the rows have no label
    code, err = run(capsys, ["train", *project, "data.mixture=mix"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "task 'tiny': 20 of 200 rows (20 train) have a missing (null) field the templates read" in lines[0]
    assert "data.max_bad_row_fraction=0.01" in lines[0] and not (tmp_path / "run").exists()


def test_a_few_rows_missing_a_field_are_dropped_and_reported(capsys, tmp_path, project):
    from pipeline.tasks.splits import load_splits
    from pipeline.tasks.task import load_task

    _rows_with_nulls(tmp_path, 1)
    splits = load_splits(load_task(tmp_path / "tasks" / "tiny"), tmp_path / "cache")
    assert sum(len(split) for split in splits.values()) == 199
    assert all(label is not None for split in splits.values() for label in split["label"])
    assert "task tiny: dropped 1 of 200 rows (1 train) with a missing (null) field" in capsys.readouterr().err


def _edit_json(path, **changes):
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# (what is wrong with a copy of a saved model, how to do it (given the folder), text the one error line must contain)
MODELS = [
    ("weights truncated", lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:500]),
     "cannot load its weights"),
    ("weights missing", lambda m: (m / "model.safetensors").unlink(), "cannot load its weights"),
    ("vocab_size edited", lambda m: _edit_json(m / "config.json", vocab_size=99), "weights do not fit its config.json"),
    ("d_model edited", lambda m: _edit_json(m / "config.json", d_model=48), "weights do not fit its config.json"),
    ("config.json not JSON", lambda m: (m / "config.json").write_text("{"), "cannot load its config"),
    ("config.json missing", lambda m: (m / "config.json").unlink(), "config.json"),
    ("a decoder-only model", lambda m: _edit_json(m / "config.json", model_type="gpt2", architectures=["GPT2LMHeadModel"]),
     "flanpipe needs an encoder-decoder"),
    ("tokenizer files missing", lambda m: [p.unlink() for p in m.glob("tokenizer*")], "tokenizer"),
]


@pytest.mark.parametrize(("broken", "breaking", "message"), MODELS, ids=[case[0] for case in MODELS])
@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_broken_model_folder_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, project, world, broken,
                                                                     breaking, message, command):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    breaking(model)
    arguments = ["train", f"model.name={model}", "data.mixture=mix"] if command == "train" else ["eval", str(model),
                                                                                                "--base", "none"]
    code, err = run(capsys, [*arguments, *project])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "error: " in lines[0], err
    assert message in lines[0] and str(model) in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("out", "message"), [("FOLDER", "is a folder; give a file name"),
                                              ("/proc/scores.json", "cannot write there")])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(capsys, tmp_path, project, world, out, message):
    out = str(tmp_path) if out == "FOLDER" else out
    code, err = run(capsys, ["eval", str(world["model"]), "--out", out, *project])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0] and f"--out {out}" in lines[0], err


@pytest.mark.parametrize("blank", ["", "  \n"])
def test_rows_whose_target_field_is_blank_are_dropped_and_reported(capsys, tmp_path, project, blank, monkeypatch):
    from pipeline.tasks import splits as splits_module
    from pipeline.tasks.splits import load_splits
    from pipeline.tasks.task import load_task

    monkeypatch.setattr(splits_module, "_REPORTED", set())  # reported once per process: both cases must see it
    _rows_with_nulls(tmp_path, 2, bad_label=blank)
    splits = load_splits(load_task(tmp_path / "tasks" / "tiny"), tmp_path / "cache", max_bad_fraction=0.05)
    assert sum(len(split) for split in splits.values()) == 198
    assert all(label.strip() for split in splits.values() for label in split["label"])
    assert "dropped 2 of 200 rows (2 train) with a missing (null) field" in capsys.readouterr().err


def test_a_raised_max_bad_row_fraction_holds_for_every_reader_of_the_task(capsys, tmp_path, project):
    """The setting decides for the mixture statistics, the training feed, evaluation and `flanpipe render`
    alike: a task accepted by one must not be refused by another."""
    from pipeline.config import DataConfig
    from pipeline.evaluate.evaluator import evaluation_rows
    from pipeline.tasks.task import load_tasks
    from pipeline.train.feed import TrainingFeed

    _rows_with_nulls(tmp_path, 20)  # 10% of the rows have no label
    code, err = run(capsys, ["render", "tiny", "-n", "1", *project])
    assert code == 2 and "data.max_bad_row_fraction=0.01" in err
    main(["render", "tiny", "-n", "1", *project, "data.max_bad_row_fraction=0.2"])  # no SystemExit: it renders
    assert "Review: sentence" in capsys.readouterr().out
    data = DataConfig(templates_dir=str(tmp_path / "tasks"), cache_dir=str(tmp_path / "cache"),
                      max_bad_row_fraction=0.2)
    tasks = load_tasks(tmp_path / "tasks")
    assert len(TrainingFeed(tasks, ["tiny"], None, data, seed=0).splits["tiny"]) == 170  # 200 - 20 dropped - 10 carved
    assert evaluation_rows(tasks["tiny"], "validation", data, seed=0, limit=None)
