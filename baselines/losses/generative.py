"""Loss terms of the generator-based DFKD methods (DAFL, ZSKT, DFAD, DFQ).

* ``kl_adversarial`` (ZSKT, Micaelli & Storkey 2019; DFQ, Choi et al. 2020): the generator
  maximizes the teacher-student divergence on its images,

      L_adv = -mean_i KL(p_T,i || p_S,i)        (T = 1, no agreement mask)

  i.e. the zju-vipa ``-kldiv(s, t)`` of the generative branch.
* ``mae_adversarial`` (DFAD, Fang et al. 2019): the generator maximizes the mean absolute
  error between the logits, L_adv = -mean_{i,k} |z_S,ik - z_T,ik| (``-L1Loss(s, t)``).
* ``activation_loss`` (DAFL, Chen et al. ICCV 2019, Eq. 4): L_a = -mean |f_T| of the
  teacher's pooled features (the classifier input), rewarding strong activations.
* ``information_entropy_loss`` (DAFL Eq. 5): with the batch-mean softmax
  p_bar = mean_i softmax(z_T,i), L_ie = sum_k p_bar_k log p_bar_k = -H(p_bar) (natural log),
  minimal when the batch covers every class equally.
* ``attention_map`` / ``attention_transfer_loss`` (Zagoruyko & Komodakis 2017, the AT term
  of ZSKT): a(f) = normalize(mean_c f_c^2, flattened over space), and per matched stage
  mean((a(f_S) - a(f_T))^2); maps of different spatial size are average-pooled to the smaller.

All return *unweighted* tensors (synthesizers weight them into named terms). The
adversarial ones vanish when the student is the teacher.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .adversarial import kl_per_sample


def kl_adversarial(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """-mean_i KL(softmax(t_i) || softmax(s_i)) (T = 1, batch mean)."""
    return -kl_per_sample(student_logits, teacher_logits).mean()


def mae_adversarial(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """-mean |s - t| over every logit of the batch (DFAD's negated L1 / MAE)."""
    return -F.l1_loss(student_logits, teacher_logits)


def activation_loss(pooled: Tensor) -> Tensor:
    """DAFL's L_a = -mean |f| of the teacher's pooled features [N, d]."""
    return -pooled.abs().mean()


def information_entropy_loss(teacher_logits: Tensor, eps: float = 1e-12) -> Tensor:
    """DAFL's L_ie = sum_k p_bar_k log p_bar_k with p_bar the batch-mean softmax."""
    p = F.softmax(teacher_logits, dim=1).mean(0)
    return (p * torch.log(p.clamp_min(eps))).sum()


def attention_map(f: Tensor) -> Tensor:
    """Spatial attention of f [N, C, H, W]: L2-normalized mean over channels of f^2, [N, H*W]."""
    return F.normalize(f.pow(2).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student_feats: list[Tensor], teacher_feats: list[Tensor],
                            pairs: list[tuple[int, int]]) -> Tensor:
    """Sum over matched (teacher stage, student stage) pairs of mean((a_S - a_T)^2).

    Stages whose maps differ in size are compared at the smaller size (adaptive average
    pooling of the larger map before the attention is formed). Stages without a spatial
    extent (2-d features) are skipped.
    """
    total = None
    for ti, si in pairs:
        ft, fs = teacher_feats[ti], student_feats[si]
        if ft.dim() != 4 or fs.dim() != 4:
            continue
        h = min(ft.shape[-2], fs.shape[-2])
        w = min(ft.shape[-1], fs.shape[-1])
        if ft.shape[-2:] != (h, w):
            ft = F.adaptive_avg_pool2d(ft, (h, w))
        if fs.shape[-2:] != (h, w):
            fs = F.adaptive_avg_pool2d(fs, (h, w))
        term = (attention_map(fs) - attention_map(ft)).pow(2).mean()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("attention transfer: no matched stage pair has [N, C, H, W] features")
    return total
