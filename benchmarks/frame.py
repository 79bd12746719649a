"""Rows -> one flat pandas frame (the columns of results.csv), read by the leaderboard, the
plots and ``dfkd compare``.

``regularizers`` is the row's regularizer set as a label (``"none"``, ``"stars"``,
``"rca+tar"``); the *treatment* label (``frame(..., treatment=[...])``, the preset's
``[bench].treatment``) is kept in ``df.attrs["treatment"]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .jobs import job_label, teacher_key
from .rows import ResultRow, as_row, host_of
from .stats import _finite, mean_std
from .store import read_rows

REFERENCE_SYNTHS = ("real", "noise", "scratch")
NONE = "none"

#: parts of a synthesize() call timed by the synthesizers (row["synth_timing"], seconds)
TIMING_PARTS = ("teacher_forward", "student_forward", "backward", "regularizers", "grad_probe", "other")
TIMING_COLUMNS = tuple(f"t_{p}" for p in TIMING_PARTS)
NUMERIC = ("T", "seed", "teacher_acc", "student_acc", "student_acc_best", "val_acc", "agreement",
           "firing_rate", "sops_per_image", "images_synthesized", "synthesis_seconds", "distill_seconds",
           "synth_s_per_image", "peak_rss_mb", "job_seconds", "epochs", "kd_steps", "synth_batches",
           "batch_size", "train_subset", "test_subset") + TIMING_COLUMNS
COLUMNS = ("job_id", "label", "dataset", "teacher", "student", "pair", "T", "synthesizer", "regularizers",
           "seed", "status", "error", "teacher_acc", "teacher_digest", "student_acc", "student_acc_best", "val_acc", "agreement",
           "firing_rate", "sops_per_image", "images_synthesized", "synthesis_seconds", "distill_seconds",
           "synth_s_per_image", "peak_rss_mb", "job_seconds", "device", "epochs", "kd_steps", "synth_batches",
           "batch_size", "train_subset", "test_subset", "git_commit", "config_hash", "grad_norms",
           "teacher_key", "precision", "flags", "host") + TIMING_COLUMNS




def set_label(regs: Iterable[str] | None) -> str:
    """The label of a regularizer set: names joined by ``+``, ``none`` when empty."""
    return "+".join(regs or []) or NONE


def load_rows(out: str | Path) -> list[ResultRow]:
    return list(read_rows(out).values())


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def frame(rows: Iterable[ResultRow | dict[str, Any]], treatment: Iterable[str] | None = None) -> pd.DataFrame:
    """One flat record per row (the columns of results.csv)."""
    recs = []
    for r in map(as_row, rows):
        regs = r.regularizer_names
        cfg = r.config or {}
        rec = {k: r.get(k) for k in COLUMNS}
        run = cfg.get("run") if isinstance(cfg.get("run"), dict) else {}
        rec.update(job_id=r.job_id or r.config_hash, label=r.job_label, pair=r.pair, regularizers=set_label(regs),
                   epochs=_get(cfg, "distill", "epochs"), kd_steps=_get(cfg, "distill", "kd_steps"),
                   synth_batches=_get(cfg, "distill", "synth_batches"), batch_size=_get(cfg, "distill", "batch_size"),
                   train_subset=run.get("train_subset"), test_subset=run.get("test_subset"),
                   teacher_key="|".join(map(str, teacher_key({"dataset": r.dataset, "teacher": r.teacher, **run,
                                                              "seed": run.get("seed", r.seed)}))))
        rec["host"] = host_of(r)
        flags = r.get("flags")
        rec["flags"] = "; ".join(map(str, flags)) if isinstance(flags, list) else flags or None
        timing = r.synth_timing if isinstance(r.synth_timing, dict) else {}
        for part in TIMING_PARTS:
            rec[f"t_{part}"] = timing.get(part)
        imgs, secs = _finite([r.images_synthesized]), _finite([r.synthesis_seconds])
        rec["synth_s_per_image"] = secs[0] / imgs[0] if imgs and secs and imgs[0] > 0 else None
        if rec["label"] is None:
            rec["label"] = job_label(str(r.dataset), str(r.teacher), str(r.student), str(r.synthesizer), regs, r.seed)
        recs.append(rec)
    df = pd.DataFrame(recs, columns=list(COLUMNS))
    for c in NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    df = df.sort_values(["dataset", "pair", "synthesizer", "regularizers", "seed"], kind="stable",
                        na_position="last").reset_index(drop=True)
    df.attrs["treatment"] = set_label(treatment) if treatment else None
    return df


def treatment_label(df: pd.DataFrame) -> str | None:
    """The treatment set's label: the frame's, else the only set other than none."""
    t = df.attrs.get("treatment")
    if t:
        return t
    sets = [s for s in dict.fromkeys(df["regularizers"]) if s != NONE]
    return sets[0] if len(sets) == 1 else None


def by_seed(g: pd.DataFrame) -> dict[Any, float]:
    out = {}
    for seed, acc in zip(g["seed"], g["student_acc"]):
        out.setdefault(seed, acc)
    return out


def mean_of(values: Iterable[Any]) -> float:
    return mean_std(values)[0]
