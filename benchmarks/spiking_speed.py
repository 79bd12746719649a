"""One training step of a spiking student, several ways, side by side on this machine.

    python -m benchmarks.spiking_speed [--threads 1] [--batch 64] [--T 4] [--repeats 7]
                                       [--student spiking_smallcnn] [--candidates] [--json OUT]
                                       [--device cpu|cuda]
    python -m benchmarks.spiking_speed --precision fp32,bf16 [...]   # run.precision instead
On ``--device cuda`` the timers wait for the device's queued kernels, and the compiled neuron
backends (a CPU path) fall back to SpikingJelly's own CUDA kernels, so B-F differ from A only
in the stem, the input size and the convolutions' memory layout (H200, session 9: all within
10% of A's 7 ms: a launch-bound step).

A step = forward + KD-style backward (sum of squared logits) + SGD step, on random
normalized images. Variants (same weights, copied from A):

  A  today's path: neuron_backend eager, encode_once False, 32x32 (fashion-mnist, padded)
  B  neuron_backend compiled + encode_once, 32x32
  C  compiled + encode_once, 28x28 (fashion-mnist-28)
  D  eager + encode_once, 28x28 (separates the compile gain from the input-size gain)
  E  neuron_backend compiled-cl (channels_last convolutions) + encode_once, 28x28
  F  compiled-cl + encode_once, 32x32
  --candidates adds two paths measured and not adopted (see the README):
  W  the whole student under torch.compile (inductor fuses BN, LIF and pooling around the
     convolutions, AOTAutograd generates the backward), eager neurons, 28x28
  X  W with channels_last convolutions

Timed interleaved (A, B, C, ... A, B, ...) so drift in the machine's load hits every
variant alike; the median over ``repeats`` rounds is reported, with its ratio to A. The
first step (inductor compile, or the on-disk cache's load) is excluded and printed. Spike
equality of B vs A is checked on one input in fp32; E's convolutions sum in another order,
so E vs D (eager, same input) is reported as a spike mismatch fraction and a logit
difference, at the start and after ``--drift-steps`` SGD steps of both on the same batches.

``--precision fp32,bf16`` times the variants of ``--variants`` (default: today's path A)
under each ``run.precision`` instead (:func:`baselines.precision.autocast` around the
training step, and an eval forward), interleaved the same way; ratios are to the first
variant at the first precision. ``--variants A,C`` puts the issue's baseline (A, fp32) beside
the path the evidence presets run (C) in each precision. On an AVX2-only AMD EPYC (no native
bf16) bf16 was ~10x slower.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from .speed import sync

VARIANTS = {  # name: (neuron_backend, encode_once, image size, label)
    "A": ("eager", False, 32, "eager, stem x T, 32x32 (today)"),
    "B": ("compiled", True, 32, "compiled + encode_once, 32x32"),
    "C": ("compiled", True, 28, "compiled + encode_once, 28x28"),
    "D": ("eager", True, 28, "eager + encode_once, 28x28"),
    "E": ("compiled-cl", True, 28, "compiled-cl + encode_once, 28x28"),
    "F": ("compiled-cl", True, 32, "compiled-cl + encode_once, 32x32"),
}
CANDIDATES = {
    "W": ("whole-model", True, 28, "whole model torch.compile, 28x28"),
    "X": ("whole-model-cl", True, 28, "W + channels_last, 28x28"),
}


def build(student: str, T: int, backend: str, once: bool, size: int, state: dict | None):
    from baselines.registry import STUDENTS

    torch.manual_seed(0)
    kw = {} if backend.startswith("whole-model") else {"neuron_backend": backend}
    m = STUDENTS.get(student)(in_channels=1, num_classes=10, image_size=size, T=T, **kw)
    if state is not None:
        m.load_state_dict(state)
    m.encode_once = once
    if backend.startswith("whole-model"):
        m = WholeModel(m, channels_last=backend.endswith("-cl"))
    return m.train()


def _body(model, x):
    h = model.run_stem(x)
    for stage in model.stages:
        h = stage(h)
    return model.fc(model.pool(h)).mean(0)


class WholeModel(torch.nn.Module):
    """A candidate, not a backend: the student's forward (stem, stages, head) as one
    ``torch.compile`` graph. The neuron reset stays outside (SpikingJelly's reset_net keeps a
    module cache that would recompile the graph on its second call); forward hooks added
    after compilation would not be seen, so a backend built on it would have to fall back."""

    def __init__(self, model, channels_last: bool = False) -> None:
        super().__init__()
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False  # retain_graph probes, as in neuron_backend
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.channels_last = channels_last
        self.body = torch.compile(_body)

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.model)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.body(self.model, x)


def step(model, opt, x, y=None) -> None:
    opt.zero_grad(set_to_none=True)
    out = model(x)
    loss = out.pow(2).mean() if y is None else torch.nn.functional.cross_entropy(out, y)
    loss.backward()
    opt.step()


def spike_diff(a, b, x) -> tuple[float, float, list[float]]:
    """(fraction of spikes differing, max |logit diff|, per-layer fractions) of models a, b
    on x (no grad, fp32)."""
    with torch.no_grad():
        oa, ob = a.forward_features(x, record_spiking=True), b.forward_features(x, record_spiking=True)
    per = [float((p.spikes != q.spikes).float().mean()) for p, q in zip(oa.spiking, ob.spiking)]
    diff = sum(int((p.spikes != q.spikes).sum()) for p, q in zip(oa.spiking, ob.spiking))
    total = sum(p.spikes.numel() for p in oa.spiking)
    return diff / max(total, 1), float((oa.logits - ob.logits).abs().max()), per


def drift(student: str, T: int, size: int, batch: int, steps: int, lr: float = 0.05,
          backends: tuple[str, str] = ("eager", "compiled-cl"), seed: int = 0) -> list[dict]:
    """Train two copies (``backends``, same weights, encode_once) with SGD + cross-entropy
    on the same random batches; after 0, 1, ..., ``steps`` steps: the spike mismatch
    fraction, the max |logit diff| on a fixed probe batch and the largest weight difference."""
    g = torch.Generator().manual_seed(seed)
    a = build(student, T, backends[0], True, size, None)
    b = build(student, T, backends[1], True, size, a.state_dict())
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m in (a, b)]
    probe = torch.randn(batch, 1, size, size, generator=g)
    rows = []
    for k in range(steps + 1):
        frac, logit, per = spike_diff(a, b, probe)
        with torch.no_grad():
            wdiff = max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters()))
        rows.append({"step": k, "spike_mismatch": frac, "max_logit_diff": logit, "per_layer": per,
                     "max_weight_diff": wdiff})
        if k < steps:
            x = torch.randn(batch, 1, size, size, generator=g)
            y = torch.randint(0, 10, (batch,), generator=g)
            for m, o in zip((a, b), opts):
                step(m, o, x, y)
    return rows


def _inputs(batch: int, dev: torch.device) -> dict[int, torch.Tensor]:
    """The timed batch by image size: random 32x32 images and their 28x28 centre crop."""
    x32 = torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    return {32: x32.to(dev), 28: x32[:, :, 2:30, 2:30].contiguous().to(dev)}


def run(args) -> dict:
    from torch._dynamo.utils import counters

    torch.set_num_threads(args.threads)
    variants = {**VARIANTS, **(CANDIDATES if args.candidates else {})}
    ref = build(args.student, args.T, "eager", False, 32, None)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    models, opts, inputs, warm = {}, {}, {}, {}
    dev = torch.device(args.device)
    x = _inputs(args.batch, dev)
    for k, (backend, once, size, _) in variants.items():
        models[k] = build(args.student, args.T, backend, once, size, state).to(dev)
        opts[k] = torch.optim.SGD(models[k].parameters(), lr=1e-6, momentum=0.9)
        inputs[k] = x[size]
    equal = spike_diff(models["A"], models["B"], x[32])[0] == 0
    e_vs_d = spike_diff(models["D"], models["E"], x[28])
    for k in variants:  # warm-up step (compile / cache load): timed apart
        sync(dev)
        t0 = time.perf_counter()
        step(models[k], opts[k], inputs[k])
        sync(dev)
        warm[k] = time.perf_counter() - t0
    graphs = counters["stats"]["unique_graphs"]
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k in variants:
            sync(dev)
            t0 = time.perf_counter()
            step(models[k], opts[k], inputs[k])
            sync(dev)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = drift(args.student, args.T, 28, args.batch, args.drift_steps) if args.drift_steps else []
    return {
        "machine": _machine(dev),
        "student": args.student, "batch": args.batch, "T": args.T, "repeats": args.repeats,
        "median_s": med, "ratio_to_A": {k: med[k] / med["A"] for k in med},
        "first_step_s": warm, "times_s": times,
        "graphs_compiled_while_timed": counters["stats"]["unique_graphs"] - graphs,
        "spikes_B_equal_A": equal,
        "E_vs_D": {"spike_mismatch": e_vs_d[0], "max_logit_diff": e_vs_d[1], "per_layer": e_vs_d[2]},
        "drift": rows, "labels": {k: v[3] for k, v in variants.items()},
    }


def _machine(dev) -> dict:
    m = {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
         "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(dev)}
    if torch.device(dev).type == "cuda":
        m["device"] = torch.cuda.get_device_name(dev)
    return m


def table(r: dict) -> str:
    m = r["machine"]
    lines = [f"spiking student step (fwd + bwd + SGD): {r['student']}, batch {r['batch']}, T={r['T']}, "
             f"median of {r['repeats']} interleaved rounds",
             f"machine: {m['processor']} | {m['platform']} | torch {m['torch']} | threads {m['threads']}"
             f" | device {m['device']}",
             "",
             f"{'':2} {'variant':34} {'median s':>9} {'x A':>6} {'A / x':>6} {'first step s':>13}"]
    for k, label in r["labels"].items():
        lines.append(f"{k:2} {label:34} {r['median_s'][k]:9.3f} {r['ratio_to_A'][k]:6.2f} "
                     f"{1 / r['ratio_to_A'][k]:6.2f} {r['first_step_s'][k]:13.2f}")
    ed = r["E_vs_D"]
    lines += ["", "(first step includes the one-off torch.compile, or loading its on-disk cache; "
              f"graphs compiled during the timed rounds: {r['graphs_compiled_while_timed']})",
              f"spikes B == A (same weights, same 32x32 input, fp32): {r['spikes_B_equal_A']}",
              f"E vs D (channels_last convolutions sum in another order), same weights and input: "
              f"spike mismatch {ed['spike_mismatch']:.2e} "
              f"(per layer {', '.join(f'{v:.1e}' for v in ed['per_layer'])}), "
              f"max |logit diff| {ed['max_logit_diff']:.2e}"]
    if r["drift"]:
        lines.append("E vs D while both train (SGD lr 0.05, momentum 0.9, cross-entropy, same batches):")
        lines += [f"  after {d['step']:3d} steps: spike mismatch {d['spike_mismatch']:.2e}, max |logit diff| "
                  f"{d['max_logit_diff']:.2e}, max |weight diff| {d['max_weight_diff']:.2e}"
                  for d in r["drift"] if d["step"] in (0, 1, len(r["drift"]) - 1) or d["step"] % 5 == 0]
    return "\n".join(lines)


def precision_variants(names: str) -> list[str]:
    """The variant keys of ``--variants`` ("A,C"), checked against :data:`VARIANTS`."""
    keys = [k.strip().upper() for k in names.split(",") if k.strip()]
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown or not keys:
        raise SystemExit(f"--variants {names!r}: unknown variant(s) {unknown}; known: "
                         f"{', '.join(f'{k} ({v[3]})' for k, v in VARIANTS.items())}")
    return keys


def run_precision(args) -> dict:
    """Training step and eval forward of each variant of ``args.variants`` under each
    precision of ``args.precision`` (same weights); ratios to the first (variant, precision)."""
    from baselines.errors import ConfigError
    from baselines.precision import autocast, check_precision

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    precs = [p.strip() for p in args.precision.split(",") if p.strip()]
    try:
        for p in precs:
            check_precision(p, dev)
    except ConfigError as e:
        raise SystemExit(f"--precision {args.precision!r}: {e}") from None
    keys = precision_variants(args.variants)
    ref = build(args.student, args.T, "eager", False, 32, None)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    inputs = _inputs(args.batch, dev)
    rows = [(v, p) for v in keys for p in precs]
    labels = {f"{v} {p}": f"{VARIANTS[v][3]}, {p}" for v, p in rows}
    models, opts, xs = {}, {}, {}
    for v, p in rows:
        backend, once, size, _ = VARIANTS[v]
        models[v, p] = build(args.student, args.T, backend, once, size, state).to(dev)
        opts[v, p] = torch.optim.SGD(models[v, p].parameters(), lr=1e-6, momentum=0.9)
        xs[v, p] = inputs[size]
    train = {r: [] for r in rows}
    evals = {r: [] for r in rows}
    for r in range(args.repeats + 1):  # round 0 is a warm-up (and the compile of C-F)
        for v, p in rows:
            model, x = models[v, p], xs[v, p]
            sync(dev)
            t0 = time.perf_counter()
            with autocast(p, dev.type):
                step(model, opts[v, p], x)
            sync(dev)
            t1 = time.perf_counter()
            with torch.no_grad(), autocast(p, dev.type, "eval"):
                model.eval()(x)
            sync(dev)
            model.train()
            if r:
                train[v, p].append(t1 - t0)
                evals[v, p].append(time.perf_counter() - t1)
    med = {f"{v} {p}": statistics.median(train[v, p]) for v, p in rows}
    med_e = {f"{v} {p}": statistics.median(evals[v, p]) for v, p in rows}
    base = f"{rows[0][0]} {rows[0][1]}"
    return {"machine": _machine(dev),
            "student": args.student, "batch": args.batch, "T": args.T, "repeats": args.repeats,
            "labels": labels, "baseline": base, "train_median_s": med, "eval_median_s": med_e,
            "train_ratio": {k: med[base] / med[k] for k in med},
            "eval_ratio": {k: med_e[base] / med_e[k] for k in med_e}}


def precision_table(r: dict) -> str:
    m = r["machine"]
    base = r["baseline"]
    lines = [f"spiking student under run.precision (autocast): {r['student']}, batch {r['batch']}, "
             f"T={r['T']}, median of {r['repeats']} interleaved rounds",
             f"machine: {m['processor']} | {m['platform']} | torch {m['torch']} | threads {m['threads']}"
             f" | device {m['device']}", "",
             f"{'':8} {'variant, precision':40} {'train step s':>13} {base + ' / x':>14} "
             f"{'eval fwd s':>11} {base + ' / x':>14}"]
    for k, label in r["labels"].items():
        lines.append(f"{k:8} {label:40} {r['train_median_s'][k]:13.3f} {r['train_ratio'][k]:14.2f} "
                     f"{r['eval_median_s'][k]:11.3f} {r['eval_ratio'][k]:14.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.spiking_speed", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--student", default="spiking_smallcnn")
    p.add_argument("--candidates", action="store_true",
                   help="also time the whole-model torch.compile candidates W, X (slow first compile)")
    p.add_argument("--drift-steps", type=int, default=10,
                   help="SGD steps of the E vs D drift check (0: skip it)")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the numbers as JSON")
    p.add_argument("--device", default="cpu",
                   help="where the steps run (cpu, cuda): timers wait for the device's queued kernels")
    p.add_argument("--precision", metavar="LIST", default=None,
                   help="compare run.precision values instead, e.g. fp32,bf16 (the first is the baseline)")
    p.add_argument("--variants", metavar="LIST", default="A",
                   help="with --precision: the variants to time in each precision, e.g. A,C "
                        "(the first variant at the first precision is the baseline)")
    args = p.parse_args(argv)
    r = run_precision(args) if args.precision else run(args)
    print(precision_table(r) if args.precision else table(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
