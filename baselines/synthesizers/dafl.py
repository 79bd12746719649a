"""DAFL, Data-Free Learning of student networks (Chen et al., ICCV 2019).

A generator G is trained so that the teacher treats its images like real data:

    L_G = oh * CE(t(x), argmax t(x)) + act * L_a + ie * L_ie,     x = G(z), z ~ N(0, I)

* "oh": one-hot loss, cross-entropy of the teacher's logits against its own argmax
  (confident predictions);
* "act": activation loss L_a = -mean |f_T(x)| of the teacher's pooled features;
* "ie": information entropy L_ie = sum_k p_bar_k log p_bar_k, p_bar = batch mean of the
  teacher's softmax (-H(p_bar): the batch should cover all classes equally).

Defaults: the paper's weights oh 1, act 0.1, ie 5 (Eq. 6, alpha = 0.1, beta = 5). The
public CMI / Fast-Datafree scripts run DAFL with oh 1, act 0.001, balance (= ie) 20,
lr_g 1e-3, nz 512, one generator step per 5 KD steps. DAFL has no adversarial term, so the
student plays no part in synthesis (the reference harness built it with student = teacher,
harmless here); it is trained by the shared KD loop (see
:mod:`~.generative` for how the paper's joint generator/student step maps onto
``distill.kd_steps``; the paper's student loss is KD at T = 1, set ``distill.temperature``).

Deviations: the generator is the harness' (sigmoid output, normalized before the teacher)
instead of DAFL's tanh + affine-free BatchNorm one; entropy in natural log (the original
DAFL code takes log10, i.e. the ie weight scaled by 1 / ln 10).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import config as cfgmod
from ..losses import activation_loss, class_loss, information_entropy_loss
from .generative import GenerativeSynthesizer


class DAFL(GenerativeSynthesizer):
    """DAFL (Chen et al. 2019): generator with one-hot, activation and information-entropy losses."""

    name = "dafl"
    uses_student = False

    @dataclass
    class Config(GenerativeSynthesizer.Config):
        nz: int = 512  # the reference harness' DAFL latent size
        oh: float = 1.0
        act: float = 0.1  # paper alpha; public scripts: 0.001
        ie: float = 5.0  # paper beta; public scripts ("balance"): 20

        section: ClassVar[str] = "dafl"

        def validate_weights(self) -> None:
            cfgmod.nonneg(self.section, oh=self.oh, act=self.act, ie=self.ie)

    def weights(self) -> dict[str, float]:
        return {"oh": self.cfg.oh, "act": self.cfg.act, "ie": self.cfg.ie}

    def adversarial_on(self) -> bool:
        return False

    def generator_terms(self, t_out, s_out, bn_loss):
        cfg, logits = self.cfg, t_out.logits
        terms = {}
        if cfg.oh > 0:
            terms["oh"] = cfg.oh * class_loss(logits, logits.detach().argmax(1))
        if cfg.act > 0:
            terms["act"] = cfg.act * activation_loss(t_out.pooled)
        if cfg.ie > 0:
            terms["ie"] = cfg.ie * information_entropy_loss(logits)
        return terms
