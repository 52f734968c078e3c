"""`pip install` of the wheel (not editable) gives a flanpipe that works from any folder: the shipped task
folders, mixtures and presets travel inside the package (`pipeline/shipped/`, see setup.py)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from pipeline.builtin.fetch import builtin_data_path
from pipeline.config import load_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "pipeline", "templates", "task_mixtures",
           "configs")
CACHE = load_config().data.cache_path()  # read at import: other tests point FLANPIPE_CACHE at temporary folders


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (a build leaves build/ and *.egg-info behind)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (ROOT / name).is_dir() else {}))
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, source])
    (built,) = dist.glob("flanpipe-*.whl")
    return built


def test_the_wheel_carries_the_shipped_folders(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for path in ("pipeline/shipped/templates/sentiment/task.yaml", "pipeline/shipped/task_mixtures/default.yaml",
                 "pipeline/shipped/configs/default.yaml", "pipeline/forward.py", "pipeline/train/loop.py"):
        assert path in names


def test_an_installed_wheel_lists_renders_and_lints_from_another_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The dependencies (torch & co.) come from this environment's site-packages, offline and in seconds. A path
    # named in a .pth file is only appended to sys.path: the .pth files inside it (this checkout's editable
    # install) are not run, so `pipeline` can only come from the wheel.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "--no-deps", "-q", wheel])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "FLANPIPE_CACHE": str(CACHE), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    flanpipe = venv / "bin" / "flanpipe"

    location = run([python, "-c", "import pipeline.config as c; print(c.__file__, c.SHIPPED_TEMPLATES)"],
                   cwd=elsewhere, env=env).stdout
    assert str(site) in location and str(ROOT) not in location
    tasks = run([flanpipe, "tasks", "--json"], cwd=elsewhere, env=env).stdout
    assert '"name": "sentiment"' in tasks and '"name": "arithmetic"' in tasks
    lint = run([flanpipe, "lint"], cwd=elsewhere, env=env).stdout
    assert lint.startswith("lint: ") and lint.strip().endswith("ok")
    if not builtin_data_path(CACHE, "sentiment").exists():
        pytest.skip("the built-in data is not fetched (`make data`); rendering needs it")
    rendered = run([flanpipe, "render", "sentiment", "-n", "1"], cwd=elsewhere, env=env).stdout
    assert "sentiment · train[0]" in rendered and "→ " in rendered
