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

Silent and near-silent samples. A spiking student's pooled spikes are often exactly zero
for some samples (a silent or sparse student). The cosine of a zero vector is undefined,
and the gradient of f / ||f|| scales as 1 / ||f||: with the former F.normalize(eps=1e-8)
an all-zero row got ~1e8 times the gradient of the others (4.0e3 against 4.5e-3 per image
in a batch of 64 with 16 silent samples, 890x the BN term), and an all-silent batch turned
RCA into a teacher-only decorrelation term (R_S = 0, loss = mean R_T^2). Therefore:

- :func:`relation_loss` compares relations only among *live* samples, those whose
  feature vector is non-zero on both sides (:func:`live_rows`): a silent sample has no
  relation to compare, so it contributes neither value nor gradient (teacher side
  included). With fewer than two live samples the loss is 0 (with a graph, zero gradient).
  When every sample is live the value is exactly the former one.
- Rows are normalized by max(||f_i||, delta), delta = ``NORM_FLOOR`` (0.1) times the median
  norm of the batch's non-zero rows (detached): rows at least that long are normalized
  exactly; shorter ones (one spike among many) keep their length / delta < 1, so their
  gradient is at most 1 / delta, ~10x a median row's, instead of 1 / ||f_i||. Relative to
  the batch, so every kind stays invariant to a positive rescaling of f.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines import UnknownNameError

RELATIONS = ("cosine", "distance", "rank", "softmax-kl")
_EPS = 1e-8
NORM_FLOOR = 0.1  # rows shorter than NORM_FLOOR * median non-zero row norm are not inflated


def _check(kind: str) -> None:
    if kind not in RELATIONS:
        raise UnknownNameError("relation kind", kind, list(RELATIONS))


def _flat(f: Tensor) -> Tensor:
    return f.reshape(f.shape[0], -1).float()


def off_diagonal(m: Tensor) -> Tensor:
    """[B, B] -> [B, B-1]: each row without its diagonal entry (view trick, no sync)."""
    b = m.shape[0]
    return m.flatten()[:-1].view(b - 1, b + 1)[:, 1:].reshape(b, b - 1)


def live_rows(f: Tensor) -> Tensor:
    """[B] bool: samples whose (flattened) feature vector is not all zero."""
    return _flat(f).abs().amax(1) > 0


def norm_floor(norms: Tensor) -> Tensor:
    """delta = NORM_FLOOR * median of the non-zero row norms (detached; _EPS if none)."""
    n = norms.detach()
    med = torch.nanmedian(torch.where(n > 0, n, torch.full_like(n, float("nan"))))
    return (NORM_FLOOR * torch.nan_to_num(med, nan=1.0)).clamp_min(_EPS)


def normalize_rows(f: Tensor) -> Tensor:
    """N(f): rows divided by max(||f_i||, delta) (see module docstring)."""
    x = _flat(f)
    norms = x.norm(dim=1)
    return x / torch.maximum(norms, norm_floor(norms))[:, None]


def cosine_matrix(f: Tensor) -> Tensor:
    """R = N(f) N(f)^T, the B x B cosine-similarity matrix (N: :func:`normalize_rows`)."""
    n = normalize_rows(f)
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
    """Discrepancy between R(f_T) and R(f_S) over the live samples (0 iff the relations
    agree); see module doc. Fewer than two live samples: 0 with zero gradient."""
    if f_t.shape[0] != f_s.shape[0]:
        raise ValueError(f"teacher and student batches differ: {f_t.shape[0]} vs {f_s.shape[0]}")
    live = live_rows(f_t) & live_rows(f_s)
    n_live = int(live.sum())  # one device sync per call
    if n_live < 2:
        return 0.0 * (_flat(f_t).sum() + _flat(f_s).sum())
    if n_live < f_t.shape[0]:
        idx = live.nonzero().squeeze(1)
        f_t, f_s = f_t[idx], f_s[idx]
    r_t = relation_matrix(f_t, kind, temperature)
    r_s = relation_matrix(f_s, kind, temperature)
    if kind == "softmax-kl":
        return F.kl_div(r_s, r_t, log_target=True, reduction="batchmean")
    return (r_t - r_s).pow(2).mean()
