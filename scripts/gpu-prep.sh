#!/usr/bin/env bash
# Build, in a fresh checkout, what scripts/gpu-session.sh needs to travel to a lent GPU (the
# device call carries the tracked tree plus at most 8 ignored paths, 64 MiB in all), so that a
# session that is lent a GPU can start it at once. Idempotent; a minute or two on the CPU,
# plus the teacher's training (about 10 min on one core) when it is not cached.
#   .whl/        spikingjelly, loguru, SciencePlots (the device image's Python 3.12) and this
#                project's own wheel (rebuilt every time: it must match HEAD)
#   .whl-tune/   optuna and colorlog (the tune stage; no SQL stack: the study is a journal)
#   .gpu/data/   the four Fashion-MNIST IDX files, xz-compressed
#   .gpu/cache/  the small pair's teacher (DFKD_CACHE layout), from this machine's cache
#   .gpu/COMMIT  git rev-parse HEAD (the device copy's .git is stale; rows record this)
# and lists them in .git/info/exclude so they stay out of commits.
#
# The teacher is this machine's: the same seed trains another teacher on another CPU model
# (90.55% on the AVX2 host of sessions 3-10, 90.53% on session 11's AVX-512 host). The tune
# stage needs only one teacher for all its rows; the tf32 stage compares with
# results/stars-ablation-gpu, which used the 90.55% teacher, so it is only meaningful with that
# one (the script says which teacher it packed).
#   bash scripts/gpu-prep.sh            then: run(carry=[".whl", ".whl-tune", ".gpu"], ...)
set -eu
PY=${PY:-.venv/bin/python}
PIP=(${PY} -m pip --disable-pip-version-check)
DL=(download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform any)
mkdir -p .whl .whl-tune .gpu/data .gpu/cache/teachers
for d in .whl .whl-tune .gpu; do grep -qx "$d/" .git/info/exclude 2>/dev/null || echo "$d/" >> .git/info/exclude; done

ls .whl/spikingjelly-* > /dev/null 2>&1 || "${PIP[@]}" "${DL[@]}" -d .whl spikingjelly==2.0.0 loguru SciencePlots
ls .whl-tune/optuna-* > /dev/null 2>&1 || "${PIP[@]}" "${DL[@]}" -d .whl-tune "optuna==$($PY -c 'import optuna; print(optuna.__version__)')" colorlog
rm -f .whl/stars_dfkd-*.whl
"${PIP[@]}" wheel -q --no-deps --no-build-isolation -w .whl . && rm -rf build ./*.egg-info

SRC=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
for f in "$SRC"/*-ubyte.gz; do
  b=$(basename "$f" .gz)
  [ -s ".gpu/data/$b.xz" ] || zcat "$f" | xz -9 > ".gpu/data/$b.xz"
done

# the small pair's teacher (trained here if the cache lacks it), copied into the carry
$PY -m benchmarks.cli train-teacher --dataset fashion-mnist-28 --model smallcnn --seed 0 --quiet | tail -1
CACHE=${DFKD_CACHE:-$HOME/.cache/stars-dfkd}
mkdir -p .gpu/cache/teachers/fashion-mnist-28
cp "$CACHE"/teachers/fashion-mnist-28/smallcnn-*-seed0.{pt,json} .gpu/cache/teachers/fashion-mnist-28/
git rev-parse HEAD > .gpu/COMMIT
echo "packed teacher: $(grep -o '"test_acc": [0-9.]*' .gpu/cache/teachers/fashion-mnist-28/*.json) ($(grep -o '"platform": "[^"]*"' .gpu/cache/teachers/fashion-mnist-28/*.json))"
du -sh .whl .whl-tune .gpu
# what travels: tracked + untracked-not-ignored files + the carried paths, at most 64 MiB (bytes,
# not disk blocks); over it the device call is refused, so say so here, before device time is spent
CARRY=$(du -sb .whl .whl-tune .gpu | awk '{s += $1} END {print s}')
TREE=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
awk -v c="$CARRY" -v t="$TREE" 'BEGIN {m = 1048576; printf "carry: %.1f MiB + working tree %.1f MiB = %.1f MiB (limit 64)\n", c/m, t/m, (c+t)/m;
  if (c + t > 64 * m) { print "error: over the device limit: commit fewer bytes under results/ or carry less"; exit 1 } }'
