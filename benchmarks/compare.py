"""Compare two benchmark output directories cell by cell (e.g. a variant against a baseline).

Rows are matched on (dataset, pair, synthesizer, regularizer set) and paired by seed; the
difference B - A gets the leaderboard's 95% t-interval (paired by seed when >= 2 seeds pair
up, else Welch). Typical uses: the seed's literal TAR against the aligned one (two runs of
the same preset with ``--set stars.tar_variant=seed``), tuned STARS parameters against the
defaults (``--stars-params``).

    dfkd compare A_DIR B_DIR [--label-a default --label-b tuned] [--regularizers stars]
        [--out FILE.md]          (also: python -m benchmarks.cmd_compare ...)
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from baselines.errors import DFKDError

from .frame import by_seed as _by_seed, frame, load_rows
from .table_checks import mixed_hosts
from .stats import diff_ci, fmt_diff, fmt_ms, md_table, mean_std
from .store import treatment_of

KEYS = ["dataset", "pair", "synthesizer", "regularizers"]


def ok_frame(out: str | Path) -> pd.DataFrame:
    """The ok rows of a benchmark directory as the leaderboard's flat frame."""
    rows = load_rows(out)
    if not rows:
        raise DFKDError(f"{out} holds no rows (expected {out}/rows/<job_id>.json from dfkd bench).")
    df = frame(rows, treatment_of(out))
    return df[df["status"] == "ok"]


def compare(a: pd.DataFrame, b: pd.DataFrame, label_a: str = "A", label_b: str = "B",
            regularizers: str | None = None, across_regularizers: bool = False) -> pd.DataFrame:
    """One record per cell present in both frames: mean +- std of each, B - A with CI.

    ``across_regularizers``: match on (dataset, pair, synthesizer) only, so that e.g. a
    directory of `stars` rows compares with one of rows without a regularizer (each side
    must then hold one regularizer set per cell)."""
    keys = KEYS[:3] if across_regularizers else KEYS
    recs = []
    for key, gb in b.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        if regularizers is not None and not across_regularizers and key[3] != regularizers:
            continue
        ga = a[(a[keys] == pd.Series(key, index=keys)).all(axis=1)]
        if ga.empty:
            continue
        for side, g in (("A", ga), ("B", gb)):
            if g["regularizers"].nunique() > 1:
                raise DFKDError(f"{side} holds several regularizer sets for {'/'.join(map(str, key))} "
                                f"({', '.join(sorted(g['regularizers'].unique()))}); without "
                                "--across-regularizers each set is compared with its own.")
        by_a, by_b = _by_seed(ga), _by_seed(gb)
        rec = dict(zip(keys, key))
        if across_regularizers:
            rec["regularizers"] = f"{ga['regularizers'].iloc[0]} -> {gb['regularizers'].iloc[0]}"
        rec[label_a] = fmt_ms(*mean_std(by_a.values()))
        rec[label_b] = fmt_ms(*mean_std(by_b.values()))
        rec[f"{label_b} - {label_a} (95% CI)"] = fmt_diff(diff_ci(by_b, by_a))
        recs.append(rec)
    return pd.DataFrame(recs)


def compare_dirs(a_dir: str, b_dir: str, label_a: str = "A", label_b: str = "B",
                 regularizers: str | None = None, out: str | None = None,
                 across_regularizers: bool = False) -> int:
    """Print (and optionally write) the comparison table; 0 if any cell matched, else 1.
    A directory without rows is a DFKDError (exit 2 through the CLI)."""
    fa, fb = ok_frame(a_dir), ok_frame(b_dir)
    table = compare(fa, fb, label_a, label_b, regularizers, across_regularizers)
    if table.empty:
        print(f"no cell (dataset, pair, synthesizer, regularizers) has ok rows in both {a_dir} and {b_dir}")
        return 1
    text = (f"{label_b} ({b_dir}) against {label_a} ({a_dir}); student accuracy (%), "
            f"mean ± std over seeds, difference paired by seed.\n\n" + md_table(table) + "\n")
    hosts = mixed_hosts(pd.concat([fa, fb], ignore_index=True))
    if len(hosts):
        text += ("\n**Warning: more than one machine.** The rows compared here were computed on different "
                 "machines; the same seed gives the same numbers on one CPU model only, so a difference "
                 "across them measures the machines too.\n\n" + md_table(hosts) + "\n")
    print(text)
    if out:
        Path(out).write_text(text)
    return 0
