#!/usr/bin/env bash
# The GPU path in one short run (issue 13): the trainer on CUDA (cuDNN packed GRU, bf16 autocast) on real
# data, bench_train.py on CUDA, the DDP test and the model tests on a machine with CUDA, bench_infer.py,
# and bench_train.py on the same machine's CPU (a second machine for the CPU ranges).
#
#   OUT=/tmp/gpu W1K=path/to/wide1k/simplified DOODLE_SHARED=path/to/shared bash benchmarks/gpu_check.sh
#
# About 6 minutes on an H100 machine with 16 CPU cores. Every step has its own time limit and goes on
# after a failure, so one broken step still leaves the others' results; everything is logged to
# $OUT/gpu.log and each benchmark's JSON to $OUT/*.json.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
W1K=${W1K:-../shared/data/quickdraw/wide1k/simplified}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
step() { echo "== $(date +%T) $*"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), torch.cuda.get_device_name(), 'cpus', __import__('os').cpu_count())"
grep -m1 "model name" /proc/cpuinfo
grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E "avx512_bf16|amx" | tr '\n' ' '
echo

step prepare wide1k
timeout 120 $PY -m doodle_rnn prepare --data "$W1K" --out /tmp/w1k --encoding stroke3 --classes all \
    --jobs 16 --no-progress

step "doodle train on cuda: one wide1k epoch, default model, batch 512, bf16 autocast (twice)"
for run in 1 2; do
    timeout 100 $PY -m doodle_rnn train --data /tmp/w1k --out /tmp/w1k-run$run --epochs 1 --batch-size 512 \
        --lr 0.003 --log-every 100 --device cuda | grep -E "^(Epoch|data|GRU)"
    cp /tmp/w1k-run$run/metrics.jsonl "$OUT/w1k-run$run.jsonl"
done

step "torchrun, one rank, NCCL"
timeout 90 $PY -m torch.distributed.run --nproc_per_node 1 --master_addr 127.0.0.1 --master_port 29533 \
    -m doodle_rnn train --data /tmp/w1k --out /tmp/ddp --epochs 1 --max-steps 20 --batch-size 256 \
    --log-every 10 --device cuda | grep -E "^(Epoch|data)"

step "bench_train on cuda, batch 512 (synthetic jittered animals)"
timeout 90 $PY benchmarks/bench_train.py --device cuda --batch-size 512 --lr 0.003 | tee "$OUT/bench_train_cuda.json"

step "tests on a machine with CUDA: model (cuDNN vs fused) and DDP"
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_ddp.py

step "bench_train on this machine's CPU, 2 threads, 40 batches, three runs (a second CPU machine)"
for run in 1 2 3; do
    timeout 60 $PY benchmarks/bench_train.py --num-threads 2 --max-batches 40 | tee "$OUT/bench_train_cpu2_$run.json"
done

step "bench_infer on this machine's CPU"
timeout 60 $PY benchmarks/bench_infer.py --repeats 100 | tee "$OUT/bench_infer.json"

step done
