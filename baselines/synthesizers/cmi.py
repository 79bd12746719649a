"""CMI, Contrastive Model Inversion (Fang et al., IJCAI 2021).

Per batch: the generator (:class:`~.generator.Generator`) is re-initialized (N(0, 0.02)) and
optimized together with a learned latent z (Adam lr 1e-3, betas (0.5, 0.999), 200 steps in
the CIFAR scripts). Each step makes two views of the generated pixels x = G(z) in [0, 1]:
global = crop (pad 4) + flip, local = random resized crop (scale 0.25-1) + flip, both
normalized for the networks. Loss

    bn * L_bn(global) + oh * CE(t(global), y) + adv * maskedKL(s(global), t(global))
    + cr * L_cr(head(feat(local)), head(feat(global)); bank negatives)

with feat = per-channel spatial means of the inputs of the teacher's BN layers (or its
stages), a projection head trained jointly (its own Adam, lr = lr, as the reference) and a
ring-buffer memory bank of the features of past batches' kept images (n_neg negatives drawn
per step). The lowest-loss step's images are kept; their features enter the bank after the
batch, so a batch never contrasts with itself through the bank.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .. import config as cfgmod
from ..errors import ConfigError
from ..hooks import total_loss
from ..losses import (BNStatLoss, InstanceFeatures, MemoryBank, ProjectionHead, bn_layers,
                      contrastive_loss, feature_layers, inversion_terms,
                      masked_kl_adversarial)
from ..spec import random_crop_flip
from .base import BestStep, SynthesisResult, SynthesisSetup, Synthesizer, eval_frozen
from .generator import Generator, check_generator_size, random_resized_crop


class CMI(Synthesizer):
    """CMI (Fang et al. 2021): per-batch generator + latent with inversion, adversarial and contrastive terms."""

    name = "cmi"

    @dataclass
    class Config:
        batch_size: int = 256
        iterations: int = 200  # generator steps per batch ("CMI-500" in the paper tables: 500)
        lr: float = 1e-3  # generator, latent and head
        betas: tuple[float, float] = (0.5, 0.999)
        nz: int = 256
        ngf: int = 64
        init_std: float = 0.02
        bn: float = 1.0
        oh: float = 1.0  # paper setting: 0.5
        adv: float = 0.5
        cr: float = 0.8
        tau: float = 0.2  # cr_T of the CIFAR scripts (0.1-0.2)
        head_dim: int = 256
        bank_size: int = 40960
        n_neg: int = 4096
        features: Literal["bn", "stages"] = "bn"  # "stages" for ResNet-34 teachers
        local_scale: tuple[float, float] = (0.25, 1.0)

        def validate(self) -> None:
            s = "cmi"
            for k in ("batch_size", "iterations", "nz", "ngf", "head_dim", "bank_size"):
                cfgmod.require(getattr(self, k) >= 1, f"{s}.{k} = {getattr(self, k)} must be >= 1.")
            cfgmod.positive(s, lr=self.lr, tau=self.tau)
            cfgmod.nonneg(s, bn=self.bn, oh=self.oh, adv=self.adv, cr=self.cr, n_neg=self.n_neg,
                          init_std=self.init_std)
            cfgmod.require(len(self.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas),
                           f"{s}.betas = {self.betas} must be two numbers in [0, 1).")
            ok = len(self.local_scale) == 2 and all(isinstance(v, (int, float)) for v in self.local_scale)
            lo, hi = self.local_scale if ok else (0, 0)
            cfgmod.require(ok and 0 < lo <= hi <= 1, f"{s}.local_scale = {self.local_scale} must satisfy 0 < lo <= hi <= 1.")

    def check_setup(self, setup: SynthesisSetup) -> None:
        cfg = self.cfg
        check_generator_size(setup.spec.image_size, "cmi")
        if cfg.batch_size < 2:
            raise ConfigError("cmi.batch_size must be >= 2: the generator's BatchNorm needs 2 images per batch.")
        if cfg.bn > 0 and not bn_layers(setup.teacher):
            raise ConfigError("cmi: the teacher has no BatchNorm2d layer, so the BN statistics loss is "
                              "undefined; set cmi.bn = 0 or use a teacher with BN.")
        if cfg.cr > 0 and not feature_layers(setup.teacher, cfg.features):
            raise ConfigError(f"cmi: the teacher has no layers for features = {cfg.features!r}; "
                              "use features = 'bn' or 'stages', or set cmi.cr = 0.")

    def __init__(self, setup: SynthesisSetup, cfg=None, **params) -> None:
        super().__init__(setup, cfg, **params)
        cfg, spec = self.cfg, self.spec
        self.generator = Generator(cfg.nz, cfg.ngf, spec.image_size, spec.channels).to(self.device).train()
        self.bn_loss = BNStatLoss(self.teacher)
        self.layers = feature_layers(self.teacher, cfg.features) if cfg.cr > 0 else []
        self.feature_dim = self._feature_dim() if self.layers else 0
        self.head = self.head_opt = self.bank = None
        if self.layers:
            self.head = ProjectionHead(self.feature_dim, cfg.head_dim).to(self.device).train()
            self.head_opt = torch.optim.Adam(self.head.parameters(), lr=cfg.lr)
            self.bank = MemoryBank(cfg.bank_size, 2 * self.feature_dim)  # [local | global]
        self._leaves: list[Tensor] = []

    def _feature_dim(self) -> int:
        """d of the instance features (one no-grad teacher forward on 2 dummy images)."""
        with eval_frozen(self.teacher), torch.no_grad(), InstanceFeatures(self.layers) as feats:
            self.teacher.forward_features(torch.zeros(2, *self.spec.shape, device=self.device))
            return int(feats.features().shape[1])

    def optimized_tensors(self) -> list[Tensor]:
        """The leaves the current synthesize() call optimizes for the images (generator params, z)."""
        return list(self._leaves)

    def synthesize(self) -> SynthesisResult:
        cfg, spec = self.cfg, self.spec
        t0 = time.perf_counter()
        targets = self.random_targets(cfg.batch_size)
        gen = self.generator
        gen.reset_parameters(cfg.init_std)
        z = torch.randn(cfg.batch_size, cfg.nz, device=self.device).requires_grad_()
        self._leaves = [*gen.parameters(), z]
        opt = torch.optim.Adam([{"params": gen.parameters()}, {"params": [z]}], lr=cfg.lr, betas=tuple(cfg.betas))
        adv_on = cfg.adv > 0
        need_student = self.need_student(adv_on)
        use_cr = cfg.cr > 0
        best = BestStep()
        best_feats = None
        feats = InstanceFeatures(self.layers)
        try:
            with self.frozen_models(), self.bn_loss as bnl, feats:
                for it in range(cfg.iterations):
                    x = gen(z)
                    g_view = spec.normalize(random_crop_flip(x, spec.crop_padding, spec.hflip))
                    l_view = spec.normalize(random_resized_crop(x, tuple(cfg.local_scale), hflip=spec.hflip)) if use_cr else None
                    bnl.enabled = True
                    t_out, s_out = self.forward_pair(g_view, need_student)
                    terms = inversion_terms(cfg.bn, cfg.oh, cfg.adv if adv_on else 0.0, bnl, t_out,
                                            s_out, targets, masked_kl_adversarial)
                    if use_cr:
                        g_feat = feats.features()
                        bnl.enabled = False
                        with self.timer("teacher_forward"):
                            self.teacher.forward_features(l_view)
                        l_feat = feats.features()
                        terms["cr"] = cfg.cr * self._contrastive(l_feat, g_feat)
                    terms.update(self.step_terms(g_view, targets, t_out, s_out, it))
                    terms = self.balance(terms, x, it)
                    loss = total_loss(terms, where="cmi synthesis", step=self.step)
                    if best.offer(loss, x, terms):
                        if use_cr:
                            best_feats = torch.cat([l_feat, g_feat], dim=1).detach().clone()
                    opt.zero_grad(set_to_none=True)
                    if self.head_opt is not None:
                        self.head_opt.zero_grad(set_to_none=True)
                    self.backward(loss)
                    opt.step()
                    if use_cr:
                        self.head_opt.step()
                    self.step += 1
        finally:
            self._leaves = []
        if use_cr:
            self.bank.add(best_feats)
        return self.finish(best.images, targets, t0, best.terms)

    def _contrastive(self, l_feat: Tensor, g_feat: Tensor) -> Tensor:
        """L_cr with the current batch first, then n_neg bank rows (past batches only)."""
        cached = self.bank.sample(self.cfg.n_neg, self.device)
        c_local, c_global = cached.split(self.feature_dim, dim=1)
        proj = self.head(torch.cat([l_feat, c_local, g_feat, c_global], dim=0))
        p_local, p_global = proj.chunk(2, dim=0)
        return contrastive_loss(p_local, p_global, n_current=l_feat.shape[0], tau=self.cfg.tau)

    # -- persistence -------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        if self.head is None:
            return {}
        return {"head": self.head.state_dict(), "head_opt": self.head_opt.state_dict(),
                "bank": self.bank.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state or self.head is None:
            return
        self.head.load_state_dict(state["head"])
        self.head_opt.load_state_dict(state["head_opt"])
        self.bank.load_state_dict(state["bank"])
