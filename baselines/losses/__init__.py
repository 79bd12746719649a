"""Loss terms of the DFKD baselines, one small module per family.

* :mod:`.bn` — BatchNorm statistics loss (DeepInversion; momentum variant of Fast-DFKD;
  DFQ's Gaussian-KL form);
* :mod:`.adversarial` — DeepInversion's JS term, CMI/Fast's masked KL;
* :mod:`.priors` — total variation, l2 norm, the class (cross-entropy) term;
* :mod:`.contrastive` — CMI's instance features, projection head, memory bank, InfoNCE;
* :mod:`.generative` — the generator methods' terms: KL / MAE adversarial (ZSKT, DFQ, DFAD),
  DAFL's activation and information-entropy losses, ZSKT's attention transfer.

Each returns an *unweighted* tensor; synthesizers weight them into named terms.
"""
from .adversarial import adi_loss, js_divergence, kl_per_sample, masked_kl_adversarial
from .bn import BN_FORMS, BNStatLoss, bn_gaussian_kl, bn_layers, bn_stat_distance, channel_stats
from .contrastive import (InstanceFeatures, MemoryBank, ProjectionHead, contrastive_loss,
                          feature_layers)
from .generative import (activation_loss, attention_map, attention_transfer_loss,
                         information_entropy_loss, kl_adversarial, mae_adversarial)
from .inversion import inversion_terms
from .priors import class_loss, l2_norm, neighbour_differences, total_variation

__all__ = [
    "adi_loss", "js_divergence", "kl_per_sample", "masked_kl_adversarial",
    "BN_FORMS", "BNStatLoss", "bn_gaussian_kl", "bn_layers", "bn_stat_distance", "channel_stats",
    "InstanceFeatures", "MemoryBank", "ProjectionHead", "contrastive_loss", "feature_layers",
    "activation_loss", "attention_map", "attention_transfer_loss", "information_entropy_loss",
    "kl_adversarial", "mae_adversarial",
    "inversion_terms", "class_loss", "l2_norm", "neighbour_differences", "total_variation",
]
