"""BatchNorm statistics loss (DeepInversion, Yin et al. CVPR 2020, Eq. 4; used by all three
baselines).

A forward hook on every ``nn.BatchNorm2d`` of the teacher reads the BN *input* x [N, C, H, W]
and compares its per-channel batch statistics with the stored running statistics:

    mu_l = mean_{N,H,W} x,   s2_l = biased var_{N,H,W} x
    r_l  = ||running_var_l - s2_l||_2 + ||running_mean_l - mu_l||_2     (plain, not squared)
    L_bn = sum_l w_l r_l,    w_0 = first_multiplier (NVlabs ImageNet: 10), w_l = 1 otherwise

Fast-DFKD (Fang et al. AAAI 2022) adds a momentum m: the statistics compared are
(1 - m) * current + m * ema, and after each synthesize() call ``update_ema`` sets
ema <- m * ema + (1 - m) * current (ema <- current the first time), as the reference
``DeepInversionHook(bn_mmt)`` does. The hooks live only inside ``with BNStatLoss(...)``.

``form = "gaussian-kl"`` replaces r_l by DFQ's divergence (Choi et al., "Data-Free Network
Quantization With Adversarial Knowledge Distillation", CVPRW 2020, Sec. 3): each channel's
batch and running statistics are read as Gaussians and compared by the KL divergence

    r_l = sum_c KL(N(mu_c, s2_c) || N(mu_run_c, s2_run_c))
        = sum_c [ 1/2 log(s2_run_c / s2_c) + (s2_c + (mu_c - mu_run_c)^2) / (2 s2_run_c) - 1/2 ]

with both variances taken as var + eps (the layer's BN eps, as BN normalizes with), so a
dead channel (s2_c = 0) stays finite. It is 0 exactly when the statistics agree, > 0
otherwise, and (unlike the L2 form) weighs a channel's mismatch by its running variance.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..hooks import ModuleHooks


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The model's BatchNorm2d layers that track running statistics, in module order."""
    return [m for m in model.modules()
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None]


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of x [N, C, ...] over every dim but 1."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), x.var(dims, unbiased=False)


def bn_stat_distance(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """r = ||running_var - var||_2 + ||running_mean - mean||_2."""
    return torch.linalg.vector_norm(running_var - var) + torch.linalg.vector_norm(running_mean - mean)


def bn_gaussian_kl(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                   eps: float = 1e-5) -> Tensor:
    """r = sum_c KL(N(mean_c, var_c + eps) || N(running_mean_c, running_var_c + eps)) (DFQ)."""
    v, v_run = var + eps, running_var + eps
    return (0.5 * torch.log(v_run / v) + (v + (mean - running_mean).pow(2)) / (2 * v_run) - 0.5).sum()


BN_FORMS = ("l2", "gaussian-kl")


class BNStatLoss:
    """Context manager computing L_bn on every forward of ``model`` (see module docstring).

    >>> bnl = BNStatLoss(teacher, momentum=0.9)
    >>> with bnl:
    ...     out = teacher(x)
    ...     loss = bnl.loss()       # L_bn of that forward
    >>> bnl.update_ema()            # Fast-DFKD: after the synthesize() call

    ``enabled = False`` skips the computation for forwards whose statistics are not wanted
    (e.g. CMI's local view). The object (and its EMA) outlives the hooks.
    """

    def __init__(self, model: nn.Module, first_multiplier: float = 1.0, momentum: float = 0.0,
                 form: str = "l2") -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BN momentum must be in [0, 1), got {momentum}")
        if form not in BN_FORMS:
            raise ValueError(f"BN statistics form must be one of {BN_FORMS}, got {form!r}")
        self.form = form
        self.model = model
        self.layers = bn_layers(model)
        self.first_multiplier = float(first_multiplier)
        self.momentum = float(momentum)
        self.enabled = True
        self.ema: list[tuple[Tensor, Tensor]] | None = None
        self._r: dict[int, Tensor] = {}
        self._stats: dict[int, tuple[Tensor, Tensor]] = {}
        self._hooks = ModuleHooks()

    # -- hooks -----------------------------------------------------------------
    def _hook(self, idx: int):
        def fn(module: nn.BatchNorm2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not self.enabled:
                return
            mean, var = channel_stats(inputs[0])
            self._stats[idx] = (mean.detach(), var.detach())
            if self.momentum > 0 and self.ema is not None:
                ema_mean, ema_var = self.ema[idx]
                m = self.momentum
                mean = (1 - m) * mean + m * ema_mean
                var = (1 - m) * var + m * ema_var
            if self.form == "gaussian-kl":
                self._r[idx] = bn_gaussian_kl(module.running_mean, module.running_var, mean, var, module.eps)
            else:
                self._r[idx] = bn_stat_distance(module.running_mean, module.running_var, mean, var)
        return fn

    def __enter__(self) -> "BNStatLoss":
        self._r.clear()
        self._stats.clear()
        for i, m in enumerate(self.layers):
            self._hooks.add(m, self._hook(i))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.remove()
        self._r.clear()

    # -- values ----------------------------------------------------------------
    def layer_losses(self) -> list[Tensor]:
        """r_l of the last forward, one per BN layer (in module order)."""
        missing = [i for i in range(len(self.layers)) if i not in self._r]
        if missing:
            raise RuntimeError("BNStatLoss.loss() called before a forward pass inside `with BNStatLoss(...)`")
        return [self._r[i] for i in range(len(self.layers))]

    def loss(self) -> Tensor:
        """L_bn = sum_l w_l r_l of the last forward pass."""
        rs = self.layer_losses()
        total = rs[0] * self.first_multiplier
        for r in rs[1:]:
            total = total + r
        return total

    def update_ema(self) -> None:
        """ema <- m * ema + (1 - m) * current (ema <- current the first time); no-op if m = 0."""
        if self.momentum <= 0 or len(self._stats) != len(self.layers):
            return
        cur = [(self._stats[i][0].detach().clone(), self._stats[i][1].detach().clone())
               for i in range(len(self.layers))]
        if self.ema is None:
            self.ema = cur
        else:
            m = self.momentum
            self.ema = [(m * em + (1 - m) * cm, m * ev + (1 - m) * cv)
                        for (em, ev), (cm, cv) in zip(self.ema, cur)]

    def state_dict(self) -> dict[str, Any]:
        return {"ema": None if self.ema is None else [(m.cpu(), v.cpu()) for m, v in self.ema]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ema = state.get("ema")
        if ema is None:
            self.ema = None
            return
        dev = self.layers[0].running_mean.device if self.layers else torch.device("cpu")
        self.ema = [(m.to(dev), v.to(dev)) for m, v in ema]
