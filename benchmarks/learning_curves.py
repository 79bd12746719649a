"""Learning curves from benchmark rows: test accuracy against KD steps and against images
synthesized, per job (issue "a benchmark regime where distillation works", item 3: budgets
are set from measured curves, not guessed).

Each row's ``history`` holds one record per epoch (``kd_loss`` None when the epoch ran no KD
step, e.g. Fast's warm-up; ``pool`` the images in the pool after the epoch) and
``test_acc`` at every evaluation. The KD steps done by the end of epoch e are
``distill.kd_steps x #{epochs <= e that ran KD}``; the images are the pool size (for
``real``, the real training set it draws from).

    python -m benchmarks.learning_curves results/evidence-avx512 results/budget-curves/cmi-20ep \
        --only '*/cmi/seed0' --plot curves.png

prints one markdown table (a row per evaluation) and, with ``--plot``, draws accuracy
against KD steps and against synthesized images (log scale) side by side. Rows that are not
``ok`` or have no evaluation are skipped with a note.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import Any, Iterable

from .frame import REFERENCE_SYNTHS
from .png import save_figure
from .store import corrupt_rows, read_rows, rows_dir


def curve_points(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per evaluation of a row: epoch (1-based), KD steps so far, images in the
    pool, test accuracy (%). Raises ValueError on a history without ``kd_loss`` records."""
    kd_per_epoch = int(row["config"]["distill"]["kd_steps"])
    points, kd_epochs = [], 0
    for rec in row.get("history") or []:
        if "kd_loss" not in rec:
            raise ValueError(f"{row.get('job_label', '?')}: history record without kd_loss: {rec}")
        kd_epochs += rec["kd_loss"] is not None
        if rec.get("test_acc") is not None:
            points.append({"epoch": int(rec["epoch"]) + 1, "kd_steps": kd_epochs * kd_per_epoch,
                           "images": int(rec["pool"]), "test_acc": float(rec["test_acc"])})
    return points


def load_rows(dirs: Iterable[str | Path], only: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """(ok rows with at least one evaluation, notes on what was skipped) from DIR/rows/*.json,
    read by :func:`benchmarks.store.read_rows` (unreadable files: :func:`store.corrupt_rows`)."""
    rows, notes = [], []
    for d in dirs:
        found, corrupt = read_rows(d), corrupt_rows(d)
        if not found and not corrupt:
            notes.append(f"{d}: no rows/*.json (is it a `dfkd bench` output directory?)")
        for job_id, r in found.items():
            if only and not any(fnmatch.fnmatch(r.job_label or job_id, p) for p in only):
                continue
            if not r.ok or not r.history:
                notes.append(f"{rows_dir(d) / job_id}.json: skipped ({r.status}, {len(r.history or [])} history records)")
                continue
            rows.append({**r.to_dict(), "_source": str(d)})
        notes += [f"{f}: skipped (unreadable row: truncated or not JSON)" for f in corrupt]
    return rows, notes


def curve_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: job, seed, its budget (epochs x KD steps per epoch), then one line per
    evaluation."""
    lines = ["| job | source | epochs x KD steps, lr | eval epoch | KD steps | images | test acc |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["synthesizer"], r["job_label"], r["_source"])):
        d = row["config"]["distill"]
        for p in curve_points(row):
            lines.append(f"| {row['job_label']} | {row['_source']} | {d['epochs']} x {d['kd_steps']}, {d['lr']} | {p['epoch']} "
                         f"| {p['kd_steps']} | {p['images']} | {p['test_acc']:.2f} |")
    return "\n".join(lines)


def plot_curves(rows: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Two panels: accuracy vs KD steps (every row) and vs images synthesized (log x; the
    reference rows, which synthesize nothing, left out)."""
    if not rows:
        return None
    from .plots import _plt

    plt = _plt()
    fig, (ax_k, ax_i) = plt.subplots(1, 2, figsize=(11, 4.2))
    synths = sorted({r["synthesizer"] for r in rows})
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(synths)}
    for row in rows:
        pts = curve_points(row)
        d = row["config"]["distill"]
        label = f"{'/'.join(row['job_label'].split('/')[-2:])} ({d['epochs']}x{d['kd_steps']}, lr {d['lr']})"
        style = dict(color=colors[row["synthesizer"]], marker="o", ms=3, label=label,
                     ls="--" if row.get("regularizers") else "-")  # dashed: with a regularizer
        ax_k.plot([p["kd_steps"] for p in pts], [p["test_acc"] for p in pts], **style)
        if row["synthesizer"] not in REFERENCE_SYNTHS:
            ax_i.plot([p["images"] for p in pts], [p["test_acc"] for p in pts], **style)
    ax_k.set_xlabel("KD steps")
    ax_i.set_xlabel("images synthesized (pool size)")
    ax_i.set_xscale("log")
    for ax in (ax_k, ax_i):
        ax.set_ylabel("student top-1 (%)")
        ax.grid(alpha=0.3)
    ax_k.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.learning_curves", description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="`dfkd bench` output directories (their rows/*.json)")
    ap.add_argument("--only", action="append", help="fnmatch pattern on job labels (repeatable)")
    ap.add_argument("--plot", help="write the two-panel PNG here")
    args = ap.parse_args(argv)
    rows, notes = load_rows(args.dirs, args.only)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if not rows:
        print("error: no ok row with an evaluation in " + ", ".join(args.dirs)
              + (f" matching {args.only}" if args.only else ""), file=sys.stderr)
        return 2
    print(curve_table(rows))
    if args.plot:
        print(f"\nplot: {plot_curves(rows, args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
