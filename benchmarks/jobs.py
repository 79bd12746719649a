"""A preset's jobs: the cross-product

    datasets x pairs x seeds x (synthesizers x regularizer_sets  +  references)

each with a resolved config (errors raised here, before any compute). A job's id is the
hash of its resolved config without the machine-local keys ``run.data_root``,
``run.download``, ``run.progress``, so the same job on another machine has the same id.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from baselines.errors import ConfigError, UnknownNameError

from .cost import cost_model, estimate_seconds
from .preset import Preset, parse_pair, split_sets, user_config

#: Run keys that do not change a job's result (excluded from its id).
MACHINE_KEYS = ("data_root", "download", "progress")
Resolver = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Job:
    """One cell x seed: names and a resolved config (no live objects)."""

    job_id: str
    label: str
    kind: str  # "distill" (benchmarks.job.run_job) or "scratch" (benchmarks.scratch.run_scratch)
    cfg: dict[str, Any]
    est_seconds: float = 0.0

    @property
    def run(self) -> dict[str, Any]:
        return self.cfg["run"]


def job_label(dataset: str, teacher: str, student: str, synthesizer: str, regs: list[str], seed: Any) -> str:
    """Readable label, e.g. ``fashion-mnist/smallcnn:spiking_smallcnn/deepinversion+stars/seed0``."""
    method = "+".join([synthesizer, *regs])
    return f"{dataset}/{teacher}:{student}/{method}/seed{seed}"


def job_id_of(cfg: dict[str, Any]) -> str:
    """Hash of the resolved config without the machine-local run keys (and, as the run_id,
    without the keys that cannot change a result: :func:`benchmarks.job.config_hash`)."""
    from .job import config_hash as run_hash

    ident = copy.deepcopy(cfg)
    for key in MACHINE_KEYS:
        ident.get("run", {}).pop(key, None)
    return run_hash(ident)


def teacher_key(run: dict[str, Any]) -> tuple[Any, ...]:
    """The identity of a job's trained teacher: (dataset, teacher, teacher_epochs, teacher
    seed, training subset); jobs with equal keys share one teacher (and one cache entry)."""
    from .job import teacher_seed

    return (run.get("dataset"), run.get("teacher"), run.get("teacher_epochs"), teacher_seed(run),
            run.get("train_subset"))


def teacher_keys(jobs: Iterable[Job]) -> list[tuple[Any, ...]]:
    """Distinct teachers the distillation jobs need, in job order."""
    keys: list[tuple[Any, ...]] = []
    for j in jobs:
        if j.kind != "scratch" and (k := teacher_key(j.run)) not in keys:
            keys.append(k)
    return keys


def default_resolver() -> Resolver:
    from .job import resolve_config

    return resolve_config


def expand(preset: Preset, sets: list[str] | None = None, data_root: str | None = None,
           resolve: Resolver | None = None,
           estimate: Callable[[dict[str, Any], str], float] | None = None) -> list[Job]:
    """All jobs of ``preset`` (seed-major order, so a partial run gives a first reading).
    Duplicates (e.g. ``real`` listed both as a synthesizer and a reference) are merged.
    ``resolve``: the config resolver (default :func:`benchmarks.job.resolve_config`);
    ``estimate(cfg, kind)``: seconds (default: the preset's cost model)."""
    resolve = resolve or default_resolver()
    if estimate is None:
        cost = cost_model(preset)

        def estimate(cfg: dict[str, Any], kind: str) -> float:
            return estimate_seconds(cfg, kind, cost)

    job_sets, _ = split_sets(sets)
    b = preset.bench
    jobs: dict[str, Job] = {}
    used: set[str] = set()
    cells: list[tuple[str, str, list[str]]] = [(s, "distill", rs) for s in b["synthesizers"]
                                              for rs in b["regularizer_sets"]]
    cells += [(r, "scratch" if r == "scratch" else "distill", []) for r in b["references"] if r != "teacher"]
    for seed in b["seeds"]:
        for dataset in b["datasets"]:
            for pair in b["pairs"]:
                teacher, student = parse_pair(pair)
                for synth, kind, regs in cells:
                    user = user_config(preset, dataset, teacher, student, synth, regs, seed, kind,
                                       job_sets, data_root, used)
                    label = job_label(dataset, teacher, student, synth, regs, seed)
                    try:
                        cfg = resolve(user)
                    except UnknownNameError:
                        raise  # its message already names the key and the closest known one
                    except ConfigError as exc:
                        raise ConfigError(f"job {label}: {exc}") from exc
                    if kind == "scratch":
                        cfg = copy.deepcopy(cfg)
                        cfg["run"]["synthesizer"] = "scratch"
                        cfg.pop("real", None)
                    jid = job_id_of(cfg)
                    if jid not in jobs:
                        jobs[jid] = Job(jid, label, kind, cfg, estimate(cfg, kind))
    unused = [s for s in job_sets if s not in used]
    if unused:
        raise ConfigError(f"--set {unused[0]!r} matches no section of any job of preset {preset.name!r} "
                          "(sections: run, distill, the job's synthesizer and regularizers; "
                          "executor.<name>.<key> for executor options).")
    return list(jobs.values())


def filter_jobs(jobs: list[Job], patterns: Iterable[str] | None) -> list[Job]:
    """Jobs whose label matches any fnmatch pattern (comma-separated lists allowed)."""
    pats = [p.strip() for item in (patterns or []) for p in item.split(",") if p.strip()]
    if not pats:
        return list(jobs)
    return [j for j in jobs if any(fnmatch.fnmatchcase(j.label, p) for p in pats)]
