"""How much does a shifted random stream alone move a job's accuracy? (the paired design's floor)

A with/without pair of one seed shares every random draw (KD batches, augmentation,
DeepInversion's jitter, the next batch's noise) only until one run draws a number the other
does not. Before the fix of this probe's commit, a run with a regularizer did so after its
first synthesis batch (the start diagnostics sampled a pool batch and TAR sites from torch's
global stream) and at every TAR evaluation; from then on the two runs of a "pair" differed in
every random choice, not only in the regularizer's effect. This probe re-runs one job of a
preset with a single extra draw from the global stream right after its first synthesize()
call, and prints its accuracy next to the job's row: the difference is what an inert
treatment would have "measured" under the old design.

    python -m benchmarks.rng_shift --preset evidence --only '*/deepinversion/seed1' \\
        --rows results/evidence --out results/rng_shift
"""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from baselines.registry import SYNTHESIZERS

from .job import run_job
from .jobs import expand, filter_jobs
from .preset import load_preset
from .store import read_rows


@contextlib.contextmanager
def one_extra_draw_after_first_synthesis(synth_name: str):
    """Patch the synthesizer class so that its first synthesize() call is followed by one
    draw from torch's global generator (a shift of every later random number)."""
    cls = SYNTHESIZERS.get(synth_name)
    real = cls.synthesize
    done = []

    def synthesize(self, *a, **kw):
        out = real(self, *a, **kw)
        if self.calls == 1 and not done:  # the run's first call (a resumed run has more)
            done.append(float(torch.rand(())))
        return out

    cls.synthesize = synthesize
    try:
        yield done
    finally:
        cls.synthesize = real


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="evidence")
    ap.add_argument("--only", action="append", required=True, metavar="PATTERN",
                    help="job label pattern(s), as for dfkd bench --only")
    ap.add_argument("--rows", help="the benchmark directory holding the unshifted rows (to compare)")
    ap.add_argument("--out", default="results/rng_shift", help="where the shifted jobs write (resumable)")
    args = ap.parse_args(argv)
    jobs = filter_jobs(expand(load_preset(args.preset)), args.only)
    if not jobs:
        ap.error(f"no job of preset {args.preset!r} matches {args.only}; see dfkd bench --preset "
                 f"{args.preset} --dry-run for the labels")
    base = read_rows(args.rows) if args.rows else {}
    out = Path(args.out)
    for job in jobs:
        if job.kind != "distill":
            continue
        jdir = out / "jobs" / job.job_id
        jdir.mkdir(parents=True, exist_ok=True)
        with one_extra_draw_after_first_synthesis(job.run["synthesizer"]) as drawn:
            row = run_job(job.cfg, str(jdir))
        ref = base.get(job.job_id)
        ref_acc = ref.student_acc if ref is not None else None
        rec = {"job": job.label, "job_id": job.job_id, "shifted_acc": row.get("student_acc"),
               "unshifted_acc": ref_acc, "status": row.get("status"), "extra_draw_taken": bool(drawn),
               "git_commit": row.get("git_commit")}
        if ref_acc is not None and row.get("student_acc") is not None:
            rec["difference"] = row["student_acc"] - ref_acc
        (out / f"{job.job_id}.json").write_text(json.dumps(rec, indent=2) + "\n")
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
