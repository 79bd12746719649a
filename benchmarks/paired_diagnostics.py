"""Why a treatment moved accuracy, seed by seed: the paired rows' synthesis diagnostics.

For every (dataset, pair, synthesizer) and seed that has a row without regularizers and one
with the treatment set (default: the directory's), the accuracy difference is printed next to
the *relative* change of each synthesis loss both rows record (mean over the run's synthesis
batches of the synthesizer's own terms: ``bn`` BN statistics, ``oh`` the teacher's class loss,
``adv``, ``cr``, ...; for a negative term such as ``adv`` the change is that of its
magnitude), of the student's firing rate and of the last epoch's KD loss. Then,
per synthesizer with >= 3 paired seeds and pooled over all pairs, Pearson's r between the
accuracy difference and each relative change: a hint of *which* side effect of the treatment
goes with the accuracy it costs or gains (few seeds: a hint, not a test).

    python -m benchmarks.paired_diagnostics results/evidence [--treatment stars] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from statistics import mean
from typing import Any

import pandas as pd

from .frame import NONE, REFERENCE_SYNTHS, set_label
from .rows import ResultRow
from .stats import md_table, pearson
from .store import read_rows, treatment_of


def own_losses(row: ResultRow) -> dict[str, float]:
    """Mean over the row's synthesis batches of each of the synthesizer's own terms (names
    without a ``/``: regularizer terms are ``name/term``)."""
    seen: dict[str, list[float]] = {}
    for b in row.synth_batches or []:
        for k, v in (b.get("losses") or {}).items() if isinstance(b, dict) else ():
            if "/" not in k and isinstance(v, (int, float)) and math.isfinite(v):
                seen.setdefault(k, []).append(float(v))
    return {k: mean(v) for k, v in seen.items()}


def _last_kd_loss(row: ResultRow) -> float:
    hist = [h for h in (row.history or []) if isinstance(h, dict) and "kd_loss" in h]
    return float(hist[-1]["kd_loss"]) if hist else float("nan")


def _rel(a: float, b: float) -> float:
    """Relative change b / a - 1 (nan when a is 0 or either is missing)."""
    return b / a - 1.0 if a and math.isfinite(a) and math.isfinite(b) else float("nan")


def paired_table(rows: list[ResultRow], treatment: str) -> pd.DataFrame:
    """One record per (dataset, pair, synthesizer, seed) with both a row without regularizers
    and one with ``treatment``: accuracies, their difference and the relative changes."""
    cells: dict[tuple, dict[str, ResultRow]] = {}
    for r in rows:
        if r.status != "ok" or r.synthesizer in REFERENCE_SYNTHS:
            continue
        key = (r.dataset, r.pair, r.synthesizer, r.seed)
        cells.setdefault(key, {}).setdefault(set_label(r.regularizer_names), r)
    recs = []
    for (ds, pair, synth, seed), by_set in sorted(cells.items(), key=lambda kv: tuple(map(str, kv[0]))):
        if NONE not in by_set or treatment not in by_set:
            continue
        a, b = by_set[NONE], by_set[treatment]
        rec: dict[str, Any] = {"dataset": ds, "pair": pair, "synthesizer": synth, "seed": seed,
                               "acc without": a.student_acc, "acc with": b.student_acc,
                               "acc difference": b.student_acc - a.student_acc}
        la, lb = own_losses(a), own_losses(b)
        for k in sorted(set(la) & set(lb)):
            rec[f"{k} change"] = _rel(la[k], lb[k])
        rec["firing change"] = _rel(a.firing_rate or float("nan"), b.firing_rate or float("nan"))
        rec["last kd_loss change"] = _rel(_last_kd_loss(a), _last_kd_loss(b))
        recs.append(rec)
    return pd.DataFrame(recs)


def correlation_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pearson's r of the accuracy difference with each change column, per synthesizer and
    pooled over all pairs (n = paired seeds)."""
    changes = [c for c in pairs.columns if c.endswith(" change")]
    groups = [(s, g) for s, g in pairs.groupby("synthesizer", sort=True)] + [("all (pooled)", pairs)]
    recs = []
    for name, g in groups:
        rec: dict[str, Any] = {"synthesizer": name, "n": len(g)}
        for c in changes:
            r = pearson(list(g["acc difference"]), list(g[c].astype(float)))
            rec[f"r(acc diff, {c})"] = "-" if math.isnan(r) else f"{r:+.2f}"
        recs.append(rec)
    return pd.DataFrame(recs)


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if c.endswith(" change"):
            out[c] = [("-" if not math.isfinite(v) else f"{100 * v:+.1f}%") for v in out[c].astype(float)]
        elif c.startswith("acc"):
            out[c] = [f"{v:+.2f}" if c == "acc difference" else f"{v:.2f}" for v in out[c]]
    return out


def report(out_dir: str | Path, treatment: str | None = None) -> str:
    rows = list(read_rows(out_dir).values())
    treat = treatment or set_label(treatment_of(out_dir) or ["stars"])
    pairs = paired_table(rows, treat)
    if not len(pairs):
        return f"{out_dir}: no seed has both a row without regularizers and one with {treat!r}."
    lines = [f"# Paired diagnostics: {out_dir}, with {treat} vs without", "",
             "Per seed: accuracy difference (with - without) and the relative change of each "
             "synthesis loss (mean over the run's batches), of the firing rate and of the last KD loss.",
             "", md_table(_fmt(pairs)), "",
             "Pearson's r between the accuracy difference and each change (n < 3: -).", "",
             md_table(correlation_table(pairs)), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="a benchmark output directory (with rows/)")
    ap.add_argument("--treatment", help="the regularizer set's label, e.g. stars (default: the directory's)")
    ap.add_argument("--out", dest="file", help="also write the markdown to this file")
    args = ap.parse_args(argv)
    if not (Path(args.out) / "rows").is_dir():
        ap.error(f"{args.out}: no rows/ directory here; pass a `dfkd bench` output directory, e.g. results/evidence")
    text = report(args.out, args.treatment)
    print(text)
    if args.file:
        Path(args.file).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
