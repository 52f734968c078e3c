#!/usr/bin/env bash
# The launcher matrix on a GPU machine: one GPU against FSDP v2, FSDP v1 and DeepSpeed ZeRO-2 (if installed) on up
# to 2 GPUs, launched as users launch them (tests/test_sharding.py; on CPU `make test` runs the same tests with DDP
# and a CPU shim for FSDP). Needs a Python with the project's dependencies (make setup, or the machine's own);
# writes the table to $OUT/sharding.md (or ./sharding.md) and prints it with the card's name.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
out=${OUT:-.}/sharding.md
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
FLANPIPE_SHARDING_TABLE="$out" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_sharding.py "$@"
cat "$out"
