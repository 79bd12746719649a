"""Health checks of a finished distillation: did it diverge, or learn nothing?

:func:`divergence_flags` reads the per-epoch ``history`` of
:class:`baselines.distill.DistillResult` (records with ``epoch``, ``kd_loss`` (None in a
warm-up epoch without KD), optionally ``test_acc`` in %) and returns human-readable flags;
an empty list means healthy. A run with flags still finished: the caller records them
(e.g. a ``flags`` / ``diverged`` field in result.json) rather than failing it.

Flags:

- ``kd_loss`` not finite, or above ``kd_loss_bound``, at some epoch (the first such epoch
  is named, with how many epochs were affected). :func:`kd_loss_bound` gives a default: the
  KD loss (tau^2 KL(teacher || student)) of a student that predicts the uniform
  distribution is tau^2 (ln K - H(teacher)) <= tau^2 ln K, so a loss above tau^2 ln K is
  worse than knowing nothing.
- the last evaluated test accuracy at chance: ``acc <= 100/K + chance_margin`` (margin 2
  percentage points by default), or not a number;
- no KD step ran at all (every epoch a warm-up), or the history has no evaluation.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

#: percentage points above 100/K still counted as chance
CHANCE_MARGIN = 2.0


def kd_loss_bound(num_classes: int, temperature: float, factor: float = 1.0) -> float:
    """``factor * temperature**2 * ln(num_classes)``: the KD loss above which the student is
    worse than a uniform guess (see module docstring)."""
    if num_classes < 2:
        raise ValueError(f"num_classes = {num_classes}: need at least 2 classes")
    return factor * float(temperature) ** 2 * math.log(num_classes)


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def divergence_flags(history: Iterable[dict[str, Any]], num_classes: int, kd_loss_bound: float | None,
                     chance_margin: float = CHANCE_MARGIN) -> list[str]:
    """Flags of a diverged or untrained run (empty when healthy); see module docstring.

    ``kd_loss_bound`` None skips the loss check. ``num_classes`` K sets chance at 100/K %.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes = {num_classes}: need at least 1 class")
    records = [r for r in (history or []) if isinstance(r, dict)]
    flags: list[str] = []
    kd = [(r.get("epoch", i), _num(r.get("kd_loss"))) for i, r in enumerate(records)]
    kd = [(e, v) for e, v in kd if v is not None]

    bad = [(e, v) for e, v in kd if not math.isfinite(v)]
    if bad:
        e, v = bad[0]
        flags.append(f"kd_loss is {v} at epoch {e} ({len(bad)} of {len(kd)} KD epochs not finite)")
    if kd_loss_bound is not None:
        high = [(e, v) for e, v in kd if math.isfinite(v) and v > kd_loss_bound]
        if high:
            e, v = high[0]
            worst = max(v for _, v in high)
            flags.append(f"kd_loss above bound at epoch {e} ({_fmt(v)} > {_fmt(kd_loss_bound)}; "
                         f"{len(high)} of {len(kd)} KD epochs, max {_fmt(worst)})")
    if records and not kd:
        flags.append("no KD step ran (every epoch was a warm-up): the student is untrained")

    evals = [(r.get("epoch", i), _num(r.get("test_acc"))) for i, r in enumerate(records) if "test_acc" in r]
    if not evals:
        flags.append("no test evaluation in the history")
        return flags
    e, acc = evals[-1]
    chance = 100.0 / num_classes
    if acc is None or not math.isfinite(acc):
        flags.append(f"test accuracy is not a number at epoch {e} ({acc})")
    elif acc <= chance + chance_margin:
        flags.append(f"test accuracy at chance ({acc:.2f}% <= 100/{num_classes} + {chance_margin:g} = "
                     f"{chance + chance_margin:.2f}%) at epoch {e}, after training")
    return flags


__all__ = ["divergence_flags", "kd_loss_bound", "CHANCE_MARGIN"]
