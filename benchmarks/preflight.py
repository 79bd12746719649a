"""Before the jobs fan out: every dataset they use loads (missing files fail before any
compute), and each distinct teacher is trained (or read from the cache) once, in this
process, so workers only read the teacher cache."""
from __future__ import annotations

import time
from typing import Any, Callable

from baselines.errors import DataError

from .jobs import Job, teacher_key

DataKey = tuple[Any, ...]


def load_bundle(run: dict[str, Any]):
    from .data import load_dataset

    return load_dataset(run["dataset"], data_root=run.get("data_root"), download=bool(run.get("download", False)))


def data_key(run: dict[str, Any]) -> DataKey:
    return run["dataset"], run.get("data_root"), bool(run.get("download", False))


def check_datasets(jobs: list[Job], preset_name: str = "") -> dict[DataKey, Any]:
    """Load each dataset the jobs use once; returns the bundles by (dataset, data_root, download)."""
    bundles: dict[DataKey, Any] = {}
    for j in jobs:
        key = data_key(j.run)
        if key in bundles:
            continue
        n = sum(1 for k in jobs if k.run["dataset"] == key[0])
        try:
            bundles[key] = load_bundle(j.run)
        except DataError as exc:
            raise DataError(f"dataset {key[0]!r}, needed by {n} job(s) of preset {preset_name!r}, is not "
                            f"available; nothing was run.\n{exc}\nPoint --data-root at the folder holding it, "
                            f"or filter those jobs out with --only.") from exc
    return bundles


def job_data(run: dict[str, Any], bundle=None):
    """The data a job sees, as :func:`benchmarks.job.prepare` builds it: the dataset, then
    the deterministic subsets (seed DATA_SEED = 0), then (separately) the validation split."""
    from .job import DATA_SEED

    bundle = bundle if bundle is not None else load_bundle(run)
    if run.get("train_subset") is not None or run.get("test_subset") is not None:
        bundle = bundle.subset(run.get("train_subset"), run.get("test_subset"), seed=DATA_SEED)
    return bundle


def prepare_teachers(jobs: list[Job], log: Callable[[str], None] = print,
                     bundles: dict[DataKey, Any] | None = None) -> None:
    """Train (or read from the cache) each distinct teacher (:func:`benchmarks.jobs.teacher_key`)
    of the distillation jobs once."""
    from baselines.provenance import pick_device

    from .job import teacher_seed
    from .teachers import accuracy_text, get_teacher

    done, raw = set(), dict(bundles or {})
    for j in jobs:
        if j.kind == "scratch":
            continue
        r = j.run
        key = teacher_key(r)
        if key in done:
            continue
        done.add(key)
        dkey = data_key(r)
        if dkey not in raw:
            raw[dkey] = load_bundle(r)
        tseed = teacher_seed(r)
        name = f"teacher {r['dataset']}/{r['teacher']} seed {tseed}"  # not the job's seed
        log(f"{name}: training it (or reading the cache)...")
        t0 = time.perf_counter()
        _, info = get_teacher(r["teacher"], r["dataset"], job_data(r, raw[dkey]), epochs=r.get("teacher_epochs"),
                              seed=tseed, device=pick_device(r.get("device", "cpu")),
                              progress=bool(r.get("progress", False)))
        how = "from the cache" if info.get("cached") else "trained"
        acc = accuracy_text(info)
        log(f"{name}: {how} in {time.perf_counter() - t0:.0f}s" + (f", {acc}" if acc else ""))
