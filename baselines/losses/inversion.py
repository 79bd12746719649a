"""The model-inversion objective shared by DeepInversion, CMI and Fast-DFKD.

    L_inv = w_bn * L_bn + w_oh * CE(teacher(x), y) + w_adv * L_adv(student(x), teacher(x))

returned as named, weighted terms; a term whose weight is 0 is left out (and the student
forward it would need is skipped by the caller).
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..models import ModelOutput
from .bn import BNStatLoss
from .priors import class_loss


def inversion_terms(bn: float, oh: float, adv: float, bn_loss: BNStatLoss, t_out: ModelOutput,
                    s_out: ModelOutput | None, targets: Tensor,
                    adv_fn: Callable[[Tensor, Tensor], Tensor]) -> dict[str, Tensor]:
    """``{"bn", "oh", "adv"}`` weighted terms; ``adv_fn(student_logits, teacher_logits)``."""
    terms: dict[str, Tensor] = {}
    if bn > 0:
        terms["bn"] = bn * bn_loss.loss()
    if oh > 0:
        terms["oh"] = oh * class_loss(t_out.logits, targets)
    if adv > 0:
        terms["adv"] = adv * adv_fn(s_out.logits, t_out.logits)
    return terms
