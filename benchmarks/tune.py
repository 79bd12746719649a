"""Optuna tuning of the preset's treatment regularizer (``dfkd tune``; STARS' alpha, beta and
threshold percentile q in the shipped presets).

The preset is read by :func:`benchmarks.preset.load_preset` and layered by
:func:`benchmarks.preset.user_config`, exactly as ``dfkd bench`` does: a preset valid for
one is valid for the other. The trials run the preset's ``[bench].treatment`` set; the
search space (``tune_space``) defaults to the published ranges of that regularizer
(:data:`benchmarks.tune_space.DEFAULT_SPACES`: loss weights) or, when it runs with
``weighting = "grad-share"`` (STARS' default), to log ranges of gradient shares
(:data:`benchmarks.tune_space.SHARE_SPACES`), and is changed by the preset's ``[tune]``.

The objective is never the test set:

* ``val-acc`` (default): student accuracy on ``run.val_size`` labelled images carved out of
  the *training* set (disjoint from the test set). Assumes a few labelled images exist.
* ``agreement``: fully data-free, teacher-student top-1 agreement on ``distill.heldout_images``
  synthetic images that no KD step used.

Sampler: ``TPESampler(seed)`` (``constant_liar`` so parallel workers spread out). Pruner:
``MedianPruner`` on the objective reported at each intermediate distillation evaluation.
The best trial's test accuracy is measured once, at the end (``tune_report``).

Workers run an ask/tell loop until the study holds ``trials`` COMPLETE + PRUNED trials; dead
workers' trials are failed and re-queued by ``trial_retry`` (any storage). Modules: ``tune`` (plan, worker loop, entry point),
``tune_space``, ``tune_storage``, ``trial_retry``, ``tune_report``.

Seams (explicit): ``TuneSpec.job_fn`` and ``TuneSpec.resolver`` ("module:function", passed
to worker processes as arguments) replace ``run_job`` / ``resolve_config``.
"""
from __future__ import annotations

import importlib
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from baselines import config as cfgmod
from baselines.config import apply_sets
from baselines.errors import ConfigError, DFKDError, UnknownNameError
from baselines.registry import REGULARIZERS

from .executors import cpu_count, pin_threads as _pin_threads, threads_per_worker  # noqa: F401 - cpu_count re-exported
from .preset import PRESET_DIR, load_preset, parse_pair, split_sets, user_config  # noqa: F401
from .store import atomic_write_json
from .trial_retry import (WORKER_KEY, Heartbeat, counts as _counts, give_back as _give_back,  # noqa: F401
                          is_surplus as _is_surplus, log as _log, pid_alive, requeue, stale_reason,
                          sweep_stale_trials, frozen, _owner, _proc_start)
from .tune_report import finalize, make_plots, measure_test_of_best, status_table  # noqa: F401
from .tune_space import DEFAULT_SPACES, SearchSpace, apply_params, write_best_params  # noqa: F401
from .tune_machines import MACHINE_KEY, machine_for, warn_other_machines
from .tune_storage import driver_url, mask_url, open_storage, open_study  # noqa: F401

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
STORAGE_ENV = "DFKD_TUNE_STORAGE"  # storage URL when --storage is not given (keeps passwords
                                   # out of the process list)
TEST_KEYS = ("student_acc", "student_acc_best", "test_acc", "history")


def _import(spec: str) -> Callable[..., Any]:
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ConfigError(f"{spec!r}: expected module:function")
    return getattr(importlib.import_module(mod), attr)


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
    status: bool = False  # print the study's trials (tune_report.status_table) and run nothing
    job_fn: str | None = None  # seam: "module:function" (cfg, on_eval) -> row, instead of run_job
    resolver: str | None = None  # seam: "module:function" (user) -> cfg, instead of resolve_config

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
        if self.job_fn:
            argv += ["--job-fn", self.job_fn]
        if self.resolver:
            argv += ["--resolver", self.resolver]
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
    treatment: list[str] = field(default_factory=list)

    @property
    def is_rdb(self) -> bool:
        return "://" in self.storage_url

    @property
    def home(self) -> str:
        """The section of undotted params (the treatment's first regularizer)."""
        return self.treatment[0]

    def resolve(self, user: dict[str, Any]) -> dict[str, Any]:
        """Full, validated job config (``benchmarks.job.resolve_config`` unless a resolver is given)."""
        if self.spec.resolver:
            return _import(self.spec.resolver)(user)
        from .job import resolve_config

        return resolve_config(user)

    def run_trial(self, cfg: dict[str, Any], on_eval: Callable[[int, dict[str, Any]], None] | None
                  ) -> dict[str, Any]:
        """Run one distillation job and return its result row (``benchmarks.job.run_job``)."""
        if self.spec.job_fn:
            return _import(self.spec.job_fn)(cfg, on_eval)
        from .job import run_job

        return run_job(cfg, out_dir=None, on_eval=on_eval)


def _weighting(home: str, section: dict[str, Any] | None) -> str | None:
    """The tuned regularizer's resolved ``weighting`` (its Config's default when the preset
    leaves it unset), or None for a regularizer without one."""
    if home not in REGULARIZERS:
        return None
    cfg = cfgmod.build(REGULARIZERS.get(home).Config, dict(section or {}), home)
    return getattr(cfg, "weighting", None)


def make_plan(spec: TuneSpec) -> TunePlan:
    """Read the preset (the bench loader), build the base config and the space, validate all
    of it (no compute)."""
    if spec.trials < 1:
        raise ConfigError(f"--trials {spec.trials}: give at least 1 trial")
    if spec.workers < 1:
        raise ConfigError(f"--workers {spec.workers}: give at least 1 worker")
    if spec.timeout is not None and not 0 < spec.timeout < float("inf"):  # nan fails both
        raise ConfigError(f"--timeout {spec.timeout}: give a positive, finite number of seconds (or leave it "
                          "out: no time limit).")
    preset = load_preset(spec.preset)
    treatment = preset.require_treatment("dfkd tune")
    home = treatment[0]
    bench = preset.bench
    dataset = bench["datasets"][0]
    pair = spec.pair or bench["pairs"][0]
    if pair.count(":") != 1 or not all(pair.split(":")):
        raise ConfigError(f"--pair {pair!r}: expected TEACHER:STUDENT, e.g. {bench['pairs'][0]}")
    teacher, student = parse_pair(pair)
    if spec.synthesizer not in bench["synthesizers"]:
        raise UnknownNameError(f"synthesizer of preset {preset.name!r}", spec.synthesizer,
                               list(bench["synthesizers"]))
    seed = spec.seed if spec.seed is not None else int(bench["seeds"][0])

    tune_sec = dict(preset.data.get("tune", {}))
    space_over = dict(tune_sec.pop("space", {}) or {})
    settings = dict(SETTINGS_DEFAULTS)
    for k, v in tune_sec.items():
        if k in SETTINGS_DEFAULTS:
            settings[k] = v
        else:
            space_over[k] = v
    objective = spec.objective or settings["objective"] or "val-acc"
    if objective not in OBJECTIVES:
        raise UnknownNameError("objective", str(objective), list(OBJECTIVES))

    job_sets, _ = split_sets(spec.sets)
    used: set[str] = set()
    base = user_config(preset, dataset, teacher, student, spec.synthesizer, treatment, seed,
                       sets=job_sets, used_sets=used)
    unused = [s for s in job_sets if s not in used]
    if unused:
        raise ConfigError(f"--set {unused[0]!r} matches no section of the tuned job (sections: run, "
                          f"distill, {spec.synthesizer}, {', '.join(treatment)}).")
    space = SearchSpace.from_overrides(space_over, home, _weighting(home, base.get(home)))
    base.setdefault("distill", {})
    if objective == "val-acc":
        base["run"]["val_size"] = int(settings["val_size"] or base["run"].get("val_size")
                                      or DEFAULT_VAL_SIZE)
    else:
        base["distill"]["heldout_images"] = int(
            settings["heldout_images"] or base["distill"].get("heldout_images") or DEFAULT_HELDOUT)
    base = apply_sets(base, [s for s in job_sets if s in used])  # --set wins over [tune] settings
    if objective == "val-acc" and not int(base["run"].get("val_size") or 0) > 0:
        raise ConfigError("objective val-acc needs run.val_size > 0 (labelled images carved "
                          "out of the training set); or use --objective agreement")
    if objective == "agreement" and not int(base["distill"].get("heldout_images") or 0) > 0:
        raise ConfigError("objective agreement needs distill.heldout_images > 0")

    for k in ("n_startup_trials", "prune_startup_trials", "prune_warmup_steps", "max_retry"):
        if not isinstance(settings[k], int) or settings[k] < 0:
            raise ConfigError(f"[tune] {k} = {settings[k]!r}: expected an integer >= 0")
    path = Path(preset.source)
    study_name = spec.study or (f"{'+'.join(treatment)}-{path.stem}-{dataset}-{teacher}-{student}-"
                                f"{spec.synthesizer}-{objective}")
    out = Path(spec.out or Path("runs") / "tune" / study_name).resolve()
    storage_url = spec.storage or str(out / "study.journal")
    if "://" not in storage_url:
        storage_url = str(Path(storage_url).resolve())
    plan = TunePlan(spec, str(path), path.stem, dataset, teacher, student, seed, objective,
                    OBJECTIVES[objective], base, space, settings, study_name, storage_url, out,
                    list(treatment))
    for pt in space.corners():  # every bound/choice must give a valid job config
        plan.resolve(apply_params(base, pt, home))
    return plan


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
        if int(epoch) < int(cfg["distill"]["epochs"]) - 1 and trial.should_prune():  # the last one is the value
            raise optuna.TrialPruned(f"{metric} = {v:.4f} at epoch {epoch} is below the median")

    params: dict[str, Any] = {}
    with Heartbeat(study, trial, plan.spec.heartbeat_interval):
        try:
            params = plan.space.suggest(trial)
            done = _counts(study.get_trials(deepcopy=False))["done"]
            _log(f"trial {trial.number} started ({done}/{plan.spec.trials} done) params={params}")
            cfg = plan.resolve(apply_params(plan.base, plan.space.decode(params), plan.home))
            trial.set_user_attr(MACHINE_KEY, machine_for(cfg.get("run", {}).get("device", "auto")))
            row = plan.run_trial(cfg, on_eval) or {}
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
            requeue(study, frozen(study, trial.number), "interrupted",
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


def pin_threads(n: int, import_torch: bool = True) -> None:
    """:func:`benchmarks.executors.pin_threads` once torch is imported; before that (a worker
    whose job function has not imported it yet) the thread environment variables, which torch
    reads when it loads."""
    if import_torch or "torch" in sys.modules:
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
def run_tune(spec: TuneSpec) -> dict[str, Any]:
    """``dfkd tune``: validate, run/attach workers, then write best params, test acc, plots."""
    t0 = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = make_plan(spec)
    if spec.status:
        return {"study": plan.study_name, "status": status_table(plan)}
    plan.out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(plan)
    study = open_study(plan, storage, _worker_index(spec))
    warn_other_machines(study, plan.out)
    info: dict[str, Any] = {"n": spec.workers}
    done = _counts(study.get_trials(deepcopy=False))["done"]
    if spec.workers > 1 and done < spec.trials:
        sweep_stale_trials(study, spec.grace_period, plan.settings["max_retry"])
        info["exit_codes"] = _launch_workers(plan, spec.workers)
    elif done < spec.trials or spec.worker_only:
        if spec.threads:  # set for the workers of --workers N (cores // N each)
            pin_threads(spec.threads, import_torch=spec.job_fn is None)
        stats = work(plan, study)
        info.update(ran=stats.ran, cleaned=stats.cleaned, stopped=stats.stopped)
        if stats.stopped not in ("done", "timeout"):
            _log(stats.stopped)
    if spec.worker_only:
        return {"study": plan.study_name, "worker": info}
    return finalize(plan, study, t0, info)


__all__ = ["OBJECTIVES", "TuneSpec", "TunePlan", "make_plan", "run_one", "work", "run_tune"]
