"""``dfkd compare A_DIR B_DIR``: two benchmark output directories, cell by cell, paired by seed."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare two benchmark output directories cell by cell",
                       description="Match the ok rows of two `dfkd bench` output directories on "
                                   "(dataset, pair, synthesizer, regularizer set), pair them by seed and "
                                   "print B - A with a 95% t-interval (e.g. tuned STARS parameters against "
                                   "the defaults, or a variant run with --set against its baseline).")
    p.add_argument("a", metavar="A_DIR", help="baseline output directory")
    p.add_argument("b", metavar="B_DIR", help="variant output directory")
    p.add_argument("--label-a", default="A", help="column name of A (default A)")
    p.add_argument("--label-b", default="B", help="column name of B (default B)")
    p.add_argument("--regularizers", help="only this regularizer set, e.g. stars or none")
    p.add_argument("--across-regularizers", action="store_true",
                   help="match cells on dataset, pair and synthesizer only (e.g. a stars run "
                        "against a run without regularizer)")
    p.add_argument("--out", help="also write the table to this markdown file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .compare import compare_dirs

    return compare_dirs(args.a, args.b, args.label_a, args.label_b, args.regularizers, args.out,
                        args.across_regularizers)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.cmd_compare ...`` = ``dfkd compare ...``."""
    from .cli import main as dfkd

    return dfkd(["compare", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
