"""Live progress of ``dfkd bench``: jobs done / running / failed / pending and an ETA.

The runner prints :meth:`BenchProgress.line` after every finished job and a background
thread prints it to stderr every ``interval`` seconds while jobs run. "Running" is read from
the ``OUT/jobs/<id>/started`` markers the workers write (:func:`benchmarks.executors.execute`),
so it is right for every executor (local pool, submitit, ray) and needs nothing from them.
ETA: elapsed wall time x (estimated seconds of the jobs not done / estimated seconds of the
jobs done), i.e. the cost model's estimates rescaled by the pace observed so far; it
accounts for the number of workers by itself.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .cost import format_seconds
from .jobs import Job

MARKER = "started"  # = benchmarks.executors.STARTED


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class BenchProgress:
    """Counts of one bench run's jobs and their ETA (see module docstring)."""

    def __init__(self, jobs: list[Job], job_dirs: dict[str, str], interval: float = 60.0,
                 log: Callable[[str], None] = _stderr, clock: Callable[[], float] = time.monotonic):
        self.est = {j.job_id: max(float(j.est_seconds or 0.0), 1e-9) for j in jobs}
        self.dirs = {k: Path(v) for k, v in job_dirs.items()}
        self.ok: set[str] = set()
        self.failed: set[str] = set()
        self.interval, self.log, self.clock = float(interval), log, clock
        self.t0 = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def done(self, summary: dict[str, Any]) -> None:
        (self.ok if summary.get("status") == "ok" else self.failed).add(summary.get("job_id"))

    def running(self) -> int:
        fin = self.ok | self.failed
        return sum(1 for k, d in self.dirs.items() if k not in fin and (d / MARKER).exists())

    def eta(self) -> float | None:
        fin = self.ok | self.failed
        done_est = sum(self.est[k] for k in fin if k in self.est)
        left_est = sum(v for k, v in self.est.items() if k not in fin)
        if done_est <= 0:
            return None
        return (self.clock() - self.t0) * left_est / done_est

    def line(self) -> str:
        n = len(self.est)
        fin = len(self.ok) + len(self.failed)
        run = self.running()
        eta = self.eta()
        return (f"progress: {fin}/{n} finished ({len(self.ok)} ok, {len(self.failed)} failed), {run} running, "
                f"{n - fin - run} pending; elapsed {format_seconds(self.clock() - self.t0)}, "
                f"ETA {'?' if eta is None else format_seconds(eta)}")

    # ------------------------------------------------------------------ periodic line
    def start(self) -> "BenchProgress":
        if self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="bench-progress", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.log(self.line())
            except Exception:  # noqa: BLE001 - a progress line must never stop the benchmark
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "BenchProgress":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = ["BenchProgress"]
