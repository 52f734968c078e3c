"""Checkpoints: atomic `step-N` folders under `<run>/checkpoints/`, the newest complete one found on resume.

A checkpoint is `accelerator.save_state` (model weights as safetensors, optimizer, scheduler, every process's
RNG states) plus JSON files of ours: `train_state.json` (step, tokens seen, ...), `sampler.json` (the mixture
sampler's position) and `config.json` (the resolved config). Everything is written into `.tmp-step-N` and
renamed to `step-N` only once complete, so a run killed mid-save leaves no half checkpoint behind; a leftover
`.tmp-*` folder is ignored and cleaned up by the next save.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.files import replace_folder

_STEP_DIR = re.compile(r"^step-(\d+)$")
JSON_FILES = ("train_state", "sampler", "config")


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    found = []
    folder = checkpoints_dir(run_dir)
    if folder.is_dir():
        for path in folder.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and (path / "train_state.json").exists():
                found.append((int(match.group(1)), path))
    return sorted(found)


def find_resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """`auto`: the newest complete checkpoint or None; `off`: None; otherwise a checkpoint path that must exist."""
    if resume == "off":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "train_state.json").exists():
        raise UserError(f"train.resume={resume}: not a complete checkpoint folder (no train_state.json)")
    return path


def save_checkpoint(accelerator: Any, run_dir: Path, step: int, records: dict[str, Any], keep_last: int) -> Path:
    """Write a checkpoint atomically from every process (collective), then keep only the newest `keep_last`."""
    folder = checkpoints_dir(run_dir)
    final = folder / f"step-{step}"
    staging = folder / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()  # every process's RNG file is in before the folder is renamed
    if accelerator.is_main_process:
        for name in JSON_FILES:
            (staging / f"{name}.json").write_text(json.dumps(records[name], indent=2, default=str) + "\n")
        replace_folder(staging, final)  # the same step may be saved again (resumed and stopped at once)
        for _, old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in folder.glob(".tmp-step-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_records(checkpoint: Path) -> dict[str, Any]:
    return {name: json.loads((checkpoint / f"{name}.json").read_text()) for name in JSON_FILES}
