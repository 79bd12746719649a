"""Image priors and the class term of model inversion (DeepInversion, Yin et al. CVPR 2020).

* total variation over the four neighbour differences (right, down and both diagonals) of
  NVlabs' ``get_image_prior_losses``: "l2" = sum_k ||d_k||_2, "l1" = sum_k mean |d_k|;
* ``l2_norm`` = ||x||_2 of the whole batch (the port's ``torch.norm(inputs, 2)``);
* ``class_loss`` = cross-entropy of the teacher's logits against the sampled targets ("oh").
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def neighbour_differences(x: Tensor) -> list[Tensor]:
    """The four neighbour differences of x [N, C, H, W] used by DeepInversion's TV prior."""
    return [
        x[:, :, :, :-1] - x[:, :, :, 1:],
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
        x[:, :, :-1, :-1] - x[:, :, 1:, 1:],
    ]


def total_variation(x: Tensor, norm: Literal["l1", "l2"] = "l2") -> Tensor:
    """TV prior: "l2" = sum_k ||d_k||_2, "l1" = sum_k mean|d_k| over the 4 differences."""
    diffs = neighbour_differences(x)
    if norm == "l2":
        return sum(torch.linalg.vector_norm(d) for d in diffs)
    if norm == "l1":
        return sum(d.abs().mean() for d in diffs)
    raise ValueError(f"unknown total-variation norm {norm!r}; known: 'l1', 'l2'")


def l2_norm(x: Tensor) -> Tensor:
    """||x||_2 over the whole batch."""
    return torch.linalg.vector_norm(x)


def class_loss(teacher_logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of the teacher's logits against the sampled target labels."""
    return F.cross_entropy(teacher_logits, targets)
