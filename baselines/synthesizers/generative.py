"""The shared loop of the generator-based methods DAFL, ZSKT, DFAD and DFQ.

These methods (the zju-vipa ``GenerativeSynthesizer`` branch) keep *one* generator
(:class:`~.generator.Generator`, z -> sigmoid pixels) and one Adam optimizer (betas
(0.5, 0.999)) for the whole run. Each ``synthesize()`` call takes ``iterations`` generator
steps; every step draws a fresh z ~ N(0, I) [batch_size, nz], makes x = G(z), feeds the
normalized x (no augmentation, as the references) to the teacher (and the student when a
term needs it) and descends the method's objective (``generator_terms``, named and
weighted) plus the attached regularizers' terms. No latent is optimized.

**Schedule.** In the papers and the reference harness the student is trained in alternation
with the generator: k KD steps, then n_G generator steps (DFAD: k = 5, ZSKT: n_S = 10,
DAFL: one each, jointly). Here the shared KD loop (:mod:`baselines.distill`) does the
student side: one harness epoch = ``distill.synth_batches`` synthesize() calls (each
``iterations`` generator steps) followed by ``distill.kd_steps`` KD steps. So set
``<method>.iterations = n_G`` and ``distill.kd_steps = k``, and count epochs in
generator/student *rounds* (the reference's 200 epochs x 400 / 5 = 16,000 rounds for
``kd_steps = 5``); ``distill.eval_every`` then counts rounds too.

**What KD trains on** (``kd_source``): ``"generator"`` (default, the references and the
papers): every ``sample(n)`` draws a fresh z and serves G(z) from the *current* generator,
normalized, without augmentation, labels -1; the pool then only feeds the held-out set and
the sample grid. The seconds spent generating those KD batches count as distillation time,
not synthesis time. ``"pool"``: KD samples the pool of kept batches with the train
augmentation, like DeepInversion / CMI / Fast. Each synthesize() call adds one batch (a
fresh draw from the updated generator, labelled with the teacher's argmax) to the pool,
which keeps at most ``pool_size`` images (oldest batches dropped; 0 = unbounded): at one
small batch per round the pool would otherwise grow without bound.

The teacher and the student are frozen during synthesis (no BN running statistic changes);
the teacher runs on its running statistics, the student as ``distill.synthesis_student_mode``
says (default batch statistics, see :class:`~.base.SynthesisSetup`); the generator runs in
train mode (batch statistics), as the references.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from .. import config as cfgmod
from ..errors import ConfigError
from ..hooks import detach_terms, total_loss
from ..losses import BNStatLoss, bn_layers
from ..models import ModelOutput
from ..pool import ImagePool
from .base import SynthesisResult, SynthesisSetup, Synthesizer
from .generator import Generator, check_generator_size

KDSource = Literal["generator", "pool"]


def check_betas(section: str, betas: Any) -> None:
    cfgmod.require(len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas),
                   f"{section}.betas = {betas} must be two numbers in [0, 1).")


class GenerativeSynthesizer(Synthesizer):
    """Base of DAFL / ZSKT / DFAD / DFQ (see module docstring). Not registered itself.

    Subclasses set ``name``, a ``Config`` deriving from :class:`GenerativeSynthesizer.Config`
    (adding their weights), ``weights()`` (the term weights, for the all-zero check) and
    ``generator_terms(t_out, s_out, bn_loss)``; ``adversarial_on()`` says whether the
    student's forward pass is needed for the method's own terms.
    """

    @dataclass
    class Config:
        batch_size: int = 256
        iterations: int = 1  # generator steps per synthesize() call (n_G)
        lr_g: float = 1e-3
        betas: tuple[float, float] = (0.5, 0.999)
        nz: int = 256
        ngf: int = 64
        init_std: float = 0.0  # 0 = PyTorch default init (reference); > 0: N(0, init_std)
        kd_source: KDSource = "generator"
        pool_size: int = 51200  # images kept in the pool (0 = unbounded)

        section: ClassVar[str] = "generative"

        def validate(self) -> None:
            s = self.section
            for k in ("batch_size", "iterations", "nz", "ngf"):
                cfgmod.require(getattr(self, k) >= 1, f"{s}.{k} = {getattr(self, k)} must be >= 1.")
            cfgmod.positive(s, lr_g=self.lr_g)
            cfgmod.nonneg(s, init_std=self.init_std, pool_size=self.pool_size)
            check_betas(s, self.betas)
            cfgmod.require(self.pool_size == 0 or self.pool_size >= self.batch_size,
                           f"{s}.pool_size = {self.pool_size} is smaller than one batch "
                           f"({s}.batch_size = {self.batch_size}); use 0 (unbounded) or a larger pool.")
            self.validate_weights()

        def validate_weights(self) -> None:
            pass

    #: whether this method uses the teacher's BN statistics loss (term "bn").
    uses_bn: ClassVar[bool] = False

    def weights(self) -> dict[str, float]:
        raise NotImplementedError

    def adversarial_on(self) -> bool:
        return self.weights().get("adv", 0.0) > 0

    def bn_form(self) -> str:
        """The BN-statistics distance of term "bn" (:class:`~baselines.losses.BNStatLoss` ``form``)."""
        return "l2"

    def generator_terms(self, t_out: ModelOutput, s_out: ModelOutput | None,
                        bn_loss: BNStatLoss | None) -> dict[str, Tensor]:
        raise NotImplementedError

    # -- setup -------------------------------------------------------------------------
    def check_setup(self, setup: SynthesisSetup) -> None:
        check_generator_size(setup.spec.image_size, self.name)
        if self.cfg.batch_size < 2:
            raise ConfigError(f"{self.name}.batch_size must be >= 2: the generator's BatchNorm "
                              "needs 2 images per batch.")
        w = self.weights()
        if w.get("bn", 0.0) > 0 and not bn_layers(setup.teacher):
            raise ConfigError(f"{self.name}: the teacher has no BatchNorm2d layer with running "
                              f"statistics, so the BN statistics loss is undefined; set "
                              f"{self.name}.bn = 0 or use a teacher with BN.")
        if sum(w.values()) == 0 and not len(setup.regularizers):
            keys = ", ".join(f"{self.name}.{k}" for k in w)
            raise ConfigError(f"{self.name}: every loss weight is 0 ({keys}); the generator would "
                              "not learn anything. Enable at least one term.")
        if w.get("adv", 0.0) > 0 and setup.student is setup.teacher:
            raise ConfigError(f"{self.name}: the student is the teacher, so the adversarial term "
                              f"is identically 0 (the reference harness' bug); pass a distinct "
                              f"student or set {self.name}.adv = 0.")

    def __init__(self, setup: SynthesisSetup, cfg=None, **params) -> None:
        super().__init__(setup, cfg, **params)
        cfg, spec = self.cfg, self.spec
        self.pool = ImagePool(max_size=cfg.pool_size or None)
        self.generator = Generator(cfg.nz, cfg.ngf, spec.image_size, spec.channels).to(self.device).train()
        if cfg.init_std > 0:
            self.generator.reset_parameters(cfg.init_std)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas))
        self.bn_loss = (BNStatLoss(self.teacher, form=self.bn_form())
                        if self.weights().get("bn", 0.0) > 0 else None)
        self._leaves: list[Tensor] = []

    def optimized_tensors(self) -> list[Tensor]:
        """The leaves the generator steps optimize (the generator's parameters)."""
        return list(self._leaves)

    def latent(self, n: int) -> Tensor:
        return torch.randn(n, self.cfg.nz, device=self.device)

    # -- synthesis ---------------------------------------------------------------------
    def synthesize(self) -> SynthesisResult:
        cfg, spec = self.cfg, self.spec
        t0 = time.perf_counter()
        gen = self.generator.train()
        self._leaves = list(gen.parameters())
        need_student = self.need_student(self.adversarial_on())
        terms: dict[str, Tensor] = {}
        try:
            with self.frozen_models():
                with self.bn_loss if self.bn_loss is not None else nullcontext():
                    for it in range(cfg.iterations):
                        x = gen(self.latent(cfg.batch_size))
                        xn = spec.normalize(x)
                        t_out, s_out = self.forward_pair(xn, need_student)
                        terms = self.generator_terms(t_out, s_out, self.bn_loss)
                        terms.update(self.step_terms(xn, None, t_out, s_out, it))
                        terms = self.balance(terms, x, it)
                        loss = total_loss(terms, where=f"{self.name} synthesis", step=self.step)
                        self.optimizer.zero_grad(set_to_none=True)
                        self.backward(loss)
                        self.optimizer.step()
                        self.step += 1
                logged = detach_terms(terms)
                with torch.no_grad():  # the kept batch: a fresh draw from the updated generator
                    x = gen(self.latent(cfg.batch_size))
                    with self.timer("teacher_forward"):
                        targets = self.teacher(spec.normalize(x)).argmax(1)
        finally:
            self._leaves = []
        return self.finish(x, targets, t0, logged)

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """A KD batch: fresh generator images (``kd_source = "generator"``) or the pool's."""
        if self.cfg.kd_source == "pool":
            return super().sample(batch_size)
        with torch.no_grad():
            x = self.generator.train()(self.latent(batch_size))
        return self.spec.normalize(x), torch.full((batch_size,), -1, dtype=torch.long, device=self.device)

    # -- persistence ---------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])

