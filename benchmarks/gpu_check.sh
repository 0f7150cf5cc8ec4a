#!/usr/bin/env bash
# The GPU path in one short run (issue 13): the trainer on CUDA (cuDNN packed GRU, bf16 autocast),
# bench_train.py and bench_infer.py, and torchrun with NCCL; plus, while the GPU is there, the
# 338-class comparison of issue 12 (two variants trained side by side for the same wall time).
#
#   OUT=/tmp/gpu W1K=path/to/wide1k/simplified DOODLE_SHARED=path/to/shared bash benchmarks/gpu_check.sh
#
# Every step has its own time limit and goes on after a failure, so one broken step still leaves the
# others' results; everything is logged to $OUT/gpu.log, the two runs' best checkpoints to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
W1K=${W1K:-../shared/data/quickdraw/wide1k/simplified}
TRAIN_SECONDS=${TRAIN_SECONDS:-240}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
step() { echo "== $(date +%T) $*"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), torch.cuda.get_device_name(), 'cpus', __import__('os').cpu_count())"

step prepare wide1k
timeout 120 $PY -m doodle_rnn prepare --data "$W1K" --out /tmp/w1k --encoding stroke3 --classes all \
    --jobs 16 --no-progress

step smoke: 30 steps on cuda with bf16 autocast, then validation
AMP=--amp
if ! timeout 120 $PY -m doodle_rnn train --data /tmp/w1k --out /tmp/smoke --epochs 1 --max-steps 30 \
    --batch-size 512 --log-every 10 --device cuda; then
    echo "smoke with autocast FAILED; the runs below use --no-amp"
    AMP=--no-amp
fi

step bench_train on cuda, batch 192 and 512 '(synthetic jittered animals)'
for bs in 192 512; do
    timeout 100 $PY benchmarks/bench_train.py --device cuda --batch-size $bs --lr 0.003
done

step "torchrun, one rank, NCCL"
timeout 120 $PY -m torch.distributed.run --nproc_per_node 1 --master_addr 127.0.0.1 --master_port 29533 \
    -m doodle_rnn train --data /tmp/w1k --out /tmp/ddp --epochs 1 --max-steps 20 --batch-size 256 \
    --log-every 10 --device cuda

step "bench_infer (this machine's CPU: torch and ONNX Runtime)"
timeout 75 $PY benchmarks/bench_infer.py --repeats 100

step "pytest: model tests on a machine with CUDA"
timeout 75 $PY -m pytest -q -x -p no:cacheprovider tests/test_model.py

step "issue 12: two variants side by side for ${TRAIN_SECONDS}s each (same GPU, same wall time)"
common=(--data /tmp/w1k --epochs 60 --batch-size 512 --lr 0.003 --patience 6 --device cuda $AMP
    --log-every 200)
timeout -s INT -k 20 "$TRAIN_SECONDS" $PY -m doodle_rnn train "${common[@]}" --out /tmp/runs/ref256 \
    --hidden-size 256 > "$OUT/ref256.log" 2>&1 &
pids=($!)
timeout -s INT -k 20 "$TRAIN_SECONDS" $PY -m doodle_rnn train "${common[@]}" --out /tmp/runs/conv \
    --conv-channels 64 96 > "$OUT/conv.log" 2>&1 &
pids+=($!)
wait "${pids[@]}"  # by pid: a bare `wait` also waits for the tee above, which never ends (bash >= 5.1)
for r in ref256 conv; do
    grep "^Epoch" "$OUT/$r.log" | tail -3
    cp /tmp/runs/$r/best.pt "$OUT/$r-best.pt"
done
tar czf "$OUT/runs-metrics.tgz" -C /tmp/runs ref256/metrics.jsonl ref256/config.json conv/metrics.jsonl \
    conv/config.json

step done
