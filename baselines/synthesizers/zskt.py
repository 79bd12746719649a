"""ZSKT, Zero-Shot Knowledge Transfer via adversarial belief matching (Micaelli & Storkey,
NeurIPS 2019).

The generator seeks images on which the student's beliefs differ most from the teacher's:

    L_G = adv * (-KL(p_T(x) || p_S(x))),     x = G(z), z ~ N(0, I), T = 1 (batch mean)

and the student minimizes, on the same kind of images,

    L_S = KL(p_T || p_S) + at * sum_l || a(f_T,l) - a(f_S,l) ||^2       (attention transfer)

with a(f) the L2-normalized spatial map mean_c f_c^2 of a block's output (Zagoruyko &
Komodakis), summed over matched blocks (paper: beta = 250, the three WRN groups).

**How AT fits the harness.** The student's update is the shared KD loop, which accepts
extra terms only through regularizers acting in the "distill" phase. So this synthesizer
attaches its own distill-phase regularizer named ``zskt`` (:class:`AttentionTransfer`) to
``self.regularizers`` (a new set: the caller's RegularizerSet is not modified): every KD
step then adds ``zskt/at`` = at * sum over stages matched by relative depth
(:func:`~baselines.models.match_stages`) of mean((a_S - a_T)^2); maps of different size are
compared at the smaller one, and a spiking student's stage features are its time-averaged
spike rates. ``at = 0`` attaches nothing. The AT term is on the student side only, as in
the paper (the generator sees only the KL term).

The adversarial term uses the real, distinct student; the reference harness built ZSKT with
student = teacher (its KL is then identically 0) and had no AT term.

Defaults (paper, CIFAR-10): z of size 100, batch 128, generator Adam lr 1e-3, n_G = 1
generator step per n_S = 10 student steps (``iterations = 1``, ``distill.kd_steps = 10``,
see :mod:`~.generative`), 80k such rounds, student Adam lr 2e-3 with cosine annealing and
KD at T = 1 (here: the shared loop's SGD and ``distill.temperature``). The public CMI /
Fast-Datafree script instead runs nz 256, batch 256, 5 KD steps at T = 20, no AT.
Generator: the harness' (sigmoid output) rather than ZSKT's tanh + BatchNorm one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import config as cfgmod
from ..errors import ConfigError
from ..hooks import Regularizer, RegularizerSet, StepContext
from ..losses import attention_transfer_loss, kl_adversarial
from ..models import match_stages
from .generative import GenerativeSynthesizer


class AttentionTransfer(Regularizer):
    """ZSKT's student-side attention-transfer term (distill phase only), ``weight * L_AT``."""

    name = "zskt"
    phases = ("distill",)

    @dataclass
    class Config:
        weight: float = 250.0

        def validate(self) -> None:
            cfgmod.positive("zskt", at=self.weight)

    def terms(self, ctx: StepContext):
        t_feats, s_feats = ctx.teacher.features, ctx.student.features
        pairs = match_stages(len(t_feats), len(s_feats))
        return {"at": self.cfg.weight * attention_transfer_loss(s_feats, t_feats, pairs)}


class ZSKT(GenerativeSynthesizer):
    """ZSKT (Micaelli & Storkey 2019): adversarial generator maximizing KL(T || S); student-side attention transfer."""

    name = "zskt"

    @dataclass
    class Config(GenerativeSynthesizer.Config):
        batch_size: int = 128
        nz: int = 100
        adv: float = 1.0
        at: float = 250.0  # student-side attention transfer weight (paper beta); 0 = off

        section: ClassVar[str] = "zskt"

        def validate_weights(self) -> None:
            cfgmod.nonneg(self.section, adv=self.adv, at=self.at)

    def __init__(self, setup, cfg=None, **params) -> None:
        super().__init__(setup, cfg, **params)
        self.attention = None
        if self.cfg.at > 0:
            if any(r.name == AttentionTransfer.name for r in self.regularizers):
                raise ConfigError(f"zskt: a regularizer named {AttentionTransfer.name!r} is already "
                                         "attached; it would clash with ZSKT's attention-transfer term.")
            self.attention = AttentionTransfer({"weight": self.cfg.at})
            self.regularizers = RegularizerSet([*self.regularizers, self.attention])

    def check_setup(self, setup) -> None:
        super().check_setup(setup)
        if self.cfg.at > 0 and (not setup.teacher.num_stages or not setup.student.num_stages):
            raise ConfigError("zskt: attention transfer needs staged teacher and student "
                                     "(model.stages); set zskt.at = 0 to train without it.")

    def weights(self) -> dict[str, float]:
        return {"adv": self.cfg.adv}  # generator-side weights (AT acts on the student)

    def adversarial_on(self) -> bool:
        return self.cfg.adv > 0

    def generator_terms(self, t_out, s_out, bn_loss):
        if self.cfg.adv > 0:
            return {"adv": self.cfg.adv * kl_adversarial(s_out.logits, t_out.logits)}
        return {}
