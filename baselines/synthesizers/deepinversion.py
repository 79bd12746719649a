"""DeepInversion (Yin et al., CVPR 2020): optimize the pixels of a batch directly.

x ~ N(0, 1) in normalized space, Adam (lr 0.1 as the zju-vipa port; paper 0.05, betas
(0.5, 0.99)), per step a random roll of up to +-jitter*H pixels and a batch-level flip
(p 0.5), loss

    bn * L_bn + oh * CE(t(x'), y) + adv * L_adv(s(x'), t(x')) + tv * TV(x) + l2 * ||x||_2

(L_adv: -JS at T = 3, or NVlabs' 1 - clamp(JS, 0, 1)), pixels clamped to the valid
normalized range after every step. Returns the batch of the lowest total loss seen (a
copy; the port kept the last one by aliasing), denormalized to [0, 1].

Deviations from the port: its student BN term (-0.001 * L_bn(student)) is not used (it is
not in the paper); the adversarial term uses a real, distinct student.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .. import config as cfgmod
from ..errors import ConfigError
from ..hooks import total_loss
from ..losses import BNStatLoss, adi_loss, bn_layers, inversion_terms, l2_norm, total_variation
from .base import BestStep, SynthesisResult, SynthesisSetup, Synthesizer


def jitter_flip(x: Tensor, max_shift: int, flip: bool) -> Tensor:
    """Batch-level random roll by (dy, dx) in [-max_shift, max_shift]^2 and flip (p 0.5)."""
    if max_shift > 0:
        dy, dx = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if flip and bool(torch.rand(()) < 0.5):
        x = torch.flip(x, dims=(3,))
    return x


class DeepInversion(Synthesizer):
    """DeepInversion (Yin et al. 2020): Adam on the pixels with BN-statistics, class and adversarial JS terms."""

    name = "deepinversion"

    @dataclass
    class Config:
        batch_size: int = 256
        iterations: int = 1000  # per batch; 2000 = the paper's "DeepInv-2k"
        lr: float = 0.1  # zju-vipa port (paper: 0.05)
        betas: tuple[float, float] = (0.5, 0.99)
        bn: float = 10.0
        bn_first_multiplier: float = 1.0  # NVlabs ImageNet: 10
        oh: float = 1.0
        adv: float = 1.0
        adv_form: Literal["datafree", "nvlabs"] = "datafree"
        adv_temperature: float = 3.0
        tv: float = 0.0  # CMI repo: 1e-3 (l1); NVlabs CIFAR: 2.5e-5 (l2)
        tv_norm: Literal["l1", "l2"] = "l2"
        l2: float = 0.0
        jitter: float = 0.125  # max roll as a fraction of the image size (+-H/8); NVlabs CIFAR: 2/32
        flip: bool = True

        def validate(self) -> None:
            s = "deepinversion"
            cfgmod.require(self.batch_size >= 1, f"{s}.batch_size = {self.batch_size} must be >= 1.")
            cfgmod.require(self.iterations >= 1, f"{s}.iterations = {self.iterations} must be >= 1.")
            cfgmod.positive(s, lr=self.lr, adv_temperature=self.adv_temperature)
            cfgmod.nonneg(s, bn=self.bn, bn_first_multiplier=self.bn_first_multiplier, oh=self.oh,
                          adv=self.adv, tv=self.tv, l2=self.l2, jitter=self.jitter)
            cfgmod.require(len(self.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas),
                           f"{s}.betas = {self.betas} must be two numbers in [0, 1).")
            cfgmod.require(self.jitter < 1, f"{s}.jitter = {self.jitter} must be < 1 (a fraction of the image size).")

    def check_setup(self, setup: SynthesisSetup) -> None:
        if self.cfg.bn > 0 and not bn_layers(setup.teacher):
            raise ConfigError(
                "deepinversion: the teacher has no BatchNorm2d layer with running statistics, so the "
                "BN statistics loss is undefined; set deepinversion.bn = 0 or use a teacher with BN."
            )
        if self.cfg.bn + self.cfg.oh + self.cfg.adv + self.cfg.tv + self.cfg.l2 == 0 and not len(setup.regularizers):
            raise ConfigError("deepinversion: every loss weight is 0; enable at least one term.")

    def __init__(self, setup: SynthesisSetup, cfg=None, **params) -> None:
        super().__init__(setup, cfg, **params)
        self.bn_loss = BNStatLoss(self.teacher, self.cfg.bn_first_multiplier)
        self._leaves: list[Tensor] = []

    def optimized_tensors(self) -> list[Tensor]:
        """The leaf tensors the current synthesize() call optimizes (the pixels)."""
        return list(self._leaves)

    def synthesize(self) -> SynthesisResult:
        cfg, spec = self.cfg, self.spec
        t0 = time.perf_counter()
        targets = self.random_targets(cfg.batch_size)
        x = torch.randn(cfg.batch_size, *spec.shape, device=self.device).requires_grad_()
        self._leaves = [x]
        opt = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas))
        max_shift = int(spec.image_size * cfg.jitter)
        adv_on = cfg.adv > 0
        need_student = self.need_student(adv_on)
        best = BestStep()
        try:
            with self.frozen_models(), self.bn_loss as bnl:
                for it in range(cfg.iterations):
                    xa = jitter_flip(x, max_shift, cfg.flip)
                    t_out, s_out = self.forward_pair(xa, need_student)
                    terms = inversion_terms(
                        cfg.bn, cfg.oh, cfg.adv if adv_on else 0.0, bnl, t_out, s_out, targets,
                        lambda s, t: adi_loss(s, t, cfg.adv_temperature, cfg.adv_form))
                    if cfg.tv > 0:
                        terms["tv"] = cfg.tv * total_variation(x, cfg.tv_norm)
                    if cfg.l2 > 0:
                        terms["l2"] = cfg.l2 * l2_norm(x)
                    terms.update(self.step_terms(xa, targets, t_out, s_out, it))
                    terms = self.balance(terms, x, it)
                    loss = total_loss(terms, where="deepinversion synthesis", step=self.step)
                    best.offer(loss, x, terms)
                    opt.zero_grad(set_to_none=True)
                    self.backward(loss)
                    opt.step()
                    with torch.no_grad():
                        x.copy_(spec.clamp_normalized(x))
                    self.step += 1
        finally:
            self._leaves = []
        return self.finish(spec.denormalize(best.images), targets, t0, best.terms)
