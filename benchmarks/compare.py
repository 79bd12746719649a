"""Compare two benchmark output directories cell by cell (e.g. a variant against a baseline).

Rows are matched on (dataset, pair, synthesizer, regularizer set) and paired by seed; the
difference B - A gets the leaderboard's 95% t-interval (paired by seed when >= 2 seeds pair
up, else Welch). Typical uses: the seed's literal TAR against the aligned one (two runs of
the same preset with ``--set stars.tar_variant=seed``), tuned STARS parameters against the
defaults (``--stars-params``).

    python -m benchmarks.compare A_DIR B_DIR [--label-a default --label-b tuned]
        [--regularizers stars] [--out FILE.md]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from baselines.errors import DFKDError

from .leaderboard import diff_ci, fmt_diff, fmt_ms, frame, load_rows, md_table, mean_std

KEYS = ["dataset", "pair", "synthesizer", "regularizers"]


def ok_frame(out: str | Path) -> pd.DataFrame:
    """The ok rows of a benchmark directory as the leaderboard's flat frame."""
    rows = load_rows(out)
    if not rows:
        raise DFKDError(f"{out} holds no rows (expected {out}/rows/<job_id>.json from dfkd bench).")
    df = frame(rows)
    return df[df["status"] == "ok"]


def compare(a: pd.DataFrame, b: pd.DataFrame, label_a: str = "A", label_b: str = "B",
            regularizers: str | None = None) -> pd.DataFrame:
    """One record per cell present in both frames: mean +- std of each, B - A with CI."""
    recs = []
    for key, gb in b.groupby(KEYS, sort=True):
        if regularizers is not None and key[3] != regularizers:
            continue
        ga = a[(a[KEYS] == pd.Series(key, index=KEYS)).all(axis=1)]
        if ga.empty:
            continue
        by_a = dict(zip(ga["seed"], ga["student_acc"]))
        by_b = dict(zip(gb["seed"], gb["student_acc"]))
        rec = dict(zip(KEYS, key))
        rec[label_a] = fmt_ms(*mean_std(by_a.values()))
        rec[label_b] = fmt_ms(*mean_std(by_b.values()))
        rec[f"{label_b} - {label_a} (95% CI)"] = fmt_diff(diff_ci(by_b, by_a))
        recs.append(rec)
    return pd.DataFrame(recs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="baseline output directory (dfkd bench --out)")
    ap.add_argument("b", help="variant output directory")
    ap.add_argument("--label-a", default="A")
    ap.add_argument("--label-b", default="B")
    ap.add_argument("--regularizers", help="only this regularizer set, e.g. stars or none")
    ap.add_argument("--out", help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    try:
        table = compare(ok_frame(args.a), ok_frame(args.b), args.label_a, args.label_b,
                        args.regularizers)
    except DFKDError as e:
        print(f"error: {e}")
        return 2
    if table.empty:
        print(f"no cell (dataset, pair, synthesizer, regularizers) is in both {args.a} and {args.b}")
        return 1
    text = (f"{args.label_b} ({args.b}) against {args.label_a} ({args.a}); student accuracy (%), "
            f"mean ± std over seeds, difference paired by seed.\n\n" + md_table(table) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
