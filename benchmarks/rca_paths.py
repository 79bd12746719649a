"""Which network RCA's synthesis gradient moves: the teacher's relations or the student's.

In synthesis, L_RCA = mean((R(f_T(x)) - R(f_S(x)))^2) is differentiated w.r.t. the images x
through *both* networks. Its image gradient splits exactly into a teacher path (student
features detached) and a student path (teacher features detached):

    dL/dx = dL/dR_T dR_T/dx + dL/dR_S dR_S/dx.

A cooperative term meant to "make batches on which the student's relations agree with the
teacher's" acts as intended only if the student path carries the gradient; if the teacher
path dominates, descending L moves the teacher's relations towards the student's (whose
pooled spike rates are non-negative and alike across samples), i.e. it blurs the teacher's
classes. This script prints, on batches of one DeepInversion call of the evidence budget
(the noise it starts from, and the images it ends with), the norm of each path, the mean
off-diagonal cosine similarity on each side, and the teacher's within- and between-class
cosine (classes: the teacher's argmax):

    python -m benchmarks.rca_paths --teacher-ckpt PATH.pt [--iterations 60] [--seed 0]
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor

from baselines.hooks import RegularizerSet
from baselines.registry import SYNTHESIZERS
from baselines.synthesizers.base import SynthesisSetup

from .evidence_pair import evidence_preset, evidence_spec, evidence_student, evidence_teacher


def cosine_matrix(f: Tensor) -> Tensor:
    """R(f) = N(f) N(f)^T, RCA's default relation (benchmarks reach plugins only through
    entry points, so the matrix is written here; on batches with no silent row it equals
    the plugin's, which also drops silent rows)."""
    f = torch.nn.functional.normalize(f.flatten(1), dim=1)
    return f @ f.T


def relation_loss(f_t: Tensor, f_s: Tensor) -> Tensor:
    """L_RCA = mean((R(f_T) - R(f_S))^2)."""
    return ((cosine_matrix(f_t) - cosine_matrix(f_s)) ** 2).mean()


def off_diag_mean(r: Tensor, mask: Tensor | None = None) -> float:
    eye = torch.eye(r.shape[0], dtype=torch.bool)
    m = ~eye if mask is None else (mask & ~eye)
    return float(r[m].mean()) if m.any() else float("nan")


def paths(teacher, student, x_norm: Tensor) -> dict[str, float]:
    """Gradient norms of L_RCA (cosine relations of the pooled features) w.r.t. the
    normalized images, per path."""
    x = x_norm.clone().requires_grad_(True)
    t, s = teacher.forward_features(x), student.forward_features(x)
    ft, fs = t.pooled, s.pooled
    out = {}
    for name, a, b in (("full", ft, fs), ("teacher path", ft, fs.detach()), ("student path", ft.detach(), fs)):
        (g,) = torch.autograd.grad(relation_loss(a, b), x, retain_graph=True)
        out[name] = float(g.norm())
    rt, rs = cosine_matrix(ft.detach()), cosine_matrix(fs.detach())
    cls = t.logits.argmax(1)
    same = cls[:, None] == cls[None, :]
    out.update({"L_rca": float(relation_loss(ft.detach(), fs.detach())),
                "cos teacher": off_diag_mean(rt), "cos student": off_diag_mean(rs),
                "teacher cos within class": off_diag_mean(rt, same),
                "teacher cos between classes": off_diag_mean(rt, ~same)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher-ckpt", required=True)
    ap.add_argument("--iterations", type=int, default=None, help="DeepInversion iterations (default: evidence's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    preset = evidence_preset()
    spec = evidence_spec()
    teacher = evidence_teacher(args.teacher_ckpt, spec)
    student = evidence_student(preset, spec)
    budget = dict(preset.data["budget"]["deepinversion"]["deepinversion"])
    if args.iterations:
        budget["iterations"] = args.iterations
    syn = SYNTHESIZERS.get("deepinversion")(SynthesisSetup(teacher, student, spec, RegularizerSet([])), budget)
    noise = torch.randn(budget["batch_size"], spec.channels, spec.image_size, spec.image_size)
    images = syn.synthesize().images
    student.train()  # batch statistics, as synthesis queries it (running statistics are not used)
    for p in list(teacher.parameters()) + list(student.parameters()):
        p.requires_grad_(False)
    print(f"L_RCA (cosine, pooled) image-gradient paths, teacher {args.teacher_ckpt}, "
          f"student spiking_smallcnn (batch statistics), batch {budget['batch_size']}")
    for label, x in (("Gaussian noise (DI's start)", noise),
                     (f"DeepInversion after {budget['iterations']} iterations", spec.normalize(images))):
        r = paths(teacher, student, x)
        share = r["teacher path"] / (r["teacher path"] + r["student path"])
        print(f"{label}:\n  |g| full {r['full']:.3g}  teacher path {r['teacher path']:.3g}  "
              f"student path {r['student path']:.3g}  (teacher path {share:.0%} of the two)\n"
              f"  L_rca {r['L_rca']:.3f}; mean off-diagonal cosine: teacher {r['cos teacher']:.3f}, "
              f"student {r['cos student']:.3f}; teacher within class {r['teacher cos within class']:.3f}, "
              f"between classes {r['teacher cos between classes']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
