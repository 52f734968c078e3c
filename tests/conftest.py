"""Shared fixtures: tiny task folders written into tmp_path, and an isolated cache dir."""

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

SENTIMENT_ROWS = [
    {"text": f"sentence number {i} is {'good' if i % 2 else 'bad'}", "label": "positive" if i % 2 else "negative"}
    for i in range(40)
]


def pytest_configure(config):
    """One torch thread per pytest process (and per process it starts): two workers with two threads each on two
    cores wait on each other, 10-20× slower."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def write_task(root: Path, name: str, yaml_text: str, templates: dict[str, str], rows: list[dict] | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "task.yaml").write_text(yaml_text)
    for stem, text in templates.items():
        (folder / f"{stem}.jinja").write_text(text)
    if rows is not None:
        (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("FLANPIPE_CACHE", str(path))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    return path


@pytest.fixture
def tasks_dir(tmp_path) -> Path:
    """A folder with one classification task (`tiny`) backed by a local JSONL file."""
    root = tmp_path / "tasks"
    write_task(
        root,
        "tiny",
        "source: {files: data.jsonl}\nanswer_choices: [negative, positive]\nmetrics: [accuracy]\n"
        "carve: {validation: 5, test: 5}\n",
        {
            "ask": "Review: {{ text }}\nPositive or negative?\n|||\n{{ label }}\n",
            "options_inline": "{{ text }}\n\n{{ options }}\nSentiment:\n|||\n{{ label }}\n",
            "guess": "{# inversion: true #}\nWrite a {{ label }} sentence.\n|||\n{{ text }}\n",
        },
        SENTIMENT_ROWS,
    )
    return root


WORDS = "red green blue small large quick slow bright dark warm cold soft loud quiet old new".split()


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Two tasks, a mixture and a tiny local model folder, for end-to-end runs (train, eval, forgetting)."""
    root = tmp_path_factory.mktemp("world")
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choices(WORDS, k=rng.randint(2, 9))), "label": rng.choice(["yes", "no"])}
            for _ in range(300)]
    tasks = root / "tasks"
    write_task(tasks, "colour", "source: {files: data.jsonl}\nanswer_choices: [\"yes\", \"no\"]\nmetrics: [accuracy]\n"
               "carve: {validation: 20, test: 20}\n",
               {"ask": "Is it colourful? {{ text }}\n|||\n{{ label }}\n",
                "plain": "{{ text }}\nColourful?\n|||\n{{ label }}\n"}, rows)
    write_task(tasks, "echo", "source: {files: data.jsonl}\nmetrics: [exact_match]\ncarve: {validation: 20, test: 20}\n",
               {"repeat": "Repeat: {{ text }}\n|||\n{{ text }}\n",
                "copy": "Copy the words: {{ text }}\n|||\n{{ text }}\n"}, rows)
    mixtures = root / "mixtures"
    mixtures.mkdir()
    (mixtures / "mix.yaml").write_text("members: {colour: {}, echo: {}}\nvariants: {few_shot: 0.25, options: 0.5}\n")
    (mixtures / "missing.yaml").write_text("members: {colour: {}, nosuchtask: {}}\n")

    from pipeline.default_model import DefaultModelSpec, create_default_model

    texts = [f"Is it colourful? Repeat: Copy the words: Colourful? OPTIONS: yes no {r['text']}" for r in rows]
    spec = DefaultModelSpec(vocab_size=160, d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                            d_kv=16, extra_ids=4)
    model = create_default_model(root / "model", texts * 5, spec, seed=0)
    cache = root / "cache"
    return {"root": root, "tasks": tasks, "mixtures": mixtures, "model": model, "cache": cache}


def settings(world, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"run.dir={run_dir}", f"data.templates_dir={world['tasks']}", f"data.mixtures_dir={world['mixtures']}",
        f"data.cache_dir={world['cache']}", "data.mixture=mix", f"model.name={world['model']}",
        "data.max_input_length=64", "data.max_target_length=16", "train.batch_size=8", "train.max_steps=12",
        "train.log_every=1", "train.eval_every=0", "train.save_every=3", "train.warmup_steps=2",
        "eval.max_examples=8", "eval.samples=1", "log.trackers=[jsonl]", *extra,
    ]


DISTRIBUTED_LOCK = Path(tempfile.gettempdir()) / "flanpipe-tests-distributed.lock"


def run_distributed(command: list[str], env: dict, wait: bool = True):
    """Run a multi-process launch (torchrun, accelerate launch) holding a lock shared by every pytest worker, so
    that no two start at once: torchrun finds its port by binding port 0 and letting it go, and two launches
    starting together can be handed the same port (one then fails to start, or its workers join the other's
    group and hang). With `wait=False` the lock is let go when the process ends."""
    handle = open(DISTRIBUTED_LOCK, "w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    if wait:
        try:
            return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        finally:
            handle.close()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threading.Thread(target=lambda: (process.wait(), handle.close()), daemon=True).start()
    return process


def launch(args: list[str], *, nproc: int = 1, wait: bool = True, env: dict | None = None, command: str = "train"):
    """`flanpipe COMMAND args` in a subprocess (torchrun for nproc > 1); returns the CompletedProcess or Popen."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", **(env or {})}
    if nproc > 1:
        return run_distributed([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={nproc}", "-m", "pipeline.cli", command, *args], full_env, wait)
    full = [sys.executable, "-m", "pipeline.cli", command, *args]
    if not wait:
        return subprocess.Popen(full, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(full, env=full_env, capture_output=True, text=True, timeout=300)


def losses(run_dir: Path) -> dict[int, float]:
    """Step -> training loss from metrics.jsonl (the last record of a step wins: a resumed run repeats steps)."""
    found = {}
    text = (run_dir / "metrics.jsonl").read_text()
    if not text.endswith("\n"):  # read while the trainer appends: the last line may be half there
        text = text[: text.rfind("\n") + 1]
    for line in text.splitlines():
        record = json.loads(line)
        if "batch/loss" in record:
            found[record["step"]] = record["batch/loss"]
    return found


def kill_and_resume(world, run_dir, kill_after: int, *extra: str) -> None:
    """Start a run, SIGKILL it once it has logged step `kill_after`, and resume it to the end. The runs have 12
    short steps: polled every 50 ms, a kill aimed at step 10 once landed after the last one (a fresh-clone
    `make test`)."""
    process = launch(settings(world, run_dir, *extra), wait=False)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and max(losses(run_dir), default=0) >= kill_after:
            break
        time.sleep(0.01)  # the steps are short: a coarser poll can miss the last four of them
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert max(losses(run_dir)) < 12, "the run finished before it could be killed"
    resumed = launch(settings(world, run_dir, *extra))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout + resumed.stderr
