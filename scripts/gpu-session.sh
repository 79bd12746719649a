#!/usr/bin/env bash
# What one lent GPU session runs (README "Results", GPU rows). Needs, in the repository root
# (ignored by git through .git/info/exclude; name them in the device call's `carry`), what
# `bash scripts/gpu-prep.sh` builds in a fresh checkout (a fresh checkout has none of it):
#   .whl/   wheels the GPU image lacks, for its Python 3.12, and this project's own wheel:
#           pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#             --platform manylinux_2_28_x86_64 --platform any -d .whl spikingjelly==2.0.0 loguru SciencePlots
#           pip wheel --no-deps --no-build-isolation -w .whl .   (entry points: the registries)
#   .whl-tune/ (only for the tune stage; dfkd bench does not import optuna) optuna and colorlog,
#           downloaded the same way. The study is a journal file, so optuna's SQL stack
#           (SQLAlchemy, alembic, Mako, greenlet: 6 MB of the 64 MiB carry) is not needed:
#           install optuna --no-deps (checked: `import optuna` and a journal study run without it)
#   .gpu/data/     the four Fashion-MNIST IDX files, xz-compressed (the device call carries at most
#                  64 MiB: tracked tree ~32 MB (session 10) + wheels ~2 MB + data 26.5 MB as .xz, 30.7 as .gz):
#                  for f in /usr/share/datasets/fashion-mnist/*.gz; do b=$(basename $f .gz);
#                    zcat $f | xz -9 > .gpu/data/$b.xz; done
#   .gpu/cache/    teacher cache (DFKD_CACHE layout) holding the CPU evidence teacher
#                  (teachers/fashion-mnist-28/smallcnn-*), so the small pair uses the same one
#   .gpu/COMMIT    `git rev-parse HEAD` (the copy sent to the device carries a stale .git;
#                  exported as DFKD_GIT_COMMIT, which the rows record)
# Every output goes to $WORK and is packed into $OUT/results.tgz at the end (the device tool
# returns at most 8 files from $OUT). Each stage's output directories start from their
# committed copies under results/, so a session resumes where the last one stopped (jobs with a
# row, trials in the study journal are not re-run): unpack results.tgz and copy the
# directories back into results/ (then `dfkd report results/DIR`).
# STAGES (space-separated, default "tune") picks what runs, in parallel streams under one
# deadline (BUDGET s) after the optional speed stage:
#   speed   the spiking step's speed on the device (benchmarks.spiking_speed, variants, precisions)
#   tables  the ResNet-18 teacher + resnet18-gpu table, and the stars-ablation preset on the GPU
#           (both complete since session 10: the stage retrains the teacher for nothing)
#   tune    issue "STARS that can act": `dfkd tune --preset evidence --synthesizer cmi` on the
#           GPU (TUNE_TRIALS, TUNE_WORKERS; workers start no trial in the last TUNE_TAIL s), then
#           the best parameters against the defaults on fresh seeds 5-9 (`tuned-cmi-gpu` vs
#           `default-cmi-gpu`, whose default arm runs beside the study)
#   tf32    CMI / Fast / DeepInversion without a regularizer and Fast + STARS at seeds 0-4 with
#           NVIDIA_TF32_OVERRIDE=0 (results/stars-ablation-gpu-notf32): does TF32 make the GPU
#           and the CPU disagree on Fast and DeepInversion?
#   OUT=/tmp/out BUDGET=540 STAGES="tune" bash scripts/gpu-session.sh
# CPU smoke check: SKIP_INSTALL=1 DEV=cpu BUDGET=60 PY=.venv/bin/python bash scripts/gpu-session.sh
#   (STAGES=speed). The tune stage on the CPU is hours (an evidence job is 20 min on a core);
#   session 10 checked its pieces instead: `dfkd bench --dry-run` of both arms on the
#   fresh-seeds preset (with --params: other job ids), and a one-trial study with
#   run.device=cuda (fails cleanly on the CPU, so its arguments parse).
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
STAGES=${STAGES:-tune}
has() { case " $STAGES " in *" $1 "*) return 0;; esac; return 1; }
# output directories under results/ that the chosen stages resume and send back
DIRS=""
has tables && DIRS="$DIRS stars-ablation-gpu resnet18-gpu"
has tune && DIRS="$DIRS tune-cmi-gpu default-cmi-gpu tuned-cmi-gpu"
has tf32 && DIRS="$DIRS stars-ablation-gpu-notf32"
for d in $DIRS; do [ -d "results/$d" ] && cp -r "results/$d" "$W/"; done
PY=${PY:-python3}
left() { echo $(( T0 + BUDGET - $(date +%s) )); }
cap() { local v=$(( $(left) - ${1:-0} )); [ "$v" -lt 10 ] && v=10; echo "$v"; }  # seconds left minus $1
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$W/session.log"; }
pack() { tar -C "$W" --exclude='*.pt' --exclude='*.lock' --exclude=.data -czf "$OUT/results.tgz" . ; ls -la "$OUT"; }

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  TUNE_WHL=""; has tune && TUNE_WHL=$(ls .whl-tune/*.whl 2>/dev/null)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl $TUNE_WHL || { log "install failed"; pack; exit 3; }
  export PYTHONPATH="$PWD:/tmp/site"
fi
cp .gpu/COMMIT "$W/" 2>/dev/null && export DFKD_GIT_COMMIT="$(cat .gpu/COMMIT)"  # rows record it
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, torchvision, spikingjelly; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
  $PY -m benchmarks.cli --help | head -3; nproc; } > "$W/gpu.txt" 2>&1
cat "$W/gpu.txt"
DFKD="$PY -m benchmarks.cli"
ON_DEV=(--set run.device="$DEV" --set run.neuron_backend=eager)  # the compiled LIF is a CPU path
log "setup done; stages: $STAGES"

# speed, alone on the device: the spiking student's training step (variants A-F of
# benchmarks.spiking_speed; on CUDA the compiled neuron backends fall back to SpikingJelly's own
# kernels) and the same step under run.precision fp32 / bf16 (today's path A and the evidence
# presets' path C).
if has speed; then
  timeout 45 $PY -m benchmarks.spiking_speed --device "$DEV" --batch 64 --repeats 5 --drift-steps 0 \
    --json "$W/spiking_speed.json" > "$W/spiking_speed.txt" 2>&1
  timeout 40 $PY -m benchmarks.spiking_speed --device "$DEV" --batch 64 --repeats 5 --precision fp32,bf16 --variants A,C \
    --json "$W/spiking_speed_precision.json" > "$W/spiking_speed_precision.txt" 2>&1
  log "speed done"; grep -v "^W1\|warn" "$W"/spiking_speed*.txt
fi

if has tables; then
  # ResNet-18 teacher on fashion-mnist-28 (the 15-epoch recipe), then the resnet18-gpu table.
  ( timeout $(cap 200) $DFKD train-teacher --dataset fashion-mnist-28 --model resnet18 --seed 0 \
      --device "$DEV" > "$W/teacher_resnet18.log" 2>&1
    log "resnet18 teacher: $(tail -1 "$W/teacher_resnet18.log")"
    timeout $(cap 15) $DFKD bench --preset resnet18-gpu --out "$W/resnet18-gpu" --no-report \
      --workers "${R18_WORKERS:-6}" --set run.device="$DEV" > "$W/bench_resnet18.log" 2>&1
    log "resnet18 stream done" ) &
  # The STARS ablation on the small pair (evidence budgets, the CPU teacher from .gpu/cache).
  ( timeout $(cap 15) $DFKD bench --preset stars-ablation "${ON_DEV[@]}" \
      --workers "${SA_WORKERS:-9}" --no-report --out "$W/stars-ablation-gpu" > "$W/bench_ablation.log" 2>&1
    log "ablation stream done" ) &
fi

if has tune; then
  # The fresh-seed preset: the tune preset with seeds 5-9 (never seen by the study).
  TUNE_PRESET=${TUNE_PRESET:-evidence}
  sed -e "s/^seeds = .*/seeds = [${FRESH_SEEDS:-5, 6, 7, 8, 9}]/" -e "s/^name = .*/name = \"$TUNE_PRESET-fresh-seeds\"/" \
    "benchmarks/presets/$TUNE_PRESET.toml" > "$W/fresh-seeds.toml"
  EXTRA=(); for kv in ${TUNE_SET:-}; do EXTRA+=(--set "$kv"); done
  # the study (seed 0, validation accuracy), then the tuned arm on seeds 5-9
  ( timeout $(cap 10) $DFKD tune --preset "$TUNE_PRESET" --synthesizer cmi --trials "${TUNE_TRIALS:-32}" \
      --workers "${TUNE_WORKERS:-8}" --timeout $(cap "${TUNE_TAIL:-300}") --no-test --out "$W/tune-cmi-gpu" \
      "${ON_DEV[@]}" "${EXTRA[@]}" > "$W/tune_cmi.log" 2>&1  # tune's --set extends, like bench's
    log "tune done: $(grep -c '' "$W/tune-cmi-gpu/best_params.toml" 2>/dev/null) lines of best_params.toml"
    if [ -f "$W/tune-cmi-gpu/best_params.toml" ]; then
      timeout $(cap 10) $DFKD bench --preset "$W/fresh-seeds.toml" --only '*/cmi+stars/seed*' \
        --params "$W/tune-cmi-gpu/best_params.toml" "${ON_DEV[@]}" "${EXTRA[@]}" --workers 5 --no-report \
        --out "$W/tuned-cmi-gpu" > "$W/bench_tuned.log" 2>&1
    fi
    log "tuned arm done" ) &
  # the default arm on seeds 5-9 (CMI without and with STARS at its defaults), beside the study
  ( timeout $(cap 10) $DFKD bench --preset "$W/fresh-seeds.toml" --only '*/cmi/seed*' --only '*/cmi+stars/seed*' \
      "${ON_DEV[@]}" "${EXTRA[@]}" --workers "${DEFAULT_WORKERS:-10}" --no-report --out "$W/default-cmi-gpu" \
      > "$W/bench_default.log" 2>&1
    log "default arm done" ) &
fi

if has tf32; then
  ( NVIDIA_TF32_OVERRIDE=0 timeout $(cap 15) $DFKD bench --preset stars-ablation "${ON_DEV[@]}" \
      --only '*/cmi/seed*' --only '*/fast/seed*' --only '*/deepinversion/seed*' --only '*/fast+stars/seed*' \
      --workers "${TF32_WORKERS:-10}" --no-report --out "$W/stars-ablation-gpu-notf32" > "$W/bench_notf32.log" 2>&1
    log "tf32-off stream done" ) &
fi
wait
log "all streams done"
if has tune && [ -d "$W/tuned-cmi-gpu/rows" ] && [ -d "$W/default-cmi-gpu/rows" ]; then
  $DFKD compare "$W/default-cmi-gpu" "$W/tuned-cmi-gpu" --label-a default --label-b tuned > "$W/compare_tuned.md" 2>&1
fi
cp "${DFKD_CACHE}"/teachers/fashion-mnist*/*.json "$W/" 2>/dev/null
for d in $DIRS; do
  [ -d "$W/$d" ] && echo "$d: $(ls "$W/$d"/rows 2>/dev/null | wc -l) rows"
done | tee -a "$W/session.log"
pack
log "packed"
