"""Sampling throughput: `MixtureSampler` (vectorised per global batch) on a 10-task mixture, one core, against
the obvious alternative, a per-draw Python loop with `random.choices` doing the same work (task by rate, next
example of the task's shuffled epoch, template, few-shot / options / inversion flags). Target: >= 1,000,000
draws/s, so that drawing is never what a training step waits for.

    .venv/bin/python bench/bench_mixing.py [--draws 2000000]
"""

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from pipeline.mixing.mixture_file import TaskStats
from pipeline.mixing.sampler import MixtureSampler
from pipeline.mixing.tree import load_mixture

TARGET = 1_000_000
SIZES = [1_000, 2_500, 5_000, 8_000, 12_000, 20_000, 50_000, 80_000, 120_000, 200_000]


def ten_task_mixture():
    tasks = {
        f"task{i}": TaskStats(f"task{i}", n=n, templates=tuple(f"t{j}" for j in range(10)),
                              inversion_templates=("inverted",) if i % 3 == 0 else (), has_choices=i % 2 == 0)
        for i, n in enumerate(SIZES)
    }
    folder = Path(tempfile.mkdtemp(prefix="bench_mixing."))
    members = "".join(f"  {name}: {{}}\n" for name in tasks)
    (folder / "bench.yaml").write_text("rate: {rule: examples_proportional, cap: 30000}\nmembers:\n" + members
                                       + "variants: {few_shot: 0.25, options: 0.5, inversion: 0.1}\n")
    return load_mixture("bench", tasks, folder)


def sampler_rate(mixture, draws: int, batch_size: int) -> float:
    sampler = MixtureSampler(mixture, seed=0)
    sampler.next_batch(batch_size)  # first permutations built outside the timing, as after the first steps
    start = time.perf_counter()
    for _ in range(draws // batch_size):
        sampler.next_batch(batch_size)
    return (draws // batch_size) * batch_size / (time.perf_counter() - start)


def python_loop_rate(mixture, draws: int) -> float:
    """The same draws, one at a time, in plain Python."""
    rng = random.Random(0)
    leaves = mixture.leaves
    indices = range(len(leaves))
    cumulative = [sum(leaf.share for leaf in leaves[:k + 1]) for k in indices]
    orders = [rng.sample(range(leaf.n), leaf.n) for leaf in leaves]
    cursors = [0] * len(leaves)
    start = time.perf_counter()
    for _ in range(draws):
        k = rng.choices(indices, cum_weights=cumulative)[0]
        leaf = leaves[k]
        if cursors[k] == leaf.n:
            orders[k] = rng.sample(range(leaf.n), leaf.n)
            cursors[k] = 0
        example = orders[k][cursors[k]]
        cursors[k] += 1
        inverted = rng.random() < leaf.variants.inversion
        template = rng.choice(leaf.stats.inversion_templates if inverted else leaf.stats.templates)
        few_shot = rng.random() < leaf.variants.few_shot
        options = rng.random() < leaf.variants.options
        del example, template, few_shot, options
    return draws / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2_000_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    mixture = ten_task_mixture()
    print(f"10-task mixture (n {SIZES[0]:,} .. {SIZES[-1]:,}, cap 30,000), {args.draws:,} draws, one core")
    baseline = python_loop_rate(mixture, args.draws // 10)
    print(f"  per-draw Python loop (random.choices)     {baseline:>12,.0f} draws/s")
    for batch_size in (32, 128, 1024, 8192):
        rate = sampler_rate(mixture, args.draws, batch_size)
        verdict = "ok" if rate >= TARGET else f"below the {TARGET:,} target"
        print(f"  MixtureSampler.next_batch({batch_size:>4})          {rate:>12,.0f} draws/s  "
              f"{rate / baseline:>5.1f}x the loop  {verdict}")


if __name__ == "__main__":
    main()
