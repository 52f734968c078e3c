"""The files flanpipe reads and writes: YAML with one-line errors, atomic writes (a file, or a whole folder),
content hashes for cache keys, and stable seeds.

Every output goes through here: `write_text_atomically` / `write_json_atomically` for a file, `staged_folder`
for a folder (checkpoints, the final model, rendered caches, imported task folders). Readers see the old
content or the new, never half of it. A folder can carry a `manifest.json` (size and sha256 of every other
file, written last): `verify_manifest` says what changed since, and `usable_cache` turns that into "rebuild it".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
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


def check_writable(folder: Path, setting: str) -> None:
    """Refuse a folder that cannot be written, before anything else happens, without creating it: the nearest
    folder that exists must take a file (a probe, created and removed at once). `setting` names it in the error
    (`run.dir=...`, `--out ...`)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "a file stands where a folder is needed")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UserError(f"{setting}: cannot write there ({error.strerror}); choose another place") from None


def check_output_file(path: Path, setting: str) -> None:
    """`check_writable` for a file to be written later: its folder must take files, and it must not be a folder."""
    if path.is_dir():
        raise UserError(f"{setting}: is a folder; give a file name")
    check_writable(path.parent, setting)


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
    except OSError as error:  # name the file the caller asked for, not the scratch one
        raise OSError(error.errno, error.strerror, str(path)) from None
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


MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, **extra: Any) -> None:
    """Write `manifest.json`: the size and sha256 of every other file under `folder` (plus `extra` keys).
    Written last, so its presence also says the folder was finished."""
    files = {path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": file_sha256(path)}
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({**extra, "files": files}, indent=2) + "\n")


def verify_manifest(folder: Path) -> str | None:
    """None when every file `manifest.json` lists is there with its size and checksum; else what is wrong."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
        items = [(str(name), int(expected["size"]), str(expected["sha256"])) for name, expected in listed.items()]
    except FileNotFoundError:
        return f"no {MANIFEST} (written last: the write did not finish, or the folder predates manifests)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return f"{MANIFEST} is unreadable ({error})"
    for name, size, sha256 in items:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
        if file_sha256(path) != sha256:
            return f"{name} does not match its checksum (changed since it was written)"
    return None


def usable_cache(folder: Path, what: str) -> bool:
    """True when the cache folder is there and verifies. A damaged one (truncated, edited, unfinished) is
    reported on stderr and False is returned: the caller rebuilds it, replacing the damaged copy."""
    if not folder.exists():
        return False
    problem = verify_manifest(folder)
    if problem is None:
        return True
    print(f"flanpipe: the cached {what} in {folder} is damaged ({problem}); rebuilding it", file=sys.stderr,
          flush=True)
    return False


@contextlib.contextmanager
def staged_folder(target: Path, *, keep_existing: bool = False, manifest: bool = False) -> Iterator[Path]:
    """An empty folder to fill; when the block ends without error it becomes `target` in one rename.

    The folder is `<parent>/.<name>.<random>/<name>`: it has `target`'s own name (a task folder can be loaded
    and checked there) and sits one level deeper than `target`, where nothing that lists `parent` finds it. A
    crash leaves only the hidden scratch folder. `keep_existing` is for caches whose content is a function of
    their name: if another process put `target` in place first, its copy is kept and ours dropped. `manifest`
    writes `manifest.json` into the finished folder before it is renamed into place.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging = scratch / target.name
    staging.mkdir()
    try:
        yield staging
        if manifest:
            write_manifest(staging)
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
