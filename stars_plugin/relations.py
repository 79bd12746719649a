"""Cross-sample relations R(f) of a batch of feature vectors (the RCA building block).

STARS' Relational Consistency Alignment (arXiv 2605.27409) compares the B x B relation
matrices of the teacher's and the student's features on the same synthetic batch. Widths
may differ (d_T != d_S): only B x B matrices are compared. All kinds are batched matrix
ops (no Python loop over samples) and invariant to a positive rescaling of the features:

- ``cosine`` (default, the seed's choice): R = N(f) N(f)^T, N = row L2 normalization;
  loss = mean((R_T - R_S)^2) over all B x B entries (the seed's F.mse_loss).
- ``distance``: R_ij = ||f_i - f_j|| / mean_{k != l} ||f_k - f_l|| (RKD-D normalization);
  loss = mean squared difference over the off-diagonal entries.
- ``rank``: row-wise soft ranks of the cosine matrix, r_ij = mean_{k != i}
  sigmoid((C_ij - C_ik) / temperature) over the off-diagonal entries (values in [0, 1]);
  loss = mean squared difference. Memory O(B^3): B = 256 needs ~17M floats per side.
- ``softmax-kl``: P_i = softmax_j(C_ij / temperature) over j != i (row-softmax of the
  cosine matrix, self-similarity removed); loss = mean_i KL(P_T,i || P_S,i).

Features are flattened to [B, d] and computed in float32 (the matrices are tiny).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines import UnknownNameError

RELATIONS = ("cosine", "distance", "rank", "softmax-kl")
_EPS = 1e-8


def _check(kind: str) -> None:
    if kind not in RELATIONS:
        raise UnknownNameError("relation kind", kind, list(RELATIONS))


def _flat(f: Tensor) -> Tensor:
    return f.reshape(f.shape[0], -1).float()


def off_diagonal(m: Tensor) -> Tensor:
    """[B, B] -> [B, B-1]: each row without its diagonal entry (view trick, no sync)."""
    b = m.shape[0]
    return m.flatten()[:-1].view(b - 1, b + 1)[:, 1:].reshape(b, b - 1)


def cosine_matrix(f: Tensor) -> Tensor:
    """R = N(f) N(f)^T, the B x B cosine-similarity matrix."""
    n = F.normalize(_flat(f), dim=1, eps=_EPS)
    return n @ n.t()


def distance_matrix(f: Tensor) -> Tensor:
    """Off-diagonal Euclidean distances divided by their mean: [B, B-1]."""
    x = _flat(f)
    sq = x.pow(2).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())
    d = off_diagonal(d2).clamp_min(_EPS).sqrt()
    return d / d.mean().clamp_min(_EPS)


def soft_rank_matrix(f: Tensor, temperature: float) -> Tensor:
    """Row-wise soft ranks of the off-diagonal cosine similarities: [B, B-1] in [0, 1]."""
    c = off_diagonal(cosine_matrix(f))
    return torch.sigmoid((c[:, :, None] - c[:, None, :]) / temperature).mean(-1)


def relation_matrix(f: Tensor, kind: str = "cosine", temperature: float = 0.1) -> Tensor:
    """R(f) for ``kind`` (for ``softmax-kl``: the row log-softmax over j != i)."""
    _check(kind)
    if f.shape[0] < 2:
        raise ValueError(f"relations need a batch of at least 2 samples, got {f.shape[0]}")
    if kind == "cosine":
        return cosine_matrix(f)
    if kind == "distance":
        return distance_matrix(f)
    if kind == "rank":
        return soft_rank_matrix(f, temperature)
    return F.log_softmax(off_diagonal(cosine_matrix(f)) / temperature, dim=1)


def relation_loss(f_t: Tensor, f_s: Tensor, kind: str = "cosine",
                  temperature: float = 0.1) -> Tensor:
    """Discrepancy between R(f_T) and R(f_S) (0 iff the relations agree); see module doc."""
    if f_t.shape[0] != f_s.shape[0]:
        raise ValueError(f"teacher and student batches differ: {f_t.shape[0]} vs {f_s.shape[0]}")
    r_t = relation_matrix(f_t, kind, temperature)
    r_s = relation_matrix(f_s, kind, temperature)
    if kind == "softmax-kl":
        return F.kl_div(r_s, r_t, log_target=True, reduction="batchmean")
    return (r_t - r_s).pow(2).mean()
