"""Registered names in a user config, spelled as registered (lookups ignore case).

``--synthesizer CMI`` means ``cmi``: :func:`canonical_names` rewrites the component names of
the ``[run]`` section (dataset, teacher, student, synthesizer, regularizers) to their
registered spelling, and renames the config sections that name a chosen component in
another case (``[CMI]`` -> ``[cmi]``, ``[Distill]`` -> ``[distill]``), so the resolved config,
its sections and its hash are those of the canonical names. Names no registry knows are
left alone: :func:`benchmarks.job.resolve_config` reports them (known names, closest match).
"""
from __future__ import annotations

from typing import Any

from baselines.errors import ConfigError, DFKDError
from baselines.registry import DATASETS, REGULARIZERS, STUDENTS, SYNTHESIZERS, TEACHERS, Registry

#: [run] key -> the registry its value is looked up in
RUN_NAME_KEYS: dict[str, Registry] = {"dataset": DATASETS, "teacher": TEACHERS, "student": STUDENTS,
                                      "synthesizer": SYNTHESIZERS}
FIXED_SECTIONS = ("run", "distill")


def _canon(reg: Registry, name: Any) -> Any:
    if not isinstance(name, str):
        return name
    try:
        return reg.canonical(name)
    except DFKDError:
        return name  # unknown (or ambiguous): resolve_config says so, with the closest names


def canonical_names(user: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``user`` with registered names spelled as registered (see module docstring)."""
    if not isinstance(user, dict):
        return user
    out = dict(user)
    run = out.get("run")
    if isinstance(run, dict):
        run = dict(run)
        for key, reg in RUN_NAME_KEYS.items():
            val = run.get(key)
            if key == "teacher" and isinstance(val, str) and "@" in val:
                name, _, path = val.partition("@")
                run[key] = f"{_canon(reg, name.strip())}@{path}"
            elif val is not None:
                run[key] = _canon(reg, val)
        if isinstance(run.get("regularizers"), list):
            run["regularizers"] = [_canon(REGULARIZERS, r) for r in run["regularizers"]]
        out["run"] = run
    wanted = list(FIXED_SECTIONS)
    if isinstance(run, dict):
        wanted += [n for n in [run.get("synthesizer"), *(run.get("regularizers") or [])] if isinstance(n, str)]
    by_lower = {w.lower(): w for w in wanted}
    renamed: dict[str, Any] = {}
    for sec, val in out.items():
        new = sec
        if isinstance(sec, str) and sec not in wanted:
            new = by_lower.get(sec.strip().lower(), sec)
        if new in renamed:
            raise ConfigError(f"config sections [{new}] and [{sec}] differ only in case; merge them into [{new}].")
        renamed[new] = val
    return renamed
