"""Synthesis-step overhead of a regularizer (default: STARS), measured side by side.

For each synthesizer, two instances share the teacher and the spiking student: one bare,
one with the regularizer attached. Their synthesize() calls are interleaved (A, B, A, B,
...) so machine load hits both alike; the figure is the ratio of median seconds per call.
The issue's target for STARS is <= 1.15x.

    python -m benchmarks.speed [--synthesizers deepinversion cmi fast] [--batch-size 64]
        [--steps 5] [--repeats 5] [--teacher smallcnn --student spiking_smallcnn]
        [--regularizer stars] [--reg-set key=value ...] [--student-arg bn_weight=2.0] [--device cpu]
        [--image-size 32 --channels 1]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from baselines.config import parse_value
from baselines.hooks import RegularizerSet
from baselines.registry import REGULARIZERS, STUDENTS, SYNTHESIZERS, TEACHERS
from baselines.spec import DataSpec
from baselines.synthesizers.base import SynthesisSetup

#: config keys giving "inner steps per synthesize() call" for each built-in synthesizer
STEP_KEYS = {"deepinversion": {"iterations"}, "cmi": {"iterations"},
             "fast": {"steps", "warmup"}, "fast-nometa": {"steps", "warmup"}}


def _synth_cfg(name: str, batch_size: int, steps: int) -> dict:
    cfg = {"batch_size": batch_size}
    keys = STEP_KEYS.get(name, set())
    if "iterations" in keys:
        cfg["iterations"] = steps
    if "steps" in keys:
        cfg.update(steps=steps, warmup=0)  # adversarial term on, as after the warm-up
    return cfg


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued kernels, so that wall-clock timers measure the work
    (CUDA runs asynchronously); nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(synth_name: str, teacher, student, spec: DataSpec, reg_name: str, batch_size: int,
            steps: int, repeats: int, device: torch.device, reg_cfg: dict | None = None) -> dict:
    cfg = _synth_cfg(synth_name, batch_size, steps)
    cls = SYNTHESIZERS.get(synth_name)
    bare = cls(SynthesisSetup(teacher, student, spec, RegularizerSet(), device), dict(cfg))
    regs = RegularizerSet([REGULARIZERS.get(reg_name)(dict(reg_cfg or {}), name=reg_name)])
    regs.setup(teacher, student, spec)
    wrapped = cls(SynthesisSetup(teacher, student, spec, regs, device), dict(cfg))
    bare.synthesize(), wrapped.synthesize()  # warm-up (allocations, first-call costs)
    t_bare, t_wrapped = [], []
    parts: dict[str, dict[str, list[float]]] = {"bare": {}, "with": {}}
    for _ in range(repeats):
        for inst, times, tag in ((bare, t_bare, "bare"), (wrapped, t_wrapped, "with")):
            sync(device)
            t0 = time.perf_counter()
            res = inst.synthesize()
            sync(device)
            times.append(time.perf_counter() - t0)
            for k, v in res.timing.items():
                parts[tag].setdefault(k, []).append(v)
    mb, mw = statistics.median(t_bare), statistics.median(t_wrapped)
    return {"synthesizer": synth_name, "regularizer": reg_name, "bare_s_per_step": mb / steps,
            "with_s_per_step": mw / steps, "ratio": mw / mb, "repeats": repeats, "steps": steps,
            "batch_size": batch_size, "regularizer_config": dict(reg_cfg or {}),
            "parts_s_per_call": {tag: {k: statistics.median(v) for k, v in p.items()} for tag, p in parts.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthesizers", nargs="+", default=["deepinversion", "cmi", "fast"])
    ap.add_argument("--regularizer", default="stars")
    ap.add_argument("--reg-set", action="append", default=[], metavar="KEY=VALUE",
                    help="regularizer config override, e.g. tar_positions=0 (repeatable)")
    ap.add_argument("--student-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="student constructor argument, e.g. bn_weight=2.0 (the presets' student_args)")
    ap.add_argument("--teacher", default="smallcnn")
    ap.add_argument("--student", default="spiking_smallcnn")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    reg_cfg, student_args = {}, {}
    for flag, items, out in (("--reg-set", args.reg_set, reg_cfg), ("--student-arg", args.student_arg, student_args)):
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                ap.error(f"{flag} {item!r}: expected KEY=VALUE, e.g. tar_positions=0 / bn_weight=2.0")
            out[key.strip()] = parse_value(value.strip())
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    spec = DataSpec("speed", args.channels, args.image_size, args.classes,
                    (0.5,) * args.channels, (0.25,) * args.channels)
    teacher = TEACHERS.get(args.teacher)(args.channels, args.classes, args.image_size).to(device).eval()
    student = STUDENTS.get(args.student)(args.channels, args.classes, args.image_size, T=args.T,
                                         **student_args).to(device)
    rows = []
    print(f"{args.teacher} -> {args.student} (T={args.T}), batch {args.batch_size}, "
          f"{args.steps} inner steps per call, median of {args.repeats} interleaved calls, "
          f"device {device}, torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    if reg_cfg:
        print(f"{args.regularizer} overrides: {reg_cfg}")
    print(f"{'synthesizer':<15}{'bare s/step':>12}{'+' + args.regularizer + ' s/step':>16}{'ratio':>8}")
    for name in args.synthesizers:
        r = measure(name, teacher, student, spec, args.regularizer, args.batch_size, args.steps,
                    args.repeats, device, reg_cfg)
        rows.append(r)
        print(f"{name:<15}{r['bare_s_per_step']:>12.3f}{r['with_s_per_step']:>16.3f}{r['ratio']:>7.2f}x",
              flush=True)
        for tag, p in r["parts_s_per_call"].items():  # where a call's time went (median s per call)
            print(f"{'':<15}{tag + ':':<6}" + "  ".join(f"{k} {v:.2f}" for k, v in sorted(p.items())), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
