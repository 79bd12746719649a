"""``dfkd report DIR``: rebuild results.csv (+ parquet), leaderboard.md and plots/ from DIR/rows."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild a benchmark's leaderboard and plots from its rows",
                       description="Rebuild DIR/results.csv (and results.parquet when pyarrow is "
                                   "installed), DIR/leaderboard.md and DIR/plots/*.png from DIR/rows/*.json "
                                   "alone (no job is run).")
    p.add_argument("dir", metavar="DIR", help="a benchmark output directory (dfkd bench --out)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .leaderboard import write_report

    paths = write_report(args.dir, plots=not args.no_plots)
    print(f"wrote {paths['leaderboard']}, {paths['csv']}"
          + (f", {paths['parquet']}" if "parquet" in paths else " (no parquet: pyarrow not installed)")
          + (f", {len(paths.get('plots', {}))} plot(s) in {args.dir}/plots" if not args.no_plots else ""))
    if paths.get("mixed"):
        print(f"warning: {len(paths['mixed'])} row(s) share a cell and a seed with a different config and are "
              f"averaged together: {', '.join(paths['mixed'])}; see the leaderboard's warning.", file=sys.stderr)
    if paths.get("teachers"):
        print(f"warning: rows of {', '.join(paths['teachers'])} used more than one teacher; differences across "
              "them measure the teachers too; see the leaderboard's warning.", file=sys.stderr)
    if paths.get("hosts"):
        print(f"warning: rows of {', '.join(paths['hosts'])} come from more than one machine; differences across "
              "them measure the machines too; see the leaderboard's warning.", file=sys.stderr)
    bad = paths.get("corrupt") or []
    if bad:
        print(f"error: {len(bad)} row file(s) are corrupt (truncated or not JSON) and were left out of the report: "
              f"{', '.join(map(str, bad))}; re-run the same `dfkd bench` command to recompute those jobs.",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.cmd_report ...`` = ``dfkd report ...``."""
    from .cli import main as dfkd

    return dfkd(["report", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
