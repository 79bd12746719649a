"""DFQ, data-free adversarial knowledge distillation (Choi et al., CVPR 2020 workshops,
"Data-Free Network Quantization With Adversarial Knowledge Distillation").

An adversarial generator constrained to produce images that fit the teacher's statistics:

    L_G = bn * L_bn + oh * CE(t(x), argmax t(x)) + adv * (-KL(p_T || p_S)) + balance * L_ie

* "bn": the BN-statistics loss over the teacher's BN layers l and channels c
  (:class:`~baselines.losses.BNStatLoss`). ``bn_form = "gaussian-kl"`` (default, the
  paper's form): batch and running statistics read as Gaussians,

      L_bn = sum_l sum_c KL(N(mu_lc, s2_lc) || N(mu_run_lc, s2_run_lc))
           = sum_l sum_c [ 1/2 log(s2_run / s2) + (s2 + (mu - mu_run)^2) / (2 s2_run) - 1/2 ]

  (variances + the layer's BN eps); ``bn_form = "l2"``: the reference harness'
  DeepInversion form, sum_l ||mu_l - mu_run_l||_2 + ||s2_l - s2_run_l||_2;
* "oh": cross-entropy to the teacher's own argmax (DFQ's instance categorical entropy term,
  in the one-hot form of the reference harness);
* "adv": the generator maximizes KL(softmax(t) || softmax(s)) (T = 1, batch mean) against
  the real, distinct student (the reference harness built DFQ with student = teacher, where
  this term is identically 0);
* "balance": DFQ's batch categorical entropy, -H(batch-mean softmax) (DAFL's L_ie).

Defaults: the public CMI / Fast-Datafree script (bn 1, oh 1, adv 1, balance 20, lr_g 1e-3,
nz 256, batch 256, one generator step per 10 KD steps: ``distill.kd_steps = 10``, KD
lr 0.05, T = 1; see :mod:`~.generative` for the schedule), with the paper's Gaussian-KL BN
term (the script's L2 term: ``dfq.bn_form = "l2"``). The paper also uses an ensemble of
generators in some settings; this port has one generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from .. import config as cfgmod
from ..losses import information_entropy_loss, inversion_terms, kl_adversarial
from .generative import GenerativeSynthesizer


class DFQ(GenerativeSynthesizer):
    """DFQ (Choi et al. 2020): generator with BN-statistics, one-hot, batch-entropy and adversarial KL terms."""

    name = "dfq"

    @dataclass
    class Config(GenerativeSynthesizer.Config):
        bn: float = 1.0
        oh: float = 1.0
        adv: float = 1.0
        balance: float = 20.0
        bn_form: Literal["gaussian-kl", "l2"] = "gaussian-kl"  # paper; "l2": public script

        section: ClassVar[str] = "dfq"

        def validate_weights(self) -> None:
            cfgmod.nonneg(self.section, bn=self.bn, oh=self.oh, adv=self.adv, balance=self.balance)

    def weights(self) -> dict[str, float]:
        c = self.cfg
        return {"bn": c.bn, "oh": c.oh, "adv": c.adv, "balance": c.balance}

    def bn_form(self) -> str:
        return self.cfg.bn_form

    def generator_terms(self, t_out, s_out, bn_loss):
        cfg, logits = self.cfg, t_out.logits
        terms = inversion_terms(cfg.bn, cfg.oh, cfg.adv, bn_loss, t_out, s_out,
                                logits.detach().argmax(1), kl_adversarial)
        if cfg.balance > 0:
            terms["balance"] = cfg.balance * information_entropy_loss(logits)
        return terms
