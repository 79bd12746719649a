"""Which machine each trial of a study ran on, and a warning when a study spans machines.

The same seed gives other numbers on another CPU model (:func:`baselines.provenance.cpu_identity`),
so the trials of a study resumed on another machine are compared by the sampler and the pruner
as if computed on one. That is often acceptable for a search (the differences are of the
order of seed noise), but it must be visible: every trial records its machine in the
user attribute :data:`MACHINE_KEY` (named as :func:`benchmarks.rows.host_of` names a row's),
a resumed study warns when its finished trials came from elsewhere, and ``tune_summary.json``
lists the machines. Trials written before the attribute existed are read from their
``OUT/trials/trial_NNNN.json`` row where it has one.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from .rows import host_of
from .store import this_machine

MACHINE_KEY = "dfkd_machine"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def machine_for(device: str = "auto", here: dict[str, Any] | None = None) -> str:
    """The name :func:`benchmarks.rows.host_of` gives a row computed here on ``device``
    (``auto``: the GPU when there is one)."""
    here = here or this_machine()
    text = str(device or "auto").strip().lower()
    if text == "auto":
        text = "cuda" if here.get("gpu") else "cpu"
    return host_of({"device": text, "versions": {"cpu": here["cpu"], "gpu": here.get("gpu")}})


def _from_trial_file(out: Path, number: int) -> str | None:
    try:
        row = json.loads((out / "trials" / f"trial_{number:04d}.json").read_text()).get("row") or {}
    except (OSError, ValueError):
        return None
    return host_of(row) if row.get("versions") else None


def trial_machines(study: optuna.Study, out: str | Path | None = None) -> dict[int, str]:
    """Finished trial number -> machine, where known (the attribute, else the trial's file)."""
    found: dict[int, str] = {}
    for t in study.get_trials(deepcopy=False, states=_FINISHED):
        name = t.user_attrs.get(MACHINE_KEY) or (_from_trial_file(Path(out), t.number) if out else None)
        if name:
            found[t.number] = str(name)
    return found


def other_machines_message(study: optuna.Study, out: str | Path | None = None,
                           here: dict[str, Any] | None = None) -> str | None:
    """A warning when finished trials of ``study`` ran on a machine that is not this one."""
    here = here or this_machine()
    mine = {str(v) for v in here.values() if v}
    per_trial = trial_machines(study, out)
    other: dict[str, list[int]] = {}
    for number, name in sorted(per_trial.items()):
        if name not in mine:
            other.setdefault(name, []).append(number)
    if not other:
        return None
    listed = "; ".join(f"{name} (trials {', '.join(map(str, nums))})" for name, nums in other.items())
    return (f"study {study.study_name!r} holds trials computed on {listed}; this is {here['cpu']}"
            f"{' / ' + here['gpu'] if here.get('gpu') else ''}. The same seed gives other numbers on another "
            "CPU model, so the sampler and the pruner will compare this machine's trials with those as if "
            "computed on one; tune_summary.json lists the machines. For a study on one machine, use another "
            "--out / --study here.")


def warn_other_machines(study: optuna.Study, out: str | Path | None = None) -> str | None:
    msg = other_machines_message(study, out)
    if msg:
        warnings.warn(msg, stacklevel=2)
    return msg
