"""Rendering throughput: flanpipe's `render_split` (sandboxed Jinja through `datasets.map`, one core) against
the obvious alternative, a plain unsandboxed `jinja2.Environment` loop over Python dicts, plus the cache hit.

    .venv/bin/python bench/bench_rendering.py [--rows 50000]
"""

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import jinja2

from pipeline.tasks.rendering import Variant, render_split
from pipeline.tasks.task import load_task

TEMPLATE = "Review: {{ text }}\nIs this review positive or negative?\n|||\n{{ label }}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    rng = random.Random(0)
    words = "the film was a quiet , sharp and oddly moving portrait of grief and love".split()
    rows = [{"text": " ".join(rng.choices(words, k=rng.randint(8, 30))), "label": rng.choice(["negative", "positive"])}
            for _ in range(args.rows)]
    root = Path(tempfile.mkdtemp(prefix="bench_rendering."))
    try:
        folder = root / "bench_sentiment"
        folder.mkdir()
        (folder / "task.yaml").write_text("source: {files: data.jsonl}\nanswer_choices: [negative, positive]\ncarve: {}\n")
        (folder / "ask.jinja").write_text(TEMPLATE)
        (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        task = load_task(folder)
        cache = root / "cache"
        render_split(task, "train", cache_dir=cache, limit=100)  # load the JSON into Arrow once, outside the timing

        for variant in (Variant(), Variant(options=True), Variant(few_shot=True)):
            start = time.perf_counter()
            rendered = render_split(task, "train", cache_dir=cache, variant=variant)
            elapsed = time.perf_counter() - start
            start = time.perf_counter()
            render_split(task, "train", cache_dir=cache, variant=variant)
            hit = time.perf_counter() - start
            print(f"flanpipe render_split {variant.name:<17} {len(rendered) / elapsed:>9,.0f} examples/s "
                  f"({len(rendered):,} rows in {elapsed:.2f} s); cache hit {hit * 1000:.0f} ms")

        plain = jinja2.Environment()
        source_in, source_out = TEMPLATE.split("\n|||\n")
        template_in, template_out = plain.from_string(source_in), plain.from_string(source_out)
        start = time.perf_counter()
        out = [(template_in.render(r).strip(), template_out.render(r).strip()) for r in rows]
        baseline = time.perf_counter() - start
        start = time.perf_counter()
        render_split(task, "train", cache_dir=root / "cache2")
        ours = time.perf_counter() - start
        print(f"plain jinja2 loop (no sandbox, no Arrow) {len(out) / baseline:>9,.0f} examples/s")
        print(f"ratio flanpipe / plain loop (zero-shot, cold): {baseline / ours:.2f}x the speed")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
