"""Start-up at FLAN scale (`make bench-startup`): N generated local-JSONL tasks of 1,000 rows, one mixture of all.

    .venv/bin/python bench/startup.py [--tasks 100 1000] [--rows 1000] [--eval-budget]

For each N: writes N task folders (two templates each, `carve: {validation: 50, test: 50}`) and a mixture of
all of them under a scratch folder, then times, each twice (cold: empty caches; warm: caches from the first):
`flanpipe mixture all --steps 1000`, and `flanpipe train` (`train.max_steps=1`, 1 example per task evaluated):
the time until step 1's loss is logged, and the whole run with its final evaluation. The base model's scores
are cached (the warm run reads them). Network access is not disabled: local data
must not need it. Prints a table; growth per task shows whether start-up is linear in the tasks.

`--eval-budget` then times one evaluation during training (`time/eval_seconds` at step 1 of a 2-step run with
`train.eval_every=1`, `eval.max_examples=10`, 1 sample per task) for the largest N: unbounded (every task's 10
examples and samples from every task, what the trainer did before the budgets) against the defaults with
`eval.periodic_examples=1000` (and samples from `eval.sample_tasks`, 20, tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("river stone light paper music garden winter silver market letter window bridge forest engine "
         "orange doctor castle valley rocket pencil harbor meadow canvas lantern").split()
TEMPLATES = {
    "ask": "Task {{ name }}: which word comes last in '{{ text }}'?\n|||\n{{ label }}\n",
    "say": "{{ text }}\nThe last word, please.\n|||\n{{ label }}\n",
}


def write_world(root: Path, tasks: int, rows: int) -> Path:
    rng = random.Random(tasks)
    for number in range(tasks):
        folder = root / "tasks" / f"task{number:04d}"
        folder.mkdir(parents=True)
        (folder / "task.yaml").write_text("source: {files: data.jsonl}\ncarve: {validation: 50, test: 50}\n"
                                          "metrics: [exact_match]\n")
        for name, text in TEMPLATES.items():
            (folder / f"{name}.jinja").write_text(text)
        lines = []
        for _ in range(rows):
            words = rng.choices(WORDS, k=rng.randint(3, 8))
            lines.append(json.dumps({"name": f"t{number}", "text": " ".join(words), "label": words[-1]}))
        (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    (root / "mixtures").mkdir()
    (root / "mixtures" / "all.yaml").write_text(
        "members:\n" + "".join(f"  task{number:04d}: {{}}\n" for number in range(tasks)))
    return root


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - started


def timed_training(command: list[str], env: dict[str, str], run_dir: Path) -> tuple[float, float]:
    """(seconds until step 1's loss is in metrics.jsonl, seconds for the whole run incl. its final evaluation)."""
    started = time.perf_counter()
    process = subprocess.Popen([*command, f"run.dir={run_dir}"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=ROOT)
    first_step = None
    while process.poll() is None:
        log = run_dir / "metrics.jsonl"
        if first_step is None and log.exists() and '"batch/loss"' in log.read_text():
            first_step = time.perf_counter() - started
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit(f"startup: {' '.join(command)} failed with status {process.returncode}")
    return first_step or float("nan"), time.perf_counter() - started


def eval_seconds(run_dir: Path, step: int) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["time/eval_seconds"] for r in records if r.get("step") == step and "time/eval_seconds" in r)


def eval_budget(train: list[str], env: dict[str, str], root: Path, tasks: int) -> None:
    budget = [*train[:train.index("train.max_steps=1")], "train.max_steps=2", "train.eval_every=1",
              "train.save_every=0", "eval.max_examples=10", "eval.samples=1", "log.trackers=[jsonl]"]
    runs = {"unbounded": ["eval.periodic_examples=0", f"eval.sample_tasks={tasks}"],
            "eval.periodic_examples=1000": ["eval.periodic_examples=1000"]}
    timed_training([*budget, *runs["unbounded"]], env, root / "budget-warmup")  # caches the base model's scores
    print(f"\nOne evaluation during training, {tasks:,} tasks (eval.max_examples=10, eval.samples=1):\n"
          "| evaluation | time/eval_seconds at step 1 | whole 2-step run |\n|---|---|---|")
    for name, settings in runs.items():
        _, whole = timed_training([*budget, *settings], env, root / f"budget-{name}")
        print(f"| {name} | {eval_seconds(root / f'budget-{name}', 1):.1f} s | {whole:.1f} s |", flush=True)


def default_model() -> Path:
    """The embedded default model's folder in the user's cache (built there by `make train` or `make test`), so
    the scratch caches below hold only the generated tasks' data."""
    from pipeline.config import default_cache_dir

    found = sorted((default_cache_dir() / "models").glob("t5-tiny-*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit("startup: no cached default model; run `make train` (or `make test`) once first")
    return found[-1].parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--eval-budget", action="store_true", help="also time an evaluation during training")
    args = parser.parse_args()
    print(f"machine: {len(os.sched_getaffinity(0))} usable cores; {args.rows} rows per task", flush=True)
    print("| tasks | mixture cold | mixture warm | train to step 1, cold | to step 1, warm | whole 1-step run with "
          "its final evaluation, cold / warm |\n|---|---|---|---|---|---|", flush=True)
    model = default_model()
    for tasks in args.tasks:
        root = write_world(Path(tempfile.mkdtemp(prefix=f"flanpipe-startup-{tasks}-")), tasks, args.rows)
        env = {**os.environ, "FLANPIPE_CACHE": str(root / "cache"), "HF_DATASETS_CACHE": str(root / "hf")}
        env.pop("HF_HUB_OFFLINE", None), env.pop("HF_DATASETS_OFFLINE", None)
        common = [f"data.templates_dir={root / 'tasks'}", f"data.mixtures_dir={root / 'mixtures'}",
                  f"model.name={model}"]
        mixture = [sys.executable, "-m", "pipeline.cli", "mixture", "all", "--steps", "1000", *common]
        train = [sys.executable, "-m", "pipeline.cli", "train", *common, "data.mixture=all", "train.max_steps=1",
                 "train.save_every=0", "train.log_every=1", "eval.max_examples=1", "eval.samples=0",
                 "log.trackers=[jsonl]"]
        cold_mix, warm_mix = timed(mixture, env), timed(mixture, env)
        cold_step, cold_run = timed_training(train, env, root / "run-cold")
        warm_step, warm_run = timed_training(train, env, root / "run-warm")
        print(f"| {tasks:,} | {cold_mix:.1f} s | {warm_mix:.1f} s | {cold_step:.1f} s | {warm_step:.1f} s "
              f"({warm_step / tasks * 1000:.0f} ms per task) | {cold_run:.1f} s / {warm_run:.1f} s |", flush=True)
        if args.eval_budget and tasks == max(args.tasks):
            eval_budget(train, env, root, tasks)


if __name__ == "__main__":
    main()
