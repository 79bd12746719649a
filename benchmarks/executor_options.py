"""The options each executor really reads (``[executor.<name>]`` in a preset, ``--set
executor.<name>.<key>=V``), so a misspelled one is an error before compute instead of being
ignored: ``local`` reads ``workers``; ``ray`` its ``ray.init`` and per-job resources (see
:func:`benchmarks.executors.run_ray`); ``submitit`` takes ``cluster`` plus every parameter
submitit's ``AutoExecutor.update_parameters`` accepts (the generic ones and the
``<cluster>_<key>`` ones of each cluster plugin), read from the installed submitit. Without
submitit its options are not checked (the executor cannot run anyway)."""
from __future__ import annotations

from typing import Any

from baselines.errors import ConfigError, UnknownNameError

NAMES = ("local", "submitit", "ray")
LOCAL_KEYS = ("workers",)
RAY_KEYS = ("address", "num_cpus", "num_gpus", "cpus_per_job", "gpus_per_job")


def submitit_keys() -> list[str] | None:
    """``cluster`` and submitit's parameters; None when submitit is not installed."""
    try:
        from submitit import AutoExecutor
        from submitit.core import plugins
    except ImportError:
        return None
    keys = {"cluster", *AutoExecutor._valid_parameters()}
    for cluster, ex in plugins.get_executors().items():
        keys |= {f"{cluster}_{k}" for k in ex._valid_parameters()}
    return sorted(keys)


def known_keys(executor: str) -> list[str] | None:
    """The option keys of ``executor`` (None: not checkable here)."""
    if executor == "local":
        return list(LOCAL_KEYS)
    if executor == "ray":
        return list(RAY_KEYS)
    return submitit_keys()


def check_options(executor: str, options: Any, where: str) -> None:
    """ConfigError when ``options`` is not a table or holds a key ``executor`` does not read
    (UnknownNameError: the known keys and the closest one)."""
    if executor not in NAMES:
        raise UnknownNameError("executor", str(executor), list(NAMES))
    if not isinstance(options, dict):
        raise ConfigError(f"{where} must be a table of options of the {executor} executor, got {options!r}; "
                          f"write it as [executor.{executor}] with key = value lines.")
    known = known_keys(executor)
    for key in options if known is not None else ():
        if key not in known:
            raise ConfigError(f"{where}: {UnknownNameError(f'option of the {executor} executor', key, known)}")
    workers = options.get("workers", 1) if executor == "local" else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{where}: workers = {workers!r} must be a whole number >= 1; fix it (or pass --workers N).")
