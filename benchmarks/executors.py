"""Where benchmark jobs run: ``local`` (a pool of worker processes), ``submitit`` (SLURM
job arrays) or ``ray``.

A job travels as a *spec*, a plain dict of names and a resolved config (never live
objects), so every worker finds models, synthesizers and regularizers through the
registries' entry points: ``{"job_id", "label", "kind", "cfg", "rows_dir", "job_dir",
"threads", "job_fn"}`` (``job_fn``: ``"module:function"`` replacing the job function, a seam
the caller passes explicitly, e.g. a test's fake job; None runs ``run_job`` / ``run_scratch``). :func:`execute` runs one spec in the worker, pins its torch
threads, never raises for a failed job, and writes the row itself (atomically), so a row
survives even if the parent is killed right after.

Threads: ``local`` gives each of N workers ``max(1, cores // N)`` threads (set as
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and ``torch.set_num_threads`` in the worker's
initializer), so N workers never oversubscribe the CPU; ``submitit`` uses the job's
``cpus_per_task`` and ``ray`` its ``cpus_per_job`` option (default 1).
"""
from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

from baselines.allocator import tune_malloc
from baselines.errors import ConfigError, UnknownNameError

from .executor_options import NAMES
from .jobs import Job
from .rows import ResultRow
from .outputs import write_or_keep
from .store import job_dir, read_row, rows_dir

STARTED = "started"  # marker file in DIR/jobs/<id>/ while a worker runs the job

Summary = dict[str, Any]


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, cpu_count() // max(1, workers))


def pin_threads(n: int) -> None:
    """Limit this process to ``n`` compute threads (OpenMP/MKL env and torch)."""
    n = max(1, int(n))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)


def _init_worker(n: int) -> None:
    """Pool initializer: pin threads, and die with the parent (Linux) instead of lingering."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    pin_threads(n)


def check_executor(name: str) -> None:
    """Raise before compute when ``name`` is unknown or its package is missing."""
    if name not in NAMES:
        raise UnknownNameError("executor", name, list(NAMES))
    if name == "submitit":
        try:
            import submitit  # noqa: F401
        except ImportError as exc:
            raise ConfigError("the submitit executor needs submitit: pip install 'stars-dfkd[cluster]'") from exc
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise ConfigError("the ray executor needs Ray, an optional extra: pip install 'stars-dfkd[ray]'") from exc


def job_spec(job: Job, out: str | Path, threads: int = 1, job_fn: str | None = None) -> dict[str, Any]:
    """The picklable description of one job a worker receives."""
    return {"job_id": job.job_id, "label": job.label, "kind": job.kind, "cfg": job.cfg,
            "rows_dir": str(rows_dir(out)), "job_dir": str(job_dir(out, job.job_id)),
            "threads": threads, "job_fn": job_fn}


def import_object(spec: str) -> Any:
    """``"module:attr"`` -> the object."""
    if ":" not in spec:
        raise ConfigError(f"job function {spec!r}: expected module:function.")
    mod, attr = spec.split(":", 1)
    return getattr(importlib.import_module(mod), attr)


def job_function(kind: str, override: str | None = None) -> Callable[..., dict[str, Any]]:
    """The function a worker runs for a job of ``kind`` (``override`` = "module:function" first)."""
    if override:
        return import_object(override)
    if kind == "scratch":
        from .scratch import run_scratch

        return run_scratch
    from .job import run_job

    return run_job


def summarize(spec: dict[str, Any], row: ResultRow) -> Summary:
    return dict(row.summary(), job_id=spec["job_id"], label=spec["label"])


def execute(spec: dict[str, Any]) -> Summary:
    """Run one job in this process and write its row; a job that raises gives a failed row."""
    pin_threads(spec.get("threads", 1))
    jdir = Path(spec["job_dir"])
    jdir.mkdir(parents=True, exist_ok=True)
    marker = jdir / STARTED
    marker.write_text(f"{os.getpid()} {time.time()}\n")
    t0 = time.perf_counter()
    try:
        tune_malloc()  # every executor's worker, before the job's tensors (baselines/allocator.py)
        fn = job_function(spec["kind"], spec.get("job_fn"))
        returned = fn(spec["cfg"], str(jdir))
        if not isinstance(returned, dict):
            raise TypeError(f"job function returned {type(returned).__name__}, not a row dict")
        row = ResultRow.of_job(returned, spec, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a failed job must not stop the others
        failed = ResultRow.failed(spec["cfg"], f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=20))
        row = ResultRow.of_job(failed.to_dict(), spec, time.perf_counter() - t0)
    summary = store_row(spec, row)
    marker.unlink(missing_ok=True)
    return summary


def store_row(spec: dict[str, Any], row: ResultRow) -> Summary:
    """Write the job's row; one that cannot be written (disk full, read-only) is kept in a
    fallback file (:func:`benchmarks.outputs.write_or_keep`) and the summary is a failure
    naming the job, the cause and where the row is, so the coordinator goes on."""
    _, err = write_or_keep(Path(spec["rows_dir"]) / f"{spec['job_id']}.json", row.to_dict(), "row")
    summary = summarize(spec, row)
    if err:
        summary.update(status="failed", error=f"row of job {spec['label']}: {err} (or re-run the same command: "
                                              "finished rows are kept, jobs without a row run again)")
    return summary


def record_failure(spec: dict[str, Any], error: str) -> Summary:
    """Write a failed row for a job the executor lost (worker died, scheduler error)."""
    row = ResultRow.of_job(ResultRow.failed(spec["cfg"], error).to_dict(), spec, 0.0)
    summary = store_row(spec, row)
    with contextlib.suppress(OSError):
        (Path(spec["job_dir"]) / STARTED).unlink(missing_ok=True)
    return summary


def _row_summary(spec: dict[str, Any]) -> Summary | None:
    row = read_row(Path(spec["rows_dir"]) / f"{spec['job_id']}.json")
    return summarize(spec, row) if row is not None else None


def run_local(specs: list[dict[str, Any]], workers: int, on_done: Callable[[Summary], None]) -> list[Summary]:
    """A pool of ``workers`` spawned processes. If a worker dies (OOM killer, segfault) the
    pool breaks: a job that was running alone gets a failed row; when several were running,
    they are re-run one at a time to find the culprit; the other jobs continue."""
    threads = threads_per_worker(workers)
    remaining = [dict(s, threads=threads) for s in specs]
    for s in remaining:
        (Path(s["job_dir"]) / STARTED).unlink(missing_ok=True)
    results: list[Summary] = []
    isolate: set[str] = set()
    ctx = mp.get_context("spawn")

    def finish(summary: Summary) -> None:
        results.append(summary)
        on_done(summary)

    for _attempt in range(2 * len(specs) + 2):
        if not remaining:
            break
        batch = [s for s in remaining if s["job_id"] in isolate] or remaining
        n_workers = 1 if batch is not remaining else min(workers, len(batch))
        finished: set[str] = set()
        broken = False
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(threads,)) as pool:
            futs = {pool.submit(execute, s): s for s in batch}
            for fut in as_completed(futs):
                s = futs[fut]
                try:
                    summary = fut.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. a spec that does not pickle
                    summary = record_failure(s, f"executor error: {type(exc).__name__}: {exc}")
                finished.add(s["job_id"])
                finish(summary)
        if broken:
            suspects = []
            for s in batch:
                if s["job_id"] in finished:
                    continue
                summary = _row_summary(s)  # finished, but the pool broke before it could say so
                if summary is not None:
                    finished.add(s["job_id"])
                    finish(summary)
                elif (Path(s["job_dir"]) / STARTED).exists():
                    suspects.append(s)
            if n_workers == 1 or len(suspects) == 1:
                for s in suspects:
                    finished.add(s["job_id"])
                    finish(record_failure(s, "the worker process died while running this job "
                                             "(killed, out of memory, or crashed)"))
            else:
                isolate |= {s["job_id"] for s in suspects}
                for s in suspects:
                    (Path(s["job_dir"]) / STARTED).unlink(missing_ok=True)
        remaining = [s for s in remaining if s["job_id"] not in finished]
        isolate &= {s["job_id"] for s in remaining}
    for s in remaining:  # the pool kept breaking without a culprit: give up on these
        finish(record_failure(s, "the worker pool broke repeatedly; job not run"))
    return results


def run_submitit(specs: list[dict[str, Any]], options: dict[str, Any], folder: Path,
                 on_done: Callable[[Summary], None]) -> list[Summary]:
    """One SLURM job array (``submitit.AutoExecutor``); options are passed to
    ``update_parameters`` (``timeout_min``, ``slurm_partition``, ``cpus_per_task``,
    ``gpus_per_node``, ``slurm_array_parallelism``, ...), plus ``cluster`` ("debug" or
    "local" to run without SLURM, as the tests do)."""
    import submitit

    opts = dict(options)
    cluster = opts.pop("cluster", None)
    opts.setdefault("timeout_min", 24 * 60)
    opts.setdefault("cpus_per_task", 1)
    opts.setdefault("name", "dfkd-bench")
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    ex.update_parameters(**opts)
    specs = [dict(s, threads=int(opts["cpus_per_task"])) for s in specs]
    jobs = ex.map_array(execute, specs)
    results = []
    for job, s in zip(jobs, specs):
        try:
            summary = job.result()
        except Exception as exc:  # noqa: BLE001 - scheduler / worker failure
            summary = _row_summary(s) or record_failure(
                s, f"submitit job {getattr(job, 'job_id', '?')} failed: {type(exc).__name__}: {exc}")
        results.append(summary)
        on_done(summary)
    return results


def run_ray(specs: list[dict[str, Any]], options: dict[str, Any],
            on_done: Callable[[Summary], None]) -> list[Summary]:
    """Ray tasks (``ray.init(address=...)`` if given, else a local instance); each task
    reserves ``cpus_per_job`` CPUs (default 1) and ``gpus_per_job`` GPUs (default 0)."""
    import ray

    init = {k: options[k] for k in ("address", "num_cpus", "num_gpus") if k in options}
    ray.init(ignore_reinit_error=True, include_dashboard=False, **init)
    cpus = int(options.get("cpus_per_job", 1))
    remote = ray.remote(num_cpus=cpus, num_gpus=options.get("gpus_per_job", 0))(execute)
    refs = {remote.remote(dict(s, threads=cpus)): s for s in specs}
    results = []
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            s = refs.pop(ref)
            try:
                summary = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - worker died / task error
                summary = _row_summary(s) or record_failure(s, f"ray task failed: {type(exc).__name__}: {exc}")
            results.append(summary)
            on_done(summary)
    return results


def run_jobs(specs: list[dict[str, Any]], executor: str = "local", workers: int = 1,
             options: dict[str, Any] | None = None, out: str | Path = ".",
             on_done: Callable[[Summary], None] | None = None) -> list[Summary]:
    """Run job specs on ``executor``; returns one summary per job (rows are on disk)."""
    check_executor(executor)
    on_done = on_done or (lambda s: None)
    if not specs:
        return []
    if executor == "local":
        return run_local(specs, workers, on_done)
    if executor == "submitit":
        return run_submitit(specs, options or {}, Path(out) / "submitit", on_done)
    return run_ray(specs, options or {}, on_done)
