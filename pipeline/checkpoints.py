"""Checkpoints: atomic, verified `step-N` folders under `<run>/checkpoints/`; resume takes the newest that verifies.

A checkpoint is `accelerator.save_state` (model weights, optimizer, scheduler, every process's RNG states) plus
JSON files of ours: `train_state.json` (step, tokens seen, ...), `sampler.json` (the mixture sampler's position),
`steps.json` (the sampler's position at the start of a length window, when saved inside one) and `config.json`
(the resolved config). Everything is written into `.tmp-step-N`; `manifest.json`, the size and
sha256 of every other file, is written last, and only then is the folder renamed to `step-N`. So a run killed
mid-save leaves no half checkpoint behind (a leftover `.tmp-*` folder is ignored and cleaned up by the next save),
and a checkpoint damaged later (a truncated or edited file, flipped bytes) fails verification: resume reports it,
keeps it for inspection and takes the newest one that verifies. A save that cannot be written (disk full,
read-only) stops the run with one line, every process alike, and the previous checkpoint stays as it was.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list

from pipeline.errors import UserError
from pipeline.files import MANIFEST, replace_folder, verify_manifest, write_manifest

_STEP_DIR = re.compile(r"^step-(\d+)$")
JSON_FILES = ("train_state", "sampler", "steps", "config")
OPTIONAL_JSON_FILES = ("steps",)
"""Absent from checkpoints written before they existed; read as {}."""


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint (renamed into place), oldest first; not yet verified."""
    found = []
    folder = checkpoints_dir(run_dir)
    if folder.is_dir():
        for path in folder.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / "train_state.json").exists():
                found.append((int(match.group(1)), path))
    return sorted(found)


def verify(checkpoint: Path) -> str | None:
    """None when every file the manifest lists is there with its size and checksum; else what is wrong."""
    return verify_manifest(checkpoint)


def find_resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """`auto`: the newest checkpoint that verifies (damaged newer ones are reported and kept), or None; `off`:
    None; otherwise a checkpoint path that must exist and verify."""
    if resume == "off":
        return None
    if resume == "auto":
        for step, path in reversed(complete_checkpoints(run_dir)):
            problem = verify(path)
            if problem is None:
                return path
            kept = _set_aside(path, step)
            print(f"flanpipe: skipping checkpoint {path}: {problem}; kept as {kept}", file=sys.stderr)
        return None
    path = Path(resume)
    if not (path / "train_state.json").exists():
        raise UserError(f"train.resume={resume}: not a complete checkpoint folder (no train_state.json)")
    problem = verify(path)
    if problem is not None and not (path / MANIFEST).exists():  # named by hand: a checkpoint older than manifests
        print(f"flanpipe: {path} has no {MANIFEST}; resuming from it unverified, as asked", file=sys.stderr)
    elif problem is not None:
        raise UserError(f"train.resume={resume}: the checkpoint does not verify: {problem}; resume from another "
                        "checkpoint (train.resume=auto takes the newest that verifies)")
    return path


def _set_aside(path: Path, step: int) -> Path:
    """Move a damaged checkpoint out of the way (never delete it): `damaged-step-N[-k]`, which neither resume
    nor the `keep_last` pruning looks at."""
    number, target = 1, path.with_name(f"damaged-step-{step}")
    while target.exists():
        number += 1
        target = path.with_name(f"damaged-step-{step}-{number}")
    path.rename(target)
    return target


def choose_resume_checkpoint(accelerator: Any, resume: str, run_dir: Path) -> Path | None:
    """`find_resume_checkpoint` decided once, on the main process, and the same answer (or the same error) on
    every process: damaged checkpoints are set aside there while the others wait."""
    found: list[Any] = [None, None]
    if accelerator.is_main_process:
        try:
            found[0] = find_resume_checkpoint(resume, run_dir)
        except UserError as error:
            found[1] = str(error)
    if accelerator.num_processes > 1:
        broadcast_object_list(found)
    if found[1] is not None:
        raise UserError(found[1])
    return found[0]


def save_checkpoint(accelerator: Any, run_dir: Path, step: int, records: dict[str, Any], keep_last: int) -> Path:
    """Write a checkpoint atomically from every process (collective), then keep only the newest `keep_last`."""
    folder = checkpoints_dir(run_dir)
    final = folder / f"step-{step}"
    staging = folder / f".tmp-step-{step}"
    failure = ""
    try:
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
    except OSError as error:
        failure = error.strerror or str(error)
    if not _everyone_succeeded(accelerator, failure):  # every process's RNG file is in, or all stop together
        _abandon(accelerator, staging, final, failure)
    if accelerator.is_main_process:
        try:
            for name in JSON_FILES:
                (staging / f"{name}.json").write_text(json.dumps(records[name], indent=2, default=str) + "\n")
            write_manifest(staging, step=step)
            replace_folder(staging, final)  # the same step may be saved again (resumed and stopped at once)
        except OSError as error:
            failure = error.strerror or str(error)
    if not _everyone_succeeded(accelerator, failure):
        _abandon(accelerator, staging, final, failure)
    if accelerator.is_main_process:
        for _, old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in folder.glob(".tmp-step-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _everyone_succeeded(accelerator: Any, failure: str) -> bool:
    ok = torch.tensor(0.0 if failure else 1.0, device=accelerator.device)
    return bool(accelerator.reduce(ok, "sum").item() == accelerator.num_processes)


def _abandon(accelerator: Any, staging: Path, final: Path, failure: str) -> None:
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    previous = complete_checkpoints(final.parent.parent)
    kept = f"the last saved checkpoint, {previous[-1][1]}, is intact" if previous else "no earlier checkpoint"
    raise UserError(f"{final}: cannot write the checkpoint ({failure or 'failed on another process'}); {kept}. "
                    "Free disk space or choose a writable run.dir, then run again: it resumes from there")


def read_records(checkpoint: Path) -> dict[str, Any]:
    return {name: json.loads((checkpoint / f"{name}.json").read_text()) for name in JSON_FILES
            if name not in OPTIONAL_JSON_FILES or (checkpoint / f"{name}.json").exists()}
