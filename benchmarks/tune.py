"""Optuna tuning of the STARS weights and threshold percentile (``dfkd tune``).

STARS (arXiv 2605.27409) adds ``alpha * L_RCA + beta * L_TAR`` to a BN-guided synthesizer;
TAR's teacher thresholds are the q-quantile of teacher activations. The seed description
gives alpha in [0.3, 0.7], beta in [0.2, 0.5], q in [0.90, 0.98]: the default search space.

The objective is never the test set:

* ``val-acc`` (default): student accuracy on ``run.val_size`` labelled images carved out of
  the *training* set (disjoint from the test set). Assumes a few labelled images exist.
* ``agreement``: fully data-free, teacher-student top-1 agreement on ``distill.heldout_images``
  synthetic images that no KD step used.

Sampler: ``TPESampler(seed)`` (``constant_liar`` so parallel workers spread out). Pruner:
``MedianPruner`` on the objective reported at each intermediate distillation evaluation
(``trial.report(value, epoch)``). The best trial's test accuracy is measured once, at the
end, by re-running its config (``test_acc_of_best``).

Workers and storage. Each worker runs an ask/tell loop (not ``study.optimize``) so that it
can claim a trial slot, keep a heartbeat and clean up between trials:

* a worker stops once the study holds ``trials`` COMPLETE + PRUNED trials; it does not start
  a trial while COMPLETE + PRUNED + RUNNING already reaches that number (it waits instead, in
  case a running trial dies). After ``ask()`` it re-checks against the RUNNING trials
  numbered below its own and gives a surplus trial back (state FAIL, user attr
  ``dfkd_surplus``; a popped retry is re-queued), so concurrent workers do not overshoot.
* each running trial carries the user attr ``dfkd_worker = {host, pid, start, trial, t}``,
  refreshed every ``heartbeat_interval`` seconds by a thread (and, for RDB storages,
  Optuna's own ``record_heartbeat``).
* clean-up (on start and between trials, :func:`sweep_stale_trials`): a RUNNING trial whose
  worker runs on this host under a pid that is gone (or a zombie, or a reused pid), or whose
  heartbeat is older than ``grace_period`` seconds (any host), or which never got a worker
  record within ``grace_period``, is set to FAIL and its parameters are enqueued again as a
  WAITING trial (system attrs ``failed_trial`` / ``retry_history``, at most ``max_retry``
  times), the same bookkeeping as Optuna's ``RetryHeartbeatStaleTrialCallback``. Only the
  worker whose FAIL transition succeeds re-queues, so a trial is retried once.
  RDB storages (``sqlite:///``, ``postgresql://``) additionally use Optuna's heartbeat:
  ``RDBStorage(heartbeat_interval, grace_period, RetryHeartbeatStaleTrialCallback)`` and
  ``optuna.storages.fail_stale_trials``.

Tests replace the compute through the module-level :func:`run_trial` / :func:`resolve_config`
(monkeypatch), or in subprocess workers through ``DFKD_TUNE_FAKE_JOB=module:function`` and
``DFKD_TUNE_FAKE_RESOLVE=module:function``.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import TrialState

from baselines.config import apply_sets, config_hash, deep_merge, load_toml
from baselines.errors import ConfigError, DFKDError, UnknownNameError
from baselines.provenance import now_iso

from .executors import cpu_count, threads_per_worker
from .executors import pin_threads as _pin_threads
from .runner import atomic_write_json


PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_SPACE: dict[str, tuple[float, float]] = {"alpha": (0.3, 0.7), "beta": (0.2, 0.5),
                                                 "q": (0.90, 0.98)}
OBJECTIVES = {"val-acc": "val_acc", "agreement": "agreement"}
DEFAULT_VAL_SIZE = 1000
DEFAULT_HELDOUT = 256
# [tune] keys that are settings; every other key in [tune] is a search-space entry.
SETTINGS_DEFAULTS: dict[str, Any] = {
    "objective": None, "val_size": None, "heldout_images": None,
    "n_startup_trials": 5,        # TPE: random trials before the model kicks in
    "prune_startup_trials": 2,    # MedianPruner: complete trials before pruning starts
    "prune_warmup_steps": 0,      # MedianPruner: evaluations (epochs) before pruning
    "max_retry": 3,               # re-queues of a trial whose worker died
}
WORKER_KEY = "dfkd_worker"
STORAGE_ENV = "DFKD_TUNE_STORAGE"  # storage URL when --storage is not given (keeps passwords
                                   # out of the process list)
TEST_KEYS = ("student_acc", "student_acc_best", "test_acc", "history")
WEIGHT_KEYS = ("alpha", "beta")


@contextlib.contextmanager
def _no_experimental_warnings() -> Iterator[None]:
    """Heartbeats, retry callbacks and matplotlib plots are 'experimental' in Optuna."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _log(msg: str) -> None:
    print(f"[tune {os.getpid()}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- compute hooks
def _load_hook(spec: str) -> Callable[..., Any]:
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ConfigError(f"hook {spec!r}: expected module:function")
    return getattr(importlib.import_module(mod), attr)


def resolve_config(user: dict[str, Any]) -> dict[str, Any]:
    """Full, validated job config (``benchmarks.job.resolve_config``; ConfigError on bad input)."""
    hook = os.environ.get("DFKD_TUNE_FAKE_RESOLVE")
    if hook:
        return _load_hook(hook)(user)
    from benchmarks.job import resolve_config as _resolve
    return _resolve(user)


def run_trial(cfg: dict[str, Any], on_eval: Callable[[int, dict[str, Any]], None] | None
              ) -> dict[str, Any]:
    """Run one distillation job and return its result row (``benchmarks.job.run_job``)."""
    hook = os.environ.get("DFKD_TUNE_FAKE_JOB")
    if hook:
        return _load_hook(hook)(cfg, on_eval)
    from benchmarks.job import run_job
    return run_job(cfg, out_dir=None, on_eval=on_eval)


# --------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class Param:
    """One searched value: ``name`` is ``key`` (in [stars]) or ``section.key``."""

    name: str
    kind: str  # "float" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    lists: bool = False  # choices are lists (e.g. phases), encoded for Optuna as "a+b"

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0] if "." in self.name else "stars"

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1] if "." in self.name else self.name

    def to_json(self) -> dict[str, Any]:
        if self.kind == "float":
            return {"type": "float", "low": self.low, "high": self.high, "log": self.log}
        return {"type": "categorical", "choices": list(self.choices)}

    def decode(self, value: Any) -> Any:
        """The config value of an Optuna value (``"synthesis+distill"`` -> a list)."""
        return value.split("+") if self.lists and isinstance(value, str) else value

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_param(name: str, val: Any) -> Param | None:
    where = f"[tune] {name}"
    if isinstance(val, list) and not val:
        return None  # an empty list removes a default entry (the config value is used)
    if isinstance(val, dict):
        unknown = set(val) - {"low", "high", "log", "choices"}
        if unknown:
            raise UnknownNameError(f"key in {where}", sorted(unknown)[0],
                                   ["low", "high", "log", "choices"])
        if "choices" in val:
            return Param(name, "categorical", *_choices(where, val["choices"]))
        if "low" not in val or "high" not in val:
            raise ConfigError(f"{where}: a range table needs low and high, e.g. "
                              f"{name} = {{low = 0.1, high = 0.9}}")
        return Param(name, "float", _num(where, val["low"]), _num(where, val["high"]),
                     bool(val.get("log", False)))
    if isinstance(val, list) and len(val) == 2 and all(_is_num(v) for v in val):
        return Param(name, "float", float(val[0]), float(val[1]))
    if isinstance(val, list):
        if name in DEFAULT_SPACE or name in ("kappa", "stars.kappa"):
            raise ConfigError(f"{where} = {val!r}: expected a range [low, high] of two numbers")
        return Param(name, "categorical", *_choices(where, val))
    known = sorted(k for k in SETTINGS_DEFAULTS)
    raise ConfigError(
        f"{where} = {val!r} is neither a known [tune] setting ({', '.join(known)}) nor a "
        f"search range. Give a range [low, high], a list of choices, or fix the value with "
        f"--set stars.{name}={val!r}."
    )


def _num(where: str, v: Any) -> float:
    if not _is_num(v) or not math.isfinite(float(v)):
        raise ConfigError(f"{where}: {v!r} is not a finite number")
    return float(v)


def _choices(where: str, vals: Any) -> tuple[None, None, bool, tuple[Any, ...], bool]:
    """Positional (low, high, log, choices, lists) of a categorical Param."""
    if not isinstance(vals, list) or not vals:
        raise ConfigError(f"{where}: choices must be a non-empty list")
    if all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in vals):
        return None, None, False, tuple("+".join(v) for v in vals), True
    for v in vals:
        if not isinstance(v, (str, int, float, bool)):
            raise ConfigError(f"{where}: choice {v!r} must be a string, number or boolean "
                              "(or every choice a list of strings, e.g. phases)")
    return None, None, False, tuple(vals), False


@dataclass(frozen=True)
class SearchSpace:
    """The searched parameters, validated: weights >= 0, 0 < q < 1, kappa > 0, low <= high."""

    params: tuple[Param, ...]

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None = None) -> "SearchSpace":
        merged: dict[str, Any] = {k: list(v) for k, v in DEFAULT_SPACE.items()}
        flat: dict[str, Any] = {}
        for k, v in (overrides or {}).items():  # TOML dotted keys: distill.lr = [..]
            if isinstance(v, dict) and not set(v) & {"low", "high", "log", "choices"}:
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                flat[k] = v
        for k, v in flat.items():
            merged[k[len("stars."):] if k.startswith("stars.") else k] = v
        params = [p for k, v in merged.items() if (p := _parse_param(k, v)) is not None]
        space = cls(tuple(params))
        space.validate()
        return space

    def validate(self) -> None:
        if not self.params:
            raise ConfigError("the search space is empty: give at least one range in [tune]")
        for p in self.params:
            where = f"search range {p.name}"
            if p.kind != "float":
                continue
            if p.low > p.high:
                raise ConfigError(f"{where} = [{p.low}, {p.high}]: low is above high")
            if p.log and p.low <= 0:
                raise ConfigError(f"{where}: a log range needs low > 0")
            if p.key in WEIGHT_KEYS and p.section == "stars" and p.low < 0:
                raise ConfigError(f"{where} = [{p.low}, {p.high}] includes a negative weight; "
                                  f"STARS weights must be >= 0 (default {DEFAULT_SPACE[p.key]})")
            if p.key == "q" and p.section == "stars" and not (0 < p.low and p.high < 1):
                raise ConfigError(f"{where} = [{p.low}, {p.high}] leaves (0, 1): q is a "
                                  "percentile as a fraction, e.g. [0.90, 0.98]")
            if p.key == "kappa" and p.section == "stars" and p.low <= 0:
                raise ConfigError(f"{where} = [{p.low}, {p.high}]: the softness kappa must be "
                                  "> 0, e.g. [0.05, 0.5]")

    def to_json(self) -> dict[str, Any]:
        return {p.name: p.to_json() for p in self.params}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's values -> config values (list-valued choices split back)."""
        by = {p.name: p for p in self.params}
        return {k: by[k].decode(v) if k in by else v for k, v in params.items()}

    def corners(self) -> list[dict[str, Any]]:
        """Points that exercise every bound and choice (validated before any trial)."""
        lo = {p.name: (p.low if p.kind == "float" else p.choices[0]) for p in self.params}
        hi = {p.name: (p.high if p.kind == "float" else p.choices[-1]) for p in self.params}
        pts = [lo, hi]
        for p in self.params:
            for c in p.choices[1:-1]:
                pts.append({**lo, p.name: c})
        return [self.decode(pt) for pt in pts]


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each param written into its section (``stars`` unless dotted)."""
    over: dict[str, Any] = {}
    for name, val in params.items():
        section, key = (name.split(".", 1) if "." in name else ("stars", name))
        over.setdefault(section, {})[key] = val
    return deep_merge(base, over)


# --------------------------------------------------------------------------- the plan
@dataclass
class TuneSpec:
    """What the user asked for (the CLI's arguments)."""

    preset: str
    synthesizer: str
    trials: int
    pair: str | None = None
    storage: str | None = None
    study: str | None = None
    workers: int = 1
    objective: str | None = None
    timeout: float | None = None
    out: str | None = None
    seed: int | None = None
    sets: list[str] = field(default_factory=list)
    worker_only: bool = False
    worker_index: int | None = None
    threads: int | None = None
    heartbeat_interval: int = 30
    grace_period: int = 120
    max_failed: int | None = None
    final_test: bool = True
    plots: bool = True
    poll_seconds: float = 1.0

    def worker_argv(self, plan: "TunePlan", index: int, threads: int) -> list[str]:
        """Arguments of one local worker process (``python -m benchmarks.cmd_tune ...``)."""
        argv = ["--preset", plan.preset_path, "--synthesizer", self.synthesizer,
                "--pair", f"{plan.teacher}:{plan.student}", "--trials", str(self.trials),
                "--study", plan.study_name,
                "--objective", plan.objective, "--out", str(plan.out), "--seed", str(plan.seed),
                "--workers", "1", "--worker-only", "--worker-index", str(index),
                "--threads", str(threads), "--heartbeat-interval", str(self.heartbeat_interval),
                "--grace-period", str(self.grace_period)]
        if not plan.is_rdb:  # an RDB URL (password) travels in DFKD_TUNE_STORAGE, not argv
            argv += ["--storage", plan.storage_url]
        if self.timeout:
            argv += ["--timeout", str(self.timeout)]
        if self.max_failed is not None:
            argv += ["--max-failed", str(self.max_failed)]
        for s in self.sets:
            argv += ["--set", s]
        return argv


@dataclass
class TunePlan:
    """Everything resolved and validated before the first trial."""

    spec: TuneSpec
    preset_path: str
    preset_name: str
    dataset: str
    teacher: str
    student: str
    seed: int
    objective: str
    metric: str
    base: dict[str, Any]
    space: SearchSpace
    settings: dict[str, Any]
    study_name: str
    storage_url: str  # a journal file path or an RDB URL
    out: Path

    @property
    def is_rdb(self) -> bool:
        return "://" in self.storage_url


def find_preset(preset: str) -> Path:
    """A preset file path, or the name of a file in ``benchmarks/presets/``."""
    p = Path(preset)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise ConfigError(f"preset file {preset!r} not found")
        return p.resolve()
    cand = PRESET_DIR / f"{preset}.toml"
    if cand.is_file():
        return cand
    known = sorted(f.stem for f in PRESET_DIR.glob("*.toml"))
    raise UnknownNameError("preset", preset, known)


def _first(bench: dict[str, Any], key: str, what: str, path: Path) -> list[Any]:
    vals = bench.get(key)
    if isinstance(vals, str):
        vals = [vals]
    if not vals:
        raise ConfigError(f"preset {path}: [bench] {key} is missing or empty; list the {what}")
    return list(vals)


def make_plan(spec: TuneSpec) -> TunePlan:
    """Read the preset, build the base config and the space, validate all of it (no compute)."""
    if spec.trials < 1:
        raise ConfigError(f"--trials {spec.trials}: give at least 1 trial")
    if spec.workers < 1:
        raise ConfigError(f"--workers {spec.workers}: give at least 1 worker")
    path = find_preset(spec.preset)
    preset = load_toml(str(path))
    bench = preset.get("bench", {})
    dataset = _first(bench, "datasets", "datasets", path)[0]
    pairs = [str(p) for p in _first(bench, "pairs", "teacher:student pairs", path)]
    pair = spec.pair or pairs[0]
    if pair.count(":") != 1 or not all(pair.split(":")):
        raise ConfigError(f"--pair {pair!r}: expected TEACHER:STUDENT, e.g. {pairs[0]}")
    teacher, student = pair.split(":")
    synths = bench.get("synthesizers")
    if synths and spec.synthesizer not in synths:
        raise UnknownNameError(f"synthesizer of preset {path.stem!r}", spec.synthesizer,
                               list(synths))
    seeds = bench.get("seeds") or [0]
    seed = spec.seed if spec.seed is not None else int(seeds[0])

    tune_sec = dict(preset.get("tune", {}))
    space_over = dict(tune_sec.pop("space", {}) or {})
    settings = dict(SETTINGS_DEFAULTS)
    for k, v in tune_sec.items():
        if k in SETTINGS_DEFAULTS:
            settings[k] = v
        else:
            space_over[k] = v
    space = SearchSpace.from_overrides(space_over)
    objective = spec.objective or settings["objective"] or "val-acc"
    if objective not in OBJECTIVES:
        raise UnknownNameError("objective", str(objective), list(OBJECTIVES))

    base = _base_config(preset, spec.synthesizer, dataset, teacher, student, seed)
    if objective == "val-acc":
        base["run"]["val_size"] = int(settings["val_size"] or base["run"].get("val_size")
                                      or DEFAULT_VAL_SIZE)
    else:
        base["distill"]["heldout_images"] = int(
            settings["heldout_images"] or base["distill"].get("heldout_images") or DEFAULT_HELDOUT)
    base = apply_sets(base, spec.sets)
    regs = base["run"].get("regularizers") or []
    if "stars" not in regs:
        base["run"]["regularizers"] = ["stars"] + [r for r in regs if r != "stars"]
    if objective == "val-acc" and not int(base["run"].get("val_size") or 0) > 0:
        raise ConfigError("objective val-acc needs run.val_size > 0 (labelled images carved "
                          "out of the training set); or use --objective agreement")
    if objective == "agreement" and not int(base["distill"].get("heldout_images") or 0) > 0:
        raise ConfigError("objective agreement needs distill.heldout_images > 0")

    for k in ("n_startup_trials", "prune_startup_trials", "prune_warmup_steps", "max_retry"):
        if not isinstance(settings[k], int) or settings[k] < 0:
            raise ConfigError(f"[tune] {k} = {settings[k]!r}: expected an integer >= 0")
    for pt in space.corners():  # every bound/choice must give a valid job config
        resolve_config(apply_params(base, pt))

    study_name = spec.study or (f"stars-{path.stem}-{dataset}-{teacher}-{student}-"
                                f"{spec.synthesizer}-{objective}")
    out = Path(spec.out or Path("runs") / "tune" / study_name).resolve()
    storage_url = spec.storage or str(out / "study.journal")
    if "://" not in storage_url:
        storage_url = str(Path(storage_url).resolve())
    return TunePlan(spec, str(path), path.stem, dataset, teacher, student, seed, objective,
                    OBJECTIVES[objective], base, space, settings, study_name, storage_url, out)


def _layer(src: dict[str, Any], synth: str) -> dict[str, Any]:
    """What a preset (or one ``[overrides.<dataset>]``) adds to a job, as the bench runner
    reads it: [run], [distill], ``[budget.<synth>]`` (``distill = {..}`` and ``<synth> = {..}``
    tables; plain keys belong to the synthesizer's section) and ``[params.stars]``."""
    out: dict[str, Any] = {sec: dict(src[sec]) for sec in ("run", "distill") if src.get(sec)}
    for k, v in ((src.get("budget") or {}).get(synth) or {}).items():
        out = deep_merge(out, {k: v} if isinstance(v, dict) else {synth: {k: v}})
    stars = (src.get("params") or {}).get("stars")
    if stars:
        out = deep_merge(out, {"stars": stars})
    return out


def _base_config(preset: dict[str, Any], synth: str, dataset: str, teacher: str, student: str,
                 seed: int) -> dict[str, Any]:
    """User-level job config: preset layers, dataset overrides, [bench] T, the job identity."""
    base = _layer(preset, synth)
    over = (preset.get("overrides") or {}).get(dataset)
    if over:
        base = deep_merge(base, _layer(over, synth))
    if "T" in preset.get("bench", {}):
        base = deep_merge({"run": {"T": preset["bench"]["T"]}}, base)
    base.setdefault("run", {}).update(dataset=dataset, teacher=teacher, student=student,
                                      synthesizer=synth, seed=seed, regularizers=["stars"])
    base.setdefault("distill", {})
    return base


# --------------------------------------------------------------------------- storage, study
def mask_url(url: str) -> str:
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return url


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


def open_storage(plan: TunePlan) -> optuna.storages.BaseStorage:
    """Journal file (default, embedded) or an RDB storage with heartbeat and retry."""
    spec, url = plan.spec, plan.storage_url
    if not plan.is_rdb:
        try:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        except OSError as exc:
            raise ConfigError(f"cannot open the journal storage {url!r}: {exc}. Give a "
                              "writable --out or --storage path.") from exc
    kw: dict[str, Any] = {"heartbeat_interval": spec.heartbeat_interval,
                          "grace_period": spec.grace_period}
    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    with _no_experimental_warnings():
        if retry_cls is not None:  # Optuna >= 4.9 (RetryFailedTrialCallback is its old name)
            kw["heartbeat_stale_trial_callback"] = retry_cls(max_retry=plan.settings["max_retry"])
        else:
            kw["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(
                max_retry=plan.settings["max_retry"])
    if url.startswith("postgresql"):
        kw["engine_kwargs"] = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        with _no_experimental_warnings():
            return optuna.storages.RDBStorage(driver_url(url), **kw)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy/driver errors vary; all mean "cannot open"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot open the Optuna storage {mask_url(url)!r}: "
                          f"{type(exc).__name__}: {first}. {_storage_hint(url)}") from exc


def _sampler(plan: TunePlan, seed: int) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                      n_startup_trials=plan.settings["n_startup_trials"])


def open_study(plan: TunePlan, storage: optuna.storages.BaseStorage,
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


# --------------------------------------------------------------------------- workers' liveness
def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _proc_start(pid: int) -> str | None:
    st = _proc_stat(pid)
    return st[19] if st and len(st) > 19 else None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """True if ``pid`` runs on this host (not a zombie; same start time when recorded)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    st = _proc_stat(pid)
    if st is not None:
        if st[0] in ("Z", "X"):
            return False
        if start is not None and len(st) > 19 and st[19] != start:
            return False
    return True


def _owner(number: int) -> dict[str, Any]:
    torch = sys.modules.get("torch")
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid()),
            "trial": number, "t": time.time(),
            "threads": torch.get_num_threads() if torch is not None else None}


def _started(t: optuna.trial.FrozenTrial) -> float | None:
    if t.datetime_start is None:
        return None
    d = t.datetime_start
    return d.timestamp() if d.tzinfo else d.replace(tzinfo=None).timestamp()


def stale_reason(t: optuna.trial.FrozenTrial, grace: float, now: float | None = None,
                 host: str | None = None) -> str | None:
    """Why the RUNNING trial ``t`` is dead, or None while its worker looks alive."""
    now, host = now or time.time(), host or socket.gethostname()
    w = t.user_attrs.get(WORKER_KEY)
    if isinstance(w, dict) and w.get("trial") == t.number:  # ignore records inherited by retries
        if w.get("host") == host and not pid_alive(int(w["pid"]), w.get("start")):
            return f"worker pid {w['pid']} on {host} is gone"
        if now - float(w.get("t", 0)) > grace:
            return f"no heartbeat from {w.get('host')}:{w.get('pid')} for {now - w['t']:.0f} s"
        return None
    start = _started(t)
    if start is not None and now - start > grace:
        return f"running for {now - start:.0f} s without a worker record"
    return None


def requeue(study: optuna.Study, t: optuna.trial.FrozenTrial, reason: str,
            max_retry: int | None, count_retry: bool = True) -> bool:
    """Enqueue ``t``'s params again as a WAITING trial (Optuna's retry bookkeeping)."""
    history = list(t.system_attrs.get("retry_history", []))
    if count_retry:
        history.append(t.number)
        if max_retry is not None and len(history) > max_retry:
            _log(f"trial {t.number} not retried: it already failed {len(history)} times")
            return False
    kept = {k: v for k, v in t.system_attrs.items() if k != "dfkd_fail_reason"}
    sys_attrs = {**kept, "failed_trial": t.system_attrs.get("failed_trial", t.number),
                 "retry_history": history, "dfkd_retry_reason": reason}
    if not count_retry and not t.system_attrs.get("retry_history"):
        sys_attrs.pop("failed_trial")
        sys_attrs.pop("retry_history")
    users = {k: v for k, v in t.user_attrs.items() if not k.startswith("dfkd_")}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=t.params, distributions=t.distributions,
        user_attrs=users, system_attrs=sys_attrs))
    return True


def _try_fail(study: optuna.Study, t: optuna.trial.FrozenTrial) -> bool:
    """Move ``t`` to FAIL; False if another worker finished or failed it first."""
    try:
        return bool(study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL))
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, KeyError):
        return False


def sweep_stale_trials(study: optuna.Study, grace: float, max_retry: int | None) -> list[int]:
    """Fail RUNNING trials of dead workers and re-queue their params; returns their numbers."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(t, grace)
        if reason is None:
            continue
        try:
            study._storage.set_trial_system_attr(t._trial_id, "dfkd_fail_reason", reason)
        except Exception:  # noqa: BLE001 - finished meanwhile
            continue
        if _try_fail(study, t):
            _log(f"trial {t.number} failed by clean-up ({reason}); its params are re-queued")
            requeue(study, study._storage.get_trial(t._trial_id), reason, max_retry)
            failed.append(t.number)
    with _no_experimental_warnings():
        optuna.storages.fail_stale_trials(study)  # RDB: Optuna's heartbeat + retry callback
    return failed


class _Heartbeat:
    """Refresh the trial's worker record (and Optuna's RDB heartbeat) every ``interval`` s."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float):
        self.storage, self.tid, self.number = study._storage, trial._trial_id, trial.number
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="dfkd-heartbeat")

    def beat(self) -> None:
        self.storage.set_trial_user_attr(self.tid, WORKER_KEY, _owner(self.number))
        getint = getattr(self.storage, "get_heartbeat_interval", None)
        if getint is not None and getint():
            self.storage.record_heartbeat(self.tid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - trial finished or storage hiccup: stop quietly
                return

    def __enter__(self) -> "_Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# --------------------------------------------------------------------------- the worker loop
def _counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    c = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        c[t.state.name.lower()] += 1
    c["done"] = c["complete"] + c["pruned"]
    c["surplus"] = sum(1 for t in trials if t.user_attrs.get("dfkd_surplus"))
    c["job_failed"] = sum(1 for t in trials if t.state == TrialState.FAIL
                          and "dfkd_error" in t.user_attrs)
    return c


def _is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    before = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
    return done + before >= n_trials


def _give_back(study: optuna.Study, trial: optuna.Trial, max_retry: int | None) -> None:
    frozen = study._storage.get_trial(trial._trial_id)
    trial.set_user_attr("dfkd_surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    if frozen.params or frozen.system_attrs.get("fixed_params"):  # a popped queued trial:
        # put it back in the queue unchanged (params, or enqueue_trial's fixed_params)
        requeue(study, frozen, frozen.system_attrs.get("dfkd_retry_reason", "surplus"),
                max_retry, count_retry=False)


def _strip_test(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in TEST_KEYS}


def run_one(plan: TunePlan, study: optuna.Study, trial: optuna.Trial) -> TrialState:
    """Suggest, run the job with pruning on the objective, tell the result."""
    metric, t0 = plan.metric, time.time()
    trial.set_user_attr(WORKER_KEY, _owner(trial.number))
    state, value, row, error = TrialState.FAIL, None, {}, None
    evals: list[tuple[int, float]] = []

    def on_eval(epoch: int, metrics: dict[str, Any]) -> None:
        v = metrics.get(metric)
        if v is None or not math.isfinite(float(v)):
            return
        evals.append((int(epoch), float(v)))
        trial.report(float(v), int(epoch))
        if trial.should_prune():
            raise optuna.TrialPruned(f"{metric} = {v:.4f} at epoch {epoch} is below the median")

    params: dict[str, Any] = {}
    with _Heartbeat(study, trial, plan.spec.heartbeat_interval):
        try:
            params = plan.space.suggest(trial)
            cfg = resolve_config(apply_params(plan.base, plan.space.decode(params)))
            row = run_trial(cfg, on_eval) or {}
            value = row.get(metric)
            if row.get("status", "ok") != "ok":
                error = f"job failed: {row.get('error')}"
            elif value is None or not math.isfinite(float(value)):
                error = f"the job reported no finite {metric} (got {value!r})"
            else:
                state = TrialState.COMPLETE
        except optuna.TrialPruned as exc:
            state, error = TrialState.PRUNED, None
            _log(f"trial {trial.number} pruned: {exc}")
        except DFKDError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a crashed job fails its trial, not the worker
            error = f"{type(exc).__name__}: {exc}"
        except KeyboardInterrupt:  # Ctrl-C: fail the trial, queue its params again, stop
            study.tell(trial, state=TrialState.FAIL)
            requeue(study, study._storage.get_trial(trial._trial_id), "interrupted",
                    plan.settings["max_retry"])
            raise
    if error:
        trial.set_user_attr("dfkd_error", error[:2000])
    trial.set_user_attr("dfkd_seconds", round(time.time() - t0, 3))
    if state == TrialState.COMPLETE:
        study.tell(trial, float(value))
    else:
        study.tell(trial, state=state)
    atomic_write_json(plan.out / "trials" / f"trial_{trial.number:04d}.json", {
        "number": trial.number, "state": state.name, "value": value,
        "params": plan.space.decode(params),
        "intermediate": evals, "error": error, "seconds": round(time.time() - t0, 3),
        "worker": f"{socket.gethostname()}:{os.getpid()}", "row": _strip_test(row)})
    shown = f"{value:.4f}" if state == TrialState.COMPLETE else (error or "")
    _log(f"trial {trial.number} {state.name} {metric}={shown} params={params}")
    return state


@dataclass
class WorkerStats:
    ran: list[int] = field(default_factory=list)
    cleaned: list[int] = field(default_factory=list)
    stopped: str = ""


def work(plan: TunePlan, study: optuna.Study) -> WorkerStats:
    """Run trials until the study has ``trials`` COMPLETE + PRUNED ones (or timeout)."""
    spec, n = plan.spec, plan.spec.trials
    max_failed = spec.max_failed if spec.max_failed is not None else max(3, n)
    stats, t0 = WorkerStats(), time.monotonic()
    while True:
        stats.cleaned += sweep_stale_trials(study, spec.grace_period, plan.settings["max_retry"])
        c = _counts(study.get_trials(deepcopy=False))
        if c["done"] >= n:
            stats.stopped = "done"
            break
        if spec.timeout and time.monotonic() - t0 > spec.timeout:
            stats.stopped = "timeout"
            break
        if c["job_failed"] >= max_failed:
            stats.stopped = (f"{c['job_failed']} trials failed in their job (see "
                             f"{plan.out / 'trials'}); stopping")
            break
        if c["done"] + c["running"] >= n:  # other workers hold the remaining slots
            time.sleep(spec.poll_seconds)
            continue
        with warnings.catch_warnings():  # our _Heartbeat thread does what optimize() would
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        if _is_surplus(study, trial, n):
            _give_back(study, trial, plan.settings["max_retry"])
            time.sleep(spec.poll_seconds)
            continue
        run_one(plan, study, trial)
        stats.ran.append(trial.number)
    return stats


def _worker_index(spec: TuneSpec) -> int:
    if spec.worker_index is not None:
        return spec.worker_index
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.getpid() if spec.worker_only else 0


def pin_threads(n: int) -> None:
    """:func:`benchmarks.executors.pin_threads`, except that a fake-job test worker that has
    not imported torch only sets the thread environment variables."""
    if "torch" in sys.modules or not os.environ.get("DFKD_TUNE_FAKE_JOB"):
        _pin_threads(n)
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(max(1, int(n)))


def _launch_workers(plan: TunePlan, n_workers: int) -> list[int]:
    threads = threads_per_worker(n_workers)
    procs = []
    for i in range(n_workers):
        argv = [sys.executable, "-m", "benchmarks.cmd_tune",
                *plan.spec.worker_argv(plan, i, threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        if plan.is_rdb:
            env[STORAGE_ENV] = plan.storage_url
        procs.append(subprocess.Popen(argv, env=env))
    _log(f"started {n_workers} workers (pids {[p.pid for p in procs]}, {threads} threads each)")
    try:
        while any(p.poll() is None for p in procs):  # poll() also reaps killed workers
            time.sleep(0.2)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(timeout=30)
        raise
    return [p.returncode for p in procs]


# --------------------------------------------------------------------------- the end
def format_toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)  # TOML reads Python's float repr (1e-05, inf, nan) as written
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_best_params(path: Path, params: dict[str, Any], header: list[str]) -> None:
    """``[stars]`` TOML as ``dfkd bench --stars-params FILE`` reads it; dotted params as notes."""
    lines = [f"# {h}" for h in header]
    other = {k: v for k, v in params.items() if "." in k and not k.startswith("stars.")}
    for k, v in other.items():
        lines.append(f"# also tuned, not a [stars] key: --set {k}={format_toml_value(v)}")
    lines.append("[stars]")
    for k, v in params.items():
        if k in other:
            continue
        lines.append(f"{k.removeprefix('stars.')} = {format_toml_value(v)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def measure_test_of_best(plan: TunePlan, study: optuna.Study,
                         best: optuna.trial.FrozenTrial) -> float | None:
    """The best trial's test accuracy, measured once (cached in the study's user attrs)."""
    cached = study.user_attrs.get("test_acc_of_best")
    if isinstance(cached, dict) and cached.get("trial") == best.number:
        return cached.get("value")
    cfg = resolve_config(apply_params(plan.base, plan.space.decode(best.params)))
    row = run_trial(cfg, None) or {}
    value = row.get("student_acc", row.get("test_acc"))
    atomic_write_json(plan.out / "best_test_row.json", row)
    if row.get("status", "ok") != "ok":
        _log(f"the test re-run of trial {best.number} failed: {row.get('error')}")
        value = None
    study.set_user_attr("test_acc_of_best", {"trial": best.number, "value": value})
    return value


def _save_axes(ax: Any, path: Path) -> None:
    import numpy as np
    first = np.asarray(ax).ravel()[0] if not hasattr(ax, "figure") else ax
    fig = first.figure
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)


def _importance_evaluator(seed: int) -> Any:
    """fANOVA when scikit-learn is installed (Optuna 5 needs it), else PED-ANOVA (pure numpy)."""
    try:
        import sklearn  # noqa: F401
        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    except ImportError:
        return optuna.importance.PedAnovaImportanceEvaluator()


def make_plots(plan: TunePlan, study: optuna.Study, n_complete: int) -> tuple[list[str], list[str]]:
    """Optimization history, parameter importances (>= 2 complete trials), slice plot."""
    import matplotlib
    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm
    made, notes = [], []
    jobs: list[tuple[str, Callable[[], Any]]] = [
        ("optimization_history.png", lambda: ovm.plot_optimization_history(study)),
        ("slice.png", lambda: ovm.plot_slice(study))]
    if n_complete >= 2:
        ev = _importance_evaluator(plan.seed)
        jobs.insert(1, ("param_importances.png",
                        lambda: ovm.plot_param_importances(study, evaluator=ev)))
    else:
        notes.append(f"parameter importances skipped: {n_complete} complete trial(s), need >= 2")
    for name, fn in jobs:
        try:
            with warnings.catch_warnings():  # experimental API, degenerate axes of few trials
                warnings.simplefilter("ignore")
                _save_axes(fn(), plan.out / name)
            made.append(name)
        except Exception as exc:  # noqa: BLE001 - a plot never fails the tuning run
            notes.append(f"{name} not drawn: {type(exc).__name__}: {exc}")
    return made, notes


def finalize(plan: TunePlan, study: optuna.Study, t_start: float,
             workers: dict[str, Any]) -> dict[str, Any]:
    """best_params.toml, test_acc_of_best (once), plots and tune_summary.json."""
    trials = study.get_trials(deepcopy=False)
    c = _counts(trials)
    notes: list[str] = []
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    test_acc = None
    if best is not None:
        write_best_params(plan.out / "best_params.toml", plan.space.decode(best.params), [
            f"Best STARS parameters from `dfkd tune`: study {plan.study_name!r}, trial "
            f"{best.number}, objective {plan.objective} = {best.value:.6g}.",
            f"Use: dfkd bench --preset {plan.preset_name} --stars-params best_params.toml"])
        if plan.spec.final_test:
            test_acc = measure_test_of_best(plan, study, best)
    else:
        notes.append("no complete trial: no best parameters")
    plots: list[str] = []
    if plan.spec.plots and complete:
        plots, pn = make_plots(plan, study, len(complete))
        notes += pn
    if c["done"] < plan.spec.trials:
        notes.append(f"{c['done']} of {plan.spec.trials} trials finished; re-run the same "
                     "command to resume the study")
    summary = {
        "study": plan.study_name, "storage": mask_url(plan.storage_url),
        "objective": plan.objective, "metric": plan.metric, "direction": "maximize",
        "preset": plan.preset_path, "dataset": plan.dataset,
        "pair": f"{plan.teacher}:{plan.student}", "synthesizer": plan.spec.synthesizer,
        "seed": plan.seed, "trials_requested": plan.spec.trials,
        "trials": {k: c[k] for k in ("complete", "pruned", "fail", "running", "waiting",
                                     "surplus", "job_failed")},
        "best_trial": best.number if best else None,
        "best_value": best.value if best else None,
        "best_params": plan.space.decode(best.params) if best else None,
        "best_params_file": str(plan.out / "best_params.toml") if best else None,
        "test_acc_of_best": test_acc,
        "search_space": plan.space.to_json(), "settings": plan.settings,
        "sampler": f"TPESampler(seed={plan.seed}+worker offset, constant_liar=True, "
                   f"n_startup_trials={plan.settings['n_startup_trials']})",
        "pruner": f"MedianPruner(n_startup_trials={plan.settings['prune_startup_trials']}, "
                  f"n_warmup_steps={plan.settings['prune_warmup_steps']})",
        "base_config": plan.base, "plots": plots, "notes": notes,
        "wall_seconds": round(time.time() - t_start, 3),  # this command, test re-run included
        "trial_seconds_total": round(sum(float(t.user_attrs.get("dfkd_seconds", 0))
                                         for t in trials), 3),
        "workers": workers,
        "finished": now_iso(),
    }
    atomic_write_json(plan.out / "tune_summary.json", summary)
    return summary


def run_tune(spec: TuneSpec) -> dict[str, Any]:
    """``dfkd tune``: validate, run/attach workers, then write best params, test acc, plots."""
    t0 = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = make_plan(spec)
    plan.out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(plan)
    study = open_study(plan, storage, _worker_index(spec))
    info: dict[str, Any] = {"n": spec.workers}
    done = _counts(study.get_trials(deepcopy=False))["done"]
    if spec.workers > 1 and done < spec.trials:
        sweep_stale_trials(study, spec.grace_period, plan.settings["max_retry"])
        info["exit_codes"] = _launch_workers(plan, spec.workers)
    elif done < spec.trials or spec.worker_only:
        if spec.threads:  # set for the workers of --workers N (cores // N each)
            pin_threads(spec.threads)
        stats = work(plan, study)
        info.update(ran=stats.ran, cleaned=stats.cleaned, stopped=stats.stopped)
        if stats.stopped not in ("done", "timeout"):
            _log(stats.stopped)
    if spec.worker_only:
        return {"study": plan.study_name, "worker": info}
    return finalize(plan, study, t0, info)


__all__ = ["DEFAULT_SPACE", "OBJECTIVES", "Param", "SearchSpace", "TuneSpec", "TunePlan",
           "apply_params", "find_preset", "make_plan", "open_storage", "open_study",
           "pid_alive", "stale_reason", "requeue", "sweep_stale_trials", "run_one", "work",
           "write_best_params", "measure_test_of_best", "make_plots", "finalize", "run_tune",
           "resolve_config", "run_trial", "mask_url"]
