"""Fast-DFKD (Fang et al., AAAI 2022): a meta-learned generator shared across batches.

One generator (:class:`~.generator.Generator`) lives across synthesize() calls. Per call
(``FastMeta``): clone it, draw a fresh z, take k inner Adam steps (betas (0.5, 0.999);
lr_g on the clone, lr_z on z) on

    bn * L_bn(momentum 0.9) + oh * CE(t(x'), y) + adv * maskedKL(s(x'), t(x'))

with x' = normalize(crop(pad 4) + flip of G'(z)) and the adversarial term only once
``epoch >= warmup``; keep the lowest-loss step's images. Meta update, once per call, with
Adam (lr = lr_g * k, betas (0.5, 0.999)) on the meta-generator:

* "fomaml" (default): the clone's gradient of every inner step is added into the
  meta-generator's gradient (first-order MAML);
* "reptile": meta gradient = theta - theta' (the reference scales it by 67; Adam is
  invariant to that scale up to eps, so we use 1).

Inner updates touch only the clone; the meta-generator changes only in the meta step.
After the call the BN-statistics EMA is updated (ema <- 0.9 ema + 0.1 current).
``FastNoMeta`` ("Fast" without meta-learning) updates one generator in place with a fresh
inner Adam each call, as the reference ``FastSynthesizer``.

Presets (k, lr_g, lr_z): fast-2 (2, 5e-3, 0.015), fast-5 (5, 3e-3, 0.01), fast-10
(10, 2e-3, 0.01); ``steps``/``lr_g``/``lr_z`` override the preset. Default preset: fast-10,
the paper's headline setting (Table 1 reports Fast-10 for CIFAR-10 and CIFAR-100). Default
weights oh 0.5, adv 1.33 are the ResNet-34 -> ResNet-18 script values (VGG-11: oh 0.5,
adv 1.0; WRN: oh 0.4, adv 1.1). The generator keeps PyTorch's default initialization as the
reference (``init_std > 0`` uses CMI's N(0, init_std) instead).

Schedule (the reference ``datafree_kd.py``): during the ``warmup`` epochs the loop only
synthesizes: no adversarial term, no KD step, the KD schedule is not stepped
(:meth:`kd_warmup_epochs`, used by :func:`baselines.distill.distill` unless
``distill.warmup`` is set). ``reset_l0`` (on in every Fast CIFAR script; fixed upstream in
commit c188487, whose older copies had an always-true condition): once, at synthesize call
120 + warmup = 140 of 220, the meta-generator's first linear layer (``l1.0``) and first
block module (``conv_blocks.0``, a BatchNorm) get weights N(0, 0.02) and zero biases, as
upstream. Here the call is scaled to the run's length: the first call of epoch
``round(reset_l0_at * epochs)`` (reset_l0_at = 140/220). Not ported: the warm-up off-by-one
(the reference counts calls from 1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from .. import config as cfgmod
from ..errors import ConfigError
from ..hooks import total_loss
from ..losses import BNStatLoss, bn_layers, inversion_terms, masked_kl_adversarial
from ..spec import random_crop_flip
from .base import BestStep, SynthesisResult, SynthesisSetup, Synthesizer
from .generator import Generator, check_generator_size

PRESETS: dict[str, tuple[int, float, float]] = {
    "fast-2": (2, 5e-3, 0.015),
    "fast-5": (5, 3e-3, 0.01),
    "fast-10": (10, 2e-3, 0.01),
}


class _FastBase(Synthesizer):
    """Shared config and inner loop of FastMeta / FastNoMeta."""

    meta: ClassVar[bool] = True

    @dataclass
    class Config:
        batch_size: int = 256
        preset: Literal["fast-2", "fast-5", "fast-10"] | None = "fast-10"
        steps: int | None = None  # k inner steps (overrides the preset)
        lr_g: float | None = None  # inner generator lr (overrides the preset)
        lr_z: float | None = None  # latent lr (overrides the preset)
        betas: tuple[float, float] = (0.5, 0.999)
        meta_method: Literal["fomaml", "reptile"] = "fomaml"
        nz: int = 256
        ngf: int = 64
        init_std: float = 0.0  # 0 = PyTorch default init (reference); > 0: N(0, init_std)
        bn: float = 10.0
        bn_momentum: float = 0.9
        oh: float = 0.5
        adv: float = 1.33
        warmup: int = 20  # epochs without the adversarial term (and, by default, without KD)
        reset_l0: bool = True  # re-initialize l1.0 and conv_blocks.0 once (reference scripts: on)
        reset_l0_at: float = 140 / 220  # when, as a fraction of the run's epochs

        def resolved(self) -> tuple[int, float, float]:
            """(k, lr_g, lr_z): the preset's values with explicit overrides applied."""
            k, lg, lz = PRESETS[self.preset] if self.preset is not None else (None, None, None)
            k = self.steps if self.steps is not None else k
            lg = self.lr_g if self.lr_g is not None else lg
            lz = self.lr_z if self.lr_z is not None else lz
            return k, lg, lz

        section: ClassVar[str] = "fast"

        def validate(self) -> None:
            s = self.section
            k, lg, lz = self.resolved()
            missing = [n for n, v in (("steps", k), ("lr_g", lg), ("lr_z", lz)) if v is None]
            cfgmod.require(not missing, f"{s}: preset = none needs {', '.join(missing)} set "
                                        f"(or choose a preset: {', '.join(PRESETS)}).")
            for name in ("batch_size", "nz", "ngf"):
                cfgmod.require(getattr(self, name) >= 1, f"{s}.{name} = {getattr(self, name)} must be >= 1.")
            cfgmod.require(k >= 1, f"{s}.steps = {k} must be >= 1.")
            cfgmod.positive(s, lr_g=lg, lr_z=lz)
            cfgmod.nonneg(s, bn=self.bn, oh=self.oh, adv=self.adv, warmup=self.warmup,
                          init_std=self.init_std, bn_momentum=self.bn_momentum)
            cfgmod.require(self.bn_momentum < 1, f"{s}.bn_momentum = {self.bn_momentum} must be < 1.")
            cfgmod.require(0 <= self.reset_l0_at <= 1,
                           f"{s}.reset_l0_at = {self.reset_l0_at} must be a fraction of the run in [0, 1].")
            cfgmod.require(len(self.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas),
                           f"{s}.betas = {self.betas} must be two numbers in [0, 1).")

    def check_setup(self, setup: SynthesisSetup) -> None:
        check_generator_size(setup.spec.image_size, self.name)
        if self.cfg.batch_size < 2:
            raise ConfigError(f"{self.name}.batch_size must be >= 2: the generator's BatchNorm needs 2 images per batch.")
        if self.cfg.bn > 0 and not bn_layers(setup.teacher):
            raise ConfigError(f"{self.name}: the teacher has no BatchNorm2d layer, so the BN statistics loss "
                              f"is undefined; set {self.name}.bn = 0 or use a teacher with BN.")

    def __init__(self, setup: SynthesisSetup, cfg=None, **params) -> None:
        super().__init__(setup, cfg, **params)
        cfg, spec = self.cfg, self.spec
        self.k, self.lr_g, self.lr_z = cfg.resolved()
        self.generator = Generator(cfg.nz, cfg.ngf, spec.image_size, spec.channels).to(self.device).train()
        if cfg.init_std > 0:
            self.generator.reset_parameters(cfg.init_std)
        self.bn_loss = BNStatLoss(self.teacher, momentum=cfg.bn_momentum)
        self.meta_opt = (torch.optim.Adam(self.generator.parameters(), lr=self.lr_g * self.k,
                                          betas=tuple(cfg.betas)) if self.meta else None)
        self._leaves: list[Tensor] = []
        self.l0_reset_done = False

    def optimized_tensors(self) -> list[Tensor]:
        """The leaves the inner steps optimize (the clone's / generator's params, z)."""
        return list(self._leaves)

    def kd_warmup_epochs(self) -> int:
        return int(self.cfg.warmup)

    def reset_l0_epoch(self) -> int | None:
        """The epoch whose first synthesize() call resets l0 (None: never / unknown length)."""
        if not self.cfg.reset_l0 or self.total_epochs is None:
            return None
        return max(1, round(self.cfg.reset_l0_at * self.total_epochs))

    def maybe_reset_l0(self) -> None:
        at = self.reset_l0_epoch()
        if at is not None and not self.l0_reset_done and self.epoch >= at:
            self.generator.reset_first_layers()
            self.l0_reset_done = True

    def adversarial_on(self) -> bool:
        return self.cfg.adv > 0 and self.epoch >= self.cfg.warmup

    def synthesize(self) -> SynthesisResult:
        cfg, spec = self.cfg, self.spec
        t0 = time.perf_counter()
        self.maybe_reset_l0()
        targets = self.random_targets(cfg.batch_size)
        gen = self.generator.clone() if self.meta else self.generator
        z = torch.randn(cfg.batch_size, cfg.nz, device=self.device).requires_grad_()
        self._leaves = [*gen.parameters(), z]
        opt = torch.optim.Adam([{"params": gen.parameters()}, {"params": [z], "lr": self.lr_z}],
                               lr=self.lr_g, betas=tuple(cfg.betas))
        fomaml = self.meta and cfg.meta_method == "fomaml"
        if fomaml:
            self.meta_opt.zero_grad(set_to_none=True)
        adv_on = self.adversarial_on()
        need_student = self.need_student(adv_on)
        best = BestStep()
        try:
            with self.frozen_models(), self.bn_loss as bnl:
                for it in range(self.k):
                    x = gen(z)
                    xa = spec.normalize(random_crop_flip(x, spec.crop_padding, spec.hflip))
                    t_out, s_out = self.forward_pair(xa, need_student)
                    terms = inversion_terms(cfg.bn, cfg.oh, cfg.adv if adv_on else 0.0, bnl, t_out,
                                            s_out, targets, masked_kl_adversarial)
                    terms.update(self.step_terms(xa, targets, t_out, s_out, it))
                    terms = self.balance(terms, x, it)
                    loss = total_loss(terms, where=f"{self.name} synthesis", step=self.step)
                    best.offer(loss, x, terms)
                    opt.zero_grad(set_to_none=True)
                    self.backward(loss)
                    if fomaml:
                        self._accumulate_meta_grad(gen)
                    opt.step()
                    self.step += 1
        finally:
            self._leaves = []
        self.bn_loss.update_ema()
        if self.meta:
            if not fomaml:
                self._reptile_grad(gen)
            self.meta_opt.step()
        return self.finish(best.images, targets, t0, best.terms)

    @torch.no_grad()
    def _accumulate_meta_grad(self, clone: Generator) -> None:
        """FOMAML: meta.grad += clone.grad (every inner step)."""
        for p, q in zip(self.generator.parameters(), clone.parameters()):
            if q.grad is None:
                continue
            if p.grad is None:
                p.grad = q.grad.detach().clone()
            else:
                p.grad.add_(q.grad)

    @torch.no_grad()
    def _reptile_grad(self, clone: Generator) -> None:
        """Reptile: meta.grad = theta - theta'."""
        for p, q in zip(self.generator.parameters(), clone.parameters()):
            p.grad = (p.detach() - q.detach()).clone()

    # -- persistence -------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"generator": self.generator.state_dict(), "bn_loss": self.bn_loss.state_dict(),
                                 "l0_reset_done": self.l0_reset_done}
        if self.meta_opt is not None:
            state["meta_opt"] = self.meta_opt.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.generator.load_state_dict(state["generator"])
        self.bn_loss.load_state_dict(state.get("bn_loss", {}))
        self.l0_reset_done = bool(state.get("l0_reset_done", False))
        if self.meta_opt is not None and "meta_opt" in state:
            self.meta_opt.load_state_dict(state["meta_opt"])


class FastMeta(_FastBase):
    """Fast-DFKD (Fang et al. 2022): meta-learned generator (FOMAML/Reptile), k inner steps per batch."""

    name = "fast"
    meta = True


class FastNoMeta(_FastBase):
    """Fast-DFKD without meta-learning: one generator updated in place, k steps per batch."""

    name = "fast-nometa"
    meta = False

    @dataclass
    class Config(_FastBase.Config):
        section: ClassVar[str] = "fast-nometa"
