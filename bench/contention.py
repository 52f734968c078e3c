"""Training throughput alone and beside one busy 1-core job (`make bench-contention`), per torch thread count.

    .venv/bin/python bench/contention.py [--steps 120] [--threads 0 1]

Runs the embedded default (configs/default.yaml) shortened to --steps, with `run.threads` = each value given
(0 = flanpipe's default: $OMP_NUM_THREADS if set, else usable cores ÷ local processes), first alone and then
while a pure-Python busy loop holds one core. Throughput is the median of the logged tokens/s windows after the
first (start-up and caches excluded). Prints one row per setting and the contended ÷ solo ratio. Run it alone:
any other busy process on the machine is a competitor too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUSY = "while True:\n    pass\n"


def tokens_per_second(threads: int, steps: int, contended: bool) -> float:
    run_dir = Path(tempfile.mkdtemp(prefix="flanpipe-contention-")) / "run"
    settings = ["-c", str(ROOT / "configs" / "default.yaml"), f"run.dir={run_dir}", f"train.max_steps={steps}",
                f"run.threads={threads}", "train.save_every=0", "train.eval_every=0", "train.log_every=10",
                "eval.max_examples=10", "eval.samples=0", "log.trackers=[jsonl]"]
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if contended else None
    try:
        subprocess.run([sys.executable, "-m", "pipeline.cli", "train", *settings], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    finally:
        if busy:
            busy.kill()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r["batch/tokens_per_second"] for r in records if "batch/tokens_per_second" in r]
    return statistics.median(windows[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    print(f"machine: {len(os.sched_getaffinity(0))} usable cores; {args.steps} steps of configs/default.yaml",
          flush=True)
    print("| run.threads | alone (tokens/s) | beside a busy 1-core job | contended ÷ alone |\n|---|---|---|---|")
    alone_default = None
    for threads in args.threads:
        alone = tokens_per_second(threads, args.steps, contended=False)
        contended = tokens_per_second(threads, args.steps, contended=True)
        alone_default = alone_default or alone
        print(f"| {threads or 'default'} | {alone:,.0f} | {contended:,.0f} | {contended / alone:.2f} "
              f"({contended / alone_default:.2f} of the first row alone) |", flush=True)


if __name__ == "__main__":
    main()
