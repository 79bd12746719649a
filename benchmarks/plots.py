"""Benchmark plots (matplotlib, Agg backend, PNG) drawn from the rows alone.

- ``accuracy.png``: student accuracy per synthesizer, one bar per regularizer set (none,
  stars, ...), mean +- std over seeds as error bars, one panel per (dataset, pair), with the
  teacher / ``real`` / ``noise`` / ``scratch`` references as horizontal lines;
- ``accuracy_vs_time.png``: accuracy against synthesis seconds (log scale), per job;
- ``samples.png``: a grid of synthetic images per synthesizer x regularizer set, from
  ``DIR/jobs/<job_id>/samples.png`` (written by the job when it can; skipped otherwise);
- ``tar_diagnostics.png``: per stage, the teacher's tail mass against the student's
  firing probability at the start and end of distillation, from ``row["diagnostics"]``
  (``{"start": {"<reg>": {...}}, "end": {...}}``; a list or a {stage: value} table whose
  key mentions "tail" for the teacher and "fir"/"spike" for the student).

Every plot that lacks its data is skipped with a note, never an error.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .frame import NONE, REFERENCE_SYNTHS, treatment_label
from .png import save_figure
REF_STYLE = {"teacher": ("black", "--"), "real": ("tab:green", ":"), "noise": ("tab:gray", "-."),
             "scratch": ("tab:purple", (0, (5, 2, 1, 2)))}
REG_MARKERS = ("o", "^", "s", "D", "v", "P", "X")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _regsets(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["regularizers"]))
    order = [r for r in (NONE, treatment_label(df)) if r in present]
    return order + sorted(r for r in present if r not in order)


def plot_accuracy(df: pd.DataFrame, path: Path) -> Path | None:
    """Grouped bars: synthesizer x regularizer set, error bars = std over seeds."""
    ok = df[(df["status"] == "ok") & df["student_acc"].notna()]
    panels = list(ok.groupby(["dataset", "pair"], sort=True))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 4.5 * len(panels)), 4.2), squeeze=False)
    for ax, ((ds, pair), g) in zip(axes[0], panels):
        methods = [s for s in dict.fromkeys(g["synthesizer"]) if s not in REFERENCE_SYNTHS]
        regsets = _regsets(g[g["synthesizer"].isin(methods)]) or ["none"]
        width = 0.8 / max(1, len(regsets))
        for i, rs in enumerate(regsets):
            stats = [g[(g["synthesizer"] == m) & (g["regularizers"] == rs)]["student_acc"] for m in methods]
            means = [s.mean() if len(s) else math.nan for s in stats]
            stds = [s.std(ddof=1) if len(s) > 1 else 0.0 for s in stats]
            xs = [k + (i - (len(regsets) - 1) / 2) * width for k in range(len(methods))]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=f"{rs}")
        refs = {"teacher": g.drop_duplicates("job_id")["teacher_acc"].mean()}
        for r in REFERENCE_SYNTHS:
            sel = g[(g["synthesizer"] == r) & (g["regularizers"] == NONE)]["student_acc"]
            if len(sel):
                refs[r] = sel.mean()
        for r, v in refs.items():
            if v == v:
                color, ls = REF_STYLE[r]
                ax.axhline(v, color=color, ls=ls, lw=1, label=f"{r} ({v:.1f})")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=20)
        ax.set_ylabel("student top-1 (%)")
        ax.set_title(f"{ds}\n{pair}", fontsize=9)
        handles = ax.get_legend_handles_labels()[0]  # below the axes: never over the bars
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(3, max(1, len(handles))),
                  frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_accuracy_vs_time(df: pd.DataFrame, path: Path) -> Path | None:
    """Scatter: synthesis seconds (log) vs accuracy; colour = synthesizer, marker = reg set."""
    ok = df[(df["status"] == "ok") & df["student_acc"].notna() & (df["synthesis_seconds"] > 0)]
    if ok.empty:
        return None
    plt = _plt()
    datasets = sorted(set(ok["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    synths = sorted(set(ok["synthesizer"]))
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(synths)}
    regsets = _regsets(ok)
    markers = {r: REG_MARKERS[i % len(REG_MARKERS)] for i, r in enumerate(regsets)}
    for ax, ds in zip(axes[0], datasets):
        d = ok[ok["dataset"] == ds]
        for (s, r), g in d.groupby(["synthesizer", "regularizers"]):
            ax.scatter(g["synthesis_seconds"], g["student_acc"], color=colors[s], marker=markers[r],
                       label=f"{s}+{r}" if r != "none" else s, alpha=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("synthesis seconds per run")
        ax.set_ylabel("student top-1 (%)")
        ax.set_title(f"{ds}: {', '.join(sorted(set(d['pair'].astype(str))))}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def sample_image(out: Path, job_id: str) -> Path | None:
    for p in (out / "jobs" / job_id / "samples.png", out / "images" / f"{job_id}.png"):
        if p.is_file():
            return p
    return None


def plot_samples(df: pd.DataFrame, out: Path, path: Path) -> Path | None:
    """One tile per (dataset, pair, synthesizer, reg set): the first seed's samples.png."""
    ok = df[(df["status"] == "ok") & ~df["synthesizer"].isin(("scratch",))]
    tiles = []
    for key, g in ok.groupby(["dataset", "pair", "synthesizer", "regularizers"], sort=True):
        for jid in g.sort_values("seed")["job_id"]:
            p = sample_image(out, str(jid))
            if p is not None:
                tiles.append((key, p))
                break
    if not tiles:
        return None
    plt = _plt()
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, ((ds, pair, s, r), p) in zip(axes.flat, tiles):
        ax.imshow(plt.imread(str(p)), cmap="gray", vmin=0.0, vmax=1.0)  # grayscale grids: no stretch
        ax.set_title(f"{s}{'+' + r if r != 'none' else ''}\n{ds} {pair}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def _series(v: Any) -> list[float] | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return [float(v)]
    if isinstance(v, dict):
        v = list(v.values())
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return [float(x) for x in v]
    return None


def _find(d: Any, words: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[float] | None:
    """First numeric series under a key containing one of ``words`` (depth-first)."""
    if not isinstance(d, dict):
        return None
    for k, v in d.items():
        lk = str(k).lower()
        if any(w in lk for w in words) and not any(e in lk for e in exclude):
            s = _series(v)
            if s is not None:
                return s
    for v in d.values():
        if isinstance(v, dict):
            s = _find(v, words, exclude)
            if s is not None:
                return s
    return None


def _stage_order(label: str) -> tuple:
    import re

    return tuple(int(n) for n in re.findall(r"\d+", label)) or (0,)


def _flat_series(d: dict[str, Any]) -> tuple[list[str], list[float], list[float]] | None:
    """STARS' flat form ``{"t0_s0/teacher_tail_mass": .., "t0_s0/student_firing_prob": ..}``."""
    tails, fires = {}, {}
    for k, v in d.items():
        if "/" not in str(k) or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        stage, name = str(k).rsplit("/", 1)
        name = name.lower()
        if name == "teacher_tail_mass" or (("tail" in name) and "teacher" in name and "gap" not in name):
            tails.setdefault(stage, float(v))
        elif name == "student_firing_prob" or ("firing_prob" in name):
            fires.setdefault(stage, float(v))
    stages = sorted((s for s in tails if s in fires), key=_stage_order)
    if not stages:
        return None
    return stages, [tails[s] for s in stages], [fires[s] for s in stages]


def tar_series(diagnostics: Any) -> dict[str, dict[str, tuple[list[str], list[float], list[float]]]]:
    """{phase: {reg: (stage labels, teacher tail mass, student firing probability)}} from a
    row's diagnostics; accepts STARS' flat ``"<stage>/<name>"`` keys, or lists / {stage:
    value} tables under keys mentioning "tail" (teacher) and "fir"/"spike" (student)."""
    out: dict[str, dict[str, tuple[list[str], list[float], list[float]]]] = {}
    if not isinstance(diagnostics, dict):
        return out
    for phase in ("start", "end"):
        regs = diagnostics.get(phase)
        if not isinstance(regs, dict):
            continue
        for reg, d in regs.items():
            if not isinstance(d, dict):
                continue
            flat = _flat_series(d)
            if flat is not None:
                out.setdefault(phase, {})[str(reg)] = flat
                continue
            tail = _find(d, ("tail",), ("student", "fir", "spike", "gap"))
            fire = _find(d, ("fir", "spike"), ("teacher",))
            if tail and fire and len(tail) == len(fire):
                out.setdefault(phase, {})[str(reg)] = ([str(i + 1) for i in range(len(tail))], tail, fire)
    return out


def plot_tar(rows: Iterable[dict[str, Any]], path: Path) -> Path | None:
    """Per (dataset, pair, synthesizer, reg) panel: stage-wise tail mass vs firing prob."""
    groups: dict[tuple, dict[str, list[tuple[list[str], list[float], list[float]]]]] = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        for phase, regs in tar_series(r.get("diagnostics")).items():
            for reg, series in regs.items():
                key = (r.get("dataset"), f"{r.get('teacher')}:{r.get('student')}", r.get("synthesizer"), reg)
                groups.setdefault(key, {}).setdefault(phase, []).append(series)
    if not groups:
        return None
    plt = _plt()
    n = len(groups)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.8 * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (key, phases) in zip(axes.flat, sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))):
        labels: list[str] = []
        for phase, ls in (("start", "--"), ("end", "-")):
            series = phases.get(phase)
            if not series:
                continue
            labels = series[0][0]
            same = [s for s in series if s[0] == labels]  # average over seeds with the same stages
            tail = [sum(s[1][i] for s in same) / len(same) for i in range(len(labels))]
            fire = [sum(s[2][i] for s in same) / len(same) for i in range(len(labels))]
            xs = list(range(len(labels)))
            ax.plot(xs, tail, ls, color="tab:blue", marker="o", label=f"teacher tail mass ({phase})")
            ax.plot(xs, fire, ls, color="tab:red", marker="^", label=f"student firing prob. ({phase})")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=7)
        ds, pair, synth, reg = key
        ax.set_title(f"{ds} {pair}\n{synth}+{reg}", fontsize=8)
        ax.set_xlabel("matched stage (teacher t, student s)")
        ax.set_ylabel("probability")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def make_plots(df: pd.DataFrame, rows: list[dict[str, Any]], out: str | Path) -> tuple[dict[str, Path], list[str]]:
    """All plots into DIR/plots/; returns ({name: path}, notes on skipped plots)."""
    out = Path(out)
    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    notes: list[str] = []
    jobs = [
        ("accuracy by synthesizer", lambda p: plot_accuracy(df, p), "accuracy.png",
         "no successful run with an accuracy"),
        ("accuracy vs synthesis time", lambda p: plot_accuracy_vs_time(df, p), "accuracy_vs_time.png",
         "no successful run with synthesis time > 0"),
        ("synthetic samples", lambda p: plot_samples(df, out, p), "samples.png",
         "no DIR/jobs/<job_id>/samples.png found (written by the job when it saves a sample grid)"),
        ("TAR diagnostics", lambda p: plot_tar(rows, p), "tar_diagnostics.png",
         "no row has per-stage teacher tail mass and student firing probability in its diagnostics"),
    ]
    for name, fn, fname, why in jobs:
        p = fn(pdir / fname)
        if p is None:
            (pdir / fname).unlink(missing_ok=True)
            notes.append(f"plot '{name}' skipped: {why}.")
        else:
            made[name] = p
    return made, notes
