"""The ``--dry-run`` cost model: estimated seconds per job and per teacher.

per job = overhead_s + F_model * (F_reg * epochs * (synth_batches * synth_batch_s[synth]
                                                    + kd_steps * kd_step_s) + n_evals * eval_s)

with n_evals = ceil(epochs / eval_every), F_reg the product of the job's regularizer_factor
entries (1.2 for an unlisted regularizer) and F_model = model_factor[student] (default 1); a
scratch job has no synthesis. A preset's [cost] table overrides :data:`DEFAULT_COST`.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from baselines.config import deep_merge

from .preset import Preset

#: Default cost model (seconds; measured on a 2-core CPU with the small CNN pair at the
#: reference budgets, see /work/shared/reference/data.md). Presets override it in [cost].
DEFAULT_COST: dict[str, Any] = {
    "overhead_s": 10.0,  # process start, data loading, model construction
    "kd_step_s": 1.35,  # one KD (or scratch) optimizer step at the preset's batch size
    "eval_s": 70.0,  # one evaluation on the (possibly subset) test set
    "teacher_epoch_s": 100.0,  # one teacher training epoch (only when not cached)
    "synth_batch_s": {"deepinversion": 500.0, "cmi": 120.0, "fast": 4.0, "fast-nometa": 3.0,
                      "real": 0.05, "noise": 0.05},  # one synthesize() call
    "regularizer_factor": {"stars": 1.3, "rca": 1.1, "tar": 1.2},  # x (synthesis + KD)
    "model_factor": {},  # student (or teacher) name -> x everything but the overhead
}
UNKNOWN_SYNTH_BATCH_S = 60.0
UNKNOWN_REGULARIZER_FACTOR = 1.2


def cost_model(preset: Preset) -> dict[str, Any]:
    """DEFAULT_COST overridden by the preset's [cost] table."""
    return deep_merge(DEFAULT_COST, preset.data.get("cost", {}))


def estimate_seconds(cfg: dict[str, Any], kind: str, cost: dict[str, Any]) -> float:
    """Estimated wall time of one job (teacher training excluded; see the module docstring)."""
    d = cfg.get("distill", {})
    run = cfg.get("run", {})
    epochs = int(d.get("epochs", 1))
    n_evals = math.ceil(epochs / max(1, int(d.get("eval_every", 1))))
    kd = epochs * int(d.get("kd_steps", 0)) * float(cost["kd_step_s"])
    synth = 0.0
    if kind != "scratch":
        per = cost["synth_batch_s"].get(run.get("synthesizer"), UNKNOWN_SYNTH_BATCH_S)
        synth = epochs * int(d.get("synth_batches", 1)) * float(per)
    factor = 1.0
    for reg in run.get("regularizers", []):
        factor *= float(cost["regularizer_factor"].get(reg, UNKNOWN_REGULARIZER_FACTOR))
    f_model = float(cost.get("model_factor", {}).get(run.get("student"), 1.0))
    return float(cost["overhead_s"]) + f_model * (factor * (synth + kd) + n_evals * float(cost["eval_s"]))


def teacher_epochs(key: tuple[Any, ...]) -> int:
    """Epochs of a teacher key (the recipe's default when teacher_epochs is unset)."""
    if key[2] is not None:
        return int(key[2])
    try:
        from .teachers import recipe_for

        return int(recipe_for(key[0], key[1].split("@", 1)[0]).epochs)
    except Exception:  # noqa: BLE001 - only an estimate
        return 0


def teacher_seconds(keys: Iterable[tuple[Any, ...]], cost: dict[str, Any]) -> float:
    """Upper bound of the teacher training time (none for ``NAME@CHECKPOINT`` teachers)."""
    return sum(float(cost["teacher_epoch_s"]) * teacher_epochs(k) * float(cost["model_factor"].get(k[1], 1.0))
               for k in keys if "@" not in k[1])


def format_seconds(s: float) -> str:
    s = float(s)
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"
