"""The command line: exit 2 with one line naming the fault for bad input; JSON outputs; no torch for render."""

import json
import subprocess
import sys

import pytest
from conftest import write_task

from pipeline.cli import main


def run(capsys, *argv):
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_render_shows_examples(capsys, tasks_dir, cache_dir):
    code, out, _ = run(capsys, "render", "tiny", "-n", "2", "--split", "validation", f"data.templates_dir={tasks_dir}")
    assert code == 0
    assert out.count("── tiny · validation[") == 2 * 3 and "→ " in out


def test_tasks_json(capsys, tasks_dir, cache_dir):
    code, out, _ = run(capsys, "tasks", "--json", f"data.templates_dir={tasks_dir}")
    assert code == 0
    (row,) = json.loads(out)
    assert row["name"] == "tiny" and row["available"] is True and row["templates"] == 3
    assert row["metrics"] == ["accuracy"] and row["splits"] == {"train": 30, "validation": 5, "test": 5}


@pytest.mark.parametrize(
    ("template", "fault"),
    [
        ("{{ txet }}\n|||\n{{ label }}\n", r"reads txet, not in the data of task 'broken'"),
        ("{{ text }}\n|||\n{{ label }}\n|||\nmore\n", r"expected exactly one line holding only '\|\|\|'"),
        ("{% if text %}{{ text }}\n|||\n{{ label }}\n", r"Jinja syntax error"),
        ("{{ text.__class__.__mro__ }}\n|||\n{{ label }}\n", r"refused: the input reaches for"),
    ],
)
def test_lint_bad_template_exit_2_one_line_per_fault(capsys, tmp_path, cache_dir, template, fault):
    from conftest import SENTIMENT_ROWS

    folder = write_task(tmp_path, "broken", "source: {files: data.jsonl}\n", {"bad": template}, SENTIMENT_ROWS)
    code, _, err = run(capsys, "lint", str(folder))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "bad.jinja" in lines[0]
    assert __import__("re").search(fault, lines[0])


def test_lint_passes_on_good_folder(capsys, tasks_dir, cache_dir):
    code, out, err = run(capsys, "lint", str(tasks_dir))
    assert code == 0, err
    assert out.startswith("lint: 4 ok")


def test_bad_task_yaml_and_overrides_exit_2(capsys, tmp_path, tasks_dir, cache_dir):
    folder = write_task(tmp_path, "odd", "source: {files: data.jsonl}\nlabels: [a]\n", {"a": "x\n|||\ny"})
    code, _, err = run(capsys, "lint", str(folder))
    assert code == 2 and "odd/task.yaml: unknown key 'labels'" in err
    code, _, err = run(capsys, "tasks", "data.templates_dirr=x")
    assert code == 2 and err.count("\n") == 1 and "unknown key 'data.templates_dirr'" in err
    code, _, err = run(capsys, "render", "tiny", "run.seed=abc", f"data.templates_dir={tasks_dir}")
    assert code == 2 and "run.seed='abc' must be of type int" in err
    code, _, err = run(capsys, "render", "nope", f"data.templates_dir={tasks_dir}")
    assert code == 2 and "unknown task 'nope'; known tasks: tiny" in err


def test_render_does_not_import_torch(tasks_dir, cache_dir):
    script = (
        "import sys\nfrom pipeline.cli import main\n"
        f"main(['render', 'tiny', '-n', '1', 'data.templates_dir={tasks_dir}'])\n"
        "assert 'torch' not in sys.modules, 'render imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_render_tokenized_shows_what_the_model_sees(capsys, world):
    main(["render", "colour", "-n", "1", "--tokenized", f"data.templates_dir={world['tasks']}",
          f"data.cache_dir={world['cache']}", f"model.name={world['model']}", "data.max_input_length=8"])
    out = capsys.readouterr().out
    assert "tokens, truncated]" in out and "</s>" in out  # an 8-token input is cut; eos is what training appends
