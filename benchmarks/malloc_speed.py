"""The spiking student's training step with glibc's own malloc settings and with
:func:`baselines.allocator.tune_malloc`, side by side on this machine.

    python -m benchmarks.malloc_speed [--backend compiled] [--size 28] [--rounds 4] [--steps 9]
                                      [--threads 1] [--batch 64] [--T 4] [--json OUT]

malloc settings are per process and act from the start, so each setting runs in its own
child process (``DFKD_MALLOC=default`` / ``tuned``), alternating ``--rounds`` times so that
drift in the machine's load hits both alike. A child builds the student as
``benchmarks.spiking_speed`` does (``--backend``: ``compiled`` is what the evidence presets
run, ``compiled-cl`` variant E, ``eager`` the session-2 path with ``--size 32 --no-once``),
takes two warm-up steps, then times ``--steps`` steps (forward + backward + SGD), with the
system time and minor page faults of each from ``getrusage``. Printed per setting: the median
step, the mean system time and page faults per step, the peak RSS; and the ratio of the
medians. Pin it (``taskset -c 0``) for a one-core figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

#: the two values of DFKD_MALLOC compared
CHOICES = ("default", "tuned")


def child(args) -> dict:
    """One process's figures (called with DFKD_MALLOC set by the parent)."""
    from baselines.allocator import malloc_state, tune_malloc

    tune_malloc()
    import torch

    from baselines.provenance import peak_rss_mb

    from .spiking_speed import _inputs, build, step

    torch.set_num_threads(args.threads)
    model = build(args.student, args.T, args.backend, not args.no_once, args.size, None)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    x = _inputs(args.batch, torch.device("cpu"))[args.size]
    for _ in range(2):
        step(model, opt, x)
    times, sys_s, faults = [], [], []
    for _ in range(args.steps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step(model, opt, x)
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        times.append(t1 - t0)
        sys_s.append(r1.ru_stime - r0.ru_stime)
        faults.append(r1.ru_minflt - r0.ru_minflt)
    return {"malloc": malloc_state(), "step_s": times, "sys_s": sys_s, "minor_faults": faults,
            "peak_rss_mb": peak_rss_mb()}


def run(args) -> dict:
    per = {s: {"step_s": [], "sys_s": [], "minor_faults": [], "peak_rss_mb": [], "malloc": None} for s in CHOICES}
    argv = [sys.executable, "-m", "benchmarks.malloc_speed", "--child", "--backend", args.backend,
            "--size", str(args.size), "--steps", str(args.steps), "--threads", str(args.threads),
            "--batch", str(args.batch), "--T", str(args.T), "--student", args.student]
    if args.no_once:
        argv.append("--no-once")
    for r in range(args.rounds):
        for s in (CHOICES if r % 2 == 0 else CHOICES[::-1]):
            env = {**os.environ, "DFKD_MALLOC": s}
            out = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode != 0 or not line:
                raise SystemExit(f"child ({s}) failed:\n{out.stderr[-2000:]}")
            got = json.loads(line[-1])
            for k in ("step_s", "sys_s", "minor_faults"):
                per[s][k] += got[k]
            per[s]["peak_rss_mb"].append(got["peak_rss_mb"])
            per[s]["malloc"] = got["malloc"]
    summary = {s: {"median_step_s": statistics.median(v["step_s"]), "sys_s_per_step": statistics.fmean(v["sys_s"]),
                   "minor_faults_per_step": statistics.fmean(v["minor_faults"]),
                   "peak_rss_mb": max(v["peak_rss_mb"]), "malloc": v["malloc"], "steps": len(v["step_s"])}
               for s, v in per.items()}
    summary["default_over_tuned"] = summary["default"]["median_step_s"] / summary["tuned"]["median_step_s"]
    import torch

    from baselines.provenance import cpu_identity

    machine = f"{cpu_identity()} | {platform.platform(terse=True)} | torch {torch.__version__}"
    return {"machine": machine, "backend": args.backend, "size": args.size,
            "encode_once": not args.no_once, "threads": args.threads, "batch": args.batch, "T": args.T,
            "rounds": args.rounds, "summary": summary, "raw": per}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="compiled", choices=("eager", "compiled", "compiled-cl"))
    p.add_argument("--size", type=int, default=28, choices=(28, 32))
    p.add_argument("--no-once", action="store_true", help="compute the stem T times (the session-2 path)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--student", default="spiking_smallcnn")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    res = run(args)
    s = res["summary"]
    print(f"spiking student step (fwd + bwd + SGD): {args.student}, backend {args.backend}, {args.size}x{args.size}, "
          f"batch {args.batch}, T={args.T}, {args.threads} thread(s); {args.rounds} alternating child processes "
          f"per setting, {args.steps} timed steps each")
    print(f"machine: {res['machine']}")
    print(f"{'malloc':<9}{'median s':>10}{'sys s/step':>12}{'faults/step':>13}{'peak RSS MB':>13}")
    for name in CHOICES:
        v = s[name]
        print(f"{name:<9}{v['median_step_s']:>10.3f}{v['sys_s_per_step']:>12.3f}{v['minor_faults_per_step']:>13.0f}"
              f"{v['peak_rss_mb']:>13.0f}")
    print(f"default / tuned (median step): {s['default_over_tuned']:.2f}x; tuned = {s['tuned']['malloc']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
