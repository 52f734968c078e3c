"""Where no network exists, nothing may wait on one: a run on local data and a local model attempts no network
access at all, even without HF_HUB_OFFLINE (a DNS lookup alone can hang for seconds on an air-gapped cluster)."""

import pytest
from conftest import launch, settings

pytestmark = pytest.mark.slow

# Imported by every Python process started with this folder on PYTHONPATH: each name lookup is recorded and refused.
SITECUSTOMIZE = '''
import os, socket

def _refuse(host, *args, **kwargs):
    with open(os.environ["NETWORK_ATTEMPTS"], "a") as log:
        log.write(f"{host}\\n")
    raise OSError(f"network access attempted: {host}")

socket.getaddrinfo = _refuse
'''


def test_training_and_evaluation_on_local_files_attempt_no_network_access(world, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    attempts = tmp_path / "attempts.txt"
    env = {"PYTHONPATH": str(tmp_path / "site"), "NETWORK_ATTEMPTS": str(attempts), "HF_HUB_OFFLINE": "",
           "HF_DATASETS_OFFLINE": "", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    run_dir = tmp_path / "run"
    result = launch(settings(world, run_dir, "train.max_steps=2", f"data.cache_dir={tmp_path / 'cache'}"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    result = launch([str(run_dir), "--limit", "4", "--base", "none", f"data.templates_dir={world['tasks']}",
                     f"data.cache_dir={tmp_path / 'cache'}"], command="eval", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not attempts.exists(), f"network lookups: {attempts.read_text()}"
