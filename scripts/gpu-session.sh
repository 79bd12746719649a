#!/usr/bin/env bash
# What one lent GPU session runs (README "Results", GPU rows). Needs, in the repository root
# (ignored by git through .git/info/exclude; name both in the device call's `carry`):
#   .whl/   wheels the GPU image lacks, for its Python 3.12, and this project's own wheel:
#           pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#             --platform manylinux_2_28_x86_64 --platform any -d .whl spikingjelly==2.0.0 loguru SciencePlots
#           pip wheel --no-deps --no-build-isolation -w .whl .   (entry points: the registries)
#   .whl-tune/ (only for `dfkd tune` runs; dfkd bench does not import optuna) optuna alembic
#           colorlog Mako SQLAlchemy greenlet, downloaded the same way
#   .gpu/data/     the four Fashion-MNIST IDX files, xz-compressed (the device call carries at most
#                  64 MiB: tracked tree ~27 MB + wheels ~1.5 MB + data 26.6 MB as .xz, 30.7 as .gz):
#                  for f in /usr/share/datasets/fashion-mnist/*.gz; do b=$(basename $f .gz);
#                    zcat $f | xz -9 > .gpu/data/$b.xz; done
#   .gpu/cache/    teacher cache (DFKD_CACHE layout) holding the CPU evidence teacher
#                  (teachers/fashion-mnist-28/smallcnn-*), so the small pair uses the same one
#   .gpu/COMMIT    `git rev-parse HEAD` (the copy sent to the device carries a stale .git;
#                  exported as DFKD_GIT_COMMIT, which the rows record)
# Every output goes to $WORK and is packed into $OUT/results.tgz at the end (the device tool
# returns at most 8 files from $OUT). The bench output directories start from the committed
# results/stars-ablation-gpu and results/resnet18-gpu, so each session resumes where the last
# one stopped (jobs with a row are skipped): unpack results.tgz and copy the two directories
# back into results/ (then `dfkd report results/DIR`).
# Everything after the speed figures runs in parallel streams under one deadline (BUDGET s):
#   OUT=/tmp/out BUDGET=540 bash scripts/gpu-session.sh
# CPU smoke check: SKIP_INSTALL=1 DEV=cpu BUDGET=60 PY=.venv/bin/python bash scripts/gpu-session.sh
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-540}
OUT=${OUT:-/tmp/gpu-out}
W=${WORK:-/tmp/gpu-work}
DEV=${DEV:-cuda}
rm -rf "$W"; mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 DFKD_DATA_ROOT="$PWD/.gpu/data" DFKD_CACHE="$PWD/.gpu/cache"
if ls .gpu/data/*.xz > /dev/null 2>&1; then  # xz-compressed IDX files: unpack outside the tree
  mkdir -p "$W/.data"; for f in .gpu/data/*.xz; do xz -dc "$f" > "$W/.data/$(basename "$f" .xz)"; done
  export DFKD_DATA_ROOT="$W/.data"
fi
TABLES="stars-ablation-gpu resnet18-gpu"  # output directories under results/, resumed and sent back
for d in $TABLES; do [ -d "results/$d" ] && cp -r "results/$d" "$W/"; done
PY=${PY:-python3}
left() { echo $(( T0 + BUDGET - $(date +%s) )); }
cap() { local v=$(( $(left) - ${1:-0} )); [ "$v" -lt 10 ] && v=10; echo "$v"; }  # seconds left minus $1
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$W/session.log"; }
pack() { tar -C "$W" --exclude='*.pt' --exclude='*.lock' --exclude=.data -czf "$OUT/results.tgz" . ; ls -la "$OUT"; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl $(ls .whl-tune/*.whl 2>/dev/null) \
    || { log "install failed"; pack; exit 3; }
  export PYTHONPATH="$PWD:/tmp/site"
fi
cp .gpu/COMMIT "$W/" 2>/dev/null && export DFKD_GIT_COMMIT="$(cat .gpu/COMMIT)"  # rows record it
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, torchvision, spikingjelly; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
  $PY -m benchmarks.cli --help | head -3; nproc; } > "$W/gpu.txt" 2>&1
cat "$W/gpu.txt"
DFKD="$PY -m benchmarks.cli"
log "setup done"

# 1. Speed, alone on the device: the spiking student's training step (variants A-F of
#    benchmarks.spiking_speed; on CUDA the compiled neuron backends fall back to
#    SpikingJelly's own kernels) and the same step under run.precision fp32 / bf16.
if [ "${SKIP_SPEED:-0}" != 1 ]; then
  timeout 45 $PY -m benchmarks.spiking_speed --device "$DEV" --batch 64 --repeats 5 --drift-steps 0 \
    --json "$W/spiking_speed.json" > "$W/spiking_speed.txt" 2>&1
  timeout 30 $PY -m benchmarks.spiking_speed --device "$DEV" --batch 64 --repeats 5 --precision fp32,bf16 \
    --json "$W/spiking_speed_precision.json" > "$W/spiking_speed_precision.txt" 2>&1
  log "speed done"; grep -v "^W1\|warn" "$W"/spiking_speed*.txt
fi

# 2a. ResNet-18 teacher on fashion-mnist-28 (the 15-epoch recipe), then the resnet18-gpu table.
( timeout $(cap 200) $DFKD train-teacher --dataset fashion-mnist-28 --model resnet18 --seed 0 \
    --device "$DEV" > "$W/teacher_resnet18.log" 2>&1
  log "resnet18 teacher: $(tail -1 "$W/teacher_resnet18.log")"
  timeout $(cap 15) $DFKD bench --preset resnet18-gpu --out "$W/resnet18-gpu" --no-report \
    --workers "${R18_WORKERS:-6}" --set run.device="$DEV" > "$W/bench_resnet18.log" 2>&1
  log "stream A done" ) &
# 2b. The STARS ablation on the small pair (evidence budgets, the CPU teacher from
#     .gpu/cache): 3 synthesizers x {none, stars, rca, tar, stars-seedtar} x 5 seeds + references.
( timeout $(cap 15) $DFKD bench --preset stars-ablation --set run.device="$DEV" --set run.neuron_backend=eager \
    --workers "${SA_WORKERS:-9}" --no-report --out "$W/stars-ablation-gpu" > "$W/bench_ablation.log" 2>&1
  log "stream B done" ) &
wait
log "all streams done"
cp "${DFKD_CACHE}"/teachers/fashion-mnist*/*.json "$W/" 2>/dev/null
for d in $TABLES; do
  [ -d "$W/$d" ] && echo "$d: $(ls "$W/$d"/rows 2>/dev/null | wc -l) rows"
done | tee -a "$W/session.log"
pack
log "packed"
