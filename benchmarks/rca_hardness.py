"""Does RCA in synthesis make the synthetic batch easier or harder for the student?

Cooperative RCA descends L_RCA = mean((R(f_T) - R_S)^2) through the student (teacher
relations detached): it moves the images to where the student's relations already agree
with the teacher's. Adversarial DFKD (DeepInversion's / CMI's adv term) does the opposite:
it seeks images where student and teacher disagree, since those carry what KD still has to
teach. This probe synthesizes one batch from the same start for each RCA setting with a
*trained* student (a KD checkpoint of the evidence pair) and measures, on the batch it
keeps, the KD loss it would give (KL(p_T || p_S) at temperature tau, per sample), the
teacher-student top-1 agreement, the relational discrepancy and the teacher's confidence.
A lower KL with cooperative RCA than without means it serves easier samples.

    python -m benchmarks.rca_hardness --teacher-ckpt T.pt --student-ckpt S.pt \
        [--synthesizer deepinversion] [--alpha 0.5] [--iterations N] [--seeds 0 1]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.hooks import RegularizerSet
from baselines.registry import REGULARIZERS, SYNTHESIZERS
from baselines.synthesizers.base import SynthesisSetup

from .evidence_pair import evidence_preset, evidence_spec, evidence_student, evidence_teacher
from .rca_paths import relation_loss

VARIANTS = (("none", None), ("rca cooperative", "cooperative"), ("rca adversarial", "adversarial"))


def batch_hardness(teacher, student, x_norm: Tensor, tau: float) -> dict[str, float]:
    """KD loss tau^2 KL(p_T || p_S) (batch mean), top-1 agreement, L_RCA on pooled features,
    the teacher's mean max-probability; the student with batch statistics, as KD queries it."""
    student.train()
    with torch.no_grad():
        t, s = teacher.forward_features(x_norm), student.forward_features(x_norm)
        kl = F.kl_div(F.log_softmax(s.logits / tau, 1), F.softmax(t.logits / tau, 1), reduction="batchmean")
        return {"kd_loss": float(kl * tau * tau),
                "agreement": float((s.logits.argmax(1) == t.logits.argmax(1)).float().mean()),
                "L_rca": float(relation_loss(t.pooled, s.pooled)),
                "teacher_conf": float(F.softmax(t.logits, 1).max(1).values.mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-ckpt", required=True)
    ap.add_argument("--student-ckpt", required=True, help="a KD student of the evidence pair (its student.pt)")
    ap.add_argument("--synthesizer", default="deepinversion", choices=["deepinversion", "cmi"])
    ap.add_argument("--alpha", type=float, default=0.5, help="RCA's gradient share")
    ap.add_argument("--iterations", type=int, default=None, help="inner iterations (default: evidence's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    preset, spec = evidence_preset(), evidence_spec()
    teacher = evidence_teacher(args.teacher_ckpt, spec)
    tau = float(preset.data["distill"]["temperature"])
    budget = dict(preset.data["budget"][args.synthesizer][args.synthesizer])
    if args.iterations:
        budget["iterations"] = args.iterations
    print(f"{args.synthesizer} ({budget['iterations']} iterations, batch {budget['batch_size']}), "
          f"student {args.student_ckpt}, RCA share {args.alpha} (teacher relations detached); "
          f"KD loss = tau^2 KL(p_T||p_S), tau {tau}, on the kept batch")
    print(f"{'seed':>4}  {'variant':<16} {'kd_loss':>8} {'agreement':>9} {'L_rca':>7} {'teacher_conf':>12}")
    for seed in args.seeds:
        for label, sign in VARIANTS:
            torch.manual_seed(seed)
            student = evidence_student(preset, spec)
            student.load_state_dict(torch.load(args.student_ckpt, map_location="cpu"))
            regs = [] if sign is None else [REGULARIZERS.get("rca")(
                {"alpha": args.alpha, "rca_sign": sign}, name="rca")]
            syn = SYNTHESIZERS.get(args.synthesizer)(SynthesisSetup(teacher, student, spec, RegularizerSet(regs)),
                                                     budget)
            images = syn.synthesize().images
            h = batch_hardness(teacher, student, spec.normalize(images), tau)
            print(f"{seed:>4}  {label:<16} {h['kd_loss']:>8.4f} {h['agreement']:>9.3f} {h['L_rca']:>7.4f} "
                  f"{h['teacher_conf']:>12.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
