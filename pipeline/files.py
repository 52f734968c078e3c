"""The files flanpipe reads and writes: YAML with one-line errors, atomic writes (a file, or a whole folder),
content hashes for cache keys, and stable seeds.

Every output goes through here: `write_text_atomically` / `write_json_atomically` for a file, `staged_folder`
for a folder (checkpoints, the final model, rendered caches, imported task folders). Readers see the old
content or the new, never half of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
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
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: {what} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:  # a folder where the file should be, no permission, ...
        raise UserError(f"{path}: cannot read the {what} ({error.strerror})") from None
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


def write_json_atomically(path: Path, value: Any) -> None:
    write_text_atomically(path, json.dumps(value, indent=2, default=str) + "\n")


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


@contextlib.contextmanager
def staged_folder(target: Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """An empty folder to fill; when the block ends without error it becomes `target` in one rename.

    The folder is `<parent>/.<name>.<random>/<name>`: it has `target`'s own name (a task folder can be loaded
    and checked there) and sits one level deeper than `target`, where nothing that lists `parent` finds it. A
    crash leaves only the hidden scratch folder. `keep_existing` is for caches whose content is a function of
    their name: if another process put `target` in place first, its copy is kept and ours dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging = scratch / target.name
    staging.mkdir()
    try:
        yield staging
        if not keep_existing:
            replace_folder(staging, target)
        elif not target.exists():
            try:
                os.rename(staging, target)
            except OSError:
                if not target.exists():  # a concurrent writer that won the race is fine; anything else is not
                    raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def content_hash(*parts: Any, length: int = 16) -> str:
    """A short hex hash of JSON-able parts (keys sorted, anything else by `str`): the one cache key recipe."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from any parts, the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little")
