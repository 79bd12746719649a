"""Adversarial ("competition") terms: images on which the student disagrees with the teacher.

* DeepInversion's ADI term (Yin et al. CVPR 2020, Eq. 8), as in NVlabs/DeepInversion and the
  zju-vipa ``jsdiv``: teacher and student softmax at temperature T (3), probabilities and
  their mixture M = (P_S + P_T) / 2 clamped to [0.01, 0.99], then

      JS = 0.5 * KL(M || P_S) + 0.5 * KL(M || P_T)     (batchmean)

  (``F.kl_div(log P, M)`` is KL(M || P): the references' "JS" puts M first, unlike the
  textbook JS; we keep theirs). Loss form "datafree" = -JS (zju-vipa port),
  "nvlabs" = 1 - clamp(JS, 0, 1).
* CMI / Fast-DFKD masked KL ("decision adversarial"): with m_i = 1 where the teacher's and
  the student's argmax agree,

      L_adv = -mean_i [ m_i * KL(p_T,i || p_S,i) ]     (T = 1)

Both vanish when the student *is* the teacher; they need a distinct student network. (The
reference harness passes its real student to DeepInversion, CMI and Fast; only its DAFL /
ZSKT / DFAD / DFQ branch is built with student = teacher, where these terms are always 0.)
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AdvForm = Literal["datafree", "nvlabs"]


def js_divergence(student_logits: Tensor, teacher_logits: Tensor, T: float = 3.0,
                  clamp: tuple[float, float] = (0.01, 0.99)) -> Tensor:
    """The references' clamped Jensen-Shannon divergence (batchmean), see module docstring."""
    p = F.softmax(student_logits / T, dim=1)
    q = F.softmax(teacher_logits / T, dim=1)
    m = 0.5 * (p + q)
    lo, hi = clamp
    p, q, m = p.clamp(lo, hi), q.clamp(lo, hi), m.clamp(lo, hi)
    return 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(q.log(), m, reduction="batchmean")


def adi_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 3.0,
             form: AdvForm = "datafree") -> Tensor:
    """DeepInversion's adversarial term: -JS ("datafree") or 1 - clamp(JS, 0, 1) ("nvlabs")."""
    js = js_divergence(student_logits, teacher_logits, T)
    if form == "datafree":
        return -js
    if form == "nvlabs":
        return 1.0 - js.clamp(0.0, 1.0)
    raise ValueError(f"unknown adversarial loss form {form!r}; known: 'datafree', 'nvlabs'")


def kl_per_sample(student_logits: Tensor, teacher_logits: Tensor, T: float = 1.0) -> Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2 per sample, shape [N]."""
    log_q = F.log_softmax(student_logits / T, dim=1)
    p = F.softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_q, p, reduction="none").sum(1) * (T * T)


def masked_kl_adversarial(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """CMI/Fast term -mean_i[m_i KL(p_T,i || p_S,i)], m_i = [argmax_T == argmax_S]."""
    mask = (student_logits.argmax(1) == teacher_logits.argmax(1)).to(student_logits.dtype)
    return -(kl_per_sample(student_logits, teacher_logits) * mask).mean()
