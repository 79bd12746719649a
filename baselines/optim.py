"""The one optimizer recipe of every training loop here (teacher training, KD, the scratch
reference): SGD with momentum and weight decay (no Nesterov), and a cosine schedule to
``eta_min`` over ``periods`` scheduler steps (per step or per epoch: the caller steps it)."""
from __future__ import annotations

from typing import Iterable

import torch


def sgd_cosine(params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float,
               periods: int, eta_min: float = 0.0) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LRScheduler]:
    """(SGD(lr, momentum, weight_decay), CosineAnnealingLR(T_max = max(1, periods), eta_min))."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=False)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(periods)), eta_min=eta_min)
    return opt, sched


__all__ = ["sgd_cosine"]
