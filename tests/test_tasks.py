import json

import pytest
from conftest import SENTIMENT_ROWS, write_task

from pipeline.errors import UserError
from pipeline.tasks.splits import load_split, load_splits
from pipeline.tasks.task import get_task, load_task, load_tasks

ASK = {"ask": "{{ text }}\n|||\n{{ label }}\n"}


def test_registry_and_unknown_task(tasks_dir):
    tasks = load_tasks(tasks_dir)
    assert list(tasks) == ["tiny"]
    task = tasks["tiny"]
    assert [t.name for t in task.forward_templates] == ["ask", "options_inline"]
    assert [t.name for t in task.inversion_templates] == ["guess"]
    with pytest.raises(UserError, match=r"unknown task 'tinny'; known tasks: tiny"):
        get_task(tasks, "tinny")


def test_carved_splits_are_deterministic_and_disjoint(tasks_dir, cache_dir):
    task = load_tasks(tasks_dir)["tiny"]
    splits = load_splits(task, cache_dir)
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 30, "validation": 5, "test": 5}
    texts = {name: set(ds["text"]) for name, ds in splits.items()}
    assert not texts["train"] & texts["validation"] and not texts["validation"] & texts["test"]
    assert load_splits(task, cache_dir)["validation"]["text"] == splits["validation"]["text"]
    assert load_splits(task, cache_dir, split_seed=1)["validation"]["text"] != splits["validation"]["text"]


def test_field_mapping_and_preprocess(tmp_path, cache_dir):
    rows = [{"sentence": "  hi there ", "polarity": "positive"}, {"sentence": "", "polarity": "negative"}] * 3
    folder = write_task(
        tmp_path, "mapped",
        "source: {files: data.jsonl}\nfields: {text: sentence, label: polarity}\n"
        "preprocess: [strip, drop_empty, dedupe]\ncarve: {}\n",
        ASK, rows,
    )
    train = load_split(load_task(folder), "train", cache_dir)
    assert train["text"] == ["hi there"] and train["label"] == ["positive"]


def test_local_dataset_folder_through_load_dataset_path(tmp_path, cache_dir):
    data = tmp_path / "hub_like"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SENTIMENT_ROWS[:10]))
    folder = write_task(
        tmp_path, "hub", f"source: {{path: {data}}}\nsplits: {{train: train, validation: validation}}\n"
        "carve: {test: 0.2}\n", ASK,
    )
    splits = load_splits(load_task(folder), cache_dir)
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 8, "validation": 10, "test": 2}


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("source: {files: data.jsonl}\ncolour: red\n", r"task.yaml: unknown key 'colour'; valid keys: description"),
        ("metrics: [accuracy]\n", r"task.yaml: missing 'source'"),
        ("source: {files: a.jsonl, builtin: x}\n", r"task.yaml: source must have exactly one of"),
        ("source: {builtin: nope}\n", r"task.yaml: source.builtin: unknown built-in 'nope'"),
        ("source: {files: data.jsonl}\nmetrics: [bleu2]\n", r"task.yaml: metrics: unknown metric 'bleu2'"),
        ("source: {files: data.jsonl}\ncap: 0\n", r"task.yaml: cap must be an integer >= 1"),
        ("source: {files: data.jsonl}\nsplits: {dev: validation}\n", r"task.yaml: splits: unknown split 'dev'"),
        ("source: {files: data.jsonl}\ncarve: {validation: -1}\n", r"task.yaml: carve.validation must be"),
        ("source: {files: data.jsonl}\npreprocess: [stem]\n", r"task.yaml: preprocess: unknown step 'stem'"),
        ("source: [1\n", r"task.yaml: not valid YAML"),
    ],
)
def test_bad_task_yaml_names_file_and_key(tmp_path, yaml_text, message):
    folder = write_task(tmp_path, "bad", yaml_text, ASK)
    with pytest.raises(UserError, match=message):
        load_task(folder)


def test_missing_files_and_columns_are_named(tmp_path, cache_dir):
    folder = write_task(tmp_path, "nofile", "source: {files: missing.jsonl}\n", ASK)
    with pytest.raises(UserError, match=r"source.files: missing.jsonl not found"):
        load_split(load_task(folder), "train", cache_dir)
    folder = write_task(tmp_path, "nocol", "source: {files: data.jsonl}\nfields: {text: body}\n", ASK, SENTIMENT_ROWS)
    with pytest.raises(UserError, match=r"fields.text: no column 'body'"):
        load_split(load_task(folder), "train", cache_dir)


def test_folder_without_templates(tmp_path):
    folder = write_task(tmp_path, "empty", "source: {files: data.jsonl}\n", {})
    with pytest.raises(UserError, match=r"no templates"):
        load_task(folder)


def test_a_task_is_loaded_once_per_process_until_its_data_or_text_changes(tasks_dir, cache_dir, monkeypatch):
    from pipeline.tasks import splits as splits_module

    loads = []
    real = splits_module.load_source
    monkeypatch.setattr(splits_module, "load_source", lambda *a: loads.append(1) or real(*a))
    task = load_tasks(tasks_dir)["tiny"]
    first = load_splits(task, cache_dir)
    assert load_split(task, "train", cache_dir)["text"] == first["train"]["text"] and len(loads) == 1
    data = tasks_dir / "tiny" / "data.jsonl"
    data.write_text(data.read_text() + json.dumps({"text": "one more", "label": "positive"}) + "\n")
    assert sum(map(len, load_splits(task, cache_dir).values())) == 41 and len(loads) == 2  # the file changed
    (tasks_dir / "tiny" / "ask.jinja").write_text("Text: {{ text }}\n|||\n{{ label }}\n")
    load_splits(load_tasks(tasks_dir)["tiny"], cache_dir)
    assert len(loads) == 3  # the task's text changed
