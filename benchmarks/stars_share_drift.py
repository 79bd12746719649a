"""How the gradient shares of STARS' terms drift *within* one synthesize() call.

Under ``stars.weighting = "grad-share"`` the scale of each STARS term is set at the first inner
step of a call (share * |g_bn| / |g_term|, gradients w.r.t. the optimized tensors) and held
for the call's remaining inner steps. This script measures, every ``--every`` inner steps of
one call, each weighted term's gradient norm relative to the BN term's, i.e. the share the
term actually has at that step (1 call per synthesizer, side by side, same teacher/student):

    python -m benchmarks.stars_share_drift --teacher-ckpt PATH.pt [--synthesizers deepinversion cmi]
        [--alpha 0.5 --beta 0.3] [--rescale doubling|call] [--every 10]

PATH.pt: a smallcnn fashion-mnist-28 state dict (e.g. the evidence teacher in
~/.cache/stars-dfkd/teachers/fashion-mnist-28/). Budgets: the evidence preset's.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from baselines.hooks import RegularizerSet
from baselines.registry import REGULARIZERS, SYNTHESIZERS
from baselines.synthesizers.base import SynthesisSetup, _grad_norms

from .evidence_pair import evidence_preset, evidence_spec, evidence_student, evidence_teacher


def drift(name: str, teacher, student, spec, budget: dict[str, Any], stars: dict[str, Any],
          every: int) -> list[tuple[int, dict[str, float]]]:
    """[(inner step, {term: |weighted g_term| / |g_bn|})] for one synthesize() call."""
    regs = RegularizerSet([REGULARIZERS.get("stars")(dict(stars), name="stars")])
    syn = SYNTHESIZERS.get(name)(SynthesisSetup(teacher, student, spec, regs), dict(budget))
    inner = syn.balance
    seen: list[tuple[int, dict[str, float]]] = []

    def balance(terms, images, inner_step):
        out = inner(terms, images, inner_step)
        if inner_step % every == 0:
            probe = {"params": syn.optimized_tensors() or [images]}
            norms = {k: _grad_norms(v, probe)["params"] for k, v in out.items()}
            ref = norms.get("bn") or 1.0
            seen.append((inner_step, {k: g / ref for k, g in norms.items()}))
        return out

    syn.balance = balance
    syn.synthesize()
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-ckpt", required=True)
    ap.add_argument("--synthesizers", nargs="+", default=["deepinversion", "cmi"])
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--beta", type=float, default=0.3)
    ap.add_argument("--rescale", choices=["doubling", "call"], default="doubling",
                    help="stars.rescale: re-measure the scales at inner steps 0,1,2,4,... or at 0 only")
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    preset = evidence_preset()
    spec = evidence_spec()
    teacher = evidence_teacher(args.teacher_ckpt, spec)
    stars = {"alpha": args.alpha, "beta": args.beta, "rescale": args.rescale}
    print(f"STARS grad-share alpha {args.alpha} / beta {args.beta}, rescale {args.rescale}: each weighted term's gradient norm "
          "(w.r.t. the optimized tensors) / the BN term's, within one synthesize() call")
    for name in args.synthesizers:
        torch.manual_seed(args.seed)
        student = evidence_student(preset, spec)
        budget = preset.data["budget"][name][name]
        for step, shares in drift(name, teacher, student, spec, budget, stars, args.every):
            cells = "  ".join(f"{k} {v:.3g}" for k, v in sorted(shares.items()) if k != "bn")
            print(f"{name:<14} step {step:>3}  {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
