"""``dfkd bench`` orchestration: preset -> jobs -> preflight -> executor -> rows -> report.

The steps live in their own modules (``preset``, ``jobs``, ``cost``, ``store``,
``preflight``, ``executors``, ``leaderboard``); this one runs them in order and reports
progress. Re-running skips jobs with a row (``status == "ok"``; failed rows too unless
``retry_failed``), so a killed benchmark resumes with no row lost or duplicated. The output
directory is checked (writable, a directory, name length) before compute and locked while
the benchmark runs (:mod:`benchmarks.outputs`): a second bench on it exits naming this one.

Seams (explicit, never environment variables): ``BenchOptions.job_fn`` ("module:function",
importable by the workers) replaces the job function of every job (then teachers are left to
that function: none is trained up front), ``BenchOptions.resolve`` replaces the config
resolver (:func:`benchmarks.job.resolve_config`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from baselines.config import deep_merge
from baselines.errors import ConfigError

from . import executors
from .cost import cost_model, format_seconds, teacher_seconds
from .executor_options import check_options
from .jobs import Job, Resolver, expand, filter_jobs, teacher_keys
from .outputs import bench_lock, check_out_dir_writable
from .preflight import check_datasets, prepare_teachers
from .progress import BenchProgress
from .preset import EXECUTORS, Preset, load_preset, split_sets, validate_preset, with_seeds  # noqa: F401 - re-exported
from .rows import ResultRow
from .store import check_out_dir, corrupt_rows, job_state, pending, read_rows, remove_partial_writes, write_manifest


@dataclass
class BenchOptions:
    """What ``dfkd bench`` was asked (see benchmarks/cmd_bench.py for the flags)."""

    preset: str
    out: str | None = None
    executor: str = "local"
    workers: int | None = None  # None: the preset's [executor.local] workers, else 1
    only: list[str] = field(default_factory=list)
    dry_run: bool = False
    retry_failed: bool = False
    params_file: str | None = None  # --params (alias --stars-params): TOML merged into [params]
    sets: list[str] = field(default_factory=list)
    data_root: str | None = None
    seeds: list[int] | None = None  # --seeds: replaces the preset's [bench].seeds
    report: bool = True
    argv: list[str] | None = None
    progress_every: float = 60.0  # seconds between progress lines on stderr while jobs run (0 = none)
    job_fn: str | None = None  # seam: "module:function" run instead of run_job / run_scratch
    resolve: Resolver | None = None  # seam: the config resolver


def default_out(preset: Preset) -> Path:
    return Path("results") / preset.name


def dry_run_text(preset: Preset, jobs: list[Job], rows: dict[str, ResultRow], workers: int) -> str:
    """The job list with states and estimated costs (and the cost model it used)."""
    cost = cost_model(preset)
    lines = [f"preset {preset.name!r} ({preset.source}): {len(jobs)} job(s)", ""]
    width = max((len(j.label) for j in jobs), default=10)
    lines.append(f"{'job':<{width}}  {'id':<12}  {'state':<7}  est. cost")
    todo = 0.0
    for j in jobs:
        st = job_state(rows.get(j.job_id))
        if st != "done":
            todo += j.est_seconds
        lines.append(f"{j.label:<{width}}  {j.job_id:<12}  {st:<7}  {format_seconds(j.est_seconds)}")
    teach = teacher_keys(jobs)
    lines += ["", f"estimated cost of the {sum(job_state(rows.get(j.job_id)) != 'done' for j in jobs)} job(s) "
              f"not done: {format_seconds(todo)} of compute, about {format_seconds(todo / max(1, workers))} "
              f"wall with {workers} worker(s); plus up to {format_seconds(teacher_seconds(teach, cost))} for "
              f"{len(teach)} teacher(s) if not cached.",
              "cost model: overhead_s + F_model * (F_reg * epochs * (synth_batches * synth_batch_s[synthesizer] + "
              "kd_steps * kd_step_s) + n_evals * eval_s); "
              f"kd_step_s={cost['kd_step_s']}, eval_s={cost['eval_s']}, overhead_s={cost['overhead_s']} "
              "(preset [cost] overrides the defaults in benchmarks/cost.py)."]
    return "\n".join(lines)


def run_bench(opts: BenchOptions, log: Callable[[str], None] = print) -> int:
    """Expand, check, run and report a benchmark; returns the exit code (1 if a job failed)."""
    preset = load_preset(opts.preset, opts.params_file)
    if opts.seeds:
        preset = with_seeds(preset, opts.seeds)
    _, ex_sets = split_sets(opts.sets)
    for name, ex_set in ex_sets.items():
        check_options(name, ex_set, f"--set executor.{name}")
    ex_opts = deep_merge(preset.data.get("executor", {}).get(opts.executor, {}), ex_sets.get(opts.executor, {}))
    executors.check_executor(opts.executor)
    workers = opts.workers
    if workers is None:
        workers = int(preset.data.get("executor", {}).get("local", {}).get("workers", 1))
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}.")
    all_jobs = expand(preset, opts.sets, opts.data_root, resolve=opts.resolve)
    jobs = filter_jobs(all_jobs, opts.only)
    if not jobs:
        raise ConfigError(f"--only {' '.join(opts.only)!r} matches none of the {len(all_jobs)} jobs of preset "
                          f"{preset.name!r}; e.g. {all_jobs[0].label!r} (use --dry-run to list them).")
    out = Path(opts.out) if opts.out else default_out(preset)
    if opts.dry_run:
        log(dry_run_text(preset, jobs, read_rows(out), workers))
        return 0
    check_out_dir_writable(out)  # a file, read-only or too long a name: refused before compute
    with bench_lock(out):  # a second bench on this directory exits (naming this one's pid)
        return _run_locked(opts, preset, all_jobs, jobs, out, workers, ex_opts, log)


def _known_ids(preset: Preset, opts: BenchOptions, all_jobs: list[Job], row_seeds: set[int]) -> list[str]:
    """Job ids this preset's rows may have: its expansion plus the same cells at the other
    seeds found in the directory (added with --seeds), so those rows are not foreign."""
    other = sorted(row_seeds - set(preset.bench["seeds"]))
    extra = expand(with_seeds(preset, other), opts.sets, opts.data_root, resolve=opts.resolve) if other else []
    return [j.job_id for j in [*all_jobs, *extra]]


def _run_locked(opts: BenchOptions, preset: Preset, all_jobs: list[Job], jobs: list[Job], out: Path,
                workers: int, ex_opts: dict[str, Any], log: Callable[[str], None]) -> int:
    rows = read_rows(out)
    row_seeds = {r.seed for r in rows.values() if isinstance(r.seed, int)}
    for w in check_out_dir(out, preset.name, _known_ids(preset, opts, all_jobs, row_seeds)):
        log(f"warning: {w}")
    bad = corrupt_rows(out)
    if bad:
        log(f"warning: {len(bad)} corrupt row file(s) (truncated or not JSON, e.g. {bad[0]}); their jobs run again.")
    seeds = {s: i for i, s in enumerate(preset.bench["seeds"])}
    by_id = {j.job_id: j for j in jobs}
    todo = sorted((by_id[i] for i in pending(by_id, rows, opts.retry_failed)),  # per seed, longest first
                  key=lambda j: (seeds.get(j.run.get("seed"), 0), -j.est_seconds))
    log(f"preset {preset.name!r}: {len(jobs)} job(s), {len(jobs) - len(todo)} already have a row, "
        f"{len(todo)} to run -> {out}")
    if todo:
        bundles = check_datasets(todo, preset.name)
        try:
            seen = with_seeds(preset, {*preset.bench["seeds"], *row_seeds})  # the manifest lists every seed held
            write_manifest(out, {"name": preset.name, "source": preset.source, "data": seen.data},
                           {j.job_id: j.label for j in all_jobs}, opts.argv, split_sets(opts.sets)[0])
            remove_partial_writes(out)
        except OSError as exc:
            raise ConfigError(f"cannot write {out / 'manifest.json'} ({exc.strerror or exc}); nothing was run: "
                              "free space (or fix the permissions) or pass another --out.") from exc
        if opts.job_fn is None:
            prepare_teachers(todo, log, bundles)
        del bundles
        specs = [executors.job_spec(j, out, job_fn=opts.job_fn) for j in todo]
        n_done = [0]
        prog = BenchProgress(todo, {s["job_id"]: s["job_dir"] for s in specs}, interval=opts.progress_every)

        def on_done(summary: dict[str, Any]) -> None:
            n_done[0] += 1
            prog.done(summary)
            acc = summary.get("student_acc")
            acc_s = f" acc {acc:.2f}%" if isinstance(acc, (int, float)) and acc == acc else ""
            err = f" error: {summary.get('error')}" if summary.get("status") != "ok" else ""
            log(f"[{n_done[0]}/{len(todo)}] {summary.get('status')} {summary.get('seconds', 0):.0f}s "
                f"{summary.get('label')}{acc_s}{err} | {prog.line()}")

        with prog:  # a line on stderr every progress_every seconds while the jobs run
            executors.run_jobs(specs, opts.executor, workers, ex_opts, out, on_done)
    rows = read_rows(out)
    failed = [j for j in jobs if job_state(rows.get(j.job_id)) != "done"]
    if opts.report:
        from .leaderboard import write_report

        try:
            paths = write_report(out)
        except OSError as exc:
            log(f"error: the report could not be written ({exc.strerror or exc}); the rows are kept in "
                f"{out / 'rows'}: free space and run `dfkd report {out}`.")
            return 1
        log(f"leaderboard: {paths.get('leaderboard')}")
    if failed:
        log(f"{len(failed)} job(s) failed or have no row (e.g. {failed[0].label}); see the leaderboard's "
            "'Failed runs' section; re-run with --retry-failed to run only those again.")
        return 1
    return 0
