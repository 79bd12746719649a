"""``dfkd tune``: the command line of :mod:`benchmarks.tune`.

Also runnable as ``python -m benchmarks.cmd_tune`` (how ``--workers N`` starts its workers).

Example::

    dfkd tune --preset quick --synthesizer deepinversion --trials 20 --workers 2
    dfkd tune --preset quick --synthesizer cmi --trials 64 \\
        --storage postgresql://user:pass@db-host:5432/optuna --study stars-cmi --worker-only
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


HELP = ("tune the preset's treatment regularizer with Optuna (STARS' alpha, beta and percentile q "
        "by default; never on the test set)")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--preset", required=True, help="preset name (benchmarks/presets/NAME.toml) "
                   "or a TOML file; its [tune] table may change the search space")
    p.add_argument("--synthesizer", required=True, help="synthesizer the treatment is added to")
    p.add_argument("--pair", help="TEACHER:STUDENT (default: the preset's first pair)")
    p.add_argument("--trials", type=int, required=True,
                   help="COMPLETE + PRUNED trials the study should hold (re-runs resume)")
    p.add_argument("--storage", help="Optuna storage URL (sqlite:///FILE, "
                   "postgresql://USER:PASS@HOST:PORT/DB) or a journal file path "
                   "(default: $DFKD_TUNE_STORAGE, else OUT/study.journal)")
    p.add_argument("--study", help="study name (default: derived from preset, pair, "
                   "synthesizer and objective)")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes on the same study (threads: cores // N each)")
    p.add_argument("--objective", choices=["val-acc", "agreement"],
                   help="val-acc (labelled validation split from the training set; default) "
                   "or agreement (teacher-student agreement on held-out synthetic images)")
    p.add_argument("--timeout", type=float, help="seconds after which a worker starts no trial")
    p.add_argument("--out", help="output directory (default: runs/tune/STUDY)")
    p.add_argument("--seed", type=int, help="run seed and TPE seed (default: preset's first)")
    p.add_argument("--set", dest="sets", action="extend", nargs="+", default=[],
                   metavar="SECTION.KEY=VALUE", help="config overrides, e.g. distill.epochs=5")
    p.add_argument("--worker-only", action="store_true",
                   help="only run trials (no best params, test re-run or plots); for cluster "
                   "workers, finalize later with the same command without this flag")
    p.add_argument("--heartbeat-interval", type=int, default=30,
                   help="seconds between a running trial's heartbeats (default 30)")
    p.add_argument("--grace-period", type=int, default=120, help="seconds without heartbeat "
                   "after which another worker fails the trial and retries its params")
    p.add_argument("--max-failed", type=int, help="stop after this many trials whose job "
                   "failed (default max(3, trials))")
    p.add_argument("--no-test", dest="final_test", action="store_false",
                   help="skip measuring the best trial's test accuracy")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.add_argument("--status", action="store_true", help="print the study's trials (state, "
                   "objective, parameters, minutes, machine) as a markdown table; run nothing")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    # seams passed to local worker processes (module:function); for tests and embedders
    p.add_argument("--job-fn", help=argparse.SUPPRESS)
    p.add_argument("--resolver", help=argparse.SUPPRESS)
    return p


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tune", help=HELP, description=HELP)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def spec_from_args(args: argparse.Namespace):
    from benchmarks.tune import STORAGE_ENV, TuneSpec
    return TuneSpec(
        preset=args.preset, synthesizer=args.synthesizer, trials=args.trials, pair=args.pair,
        storage=args.storage or os.environ.get(STORAGE_ENV) or None, study=args.study, workers=args.workers, objective=args.objective,
        timeout=args.timeout, out=args.out, seed=args.seed, sets=list(args.sets or []),
        worker_only=args.worker_only, worker_index=args.worker_index, threads=args.threads,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
        max_failed=args.max_failed, final_test=args.final_test, plots=args.plots,
        job_fn=args.job_fn, resolver=args.resolver, status=args.status)


def run(args: argparse.Namespace) -> int:
    from benchmarks.tune import run_tune
    summary = run_tune(spec_from_args(args))
    if args.status:
        print(summary["status"])
        return 0
    if args.worker_only:
        print(json.dumps(summary.get("worker", {}), default=str))
        return 0
    t = summary["trials"]
    print(f"study {summary['study']} ({summary['storage']}): {t['complete']} complete, "
          f"{t['pruned']} pruned, {t['fail']} failed")
    if summary["best_params"] is not None:
        print(f"best {summary['objective']} = {summary['best_value']:.4f} "
              f"(trial {summary['best_trial']}): {summary['best_params']}")
        if summary["test_acc_of_best"] is not None:
            print(f"test accuracy of the best trial (measured once): "
                  f"{summary['test_acc_of_best']:.4f}")
        print(f"wrote {summary['best_params_file']}")
    for n in summary["notes"]:
        print(f"note: {n}")
    return 0 if t["complete"] + t["pruned"] >= summary["trials_requested"] else 1


def main(argv: list[str] | None = None) -> int:
    p = add_arguments(argparse.ArgumentParser(prog="dfkd tune", description=HELP))
    args = p.parse_args(argv)
    from .cli import run_reporting_errors

    return run_reporting_errors(run, args)


if __name__ == "__main__":
    sys.exit(main())
