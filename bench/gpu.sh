#!/usr/bin/env bash
# Training throughput on one GPU, no downloads: a flan-t5-base-shaped model (random weights, bench/shapes.py) in bf16
# on the default mixture, flanpipe packed against Seq2SeqTrainer (length-grouped, and sequential), each with and
# without torch.compile, fused AdamW on both sides; tokens/s, MFU against the measured bf16 matmul peak and the
# card's datasheet, peak memory (bench/bench_train.py --device cuda). Then the default run's data path on the GPU:
# 300 steps of configs/default.yaml with and without data.prefetch (the closing line's share of step time spent
# drawing, rendering, tokenizing and collating). About 6 minutes on one H100.
#
#   bash bench/gpu.sh [extra bench_train.py arguments]
#
# Needs a Python with the project's dependencies (make setup, or the machine's own: PYTHON=python3) and the built-in
# data (make data); on a machine without network, copy ~/.cache/flanpipe/builtin and .../models there and point
# FLANPIPE_CACHE at the copy. Writes the output to $OUT/gpu.txt (or ./gpu.txt) as it prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
out=${OUT:-.}/gpu.txt
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (TFLOP/s, without sparsity).
case "$name" in
  *H100*PCIe*) peak=756 ;;
  *H100*NVL*) peak=835 ;;
  *H100*|*H200*|*GH200*) peak=989.4 ;;
  *A100*) peak=312 ;;
  *L40S*) peak=362.05 ;;
  *) peak= ;;
esac
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out"
"$PYTHON" bench/bench_train.py --device cuda --precision bf16 --model flan-t5-base --batch-size 128 \
  --warmup 6 --steps 20 --rounds 2 \
  --sides "Trainer grouped" "flanpipe packed" "Trainer grouped +compile" "flanpipe packed +compile" "Seq2SeqTrainer" \
  ${peak:+--peak-tflops "$peak"} "$@" | tee -a "$out"
for prefetch in false true; do
  run=$(mktemp -d)
  echo "flanpipe train configs/default.yaml train.max_steps=300 data.prefetch=$prefetch:" | tee -a "$out"
  "$PYTHON" -m pipeline.cli train configs/default.yaml train.max_steps=300 train.eval_every=0 train.save_every=0 \
    eval.max_examples=20 "log.trackers=[jsonl]" "run.dir=$run" "data.prefetch=$prefetch" 2>&1 \
    | grep -a '^done:' | cut -c1-100 | tee -a "$out"
  rm -rf "$run"
done
