"""``dfkd bench``: run a benchmark preset (synthesizers x regularizer sets x pairs x seeds).

Expands the preset into jobs, checks every config, the output directory and the datasets
before any compute, trains each teacher once, runs the jobs on an executor and writes
OUT/rows/<job_id>.json, OUT/results.csv, OUT/leaderboard.md and OUT/plots/.
Re-running the same command resumes (finished rows are skipped). Exit code 0 when every
selected job has an ok row, 1 when some failed, 2 for an input error (nothing computed).
"""
from __future__ import annotations

import argparse
import sys
import textwrap


def shipped_presets() -> list[str]:
    """Names of the presets in benchmarks/presets (read from the directory, so a new one is listed)."""
    from .preset import preset_names

    return preset_names()


def _seeds(spec: str) -> list[int]:
    from baselines.errors import ConfigError

    from .preset import parse_seeds

    try:
        return parse_seeds(spec)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", required=True, metavar="NAME|FILE",
                   help=f"a shipped preset ({', '.join(shipped_presets()) or 'none found'}) or a preset TOML file")
    p.add_argument("--out", metavar="DIR", help="output directory (default results/<preset name>)")
    p.add_argument("--executor", default="local", help="local (default) | submitit | ray")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes; each gets cores // N torch threads (default: the "
                        "preset's [executor.local] workers, else 1)")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="run only jobs whose label matches this fnmatch pattern, e.g. "
                        "'*/deepinversion*/seed0' (repeatable; labels: see --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="list the jobs with their state and estimated cost")
    p.add_argument("--retry-failed", action="store_true", help="re-run the jobs whose row is failed")
    p.add_argument("--params", "--stars-params", dest="params_file", metavar="FILE",
                   help="TOML of regularizer sections (e.g. the tuner's best_params.toml) merged into "
                        "the preset's [params]")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value of every job that has the section (e.g. "
                        "--set distill.epochs=2); executor.<name>.<key>=V sets an executor option")
    p.add_argument("--seeds", type=_seeds, metavar="SPEC",
                   help="replace the preset's seeds, e.g. --seeds 0-6 (or 5,6): more seeds for an existing "
                        "--out directory run only the new jobs; its rows of other seeds stay in the table")
    p.add_argument("--data-root", metavar="DIR", help="where the datasets are (run.data_root)")
    p.add_argument("--download", action="store_true", help="download missing datasets (run.download)")
    p.add_argument("--tensorboard", action="store_true",
                   help="each job writes TensorBoard events to OUT/jobs/<id>/tb/ (run.tensorboard)")
    p.add_argument("--no-report", action="store_true", help="do not rebuild the leaderboard and plots")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps option help at spaces only, so names such as ``evidence-field`` stay whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark preset into a resumable table of rows",
                       description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
                       formatter_class=_HelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def options(args: argparse.Namespace):
    """The BenchOptions of parsed arguments."""
    from .runner import BenchOptions

    return BenchOptions(preset=args.preset, out=args.out, executor=args.executor, workers=args.workers,
                        only=list(args.only or []), dry_run=args.dry_run, retry_failed=args.retry_failed,
                        params_file=args.params_file, data_root=args.data_root, seeds=args.seeds,
                        sets=[*(args.set or []), *(["run.download=true"] if args.download else []),
                              *(["run.tensorboard=true"] if args.tensorboard else [])],
                        report=not args.no_report, argv=list(getattr(args, "argv", None) or sys.argv[1:]))


def run(args: argparse.Namespace) -> int:
    from .runner import run_bench

    return run_bench(options(args), log=lambda m: print(m, flush=True))


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.cmd_bench ...`` (same flags; used by the tests)."""

    p = argparse.ArgumentParser(prog="dfkd bench")
    add_arguments(p)
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    from .cli import run_reporting_errors

    return run_reporting_errors(run, args)


if __name__ == "__main__":
    sys.exit(main())
