"""The fault campaign (`make faults`): SIGKILL a real training run 10 times at random moments, some of them while a
checkpoint is being written, resume it each time, and compare the finished run with one never interrupted:
every logged training loss and every final weight must be bitwise equal.

    .venv/bin/python bench/faults.py [--kills 10] [--steps 60] [--seed N] [--out DIR] [--set KEY=VALUE ...]

The run is the embedded default (configs/default.yaml) shortened to --steps, a checkpoint every 5 steps. Kills
take turns: during start-up (a random moment in the first seconds: imports, data, model), mid-save (the moment a
new checkpoint staging folder appears) and mid-training (once a random later step has been logged, spaced so
the run is still going at the last kill). Prints a table, one row per kill, and the verdict; exits 1 if anything
differs. `--set` adds settings to both runs, e.g. `--set data.length_window=8 data.prefetch=true` (checkpoints
inside length windows, batches prepared ahead): `make faults ARGS="--set ..."`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent


EXTRA: list[str] = []
"""`--set` settings, for both runs."""


def settings(run_dir: Path, steps: int) -> list[str]:
    return [*_base(run_dir, steps), *EXTRA]


def _base(run_dir: Path, steps: int) -> list[str]:
    return ["-c", str(ROOT / "configs" / "default.yaml"), f"run.dir={run_dir}", f"train.max_steps={steps}",
            "train.save_every=5", "train.eval_every=0", "train.log_every=1", "eval.max_examples=20",
            "eval.samples=1", "log.trackers=[jsonl]", "train.keep_last=2"]


def start(run_dir: Path, steps: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "train", *settings(run_dir, steps)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(run_dir: Path) -> dict[int, float]:
    path = run_dir / "metrics.jsonl"
    found: dict[int, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "batch/loss" in record:
                found[record["step"]] = record["batch/loss"]
    return found


def staging(run_dir: Path) -> set[str]:
    """The checkpoint staging folders there now (a save in progress, or one a kill left behind)."""
    folder = run_dir / "checkpoints"
    return {path.name for path in folder.glob(".tmp-step-*")} if folder.is_dir() else set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=None, help="for the kill moments (default: random)")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="settings for both runs")
    args = parser.parse_args()
    EXTRA.extend(args.set)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    out = args.out or Path(tempfile.mkdtemp(prefix="flanpipe-faults-"))
    reference, faulted = out / "reference", out / "faulted"

    print(f"faults: seed {seed}; runs in {out}", flush=True)
    started = time.perf_counter()
    result = start(reference, args.steps)
    output, _ = result.communicate()
    if result.returncode:
        sys.exit(f"faults: the reference run failed:\n{output[-2000:]}")
    print(f"faults: reference run in {time.perf_counter() - started:.0f} s", flush=True)

    rows = []
    for kill in range(1, args.kills + 1):
        before = max(losses(faulted), default=0)
        left_behind = staging(faulted)
        aim = ("start-up", "mid-save", "mid-training")[(kill - 1) % 3]
        target = before + rng.randint(1, max(1, (args.steps - before) // (args.kills - kill + 2)))
        process = start(faulted, args.steps)
        launched = time.perf_counter()
        wait = rng.uniform(0.5, 6.0)
        while process.poll() is None and time.perf_counter() - launched < 300:
            if aim == "start-up" and time.perf_counter() - launched > wait:
                break
            if aim == "mid-save" and staging(faulted) - left_behind:
                break
            if aim == "mid-training" and max(losses(faulted), default=0) >= target:
                break
            time.sleep(0.005)
        saving = bool(staging(faulted) - left_behind)
        process.send_signal(signal.SIGKILL)
        process.wait()
        rows.append((kill, aim, f"{time.perf_counter() - launched:.1f}", before, max(losses(faulted), default=0),
                     "yes" if saving else "no", "finished first" if process.returncode == 0 else "killed"))
    final = start(faulted, args.steps)
    output, _ = final.communicate()
    if final.returncode:
        sys.exit(f"faults: the final resumed run failed:\n{output[-2000:]}")

    print("| kill | aimed at | after s | last logged step before | after | killed mid-save | outcome |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    same_losses = losses(faulted) == losses(reference)
    expected = load_file(str(reference / "final" / "model.safetensors"))
    got = load_file(str(faulted / "final" / "model.safetensors"))
    same_weights = expected.keys() == got.keys() and all((expected[k] == got[k]).all() for k in expected)
    print(f"losses of all {len(losses(reference))} steps bitwise equal to the uninterrupted run: {same_losses}")
    print(f"final weights ({len(expected)} tensors) bitwise equal: {same_weights}")
    print(f"faults: {time.perf_counter() - started:.0f} s in all")
    sys.exit(0 if same_losses and same_weights else 1)


if __name__ == "__main__":
    main()
