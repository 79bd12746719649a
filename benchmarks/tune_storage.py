"""Where a study lives: a journal file (default, no server) or an RDB URL (SQLite,
PostgreSQL); creating / loading the study with its search space and objective checked.
Dead workers' trials are handled by ``trial_retry`` on every storage alike."""
from __future__ import annotations

import contextlib
import importlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna

from baselines.config import config_hash
from baselines.errors import ConfigError


@contextlib.contextmanager
def no_experimental_warnings() -> Iterator[None]:
    """Heartbeats, retry callbacks and matplotlib plots are 'experimental' in Optuna."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def mask_url(url: str) -> str:
    """``url`` for display, its password replaced by ``***`` (also when it does not parse)."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparsable (bad port, ...): mask it by hand
        pw = _password(url)
        return url.replace(f":{pw}@", ":***@", 1) if pw else url


def _password(url: str) -> str | None:
    """What sits between the user's ':' and the last '@' of a URL (None: no password)."""
    cred, at, _ = url.partition("://")[2].rpartition("@")
    return cred.split(":", 1)[1] if at and ":" in cred else None


def _storage_hint(url: str) -> str:
    if url.startswith("postgresql"):
        return ("Is a PostgreSQL server running and reachable at that host and port, do the "
                "user, password and database exist (createdb), and is psycopg2-binary installed? "
                "For a throwaway local server run .ci/start-postgres.")
    if url.startswith("sqlite"):
        return "Does the directory of the SQLite file exist and is it writable?"
    if url.startswith("mysql"):
        return "Is the MySQL server reachable and a driver (pymysql) installed?"
    return ("Use sqlite:///FILE, postgresql://USER:PASS@HOST:PORT/DB, or a path for a "
            "journal file.")


def driver_url(url: str) -> str:
    """``postgresql://`` with the installed driver: SQLAlchemy 2.1 defaults to psycopg 3, the
    project's extras install psycopg2-binary."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    for mod, name in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        try:
            importlib.import_module(mod)
            return f"{name}{sep}{rest}"
        except ImportError:
            continue
    return f"postgresql{sep}{rest}"


def open_storage(plan: Any) -> optuna.storages.BaseStorage:
    """Journal file (default, embedded) or an RDB storage."""
    url = plan.storage_url
    if not plan.is_rdb:
        try:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        except OSError as exc:
            raise ConfigError(f"cannot open the journal storage {url!r}: {exc}. Give a "
                              "writable --out or --storage path.") from exc
    kw: dict[str, Any] = {}  # dead workers: benchmarks.trial_retry, the same for every storage
    if url.startswith("postgresql"):
        kw["engine_kwargs"] = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        with no_experimental_warnings():
            return optuna.storages.RDBStorage(driver_url(url), **kw)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy/driver errors vary; all mean "cannot open"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if _password(url):  # a driver may echo the URL
            first = first.replace(_password(url), "***")
        raise ConfigError(f"cannot open the Optuna storage {mask_url(url)!r}: "
                          f"{type(exc).__name__}: {first}. {_storage_hint(url)}") from exc


def _sampler(plan: Any, seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                      n_startup_trials=plan.settings["n_startup_trials"])


def open_study(plan: Any, storage: optuna.storages.BaseStorage,
               worker_index: int = 0) -> optuna.Study:
    """Create or load the study; a stored search space or objective that differs is an error.

    The TPE seed is ``seed + 7919 * worker_index + (trials already in the study)`` so that
    parallel workers and resumed runs do not replay the same random start-up points.
    """
    s = plan.settings
    sampler = _sampler(plan, plan.seed + 7919 * worker_index)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=s["prune_startup_trials"],
                                         n_warmup_steps=s["prune_warmup_steps"])
    try:
        study = optuna.create_study(storage=storage, study_name=plan.study_name, sampler=sampler,
                                    pruner=pruner, direction="maximize", load_if_exists=True)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot create or load study {plan.study_name!r} in "
                          f"{mask_url(plan.storage_url)!r}: {exc}") from exc
    want = {"search_space": plan.space.to_json(), "objective": plan.objective}
    have = study.user_attrs
    where = f"study {plan.study_name!r} in {mask_url(plan.storage_url)!r}"
    if "search_space" in have and have["search_space"] != want["search_space"]:
        raise ConfigError(
            f"{where} was created with search space {json.dumps(have['search_space'])}, but "
            f"this command asks for {json.dumps(want['search_space'])}. Use another --study "
            "name (or --out/--storage) for a new space, or restore the study's space.")
    if "objective" in have and have["objective"] != want["objective"]:
        raise ConfigError(f"{where} optimizes {have['objective']!r}, not {plan.objective!r}; "
                          "use another --study name or the same --objective.")
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE]:
        raise ConfigError(f"{where} is not a maximization study; use another --study name.")
    if "search_space" not in have:
        study.set_user_attr("search_space", want["search_space"])
        study.set_user_attr("objective", plan.objective)
        study.set_user_attr("base_config", plan.base)
    elif have.get("base_config") not in (None, plan.base):
        warnings.warn(f"{where} was started with another base config (hash "
                      f"{config_hash(have['base_config'])} != {config_hash(plan.base)}); its "
                      "trials are resumed and compared as if equal", stacklevel=2)
    n_existing = len(study.get_trials(deepcopy=False))
    if n_existing:
        study.sampler = _sampler(plan, plan.seed + 7919 * worker_index + n_existing)
    return study


