#!/usr/bin/env bash
# What one lent GPU session ran (README "Results", GPU rows). Needs, in the repository root:
#   .whl/   wheels the GPU image lacks, for its Python 3.12: spikingjelly==2.0.0 loguru
#           SciencePlots optuna alembic colorlog Mako SQLAlchemy greenlet, e.g.
#           pip download --no-deps --only-binary=:all: --python-version 3.12 \
#             --platform manylinux_2_28_x86_64 --platform any -d .whl NAME ...
#   .gpu/data/     the four Fashion-MNIST IDX .gz files
#   .gpu/cache/    teacher cache (DFKD_CACHE layout) holding the CPU evidence teacher
#                  (teachers/fashion-mnist-28/smallcnn-*), so the small pair uses the same one
# The benchmark output directories are written straight under $OUT (resumable: carry them
# back into the next session's $OUT to complete a cut run).
# Everything runs in parallel streams under one deadline (BUDGET seconds); each stream's
# output directory is resumable, so a stream cut by the deadline keeps its finished rows.
#   OUT=/tmp/out BUDGET=480 bash scripts/gpu-session.sh
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-480}
OUT=${OUT:-/tmp/gpu-out}
W=${WORK:-/tmp/gpu-work}
DEV=${DEV:-cuda}
rm -rf "$W"; mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 DFKD_DATA_ROOT="$PWD/.gpu/data" DFKD_CACHE="$PWD/.gpu/cache"
PY=${PY:-python3}
left() { echo $(( T0 + BUDGET - $(date +%s) )); }
cap() { local v=$(( $(left) - ${1:-0} )); [ "$v" -lt 10 ] && v=10; echo "$v"; }  # seconds left minus $1
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-cache-dir .whl/*.whl \
    && $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || { log "install failed"; exit 3; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$W/gpu.txt" 2>&1
$PY -c "import torch, torchvision, spikingjelly; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())" >> "$W/gpu.txt" 2>&1
cat "$W/gpu.txt"
DFKD="$PY -m benchmarks.cli"
log "setup done"

# 1. Speed, alone on the GPU: the STARS synthesis-step overhead (ResNet-34 -> spiking
#    ResNet-18, batch 256, then the small pair) and the spiking step's precision effect.
[ "${SKIP_SPEED:-0}" != 1 ] && timeout 90 $PY -m benchmarks.speed --device "$DEV" --teacher resnet34 --student spiking_resnet18 \
  --channels 3 --batch-size "${SPEED_BATCH:-256}" --steps 3 --repeats 3 --json "$W/speed_r34_sr18.json" \
  > "$W/speed_r34_sr18.txt" 2>&1
[ "${SKIP_SPEED:-0}" != 1 ] && timeout 40 $PY -m benchmarks.speed --device "$DEV" --steps 3 --repeats 3 --image-size 28 --student-arg bn_weight=2.0 --json "$W/speed_small.json" \
  > "$W/speed_small.txt" 2>&1
log "speed done"; cat "$W"/speed_*.txt

# 2a. ResNet-18 teacher on fashion-mnist-28 (the 15-epoch recipe), then the ResNet-18 pair table
( timeout $(cap 150) $DFKD train-teacher --dataset fashion-mnist-28 --model resnet18 --seed 0 \
    --device "$DEV" > "$W/teacher_resnet18.log" 2>&1
  timeout $(cap 0) $DFKD bench --preset resnet18-gpu --out "$OUT/resnet18-gpu" \
    --workers "${R18_WORKERS:-8}" --set run.device="$DEV" > "$W/bench_resnet18.log" 2>&1
  log "stream A done" ) &
# 2b. The STARS ablation on the small pair (evidence budgets; the CPU teacher comes from
#     .gpu/cache): 3 synthesizers x {none, stars, rca, tar, stars-seedtar} x 5 seeds.
( timeout $(cap 0) $DFKD bench --preset stars-ablation --set run.device="$DEV" --set run.neuron_backend=eager \
    --workers "${SA_WORKERS:-10}" --out "$OUT/stars-ablation-gpu" > "$W/bench_ablation.log" 2>&1
  log "stream B done" ) &
wait
log "all streams done"
cp ${DFKD_CACHE}/teachers/fashion-mnist*/*.json "$W/" 2>/dev/null
tar -C "$W" --exclude='*.pt' --exclude='*.lock' -czf "$OUT/results.tgz" . && ls -la "$OUT"
log "packed"
