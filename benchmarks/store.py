"""The output directory of a benchmark: rows, per-job folders and the manifest.

    OUT/rows/<job_id>.json    one ResultRow per job, written atomically (resume = skip these)
    OUT/jobs/<job_id>/        the job's own files (result.json, samples.png, the STARTED marker)
    OUT/manifest.json         rows schema, code version, preset, job ids -> labels

A directory holding rows of another schema, package version or configuration is refused
before compute (:func:`check_out_dir`): rows of different configs are never mixed.
Every JSON file here is written by :func:`atomic_write_json` (temporary file + ``os.replace``,
mode 0644 under the usual umask so lab-mates sharing a results folder can read it).
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from baselines.errors import ConfigError

from .rows import ROWS_SCHEMA, ResultRow, host_of


def atomic_write_json(path: str | Path, obj: Any, indent: int = 1, default=str) -> Path:
    """Write JSON to ``path`` via a temporary file in the same folder + ``os.replace`` (never a
    half-written file; a killed write leaves only a hidden ``.<name>.*.tmp``). The file gets
    the default mode (0666 minus the umask), unlike ``mkstemp``'s 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=indent, default=default)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def rows_dir(out: str | Path) -> Path:
    return Path(out) / "rows"


def job_dir(out: str | Path, job_id: str) -> Path:
    return Path(out) / "jobs" / job_id


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when missing, unreadable or not an object."""
    try:
        with open(path) as fh:
            obj = json.load(fh)
        return obj if isinstance(obj, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def read_row(path: str | Path) -> ResultRow | None:
    d = read_json(path)
    return ResultRow.from_dict(d) if d is not None else None


def read_rows(out: str | Path) -> dict[str, ResultRow]:
    """job_id -> row for every readable DIR/rows/<job_id>.json."""
    found: dict[str, ResultRow] = {}
    d = rows_dir(out)
    if d.is_dir():
        for p in sorted(d.glob("*.json")):
            if p.name.startswith("."):
                continue
            row = read_row(p)
            if row is not None:
                found[p.stem] = row
    return found


def corrupt_rows(out: str | Path) -> list[Path]:
    """Row files in DIR/rows that cannot be read as a row (truncated, not JSON, not an object):
    :func:`read_rows` leaves them out, so the report names and counts them, and ``dfkd bench``
    re-runs their jobs."""
    d = rows_dir(out)
    return [p for p in sorted(d.glob("*.json")) if not p.name.startswith(".") and read_row(p) is None]


def write_row(rows: str | Path, job_id: str, row: ResultRow | dict[str, Any]) -> Path:
    obj = row.to_dict() if isinstance(row, ResultRow) else row
    return atomic_write_json(Path(rows) / f"{job_id}.json", obj)


def remove_partial_writes(out: str | Path) -> None:
    for p in rows_dir(out).glob(".*.tmp"):
        p.unlink(missing_ok=True)  # leftovers of a killed write


def code_version() -> dict[str, Any]:
    """stars-dfkd version and the git commit of the source tree (None outside a checkout)."""
    from baselines.provenance import git_commit

    try:
        version = md.version("stars-dfkd")
    except md.PackageNotFoundError:
        version = None
    return {"version": version, "git_commit": git_commit()}


def this_machine() -> dict[str, Any]:
    """What :func:`benchmarks.rows.host_of` would say of a row computed here: on the CPU, on
    the GPU (None without one), and, for older rows without either record, this platform."""
    import platform

    import torch

    from baselines.provenance import cpu_identity

    return {"cpu": cpu_identity(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "platform": f"platform {platform.platform(terse=True)}"}


def other_machines(rows: Iterable[ResultRow], here: dict[str, Any] | None = None) -> list[str]:
    """The machines (:func:`benchmarks.rows.host_of`) of the ok rows not computed on this one
    (``here``: :func:`this_machine`). A row without the CPU / GPU record counts as this
    machine's when its platform string is this one's (the most it can tell)."""
    names = set((here or this_machine()).values())
    return sorted({h for r in rows if r.status == "ok" and (h := host_of(r)) not in names})


def job_state(row: ResultRow | None) -> str:
    if row is None:
        return "pending"
    return "done" if row.status == "ok" else "failed"


def pending(job_ids: Iterable[str], rows: dict[str, ResultRow], retry_failed: bool) -> list[str]:
    """Ids without a row; failed rows too when ``retry_failed``."""
    todo = []
    for jid in job_ids:
        st = job_state(rows.get(jid))
        if st == "pending" or (st == "failed" and retry_failed):
            todo.append(jid)
    return todo


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    return read_json(Path(out) / "manifest.json")


def check_out_dir(out: str | Path, preset_name: str, job_ids: Iterable[str]) -> list[str]:
    """Refuse (ConfigError, before compute) a directory whose rows cannot share a table
    with this preset's: another rows schema, another package version, or rows whose job
    is not in this expansion (another preset or config). Returns warnings (e.g. another
    git commit, recorded in the manifest)."""
    out = Path(out)
    warn: list[str] = []
    rows = read_rows(out)
    manifest = read_manifest(out)
    elsewhere = f"Pass --out with another directory (e.g. --out {out.name}-2), or delete {out}."
    if rows and manifest is None:
        raise ConfigError(f"{out} holds {len(rows)} rows but no manifest.json, so their code version and "
                          f"schema are unknown; they will not be mixed with new rows. {elsewhere}")
    if manifest is None:
        return warn
    if manifest.get("rows_schema") != ROWS_SCHEMA:
        raise ConfigError(f"{out} holds rows of schema {manifest.get('rows_schema')!r}; this version writes "
                          f"schema {ROWS_SCHEMA}. {elsewhere}")
    ver = code_version()
    if manifest.get("code", {}).get("version") != ver["version"]:
        raise ConfigError(f"{out} holds rows from stars-dfkd {manifest.get('code', {}).get('version')!r}; this is "
                          f"{ver['version']!r}. Rows of different code versions are not mixed. {elsewhere}")
    commits = manifest.get("code", {}).get("git_commits", [])
    if ver["git_commit"] and commits and ver["git_commit"] not in commits:
        warn.append(f"{out}: rows were produced at git commit(s) {', '.join(c[:10] for c in commits)}; "
                    f"this is {ver['git_commit'][:10]} (recorded in manifest.json and in each row).")
    here = this_machine()
    other = other_machines(rows.values(), here)
    if other:
        warn.append(f"{out}: rows were computed on {'; '.join(other)}; this is {here['cpu']}. The same seed "
                    "gives the same numbers on one CPU model only, so new rows here will not pair bit for bit with "
                    "those (the leaderboard flags the mix); start another --out directory for this machine.")
    ids = set(job_ids)
    foreign = [jid for jid in rows if jid not in ids]
    if foreign:
        ex = rows[foreign[0]].job_label or foreign[0]
        raise ConfigError(
            f"{out} holds {len(foreign)} rows from a different configuration than preset {preset_name!r} "
            f"with these options (e.g. {ex}, from preset {manifest.get('preset', {}).get('name')!r}); a changed "
            f"budget, --set or default changes every job id. Rows of different configs are never mixed. {elsewhere}")
    return warn


def write_manifest(out: str | Path, preset: dict[str, Any], jobs: dict[str, str],
                   argv: list[str] | None = None, sets: list[str] | None = None) -> Path:
    """Create/update DIR/manifest.json: schema, code version, ``preset`` ({name, source,
    data}), ``jobs`` (job id -> label, merged with the ones already there), ``sets`` (the
    job ``--set`` options, which change job ids; ``dfkd merge`` expands the preset with them)."""
    out = Path(out)
    old = read_manifest(out) or {}
    ver = code_version()
    commits = list(old.get("code", {}).get("git_commits", []))
    if ver["git_commit"] and ver["git_commit"] not in commits:
        commits.append(ver["git_commit"])
    job_map = dict(old.get("jobs", {}))
    job_map.update(jobs)
    man = {"rows_schema": ROWS_SCHEMA,
           "code": {"version": ver["version"], "git_commits": commits},
           "preset": preset, "jobs": job_map, "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
           "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": argv or old.get("argv"),
           "sets": list(sets) if sets is not None else old.get("sets")}
    return atomic_write_json(out / "manifest.json", man)


def treatment_of(out: str | Path) -> list[str] | None:
    """The treatment regularizer set recorded in DIR/manifest.json (None when absent)."""
    t = ((read_manifest(out) or {}).get("preset") or {}).get("data", {}).get("bench", {}).get("treatment")
    return list(t) if isinstance(t, list) else None
