"""The ``dfkd`` command line: ``dfkd <command> [options]`` (``dfkd <command> --help``).

Each command lives in its own module ``benchmarks.cmd_<name>`` exposing
``register(subparsers)``, which adds the command's parser and sets ``func=run``. Modules
are imported when the parser is built; one that is not installed is skipped, one that is
broken is reported on stderr and skipped, so the other commands keep working.

Errors the user can fix (:class:`baselines.errors.DFKDError`) print ``error: <message>``
on stderr and exit with code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: Command modules, in the order ``dfkd --help`` lists them.
COMMAND_MODULES = ("cmd_list", "cmd_train_teacher", "cmd_distill", "cmd_bench", "cmd_report", "cmd_compare",
                   "cmd_merge", "cmd_tune", "cmd_export")

EXIT_USER_ERROR = 2


def version() -> str:
    """The installed stars-dfkd version (with the git commit when run from a checkout)."""
    try:
        from importlib.metadata import version as dist_version

        v = dist_version("stars-dfkd")
    except Exception:  # noqa: BLE001 - not installed: running from the source tree
        v = "unknown (not installed)"
    try:
        from baselines.provenance import git_commit

        commit = git_commit()
    except Exception:  # noqa: BLE001
        commit = None
    if not commit:
        return v
    return f"{v} (git {commit.split('-')[0][:12]}{'-dirty' if commit.endswith('-dirty') else ''})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dfkd",
        description="Data-free knowledge distillation from ANN teachers into spiking students.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        modname = f"{__package__ or 'benchmarks'}.{name}"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:
                continue  # command not available in this version
            print(f"warning: command module {modname} is broken ({exc}); skipped", file=sys.stderr)
            continue
        except Exception as exc:  # noqa: BLE001 - one broken command must not break the others
            print(f"warning: command module {modname} is broken ({type(exc).__name__}: {exc}); skipped",
                  file=sys.stderr)
            continue
        mod.register(sub)
    return parser


def run_reporting_errors(func, args) -> int:
    """Run a subcommand; a DFKDError becomes ``error: <message>`` and exit code 2."""
    from baselines.errors import DFKDError

    try:
        return int(func(args) or 0)
    except DFKDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def _tune_malloc(_args) -> int:
    from baselines.allocator import tune_malloc

    tune_malloc()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dfkd`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    # before any tensor: a step's activations stay in the heap (baselines/allocator.py)
    if run_reporting_errors(_tune_malloc, args):
        return EXIT_USER_ERROR
    try:
        return run_reporting_errors(args.func, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
