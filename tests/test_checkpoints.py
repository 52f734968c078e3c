"""pipeline/checkpoints.py: every checkpoint carries a manifest (sizes, sha256) written last; resume takes the newest
that verifies, reports and sets aside a damaged one, and continues bitwise; a save that cannot be written stops the
run with one line and leaves the previous checkpoint intact; changed settings take effect on resume."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import launch, losses, settings

from pipeline.checkpoints import MANIFEST, complete_checkpoints, save_checkpoint, verify
from pipeline.errors import UserError

STEPS = 6


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "weights truncated": lambda c: truncate(c / "model.safetensors"),
    "a flipped byte in the weights": lambda c: flip_a_byte(c / "model.safetensors"),
    "optimizer state missing": lambda c: (c / "optimizer.bin").unlink(),
    "scheduler state edited": lambda c: flip_a_byte(c / "scheduler.bin"),
    "sampler position corrupted": lambda c: (c / "sampler.json").write_text("{not json"),
    "config missing": lambda c: (c / "config.json").unlink(),
    "an RNG state truncated": lambda c: truncate(c / "random_states_0.pkl"),
    "manifest missing": lambda c: (c / MANIFEST).unlink(),
    "manifest unreadable": lambda c: (c / MANIFEST).write_text("[]"),
}


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("checkpoints") / "reference"
    result = launch(settings(world, run_dir, f"train.max_steps={STEPS}"))
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def test_a_saved_checkpoint_verifies_and_lists_every_file(reference):
    (_, checkpoint), = [c for c in complete_checkpoints(reference) if c[0] == STEPS]
    assert verify(checkpoint) is None
    listed = json.loads((checkpoint / MANIFEST).read_text())["files"]
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "sampler.json", "train_state.json",
            "config.json", "random_states_0.pkl"} <= set(listed)


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_is_reported_set_aside_and_the_run_resumes_bitwise(world, reference, tmp_path,
                                                                                     damage):
    run_dir = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    DAMAGE[damage](run_dir / "checkpoints" / f"step-{STEPS}")
    result = launch(settings(world, run_dir, f"train.max_steps={STEPS}"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"skipping checkpoint {run_dir / 'checkpoints' / f'step-{STEPS}'}" in result.stderr
    assert "resumed from" in result.stdout + result.stderr and "step-3 at step 3" in result.stdout + result.stderr
    assert (run_dir / "checkpoints" / f"damaged-step-{STEPS}").is_dir()  # kept for inspection, never deleted
    expected = {step: loss for step, loss in losses(reference).items() if step > 3}
    assert losses(run_dir) == expected


@pytest.mark.slow
def test_resume_from_a_named_damaged_checkpoint_is_one_line(world, reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    checkpoint = run_dir / "checkpoints" / f"step-{STEPS}"
    truncate(checkpoint / "model.safetensors")
    result = launch(settings(world, run_dir, f"train.resume={checkpoint}"))
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("flanpipe train: error:")]
    assert "does not verify: model.safetensors has" in line and "Traceback" not in result.stderr


@pytest.mark.slow
def test_changed_learning_rate_takes_effect_on_resume_and_is_logged(world, reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    (run_dir / "checkpoints" / f"step-{STEPS}").rename(run_dir / "checkpoints" / "unused")  # resume at step 3
    result = launch(settings(world, run_dir, f"train.max_steps={STEPS}", "train.lr=0.5"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "with changed settings: train.lr 0.001 -> 0.5" in result.stdout + result.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("resume/changed") == "train.lr 0.001 -> 0.5" for r in records)
    assert [r["batch/lr"] for r in records if "batch/lr" in r and r["step"] > 3][0] == pytest.approx(0.5)


class _FailingAccelerator:
    """One process whose `save_state` meets a full disk."""

    is_main_process = True
    num_processes = 1
    device = "cpu"

    def wait_for_everyone(self):
        pass

    def reduce(self, tensor, reduction):
        return tensor

    def save_state(self, folder):
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")


def test_a_checkpoint_that_cannot_be_written_stops_with_one_line_and_keeps_the_previous(tmp_path):
    previous = tmp_path / "checkpoints" / "step-3"
    previous.mkdir(parents=True)
    (previous / "train_state.json").write_text("{}")
    with pytest.raises(UserError, match=r"step-6: cannot write the checkpoint \(No space left on device\); the last "
                                        r"saved checkpoint, .*step-3, is intact"):
        save_checkpoint(_FailingAccelerator(), tmp_path, 6, {}, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-3"]  # no staging folder left


def test_a_full_disk_mid_run_is_one_line_and_the_checkpoints_stay_usable(world, reference, tmp_path):
    """A real ENOSPC: the run's metrics.jsonl is /dev/full, so its first logged line cannot be written."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    (run_dir / "checkpoints" / f"step-{STEPS}").rename(run_dir / "checkpoints" / "unused")  # resume at step 3
    (run_dir / "metrics.jsonl").symlink_to("/dev/full")
    result = launch(settings(world, run_dir, f"train.max_steps={STEPS}"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert f"cannot write {run_dir / 'metrics.jsonl'}: No space left on device" in line and "train.resume=auto" in line
    [(step, checkpoint)] = complete_checkpoints(run_dir)
    assert step == 3 and verify(checkpoint) is None
