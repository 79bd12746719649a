"""DFAD, Data-Free Adversarial Distillation (Fang et al., arXiv 1912.11006, 2019).

A min-max game: the generator looks for images on which the student's logits are far from
the teacher's, the student closes the gap:

    L_G = adv * (-MAE(s(x), t(x))) = -adv * mean_{i,k} |z_S,ik - z_T,ik|,   x = G(z)

(the teacher is not asked to be confident: no BN, class or entropy term). The adversarial
term uses the real, distinct student; the reference harness built this method with
student = teacher, where it is identically 0 (and the generator never learns).

Defaults (paper, CIFAR): generator Adam lr 1e-3, nz 256, batch 256, one generator step per
5 student steps (``iterations = 1`` with ``distill.kd_steps = 5``, see
:mod:`~.generative`); 500 epochs x 50 iterations; student SGD lr 0.1, wd 5e-4. The paper's
student also minimizes the MAE; here the shared KD loop uses its KL at ``distill.temperature``
(the L1 objective is only on the generator side).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import config as cfgmod
from ..losses import mae_adversarial
from .generative import GenerativeSynthesizer


class DFAD(GenerativeSynthesizer):
    """DFAD (Fang et al. 2019): adversarial generator maximizing the teacher-student logit MAE."""

    name = "dfad"

    @dataclass
    class Config(GenerativeSynthesizer.Config):
        adv: float = 1.0

        section: ClassVar[str] = "dfad"

        def validate_weights(self) -> None:
            cfgmod.nonneg(self.section, adv=self.adv)

    def weights(self) -> dict[str, float]:
        return {"adv": self.cfg.adv}

    def generator_terms(self, t_out, s_out, bn_loss):
        if self.cfg.adv > 0:
            return {"adv": self.cfg.adv * mae_adversarial(s_out.logits, t_out.logits)}
        return {}
