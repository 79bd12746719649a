"""Dead workers: the retry bookkeeping Optuna offers only inside ``study.optimize`` on RDB
storages, for any storage (the journal file included) and an ask/tell loop, on Optuna's
public API (``study.tell``, ``study.add_trial``, ``trial.set_user_attr``).

Each running trial carries the user attr ``dfkd_worker = {host, pid, start, trial, t}``,
refreshed every ``heartbeat_interval`` seconds by a thread (:class:`Heartbeat`). :func:`sweep_stale_trials` (on start and
between trials) sets a RUNNING trial to FAIL when its worker runs on this host under a pid
that is gone (or a zombie, or a reused pid), or its heartbeat is older than ``grace``
seconds (any host), or it never got a worker record within ``grace``, and enqueues its
parameters again (system attrs ``failed_trial`` / ``retry_history``, at most ``max_retry``
times; Optuna's ``RetryHeartbeatStaleTrialCallback`` bookkeeping). Only the worker whose
FAIL transition succeeds re-queues, so a trial is retried once. A surplus trial (asked
while others hold the remaining slots) is given back (:func:`give_back`).
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

import optuna
from optuna.trial import TrialState

WORKER_KEY = "dfkd_worker"


def log(msg: str) -> None:
    print(f"[tune {os.getpid()}] {msg}", file=sys.stderr, flush=True)


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
            log(f"trial {t.number} not retried: it already failed {len(history)} times")
            return False
    sys_attrs = {**t.system_attrs, "failed_trial": t.system_attrs.get("failed_trial", t.number),
                 "retry_history": history, "dfkd_retry_reason": reason}
    if not count_retry and not t.system_attrs.get("retry_history"):
        sys_attrs.pop("failed_trial")
        sys_attrs.pop("retry_history")
    users = {k: v for k, v in t.user_attrs.items() if not k.startswith("dfkd_")}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=t.params, distributions=t.distributions,
        user_attrs=users, system_attrs=sys_attrs))
    return True


def frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The current record of trial ``number`` (public API: the study's trials by number)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _try_fail(study: optuna.Study, t: optuna.trial.FrozenTrial) -> bool:
    """Move ``t`` to FAIL; False if another worker finished or failed it first."""
    try:
        study.tell(t.number, state=TrialState.FAIL)
        return True
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError, KeyError):
        return False


def sweep_stale_trials(study: optuna.Study, grace: float, max_retry: int | None) -> list[int]:
    """Fail RUNNING trials of dead workers and re-queue their params; returns their numbers."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(t, grace)
        if reason is None:
            continue
        if _try_fail(study, t):
            log(f"trial {t.number} failed by clean-up ({reason}); its params are re-queued")
            requeue(study, frozen(study, t.number), reason, max_retry)
            failed.append(t.number)
    return failed


class Heartbeat:
    """Refresh the trial's worker record every ``interval`` s (a thread)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: float):
        self.trial, self.number = trial, trial.number
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="dfkd-heartbeat")

    def beat(self) -> None:
        self.trial.set_user_attr(WORKER_KEY, _owner(self.number))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - trial finished or storage hiccup: stop quietly
                return

    def __enter__(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    c = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        c[t.state.name.lower()] += 1
    c["done"] = c["complete"] + c["pruned"]
    c["surplus"] = sum(1 for t in trials if t.user_attrs.get("dfkd_surplus"))
    c["job_failed"] = sum(1 for t in trials if t.state == TrialState.FAIL
                          and "dfkd_error" in t.user_attrs)
    return c


def is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    before = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
    return done + before >= n_trials


def give_back(study: optuna.Study, trial: optuna.Trial, max_retry: int | None) -> None:
    was = frozen(study, trial.number)
    trial.set_user_attr("dfkd_surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    if was.params or was.system_attrs.get("fixed_params"):  # a popped queued trial:
        # put it back in the queue unchanged (params, or enqueue_trial's fixed_params)
        requeue(study, was, was.system_attrs.get("dfkd_retry_reason", "surplus"),
                max_retry, count_retry=False)


