"""Relational Consistency Alignment (RCA), STARS (arXiv 2605.27409).

L_RCA = mean over the chosen feature sets of D(R(f_T), R(f_S)), with R and D from
:mod:`stars_plugin.relations` (default: cosine relations, squared error), over the *live*
samples of each set (non-zero features on both sides: a silent student sample has no
relation to compare and gets no RCA gradient; :func:`live_fractions` reports the share).
Feature sets:

- ``pooled``: the classifier inputs f_T [B, d_T] and f_S [B, d_S] (SNN: time-averaged);
- ``stages``: every matched stage pair (``match_stages`` on the two stage counts), each
  stage spatially pooled to [B, C] (``ModelOutput.stage_vectors``); widths need not match.

Phases and signs (chosen by the caller, :class:`stars_plugin.stars.STARS`):

- synthesis: an extra term on the images / generator. The teacher's relations are the
  target (``detach_teacher``, set by STARS' ``rca_teacher_path = "detached"``, default), so
  the gradient reaches the images through the student (the synthesizer freezes the
  student's parameters but does not detach its output); ``"live"`` lets it flow through
  both networks, where 95-96% of it went through the teacher (benchmarks.rca_paths).
  ``cooperative`` (+L) makes batches on which the student's relations agree with the
  teacher's; ``adversarial`` (-L) batches on which they disagree.
- distillation: a relational KD term on the student (the SP / RKD family); the teacher's
  features are detached.
"""
from __future__ import annotations

from torch import Tensor

from baselines.models import ModelOutput, match_stages

from .relations import live_rows, relation_loss

FEATURE_SETS = ("pooled", "stages", "pooled+stages")


def feature_pairs(teacher: ModelOutput, student: ModelOutput,
                  features: str = "pooled") -> list[tuple[str, Tensor, Tensor]]:
    """(label, f_T, f_S) pairs RCA compares: ``pooled`` and/or each matched stage."""
    pairs: list[tuple[str, Tensor, Tensor]] = []
    if features in ("pooled", "pooled+stages"):
        pairs.append(("pooled", teacher.pooled, student.pooled))
    if features in ("stages", "pooled+stages"):
        tv, sv = teacher.stage_vectors(), student.stage_vectors()
        for ti, si in match_stages(len(tv), len(sv)):
            pairs.append((f"t{ti}_s{si}", tv[ti], sv[si]))
    return pairs


def rca_loss(teacher: ModelOutput, student: ModelOutput, *, relation: str = "cosine",
             temperature: float = 0.1, features: str = "pooled",
             detach_teacher: bool = False) -> Tensor:
    """Mean relational discrepancy over the feature pairs (unweighted, unsigned)."""
    pairs = feature_pairs(teacher, student, features)
    if not pairs:
        raise ValueError(f"RCA has no features to compare (features={features!r})")
    total = None
    for _, f_t, f_s in pairs:
        if detach_teacher:
            f_t = f_t.detach()
        loss = relation_loss(f_t, f_s, relation, temperature)
        total = loss if total is None else total + loss
    return total / len(pairs)


def stage_discrepancies(teacher: ModelOutput, student: ModelOutput, *, relation: str = "cosine",
                        temperature: float = 0.1) -> dict[str, float]:
    """Relational discrepancy per matched stage and on the pooled features (floats)."""
    return {label: float(relation_loss(f_t.detach(), f_s.detach(), relation, temperature))
            for label, f_t, f_s in feature_pairs(teacher, student, "pooled+stages")}


def live_fractions(teacher: ModelOutput, student: ModelOutput) -> dict[str, float]:
    """Share of samples RCA compares (non-zero features on both sides), per feature pair."""
    return {label: float((live_rows(f_t) & live_rows(f_s)).float().mean())
            for label, f_t, f_s in feature_pairs(teacher, student, "pooled+stages")}
