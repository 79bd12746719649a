"""Rows that should not share one table, found before a difference is read from it: runs of
different configs in one cell (:func:`mixed_cells`), more than one teacher for a pair
(:func:`mixed_teachers`), rows of more than one machine (:func:`mixed_hosts`). The
leaderboard, ``dfkd report`` and ``dfkd compare`` print each as a warning table.
"""
from __future__ import annotations

import pandas as pd


def mixed_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Finished rows that share a cell and a seed (pair, synthesizer, regularizer set, seed)
    but not a job id: runs of different configs (e.g. ``--set stars.alpha=0.1`` next to the
    default) that the tables would average as if they were seeds of one config."""
    ok = df[df["status"] == "ok"]
    keys = ["dataset", "pair", "synthesizer", "regularizers", "seed"]
    if not len(ok) or any(k not in ok for k in keys + ["job_id"]):
        return pd.DataFrame()
    n = ok.groupby(keys, dropna=False)["job_id"].transform("nunique")
    m = ok[n > 1].sort_values(keys + ["job_id"])
    return pd.DataFrame({"job": m["label"], "id": m["job_id"], "accuracy": m["student_acc"].round(2)})


#: Rows without a weights digest (made before rows recorded one) count as one teacher when
#: their teacher accuracies span at most this many points (GPU evaluation is not
#: bit-reproducible: the same weights scored 94.25 and 94.30 on one test subset).
TEACHER_ACC_TOLERANCE = 0.1


def _acc_clusters(acc: pd.Series) -> pd.Series:
    """Each accuracy's cluster label ("94.25-94.30% accuracy"): sorted values split where two
    neighbours are more than TEACHER_ACC_TOLERANCE apart (``acc`` without missing values)."""
    groups: list[list[float]] = []
    for v in sorted(set(acc)):
        if groups and v - groups[-1][-1] <= TEACHER_ACC_TOLERANCE:
            groups[-1].append(v)
        else:
            groups.append([v])
    name = {v: (f"{grp[0]:.2f}" if len(grp) == 1 else f"{grp[0]:.2f}-{grp[-1]:.2f}") + "% accuracy"
            for grp in groups for v in grp}
    return acc.map(name)


def mixed_teachers(df: pd.DataFrame) -> pd.DataFrame:
    """Pairs whose rows used more than one teacher: distinct ``teacher_digest`` values, or,
    where some row has no digest, teacher accuracies in more than one cluster
    (:func:`_acc_clusters`: neighbours more than :data:`TEACHER_ACC_TOLERANCE` points apart).
    A with/without difference across two teachers measures the teachers too (a GPU teacher retrained in another session is another
    teacher, even under the same path and seed)."""
    ok = df[df["status"] == "ok"]
    if not len(ok) or "teacher_digest" not in ok:
        return pd.DataFrame()
    out = []
    for (ds, pair), g in ok.groupby(["dataset", "pair"], dropna=False, sort=True):
        if g["teacher_digest"].nunique() > 1:  # nunique skips rows without a digest
            g = g[g["teacher_digest"].notna()]
            by, key = "weights digest", g["teacher_digest"]
        elif g["teacher_digest"].isna().any():
            g = g[g["teacher_acc"].notna()]  # rows without a teacher (scratch) say nothing
            by, key = "teacher accuracy", _acc_clusters(g["teacher_acc"])
            if key.nunique() < 2:
                continue
        else:
            continue
        for k, gk in g.groupby(key, sort=True):
            out.append({"dataset": ds, "pair": pair, "told apart by": by, "teacher": k, "rows": len(gk),
                        "seeds": ", ".join(str(int(x)) for x in sorted(set(gk["seed"].dropna())))})
    return pd.DataFrame(out)


def mixed_hosts(df: pd.DataFrame) -> pd.DataFrame:
    """Pairs whose rows come from more than one machine (:func:`benchmarks.rows.host_of`:
    the CPU model and kernel instruction set, or the GPU). The same seed gives the same numbers
    on one CPU model only, so a paired difference across two machines measures them too."""
    ok = df[df["status"] == "ok"]
    if not len(ok) or "host" not in ok:
        return pd.DataFrame()
    out = []
    for (ds, pair), g in ok.groupby(["dataset", "pair"], dropna=False, sort=True):
        if g["host"].nunique() < 2:
            continue
        for k, gk in g.groupby("host", sort=True):
            out.append({"dataset": ds, "pair": pair, "machine": k, "rows": len(gk),
                        "seeds": ", ".join(str(int(x)) for x in sorted(set(gk["seed"].dropna())))})
    return pd.DataFrame(out)
