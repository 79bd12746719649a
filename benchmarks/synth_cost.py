"""Synthesis cost per image of every registered synthesizer, measured side by side.

At the ``evidence`` preset's setting (fashion-mnist-28, its teacher -> spiking student pair,
T, student arguments, neuron backend, batch size and per-method budgets, read from
``benchmarks/presets/evidence.toml``), one instance of each synthesizer times
``--repeats`` synthesize() calls, the methods interleaved round by round so machine load
hits them alike, and the figure is the median seconds per call divided by the images the
call adds to the pool. The teacher is *randomly initialized* (no training: timing only).

Budgets of the methods the evidence preset does not run (stated in the output): the
generator methods DAFL / ZSKT / DFAD / DFQ take paper.toml's one generator step per call
(one step cannot be scaled down); NAYER takes paper.toml's 30 generator steps halved to 15,
as Fast's 10 inner steps (paper) are 5 at the evidence budget; fast-nometa takes Fast's
budget. Every adversarial term is on (warm-up 0: the cost after the warm-up epochs), and
the gradient probe runs at the first step of each call, as in a run
(``distill.grad_probe_every = 1``). ``real`` adds a random stand-in of the training set
(60,000 uint8 images) in one call, as its ``batch_size = 0`` budget does. For the generator
methods KD draws fresh generator images at KD time (``kd_source = "generator"``); that cost
is distillation time and is not counted here.

    python -m benchmarks.synth_cost [--repeats 1] [--threads 1] [--only dfq nayer]
        [--batch-size 64] [--max-steps N] [--real-images 60000] [--neuron-backend compiled]
        [--note "CPU shared with ..."] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import torch

from baselines.hooks import RegularizerSet
from baselines.registry import STUDENTS, SYNTHESIZERS, TEACHERS
from baselines.synthesizers.base import SynthesisSetup

from .data.fashion_mnist import spec as fashion_spec
from .preset import load_preset

#: budgets of the synthesizers the evidence preset does not run (see the module docstring)
EXTRA_BUDGETS: dict[str, dict[str, Any]] = {
    "dafl": {"iterations": 1}, "zskt": {"iterations": 1}, "dfad": {"iterations": 1},
    "dfq": {"iterations": 1}, "nayer": {"g_steps": 15},
}
#: which config key holds a method's inner steps per call
STEP_KEYS = ("iterations", "g_steps", "steps")
TRAINING_SET = 60000  # Fashion-MNIST's training images (the stand-in for ``real``)


def budgets(names: list[str], batch_size: int | None, max_steps: int | None) -> dict[str, dict[str, Any]]:
    """Per-synthesizer config: the evidence preset's budget, else :data:`EXTRA_BUDGETS`."""
    preset = load_preset("evidence")
    distill_batch = int(preset.data["distill"]["batch_size"])
    out = {}
    for name in names:
        b = preset.data.get("budget", {})
        source = b.get(name, b.get("fast", {}) if name == "fast-nometa" else {})
        cfg = dict(source.get("fast" if name == "fast-nometa" else name, {}))
        cfg.update(EXTRA_BUDGETS.get(name, {}))
        if name != "real":
            cfg.setdefault("batch_size", distill_batch)
            if batch_size:
                cfg["batch_size"] = batch_size
        if "warmup" in SYNTHESIZERS.get(name).Config.__dataclass_fields__:
            cfg["warmup"] = 0  # adversarial term on: the cost after the warm-up
        if max_steps:
            for key in STEP_KEYS:
                if key in cfg:
                    cfg[key] = min(int(cfg[key]), max_steps)
            if name.startswith("fast") and "steps" not in cfg:
                cfg["steps"] = max_steps
        out[name] = cfg
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def inner_steps(syn) -> int:
    cfg = syn.cfg
    if hasattr(cfg, "resolved"):  # Fast: the preset's k
        return int(cfg.resolved()[0])
    return next((int(getattr(cfg, k)) for k in STEP_KEYS if hasattr(cfg, k)), 0)


def build_models(args, spec, run: dict[str, Any], pair: str, T: int, batch: int):
    teacher_name, student_name = pair.split(":")
    torch.manual_seed(0)
    teacher = TEACHERS.get(teacher_name)(spec.channels, spec.num_classes, spec.image_size).eval()
    backend = args.neuron_backend or run.get("neuron_backend", "eager")
    student = STUDENTS.get(student_name)(
        in_channels=spec.channels, num_classes=spec.num_classes, image_size=spec.image_size, T=T,
        **({"neuron_backend": backend} if backend != "eager" else {}), **run.get("student_args", {}))
    # first-call costs (a compiled neuron recurrence) are paid here, not by the first method
    x = torch.rand(batch, *spec.shape, requires_grad=True)
    (teacher(x).sum() + student(x).sum()).backward()
    student.zero_grad(set_to_none=True)
    return teacher, student, teacher_name, student_name, backend


def measure(args) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    preset = load_preset("evidence")
    run, bench = preset.data["run"], preset.bench
    names = list(args.only or SYNTHESIZERS.names())
    cfgs = budgets(names, args.batch_size, args.max_steps)
    spec = fashion_spec(pad=0)  # fashion-mnist-28, no files needed
    assert bench["datasets"] == [spec.name], bench["datasets"]
    batch = args.batch_size or int(preset.data["distill"]["batch_size"])
    teacher, student, tname, sname, backend = build_models(args, spec, run, bench["pairs"][0], int(bench["T"]), batch)
    real = (torch.randint(0, 256, (args.real_images, *spec.shape), dtype=torch.uint8),
            torch.randint(0, spec.num_classes, (args.real_images,)))
    def make(name: str):
        setup = SynthesisSetup(teacher, student, spec, RegularizerSet(), real=real if name == "real" else None)
        return SYNTHESIZERS.get(name)(setup, dict(cfgs[name]))

    synths = {name: make(name) for name in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    images: dict[str, int] = {}
    for rnd in range(args.repeats):
        for name in names:
            if name == "real" and rnd:  # its first call adds the whole set, later ones nothing
                synths[name] = make(name)
            syn = synths[name]
            t0 = time.perf_counter()
            res = syn.synthesize()
            times[name].append(time.perf_counter() - t0)
            images[name] = len(res.targets)
    rows = []
    for name in names:
        s = statistics.median(times[name])
        rows.append({"synthesizer": name, "images_per_call": images[name], "inner_steps": inner_steps(synths[name]),
                     "s_per_call": s, "s_per_image": s / max(1, images[name]), "calls": len(times[name]),
                     "config": cfgs[name]})
    meta = {"teacher": f"{tname} (randomly initialized, untrained: timing only)", "student": sname,
            "T": int(bench["T"]), "neuron_backend": backend, "student_args": run.get("student_args", {}),
            "dataset": spec.name, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
            "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, "
                       f"{platform.system()} {platform.release()}, torch {torch.__version__}",
            "note": args.note}
    return rows, meta


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"synthesis cost per image at the evidence budgets: {meta['dataset']}, {meta['teacher']} -> "
             f"{meta['student']} (T={meta['T']}, {meta['neuron_backend']} neurons, {meta['student_args']})",
             f"median of {meta['repeats']} call(s) per method, interleaved; torch threads {meta['torch_threads']}; "
             f"{meta['machine']}"]
    if meta["note"]:
        lines.append(f"note: {meta['note']}")
    lines.append(f"{'synthesizer':<15}{'images/call':>12}{'steps/call':>11}{'s/call':>10}{'ms/image':>10}  budget")
    for r in rows:
        lines.append(f"{r['synthesizer']:<15}{r['images_per_call']:>12}{r['inner_steps']:>11}{r['s_per_call']:>10.3f}"
                     f"{1000 * r['s_per_image']:>10.3f}  {r['config']}")
    lines.append("adversarial terms on (warm-up 0); gradient probe at each call's first step as in a run; "
                 "generator methods' KD images (drawn at KD time) not counted; real: random stand-in images.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per synthesizer (median reported)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these synthesizers (default: every registered one)")
    ap.add_argument("--batch-size", type=int, default=0, help="override every batch size (0: the budgets')")
    ap.add_argument("--max-steps", type=int, default=0, help="cap inner steps per call (0: the budgets')")
    ap.add_argument("--real-images", type=int, default=TRAINING_SET, help="size of real's stand-in training set")
    ap.add_argument("--neuron-backend", choices=["eager", "compiled"], help="default: the preset's")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (evidence workers: 1)")
    ap.add_argument("--note", default="", help="a line printed with the figures (e.g. machine load)")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, meta = measure(args)
    print(report(rows, meta), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
