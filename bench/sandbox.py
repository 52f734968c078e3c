"""The sandbox campaign (`make sandbox`): every escape and resource bomb of tests/test_sandbox.py rendered in a
fresh process, with its wall time and peak memory, as one table and a verdict.

    .venv/bin/python bench/sandbox.py

The test suite checks that each case is refused; this measures what refusing costs (a bomb must be stopped in
seconds and megabytes, not after 60 s and 10 GB). Exits 1 if any case renders or takes over 5 s.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child: render one case, report the outcome, the render's seconds and the process's peak RSS.
CHILD = """
import json, resource, sys, time
from pipeline.errors import UserError
from pipeline.tasks.templates import parse_template
source = sys.stdin.read()
started = time.perf_counter()
try:
    template = parse_template(source, name="case", path="case.jinja")
    template.render({"text": "hello"}, rng_key="k")
    template.render_choices({"text": "hello"}, rng_key="k")
    outcome = "rendered"
except UserError as error:
    outcome = "refused"
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - started,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def cases() -> dict[str, tuple[str, str]]:
    """(kind, template text) per case name, read from the test suite so there is one list."""
    spec = importlib.util.spec_from_file_location("test_sandbox", ROOT / "tests" / "test_sandbox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = {name: ("escape", text + "\n|||\nx") for name, text in module.ESCAPES.items()}
    found.update({name: ("bomb", text) for name, text in module.BOMBS.items()})
    return found


def main() -> int:
    rows = []
    for name, (kind, text) in cases().items():
        result = subprocess.run([sys.executable, "-c", CHILD], input=text, capture_output=True, text=True,
                                cwd=ROOT, timeout=120)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append({"case": name, "kind": kind, **measured})
        print(f"{kind:6s} {name:34s} {measured['outcome']:8s} {measured['seconds']:6.3f} s "
              f"{measured['max_rss_mb']:6.0f} MB", flush=True)
    print("\n| kind | attempts | refused | worst time | worst peak memory (whole process) |\n|---|---|---|---|---|")
    for kind in ("escape", "bomb"):
        chosen = [row for row in rows if row["kind"] == kind]
        worst_time = max(chosen, key=lambda row: row["seconds"])
        worst_memory = max(chosen, key=lambda row: row["max_rss_mb"])
        refused = sum(row["outcome"] == "refused" for row in chosen)
        print(f"| {kind} | {len(chosen)} | {refused} | {worst_time['seconds']:.2f} s ({worst_time['case']}) | "
              f"{worst_memory['max_rss_mb']:.0f} MB ({worst_memory['case']}) |")
    failed = [row["case"] for row in rows if row["outcome"] != "refused" or row["seconds"] > 5]
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'every case refused within 5 s'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
