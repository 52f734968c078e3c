"""Small shared helpers for the files flanpipe reads and writes: YAML with one-line errors, atomic writes
(of a file, or of a whole folder), and stable seeds."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError


def read_yaml(path: Path, what: str) -> Any:
    """`yaml.safe_load` of a file; a missing file or bad YAML is a UserError naming the file (`what` it is)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None


def temporary_sibling(path: Path) -> Path:
    """A per-process scratch name beside `path` (same folder, so the final rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_text_atomically(path: Path, text: str) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    temporary = temporary_sibling(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def replace_folder(staging: Path, target: Path) -> None:
    """Rename the finished folder `staging` (on the same filesystem as `target`) to `target`. A folder already
    there is moved aside first and removed only once the new one is in place, and put back if that fails."""
    if not (target.exists() or target.is_symlink()):
        os.replace(staging, target)
        return
    previous = staging.with_name(f"{staging.name}.previous")
    os.replace(target, previous)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(previous, target)
        raise
    if previous.is_symlink():
        previous.unlink()
    else:
        shutil.rmtree(previous, ignore_errors=True)


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from any parts, the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little")
