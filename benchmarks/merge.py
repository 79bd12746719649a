"""``dfkd merge SRC... --into DIR``: benchmark output directories made in several sessions,
worktrees or machines combined into one table, checked the way ``dfkd bench`` checks a resume.

A row of SRC joins DIR only when it is the same experiment as DIR's rows, up to the seed:

* same rows schema and stars-dfkd version (the manifests);
* its job id is the hash of its own recorded config (:func:`benchmarks.jobs.job_id_of`), so
  the file was not edited or renamed;
* its *cell fingerprint*, the job id of its config with ``run.seed`` removed, equals that of
  DIR's rows of the same cell (dataset, pair, synthesizer, regularizer set); for a cell DIR
  holds no row of, the fingerprint of DIR's preset as recorded in its manifest (with the
  ``--set`` options of the bench that made it). A changed budget or ``--set`` changes the
  fingerprint, so rows of different configs are never mixed;
* by default its teacher (weights digest) and machine (:func:`benchmarks.rows.host_of`) are
  those of DIR's rows of the same pair (``allow_mixed`` accepts others; the leaderboard then
  warns, as it does for any mixed table).

Rows that are not ``ok`` are skipped (their jobs are re-run by ``dfkd bench``); a failed row of
DIR is replaced by an ok one. A job with an ok row on both sides must hold the same result
(same accuracy and run id), else the merge stops before writing anything unless
``on_conflict`` says which to keep. Each merged row brings its ``jobs/<id>/`` folder (log,
result, samples; no resume checkpoint). The manifest gains the rows' job ids, seeds and git
commits (taken from the rows, never from the checkout doing the merge) and a ``merged`` entry.
Everything is checked before the first write; DIR is locked like ``dfkd bench`` locks it.
"""
from __future__ import annotations

import copy
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from baselines.errors import ConfigError

from .executors import STARTED
from .jobs import expand, job_id_of
from .longjob import CHECKPOINT
from .outputs import bench_lock, check_out_dir_writable
from .preset import Preset, split_sets, validate_preset, with_seeds
from .rows import ROWS_SCHEMA, ResultRow, host_of
from .store import atomic_write_json, job_dir, read_manifest, read_rows, write_row

ON_CONFLICT = ("stop", "keep", "replace")
#: files of a job folder that are not results (resume checkpoint, running marker, partial writes)
NOT_COPIED = (CHECKPOINT, STARTED, ".*.tmp")


def cell_of(label: str | None) -> str:
    """``dataset/teacher:student/synth+regs``: a job label without its seed."""
    return (label or "").rsplit("/seed", 1)[0]


def fingerprint(cfg: dict[str, Any]) -> str:
    """The job id of ``cfg`` with its seed removed: equal for the seeds of one experiment."""
    c = copy.deepcopy(cfg)
    c.get("run", {}).pop("seed", None)
    return job_id_of(c)


def manifest_sets(manifest: dict[str, Any]) -> list[str]:
    """The ``--set`` options of the bench that made a directory (``sets`` in the manifest, else
    read back from its recorded ``argv``; ``executor.*`` options change no job)."""
    if isinstance(manifest.get("sets"), list):
        return split_sets(manifest["sets"])[0]
    argv, sets = list(manifest.get("argv") or []), []
    for i, a in enumerate(argv):
        if a == "--set" and i + 1 < len(argv):
            sets.append(argv[i + 1])
        elif a.startswith("--set="):
            sets.append(a[len("--set="):])
    return split_sets(sets)[0]


def preset_fingerprints(manifest: dict[str, Any], resolve=None) -> dict[str, str] | None:
    """cell -> fingerprint of the preset a manifest records (None when it cannot be expanded,
    e.g. a preset of a newer version)."""
    p = manifest.get("preset") or {}
    try:
        data = validate_preset(p["data"], p.get("source") or "<manifest>")
        preset = with_seeds(Preset(p.get("name") or data["bench"]["name"], p.get("source") or "", data), [0])
        jobs = expand(preset, manifest_sets(manifest), resolve=resolve, estimate=lambda cfg, kind: 0.0)
    except (ConfigError, KeyError, TypeError):
        return None
    return {cell_of(j.label): fingerprint(j.cfg) for j in jobs}


@dataclass
class MergePlan:
    """What a merge will do (``add``: job id -> (source dir, row)) and why rows are left out."""

    into: Path
    base_manifest: dict[str, Any]
    add: dict[str, tuple[Path, ResultRow]] = field(default_factory=dict)
    same: list[str] = field(default_factory=list)  # already in DIR with the same result
    skipped: list[str] = field(default_factory=list)  # not ok, or a conflict kept as DIR's
    refused: list[str] = field(default_factory=list)  # another experiment, teacher or machine
    conflicts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{len(self.add)} row(s) to add to {self.into}, {len(self.same)} already there"]
        for jid, (src, row) in self.add.items():
            out.append(f"  + {row.job_label} ({jid}) from {src}: acc {row.student_acc}")
        out += [f"  skipped: {s}" for s in self.skipped]
        out += [f"  refused: {s}" for s in self.refused]
        return out + [f"warning: {w}" for w in self.warnings]


def _check_manifest(src: Path, man: dict[str, Any] | None, base: dict[str, Any] | None) -> dict[str, Any]:
    if man is None:
        raise ConfigError(f"{src} has no readable manifest.json, so its rows' schema and code version are unknown; "
                          "pass a directory written by `dfkd bench`.")
    if man.get("rows_schema") != ROWS_SCHEMA:
        raise ConfigError(f"{src} holds rows of schema {man.get('rows_schema')!r}; this version reads schema "
                          f"{ROWS_SCHEMA}. Rows of different schemas are not merged.")
    if base is not None and man.get("code", {}).get("version") != base.get("code", {}).get("version"):
        raise ConfigError(f"{src} holds rows from stars-dfkd {man.get('code', {}).get('version')!r}, the target "
                          f"{base.get('code', {}).get('version')!r}: rows of different code versions are not merged.")
    return man


def _pair(row: ResultRow) -> tuple[Any, str]:
    return row.dataset, row.pair


def _same_result(a: ResultRow, b: ResultRow) -> bool:
    return (a.run_id, a.student_acc, a.seed) == (b.run_id, b.student_acc, b.seed)


def plan_merge(sources: list[str | Path], into: str | Path, on_conflict: str = "stop", allow_mixed: bool = False,
               resolve=None) -> MergePlan:
    """Check every row of ``sources`` against ``into`` (see the module docstring); writes nothing."""
    if on_conflict not in ON_CONFLICT:
        raise ConfigError(f"--on-conflict must be one of {', '.join(ON_CONFLICT)}, got {on_conflict!r}.")
    into = Path(into)
    if not sources:
        raise ConfigError("dfkd merge needs at least one source directory (SRC...).")
    for s in sources:
        if not (Path(s) / "rows").is_dir():
            raise ConfigError(f"{s} has no rows/ folder: not a `dfkd bench` output directory (nothing to merge).")
        if Path(s).resolve() == into.resolve():
            raise ConfigError(f"{s} is the target directory itself; name other directories as sources.")
    base = read_manifest(into)
    exists, rows = base is not None, read_rows(into)
    if rows and not exists:
        raise ConfigError(f"{into} holds {len(rows)} rows but no manifest.json; merge into a new directory.")
    base = _check_manifest(into, base, None) if exists else None
    mans = [_check_manifest(Path(s), read_manifest(s), base) for s in sources]
    base = copy.deepcopy(base if exists else mans[0])
    if not exists:  # a new target starts from the first source's manifest, without its jobs
        base.update(jobs={}, code={"version": base.get("code", {}).get("version"), "git_commits": []}, merged=[])
        base.get("preset", {}).get("data", {}).get("bench", {})["seeds"] = []
    plan = MergePlan(into, base)
    held = {jid: r for jid, r in rows.items() if r.status == "ok"}
    cells = {cell_of(r.job_label): fingerprint(r.config) for r in held.values()}
    from_preset = preset_fingerprints(base, resolve) if exists else None
    teachers = {_pair(r): r.teacher_digest for r in held.values() if r.teacher_digest}
    hosts = {_pair(r): host_of(r) for r in held.values()}
    for src in map(Path, sources):
        for jid, row in read_rows(src).items():
            label = row.job_label or jid
            if row.status != "ok":
                plan.skipped.append(f"{label} ({jid}) in {src}: status {row.status!r}")
                continue
            if job_id_of(row.config) != jid:
                plan.refused.append(f"{label} in {src}: its file name {jid} is not the hash of its config "
                                    f"({job_id_of(row.config)}); the row was edited or renamed")
                continue
            mine = held.get(jid) or (plan.add[jid][1] if jid in plan.add else None)
            if mine is not None:
                if _same_result(mine, row):
                    if jid not in plan.add:
                        plan.same.append(jid)
                    continue
                what = (f"{label}: {into if jid in held else plan.add[jid][0]} has acc {mine.student_acc}, "
                        f"{src} has {row.student_acc}")
                plan.conflicts.append(what)
                if on_conflict != "replace":
                    plan.skipped.append(f"{what} (kept the first)")
                    continue
            cell, fp = cell_of(row.job_label), fingerprint(row.config)
            want = cells.get(cell) or (from_preset or {}).get(cell)
            if want is None and exists:
                plan.refused.append(f"{label} in {src}: {into} holds no row of cell {cell} and the preset its "
                                    "manifest records (with its --set options) has no such cell; merge into a new "
                                    "directory instead")
                continue
            if want is not None and fp != want:
                plan.refused.append(f"{label} in {src}: another config than {into}'s rows of {cell} (fingerprint "
                                    f"{fp} vs {want}: a different budget, --set or default)")
                continue
            other, pair, host = [], _pair(row), host_of(row)
            if row.teacher_digest and teachers.get(pair, row.teacher_digest) != row.teacher_digest:
                other.append(f"teacher {row.teacher_digest} vs {teachers[pair]}")
            if hosts.get(pair, host) != host:
                other.append(f"machine {host!r} vs {hosts[pair]!r}")
            if other and not allow_mixed:
                plan.refused.append(f"{label} in {src}: {'; '.join(other)} (pass --allow-mixed to merge anyway; "
                                    "the leaderboard then flags the mix)")
                continue
            if other:
                plan.warnings.append(f"{label}: {'; '.join(other)}")
            cells.setdefault(cell, fp)
            if row.teacher_digest:
                teachers.setdefault(pair, row.teacher_digest)
            hosts.setdefault(pair, host)
            plan.add[jid] = (src, row)
    if plan.conflicts and on_conflict == "stop":
        raise ConfigError(f"{len(plan.conflicts)} job(s) have different ok rows in two directories, e.g. "
                          f"{plan.conflicts[0]}; nothing was written. Pass --on-conflict keep (keep the target's, or "
                          "the first source's) or --on-conflict replace (take the later source's).")
    return plan


def _manifest_after(plan: MergePlan, argv: list[str] | None) -> dict[str, Any]:
    man = copy.deepcopy(plan.base_manifest)
    rows = [*read_rows(plan.into).values(), *(r for _, r in plan.add.values())]
    commits = list(man.get("code", {}).get("git_commits", []))
    for r in sorted(rows, key=lambda r: str(r.get("started") or "")):  # in the order the rows were made
        if r.git_commit and r.status == "ok" and r.git_commit not in commits:
            commits.append(r.git_commit)
    man.setdefault("code", {})["git_commits"] = commits
    man.setdefault("jobs", {}).update({jid: r.job_label for jid, (_, r) in plan.add.items()})
    bench = man.get("preset", {}).get("data", {}).get("bench")
    if isinstance(bench, dict):
        bench["seeds"] = sorted({*bench.get("seeds", []), *(r.seed for r in rows if isinstance(r.seed, int))})
    man.setdefault("sets", manifest_sets(plan.base_manifest))
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    man.setdefault("created", now)
    man["updated"] = now
    sources = sorted({str(src) for src, _ in plan.add.values()})
    man.setdefault("merged", []).append({"at": now, "from": sources, "rows": len(plan.add),
                                         "argv": " ".join(map(shlex.quote, argv or []))})
    return man


def apply_merge(plan: MergePlan, argv: list[str] | None = None) -> list[str]:
    """Write the planned rows, their job folders and the manifest; returns the merged job ids."""
    check_out_dir_writable(plan.into, "--into")
    with bench_lock(plan.into):
        for jid, (src, row) in plan.add.items():
            dst = job_dir(plan.into, jid)
            if dst.exists():
                shutil.rmtree(dst)
            if job_dir(src, jid).is_dir():
                shutil.copytree(job_dir(src, jid), dst, ignore=shutil.ignore_patterns(*NOT_COPIED))
            write_row(plan.into / "rows", jid, row)
        atomic_write_json(plan.into / "manifest.json", _manifest_after(plan, argv))
    return list(plan.add)


def merge_dirs(sources: list[str], into: str, on_conflict: str = "stop", allow_mixed: bool = False,
               dry_run: bool = False, report: bool = True, argv: list[str] | None = None,
               log: Callable[[str], None] = print, resolve=None) -> int:
    """``dfkd merge``: plan, print, write, then rebuild DIR's report. Exit 1 when rows were refused.
    ``resolve``: the config resolver of the preset expansion (a seam, as in ``dfkd bench``)."""
    plan = plan_merge(sources, into, on_conflict, allow_mixed, resolve)
    for line in plan.lines():
        log(line)
    if dry_run:
        log("dry run: nothing written.")
        return 1 if plan.refused else 0
    if plan.add:
        apply_merge(plan, argv)
        log(f"merged {len(plan.add)} row(s) into {into}")
    if report and (plan.add or not (Path(into) / "leaderboard.md").exists()) and read_rows(into):
        from .leaderboard import write_report

        log(f"leaderboard: {write_report(into).get('leaderboard')}")
    return 1 if plan.refused else 0
