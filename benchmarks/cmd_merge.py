"""``dfkd merge SRC... --into DIR``: combine benchmark output directories (rows made in other
sessions, worktrees or machines) into one, refusing rows of another config (benchmarks.merge)."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge the rows of benchmark output directories into one",
                       description="Copy the ok rows of SRC directories (and their jobs/<id>/ folders) into DIR, "
                                   "a `dfkd bench` output directory of the same experiment: a row joins only when "
                                   "its config equals DIR's rows of the same cell up to the seed, and (unless "
                                   "--allow-mixed) its teacher and machine are theirs. The manifest gains the "
                                   "rows' seeds and git commits; the leaderboard is rebuilt. Nothing is written "
                                   "when two directories hold different ok rows for one job (see --on-conflict).")
    p.add_argument("sources", nargs="+", metavar="SRC", help="benchmark output directories to take rows from")
    p.add_argument("--into", required=True, metavar="DIR", help="the directory to merge into (created if absent)")
    p.add_argument("--on-conflict", default="stop", choices=("stop", "keep", "replace"),
                   help="two different ok rows for one job: stop without writing (default), keep the first "
                        "(the target's), or replace it with the later source's")
    p.add_argument("--allow-mixed", action="store_true",
                   help="also merge rows made with another teacher or on another machine than DIR's rows of "
                        "the same pair (the leaderboard flags the mix)")
    p.add_argument("--dry-run", action="store_true", help="list what would be merged and refused; write nothing")
    p.add_argument("--no-report", action="store_true", help="do not rebuild DIR's leaderboard and plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .merge import merge_dirs

    return merge_dirs(args.sources, args.into, args.on_conflict, args.allow_mixed, args.dry_run,
                      not args.no_report, argv=list(getattr(args, "argv", None) or sys.argv[1:]))


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.cmd_merge ...`` = ``dfkd merge ...``."""
    from .cli import main as dfkd

    return dfkd(["merge", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
