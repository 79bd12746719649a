#!/usr/bin/env bash
# The tuning evidence of issue "STARS that can act" on CPUs, for sessions without a GPU:
# about 10 h of a 2-core machine, so it is built to be resumed session after session; every
# step starts from what results/ already holds (commit those directories between sessions).
#   1. the study `dfkd tune --preset evidence --synthesizer cmi --trials $TRIALS`: one worker
#      per core, each pinned to its core (--worker-only), the journal in results/tune-cmi-cpu.
#      A worker starts no trial in the last $TAIL s before DEADLINE; a trial cut by the
#      deadline is marked failed and its parameters re-queued by the next session's worker.
#      Then `dfkd tune --status` writes the trials so far to $STUDY/status.md.
#   2. once the study holds $TRIALS finished (complete + pruned) trials: finalize it
#      (best_params.toml, plots, tune_summary.json; --no-test: the test set is read once, by
#      the fresh-seed rows).
#   3. fresh seeds 5-9, never seen by the study: CMI without STARS and with STARS at its
#      defaults (results/default-cmi-cpu; needs no study, so it runs while trials are missing
#      only when RUN_DEFAULT_EARLY=1), and CMI + STARS with the tuned parameters
#      (results/tuned-cmi-cpu).
#   4. `dfkd compare` default vs tuned -> results/tuned-cmi-cpu/compare_default.md.
# One CPU model throughout: the same seed gives other numbers on another CPU model (README,
# "The CLI"), so the two fresh-seed arms pair bit for bit only on one; `dfkd bench` warns before
# resuming another machine's rows and `dfkd compare` flags the mix. An evidence trial took
# about 20 min on the AVX2 host of sessions 3-10 and 13-15 min (a pruned one 7) on the AVX-512
# host of sessions 11-12.
# The GPU route of the same evidence is scripts/gpu-session.sh (STAGES=tune): its own study
# (tune-cmi-gpu), since the two platforms do not give the same numbers.
#
#   DEADLINE=9000 bash scripts/cpu-tune.sh          # stop starting work 9000 s from now
#   TRIALS=20 CORES=2 PY=.venv/bin/python PRESET=evidence SYNTH=cmi RESULTS=results  (defaults)
#   TUNE_SET="run.teacher_epochs=1 distill.epochs=1"   --set overrides for every command
# Smoke check (a tiny teacher and budgets, a minute or two on one core):
#   RESULTS=/tmp/ct CORES=1 TRIALS=2 TAIL=5 DEADLINE=900 TUNE_SET="run.train_subset=2000 \
#     run.test_subset=200 run.val_size=200 run.teacher_epochs=1 distill.epochs=2 distill.kd_steps=2 \
#     distill.eval_every=1 cmi.iterations=2 run.metrics_images=16" FRESH_SEEDS="5, 6" bash scripts/cpu-tune.sh
set -u
T0=$(date +%s)
DEADLINE=${DEADLINE:-36000}
TAIL=${TAIL:-1300}            # a CMI + STARS evidence trial: about 20 min on one core
TRIALS=${TRIALS:-20}
CORES=${CORES:-$(nproc)}
PY=${PY:-.venv/bin/python}
PRESET=${PRESET:-evidence}
SYNTH=${SYNTH:-cmi}
R=${RESULTS:-results}
STUDY="$R/tune-$SYNTH-cpu" DEFAULT="$R/default-$SYNTH-cpu" TUNED="$R/tuned-$SYNTH-cpu"
DFKD="$PY -m benchmarks.cli"
left() { echo $(( T0 + DEADLINE - $(date +%s) )); }
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

finished() {  # finished trials in the study's journal (0 when there is none yet)
  [ -f "$STUDY/study.journal" ] || { echo 0; return; }
  $PY - "$STUDY/study.journal" <<'EOF'
import sys, optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
optuna.logging.set_verbosity(optuna.logging.ERROR)
st = JournalStorage(JournalFileBackend(sys.argv[1]))
done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
print(sum(t.state in done for name in optuna.get_all_study_names(st)
          for t in optuna.load_study(study_name=name, storage=st).get_trials(deepcopy=False)))
EOF
}

EXTRA=(); for kv in ${TUNE_SET:-}; do EXTRA+=(--set "$kv"); done  # the same overrides everywhere
TUNE=(tune --preset "$PRESET" --synthesizer "$SYNTH" --trials "$TRIALS" --out "$STUDY" "${EXTRA[@]}")
# 1. the study
n=$(finished)
log "study $STUDY: $n of $TRIALS trials finished"
if [ "$n" -lt "$TRIALS" ] && [ "$(left)" -gt "$TAIL" ]; then
  for c in $(seq 0 $((CORES - 1))); do
    timeout "$(left)" taskset -c "$c" $DFKD "${TUNE[@]}" --workers 1 --worker-only \
      --timeout $(( $(left) - TAIL )) > "$STUDY-worker$c.log" 2>&1 &
    sleep 5  # the first worker creates the study
  done
  wait
  n=$(finished)
  log "study: $n of $TRIALS trials finished"
fi
[ -f "$STUDY/study.journal" ] && $DFKD "${TUNE[@]}" --status > "$STUDY/status.md" 2>&1  # commit with the journal
# 2. finalize
if [ "$n" -ge "$TRIALS" ] && [ ! -f "$STUDY/best_params.toml" ]; then
  $DFKD "${TUNE[@]}" --no-test > "$STUDY/finalize.log" 2>&1
  log "finalized: $(tr '\n' ' ' < "$STUDY/best_params.toml" 2>/dev/null)"
fi
# 3. the fresh-seed arms (a preset file in a fixed place: same content, same job ids)
FRESH=$(mktemp --suffix=.toml)
sed -e "s/^seeds = .*/seeds = [${FRESH_SEEDS:-5, 6, 7, 8, 9}]/" -e "s/^name = .*/name = \"$PRESET-fresh-seeds\"/" \
  "benchmarks/presets/$PRESET.toml" > "$FRESH"
if [ -f "$STUDY/best_params.toml" ] || [ "${RUN_DEFAULT_EARLY:-0}" = 1 ]; then
  [ "$(left)" -gt 60 ] && timeout "$(left)" $DFKD bench --preset "$FRESH" --only "*/$SYNTH/seed*" \
    --only "*/$SYNTH+stars/seed*" "${EXTRA[@]}" --workers "$CORES" --out "$DEFAULT" > "$DEFAULT.log" 2>&1
  log "default arm: $(ls "$DEFAULT"/rows 2>/dev/null | wc -l) rows"
fi
if [ -f "$STUDY/best_params.toml" ] && [ "$(left)" -gt 60 ]; then
  timeout "$(left)" $DFKD bench --preset "$FRESH" --only "*/$SYNTH+stars/seed*" \
    --params "$STUDY/best_params.toml" "${EXTRA[@]}" --workers "$CORES" --out "$TUNED" > "$TUNED.log" 2>&1
  log "tuned arm: $(ls "$TUNED"/rows 2>/dev/null | wc -l) rows"
fi
rm -f "$FRESH"
# 4. compare
if [ -d "$TUNED/rows" ] && [ -d "$DEFAULT/rows" ]; then
  $DFKD compare "$DEFAULT" "$TUNED" --label-a default --label-b tuned > "$TUNED/compare_default.md" 2>&1
  log "compare: $TUNED/compare_default.md"
fi
