"""One training step of a spiking student, four ways, side by side on this machine.

    python -m benchmarks.spiking_speed [--threads 1] [--batch 64] [--T 4] [--repeats 7]
                                       [--student spiking_smallcnn] [--json OUT]
    python -m benchmarks.spiking_speed --precision fp32,bf16 [...]   # run.precision instead

A step = forward + KD-style backward (sum of squared logits) + SGD step, on random
normalized images. Variants (same weights, copied from A):

  A  today's path: neuron_backend eager, encode_once False, 32x32 (fashion-mnist, padded)
  B  neuron_backend compiled + encode_once, 32x32
  C  compiled + encode_once, 28x28 (fashion-mnist-28)
  D  eager + encode_once, 28x28 (separates the compile gain from the input-size gain)

Timed interleaved (A, B, C, D, A, B, ...) so drift in the machine's load hits every variant
alike; the median over ``repeats`` rounds is reported, with its ratio to A. The compiled
variants' first step (inductor compile, or the on-disk cache's load) is excluded from the
timing and printed. Spike equality of B vs A is checked on one input in fp32.

``--precision fp32,bf16`` times today's path (A) under each ``run.precision`` instead
(:func:`baselines.precision.autocast` around the training step, and an eval forward),
interleaved the same way. On an AVX2-only AMD EPYC (no native bf16) bf16 was ~10x slower.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

VARIANTS = {  # name: (neuron_backend, encode_once, image size, label)
    "A": ("eager", False, 32, "eager, stem x T, 32x32 (today)"),
    "B": ("compiled", True, 32, "compiled + encode_once, 32x32"),
    "C": ("compiled", True, 28, "compiled + encode_once, 28x28"),
    "D": ("eager", True, 28, "eager + encode_once, 28x28"),
}


def build(student: str, T: int, backend: str, once: bool, size: int, state: dict | None):
    from baselines.registry import STUDENTS

    torch.manual_seed(0)
    m = STUDENTS.get(student)(in_channels=1, num_classes=10, image_size=size, T=T, neuron_backend=backend)
    if state is not None:
        m.load_state_dict(state)
    m.encode_once = once
    return m.train()


def step(model, opt, x) -> None:
    opt.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    opt.step()


def spikes_equal(a, b, x) -> tuple[bool, float]:
    """(all spikes identical, fraction differing) of models a and b on x (no grad, fp32)."""
    with torch.no_grad():
        sa = a.forward_features(x, record_spiking=True).spiking
        sb = b.forward_features(x, record_spiking=True).spiking
    diff = sum(int((p.spikes != q.spikes).sum()) for p, q in zip(sa, sb))
    total = sum(p.spikes.numel() for p in sa)
    return diff == 0, diff / max(total, 1)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    ref = build(args.student, args.T, "eager", False, 32, None)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    models, opts, inputs, warm = {}, {}, {}, {}
    g = torch.Generator().manual_seed(1)
    x32 = torch.randn(args.batch, 1, 32, 32, generator=g)
    x28 = x32[:, :, 2:30, 2:30].contiguous()
    for k, (backend, once, size, _) in VARIANTS.items():
        models[k] = build(args.student, args.T, backend, once, size, state)
        opts[k] = torch.optim.SGD(models[k].parameters(), lr=1e-6, momentum=0.9)
        inputs[k] = x32 if size == 32 else x28
    # spike equality B vs A on the same input and weights, before any step
    equal, frac = spikes_equal(models["A"], models["B"], x32)
    for k in VARIANTS:  # warm-up step (compile / cache load for B, C): timed apart
        t0 = time.perf_counter()
        step(models[k], opts[k], inputs[k])
        warm[k] = time.perf_counter() - t0
    times = {k: [] for k in VARIANTS}
    for _ in range(args.repeats):
        for k in VARIANTS:
            t0 = time.perf_counter()
            step(models[k], opts[k], inputs[k])
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "machine": {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "student": args.student, "batch": args.batch, "T": args.T, "repeats": args.repeats,
        "median_s": med, "ratio_to_A": {k: med[k] / med["A"] for k in med},
        "first_step_s": warm, "times_s": times,
        "spikes_B_equal_A": equal, "spikes_B_vs_A_differing_fraction": frac,
        "labels": {k: v[3] for k, v in VARIANTS.items()},
    }


def table(r: dict) -> str:
    m = r["machine"]
    lines = [f"spiking student step (fwd + bwd + SGD): {r['student']}, batch {r['batch']}, T={r['T']}, "
             f"median of {r['repeats']} interleaved rounds",
             f"machine: {m['processor']} | {m['platform']} | torch {m['torch']} | threads {m['threads']}",
             "",
             f"{'':2} {'variant':34} {'median s':>9} {'x A':>6} {'first step s':>13}"]
    for k, label in r["labels"].items():
        lines.append(f"{k:2} {label:34} {r['median_s'][k]:9.3f} {r['ratio_to_A'][k]:6.2f} {r['first_step_s'][k]:13.2f}")
    lines += ["", "(first step of B/C includes the one-off torch.compile, or loading its on-disk cache)",
              f"spikes B == A (same weights, same 32x32 input, fp32): {r['spikes_B_equal_A']} "
              f"(differing fraction {r['spikes_B_vs_A_differing_fraction']:.2e})"]
    return "\n".join(lines)


def run_precision(args) -> dict:
    """Variant A's training step and eval forward under each precision of ``args.precision``."""
    from baselines.precision import autocast

    torch.set_num_threads(args.threads)
    precs = [p.strip() for p in args.precision.split(",") if p.strip()]
    ref = build(args.student, args.T, "eager", False, 32, None)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    x = torch.randn(args.batch, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    models = {p: build(args.student, args.T, "eager", False, 32, state) for p in precs}
    opts = {p: torch.optim.SGD(models[p].parameters(), lr=1e-6, momentum=0.9) for p in precs}
    train = {p: [] for p in precs}
    evals = {p: [] for p in precs}
    for r in range(args.repeats + 1):  # round 0 is a warm-up
        for p in precs:
            t0 = time.perf_counter()
            with autocast(p, "cpu"):
                step(models[p], opts[p], x)
            t1 = time.perf_counter()
            with torch.no_grad(), autocast(p, "cpu", "eval"):
                models[p].eval()(x)
            models[p].train()
            if r:
                train[p].append(t1 - t0)
                evals[p].append(time.perf_counter() - t1)
    med = {p: statistics.median(v) for p, v in train.items()}
    med_e = {p: statistics.median(v) for p, v in evals.items()}
    return {"machine": {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
                        "torch": torch.__version__, "threads": torch.get_num_threads()},
            "student": args.student, "batch": args.batch, "T": args.T, "repeats": args.repeats,
            "train_median_s": med, "eval_median_s": med_e,
            "train_ratio_to_fp32": {p: med[p] / med[precs[0]] for p in precs},
            "eval_ratio_to_fp32": {p: med_e[p] / med_e[precs[0]] for p in precs}}


def precision_table(r: dict) -> str:
    m = r["machine"]
    first = next(iter(r["train_median_s"]))
    lines = [f"spiking student under run.precision (variant A, CPU autocast): {r['student']}, batch {r['batch']}, "
             f"T={r['T']}, median of {r['repeats']} interleaved rounds",
             f"machine: {m['processor']} | {m['platform']} | torch {m['torch']} | threads {m['threads']}", "",
             f"{'precision':10} {'train step s':>13} {'x ' + first:>8} {'eval fwd s':>11} {'x ' + first:>8}"]
    for p in r["train_median_s"]:
        lines.append(f"{p:10} {r['train_median_s'][p]:13.3f} {r['train_ratio_to_fp32'][p]:8.2f} "
                     f"{r['eval_median_s'][p]:11.3f} {r['eval_ratio_to_fp32'][p]:8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.spiking_speed", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--student", default="spiking_smallcnn")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the numbers as JSON")
    p.add_argument("--precision", metavar="LIST", default=None,
                   help="compare run.precision values instead, e.g. fp32,bf16 (the first is the baseline)")
    args = p.parse_args(argv)
    r = run_precision(args) if args.precision else run(args)
    print(precision_table(r) if args.precision else table(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
