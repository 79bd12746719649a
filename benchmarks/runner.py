"""The benchmark runner: a preset -> jobs (one per cell and seed) -> one row per job.

A *preset* (``benchmarks/presets/<name>.toml`` or the user's own file; its schema is
documented at the top of ``presets/quick.toml``) names datasets, teacher:student pairs,
synthesizers, regularizer sets, seeds, reference rows and per-method budgets. It is
expanded into the cross-product

    datasets x pairs x seeds x (synthesizers x regularizer_sets  +  references)

and every job's config is resolved by :func:`benchmarks.job.resolve_config` before any
compute is spent, so a bad name or key fails first. A job's id is the hash of its resolved
config (without the machine-local keys ``run.data_root``, ``run.download``,
``run.progress``), so the same job on another machine has the same id.

Each job writes its row (the ``result.json`` schema of ``dfkd distill`` plus ``job_id``,
``job_label``, ``job_kind`` and ``rows_schema``) atomically to ``DIR/rows/<job_id>.json``.
Re-running skips jobs with a row (``status == "ok"``; failed rows too unless
``retry_failed``), so a killed benchmark resumes with no row lost or duplicated.
``DIR/manifest.json`` records the rows schema, the code version and the job ids; a
directory holding rows of another schema, package version or configuration is refused
before compute (rows of different configs are never mixed in one table).

Reference rows: ``teacher`` (the teacher's accuracy, read from every row; no job),
``real`` (KD on the real training images), ``noise`` (KD on Gaussian noise) and
``scratch`` (:func:`run_scratch`: the student trained with cross-entropy on the real
labels for as many optimizer steps as KD).

Test hook: ``DFKD_BENCH_FAKE_JOB=module:function`` replaces the job function (``run_job``
and ``run_scratch``; same signature ``fn(cfg, out_dir, on_eval=None) -> row``) in the
runner and its workers, and skips teacher training; when that module also defines
``resolve_config`` it replaces :func:`benchmarks.job.resolve_config`.
"""
from __future__ import annotations

import copy
import fnmatch
import importlib
import importlib.metadata as md
import json
import math
import os
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from baselines.config import apply_sets, config_hash, deep_merge, load_toml
from baselines.errors import ConfigError, DataError, UnknownNameError
from baselines.registry import DATASETS, REGULARIZERS, STUDENTS, SYNTHESIZERS, TEACHERS

#: Version of the row format written to DIR/rows; bump when a row's meaning changes.
ROWS_SCHEMA = 1
PRESET_DIR = Path(__file__).resolve().parent / "presets"
FAKE_ENV = "DFKD_BENCH_FAKE_JOB"
REFERENCES = ("teacher", "real", "noise", "scratch")
#: Run keys that do not change a job's result (excluded from its id).
MACHINE_KEYS = ("data_root", "download", "progress")
#: Run keys set by the cell itself; ``--set`` may not override them.
IDENTITY_KEYS = ("dataset", "teacher", "student", "synthesizer", "regularizers", "seed")

TOP_KEYS = ("bench", "run", "distill", "budget", "params", "overrides", "cost", "executor",
            "tune")  # [tune] belongs to `dfkd tune` (benchmarks/tune.py); the runner ignores it
BENCH_KEYS = ("name", "description", "datasets", "pairs", "synthesizers", "regularizer_sets",
              "seeds", "references", "T")
OVERRIDE_KEYS = ("run", "distill", "budget", "params")
EXECUTORS = ("local", "submitit", "ray")
COST_KEYS = ("overhead_s", "kd_step_s", "eval_s", "teacher_epoch_s", "synth_batch_s",
             "regularizer_factor", "model_factor")

#: Default cost model (seconds; measured on a 2-core CPU with the small CNN pair at the
#: reference budgets, see /work/shared/reference/data.md). Presets override it in [cost].
DEFAULT_COST: dict[str, Any] = {
    "overhead_s": 10.0,  # process start, data loading, model construction
    "kd_step_s": 1.35,  # one KD (or scratch) optimizer step at the preset's batch size
    "eval_s": 70.0,  # one evaluation on the (possibly subset) test set
    "teacher_epoch_s": 100.0,  # one teacher training epoch (only when not cached)
    "synth_batch_s": {"deepinversion": 500.0, "cmi": 120.0, "fast": 4.0, "fast-nometa": 3.0,
                      "real": 0.05, "noise": 0.05},  # one synthesize() call
    "regularizer_factor": {"stars": 1.3, "rca": 1.1, "tar": 1.2},  # x (synthesis + KD)
    "model_factor": {},  # student (or teacher) name -> x everything but the overhead
}
UNKNOWN_SYNTH_BATCH_S = 60.0


# --------------------------------------------------------------------------- presets
@dataclass
class Preset:
    """A validated preset: ``data`` is the TOML dict with [bench] defaults filled."""

    name: str
    source: str
    data: dict[str, Any]

    @property
    def bench(self) -> dict[str, Any]:
        return self.data["bench"]


def preset_names() -> list[str]:
    """Names of the presets shipped in ``benchmarks/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_file: str, stars_params: str | None = None) -> Preset:
    """Load and validate a shipped preset (by name) or a preset file (by path).

    ``stars_params``: a TOML file of regularizer sections (``[stars] alpha = 0.4``, e.g. the
    tuner's output) merged into the preset's ``[params.<regularizer>]``."""
    path = Path(name_or_file).expanduser()
    if path.suffix == ".toml" or os.sep in name_or_file or path.is_file():
        if not path.is_file():
            raise ConfigError(f"preset file {str(path)!r} not found. Shipped presets: "
                              f"{', '.join(preset_names())} (pass a name, or the path of a TOML file).")
        data, source, default_name = load_toml(str(path)), str(path), path.stem
    else:
        names = preset_names()
        if name_or_file not in names:
            raise UnknownNameError("preset", name_or_file, names)
        path = PRESET_DIR / f"{name_or_file}.toml"
        data, source, default_name = load_toml(str(path)), str(path), name_or_file
    if stars_params:
        data = merge_params_file(data, stars_params)
    data = validate_preset(data, source)
    data["bench"].setdefault("name", default_name)
    return Preset(data["bench"]["name"], source, data)


def merge_params_file(data: dict[str, Any], params_file: str) -> dict[str, Any]:
    """Merge a TOML of regularizer sections ({stars: {...}}) into ``data["params"]``."""
    extra = load_toml(params_file)
    known = REGULARIZERS.names()
    for key, val in extra.items():
        if key not in known:
            raise UnknownNameError(f"regularizer section in {params_file}", key, known)
        if not isinstance(val, dict):
            raise ConfigError(f"{params_file}: [{key}] must be a table of parameters, got {val!r}.")
    return deep_merge(data, {"params": extra})


def _check_keys(table: Any, allowed: Iterable[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"preset {where} must be a table, got {table!r}.")
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            raise UnknownNameError(f"key in preset {where}", key, allowed)
    return table


def _str_list(val: Any, where: str) -> list[str]:
    if isinstance(val, str):
        val = [val]
    if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
        raise ConfigError(f"preset {where} must be a list of names, got {val!r}.")
    return list(val)


def _check_names(names: Iterable[str], known: list[str], kind: str) -> None:
    for n in names:
        if n not in known:
            raise UnknownNameError(kind, n, known)


def parse_pair(text: str) -> tuple[str, str]:
    """``"teacher:student"`` -> (teacher, student)."""
    parts = text.split(":")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"preset pair {text!r} must read 'teacher:student', e.g. 'smallcnn:spiking_smallcnn'.")
    return parts[0].strip(), parts[1].strip()


def validate_preset(data: dict[str, Any], source: str = "<preset>") -> dict[str, Any]:
    """Check a preset's structure and names (registries); fill [bench] defaults."""
    data = copy.deepcopy(data)
    _check_keys(data, TOP_KEYS, f"file {source} (top level)")
    bench = _check_keys(data.get("bench", {}), BENCH_KEYS, "[bench]")
    for req in ("datasets", "pairs", "synthesizers"):
        if req not in bench:
            raise ConfigError(f"preset {source}: [bench] needs {req!r} (see the schema in presets/quick.toml).")
    bench["datasets"] = _str_list(bench["datasets"], "[bench].datasets")
    _check_names(bench["datasets"], DATASETS.names(), "dataset")
    bench["pairs"] = _str_list(bench["pairs"], "[bench].pairs")
    for p in bench["pairs"]:
        t, s = parse_pair(p)
        _check_names([t], TEACHERS.names(), "teacher")
        _check_names([s], STUDENTS.names(), "student")
    bench["synthesizers"] = _str_list(bench["synthesizers"], "[bench].synthesizers")
    _check_names(bench["synthesizers"], SYNTHESIZERS.names(), "synthesizer")
    sets = bench.get("regularizer_sets", [[], ["stars"]])
    if not isinstance(sets, list) or not sets:
        raise ConfigError(f"preset [bench].regularizer_sets must be a non-empty list of lists, got {sets!r}.")
    norm_sets = []
    for rs in sets:
        rs = [] if rs in ("none", "") else _str_list(rs, "[bench].regularizer_sets entry")
        _check_names(rs, REGULARIZERS.names(), "regularizer")
        if rs not in norm_sets:
            norm_sets.append(rs)
    bench["regularizer_sets"] = norm_sets
    seeds = bench.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"preset [bench].seeds must be a non-empty list of integers, got {seeds!r}.")
    bench["seeds"] = sorted(set(seeds))
    refs = _str_list(bench.get("references", list(REFERENCES)), "[bench].references")
    _check_names(refs, list(REFERENCES), "reference row")
    bench["references"] = refs
    if "T" in bench and (not isinstance(bench["T"], int) or isinstance(bench["T"], bool) or bench["T"] < 1):
        raise ConfigError(f"preset [bench].T must be a positive integer, got {bench['T']!r}.")
    data["bench"] = bench
    method_names = set(bench["synthesizers"]) | {r for r in refs if r != "teacher"}
    _validate_sections(data, source, method_names)
    for ds, ov in _check_keys(data.get("overrides", {}), bench["datasets"], "[overrides]").items():
        _check_keys(ov, OVERRIDE_KEYS, f"[overrides.{ds}]")
        _validate_sections(ov, f"{source} [overrides.{ds}]", method_names)
    cost = _check_keys(data.get("cost", {}), COST_KEYS, "[cost]")
    for key in ("synth_batch_s", "regularizer_factor", "model_factor"):
        if key in cost:
            _check_keys(cost[key], list(cost[key]), f"[cost.{key}]")
    ex = _check_keys(data.get("executor", {}), EXECUTORS, "[executor]")
    for name, opts in ex.items():
        _check_keys(opts, list(opts), f"[executor.{name}]")
    return data


def _validate_sections(data: dict[str, Any], source: str, methods: set[str]) -> None:
    for sec in ("run", "distill"):
        _check_keys(data.get(sec, {}), list(data.get(sec, {})), f"[{sec}]")  # keys: resolve_config
    for key in data.get("run", {}):
        if key in IDENTITY_KEYS:
            raise ConfigError(f"preset {source}: [run].{key} is set per job by [bench]; list it there.")
    budget = _check_keys(data.get("budget", {}), sorted(methods), "[budget]")
    for synth, b in budget.items():
        _check_keys(b, ["distill"] if synth == "scratch" else ["distill", synth], f"[budget.{synth}]")
    params = _check_keys(data.get("params", {}), REGULARIZERS.names(), "[params]")
    for reg, p in params.items():
        _check_keys(p, list(p), f"[params.{reg}]")


# --------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One cell x seed: names and a resolved config (no live objects)."""

    job_id: str
    label: str
    kind: str  # "distill" (benchmarks.job.run_job) or "scratch" (run_scratch)
    cfg: dict[str, Any]
    est_seconds: float = 0.0

    @property
    def run(self) -> dict[str, Any]:
        return self.cfg["run"]


def job_label(dataset: str, teacher: str, student: str, synthesizer: str, regs: list[str], seed: int) -> str:
    """Readable label, e.g. ``fashion-mnist/smallcnn:spiking_smallcnn/deepinversion+stars/seed0``."""
    method = "+".join([synthesizer, *regs])
    return f"{dataset}/{teacher}:{student}/{method}/seed{seed}"


def job_id_of(cfg: dict[str, Any]) -> str:
    """Hash of the resolved config without the machine-local run keys."""
    ident = copy.deepcopy(cfg)
    for key in MACHINE_KEYS:
        ident.get("run", {}).pop(key, None)
    return config_hash(ident)


def _layer(section_src: dict[str, Any], synth: str, budget_name: str, regs: list[str]) -> dict[str, Any]:
    """The config fragment a preset (or one of its [overrides]) contributes to one job."""
    out: dict[str, Any] = {}
    for sec in ("run", "distill"):
        if section_src.get(sec):
            out[sec] = copy.deepcopy(section_src[sec])
    budget = section_src.get("budget", {})
    b = budget.get(budget_name, budget.get("real", {}) if budget_name == "scratch" else {})
    for sec, vals in b.items():
        if sec in ("distill", synth):
            out = deep_merge(out, {sec: vals})
    for reg in regs:
        if reg in section_src.get("params", {}):
            out = deep_merge(out, {reg: section_src["params"][reg]})
    return out


def split_sets(sets: list[str] | None) -> tuple[list[str], dict[str, Any]]:
    """Separate ``executor.<name>.<key>=value`` overrides from job config overrides."""
    job_sets, ex = [], {}
    for item in sets or []:
        if item.strip().startswith("executor."):
            ex = apply_sets(ex, [item.strip()[len("executor."):]])
        else:
            job_sets.append(item)
    return job_sets, ex


def _apply_job_sets(user: dict[str, Any], sets: list[str], relevant: set[str], used: set[str]) -> dict[str, Any]:
    mine = []
    for item in sets:
        path = item.split("=", 1)[0].strip()
        section = path.split(".", 1)[0]
        if section == "run" and path.split(".")[-1] in IDENTITY_KEYS:
            raise ConfigError(f"--set {item!r}: run.{path.split('.')[-1]} is set per job by the preset's "
                              "[bench] lists; edit the preset or filter jobs with --only.")
        if section in relevant:
            mine.append(item)
            used.add(item)
    return apply_sets(user, mine)


def user_config(preset: Preset, dataset: str, teacher: str, student: str, synth: str,
                regs: list[str], seed: int, kind: str, sets: list[str] | None = None,
                data_root: str | None = None, used_sets: set[str] | None = None) -> dict[str, Any]:
    """The unresolved config of one job: preset layers, dataset overrides, --set, identity."""
    budget_name = "scratch" if kind == "scratch" else synth
    synth_section = "real" if kind == "scratch" else synth
    user = _layer(preset.data, synth_section, budget_name, regs)
    ov = preset.data.get("overrides", {}).get(dataset)
    if ov:
        user = deep_merge(user, _layer(ov, synth_section, budget_name, regs))
    if "T" in preset.bench:
        user = deep_merge({"run": {"T": preset.bench["T"]}}, user)
    relevant = {"run", "distill", synth_section, *regs}
    user = _apply_job_sets(user, list(sets or []), relevant, used_sets if used_sets is not None else set())
    if data_root:
        user.setdefault("run", {})["data_root"] = str(data_root)
    user.setdefault("run", {}).update(dataset=dataset, teacher=teacher, student=student,
                                      synthesizer=synth_section, regularizers=list(regs), seed=seed)
    return user


def _resolver() -> Callable[[dict[str, Any]], dict[str, Any]]:
    fake = os.environ.get(FAKE_ENV)
    if fake:
        mod = importlib.import_module(fake.split(":", 1)[0])
        if hasattr(mod, "resolve_config"):
            return mod.resolve_config
    from benchmarks.job import resolve_config

    return resolve_config


def expand(preset: Preset, sets: list[str] | None = None, data_root: str | None = None,
           resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[Job]:
    """All jobs of ``preset`` (seed-major order, so a partial run gives a first reading),
    each config resolved (errors raised here, before any compute). Duplicates (e.g.
    ``real`` listed both as a synthesizer and a reference) are merged."""
    resolve = resolve or _resolver()
    job_sets, _ = split_sets(sets)
    b = preset.bench
    cost = cost_model(preset)
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
                        jobs[jid] = Job(jid, label, kind, cfg, estimate_seconds(cfg, kind, cost))
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


# --------------------------------------------------------------------------- cost model
def cost_model(preset: Preset) -> dict[str, Any]:
    """DEFAULT_COST overridden by the preset's [cost] table."""
    return deep_merge(DEFAULT_COST, preset.data.get("cost", {}))


def estimate_seconds(cfg: dict[str, Any], kind: str, cost: dict[str, Any]) -> float:
    """Estimated wall time of one job (teacher training excluded):

        overhead_s + F_model * (F_reg * epochs * (synth_batches * synth_batch_s[synth]
                                                  + kd_steps * kd_step_s) + n_evals * eval_s)

    with n_evals = ceil(epochs / eval_every), F_reg the product of the job's
    regularizer_factor entries and F_model = model_factor[student] (default 1); a scratch
    job has no synthesis."""
    d = cfg.get("distill", {})
    run = cfg.get("run", {})
    epochs = int(d.get("epochs", 1))
    n_evals = math.ceil(epochs / max(1, int(d.get("eval_every", 1))))
    kd = epochs * int(d.get("kd_steps", 0)) * float(cost["kd_step_s"])
    synth = 0.0
    if kind != "scratch":
        per = cost["synth_batch_s"].get(run.get("synthesizer"), UNKNOWN_SYNTH_BATCH_S)
        synth = epochs * int(d.get("synth_batches", 1)) * float(per)
    factor = 1.0
    for reg in run.get("regularizers", []):
        factor *= float(cost["regularizer_factor"].get(reg, 1.2))
    f_model = float(cost.get("model_factor", {}).get(run.get("student"), 1.0))
    return float(cost["overhead_s"]) + f_model * (factor * (synth + kd) + n_evals * float(cost["eval_s"]))


def teacher_keys(jobs: Iterable[Job]) -> list[tuple[Any, ...]]:
    """Distinct teachers the distillation jobs need: run_job trains one per (dataset,
    teacher, teacher_epochs, teacher seed, training subset)."""
    from benchmarks.job import teacher_seed

    keys = []
    for j in jobs:
        if j.kind == "scratch":
            continue
        r = j.run
        k = (r["dataset"], r["teacher"], r.get("teacher_epochs"), teacher_seed(r), r.get("train_subset"))
        if k not in keys:
            keys.append(k)
    return keys


def teacher_epochs(key: tuple[Any, ...]) -> int:
    """Epochs of a teacher key (the recipe's default when teacher_epochs is unset)."""
    if key[2] is not None:
        return int(key[2])
    try:
        from benchmarks.teachers import recipe_for

        return int(recipe_for(key[0], key[1].split("@", 1)[0]).epochs)
    except Exception:  # noqa: BLE001 - only an estimate
        return 0


# --------------------------------------------------------------------------- rows / manifest
def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temp file + os.replace (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=1, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rows_dir(out: str | Path) -> Path:
    return Path(out) / "rows"


def job_dir(out: str | Path, job_id: str) -> Path:
    return Path(out) / "jobs" / job_id


def read_row(path: Path) -> dict[str, Any] | None:
    try:
        with open(path) as fh:
            row = json.load(fh)
        return row if isinstance(row, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def read_rows(out: str | Path) -> dict[str, dict[str, Any]]:
    """job_id -> row for every readable DIR/rows/<job_id>.json."""
    out_rows = {}
    d = rows_dir(out)
    if d.is_dir():
        for p in sorted(d.glob("*.json")):
            if p.name.startswith("."):
                continue
            row = read_row(p)
            if row is not None:
                out_rows[p.stem] = row
    return out_rows


def write_row(rows: str | Path, job_id: str, row: dict[str, Any]) -> Path:
    path = Path(rows) / f"{job_id}.json"
    atomic_write_json(path, row)
    return path


def failed_row(cfg: dict[str, Any], error: str) -> dict[str, Any]:
    """A row for a job that raised or died: identity from its config, status failed."""
    run = cfg.get("run", {})
    return {"run_id": None, "dataset": run.get("dataset"), "teacher": run.get("teacher"),
            "student": run.get("student"), "T": run.get("T"), "synthesizer": run.get("synthesizer"),
            "regularizers": list(run.get("regularizers", [])), "seed": run.get("seed"),
            "status": "failed", "error": error, "config": cfg, "config_hash": config_hash(cfg)}


def finalize_row(row: dict[str, Any], job: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Add the runner's keys to a job's row (identity keys filled from the config if absent)."""
    row = dict(row)
    if row.get("status") == "failed" and not row.get("error"):
        row["error"] = "job reported status 'failed' without an error message"
    ident = failed_row(job["cfg"], "")
    for key in ("dataset", "teacher", "student", "T", "synthesizer", "regularizers", "seed", "config"):
        if row.get(key) is None:
            row[key] = ident[key]
    if row.get("status") not in ("ok", "failed"):
        row["error"] = row.get("error") or f"job returned status {row.get('status')!r}"
        row["status"] = "failed"
    row.update(job_id=job["job_id"], job_label=job["label"], job_kind=job["kind"],
               rows_schema=ROWS_SCHEMA, job_seconds=round(seconds, 3))
    return row


def code_version() -> dict[str, Any]:
    """stars-dfkd version and the git commit of the source tree (None outside a git repo)."""
    try:
        version = md.version("stars-dfkd")
    except md.PackageNotFoundError:
        version = None
    commit = None
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        if res.returncode == 0:
            commit = res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": version, "git_commit": commit}


def check_out_dir(out: str | Path, preset: Preset, jobs: list[Job]) -> list[str]:
    """Refuse (ConfigError, before compute) a directory whose rows cannot share a table
    with this preset's: another rows schema, another package version, or rows whose job
    is not in this expansion (another preset or config). Returns warnings (e.g. another
    git commit, recorded in the manifest)."""
    out = Path(out)
    warn: list[str] = []
    rows = read_rows(out)
    manifest = read_row(out / "manifest.json")
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
    ids = {j.job_id for j in jobs}
    foreign = [jid for jid in rows if jid not in ids]
    if foreign:
        ex = rows[foreign[0]].get("job_label") or foreign[0]
        raise ConfigError(
            f"{out} holds {len(foreign)} rows from a different configuration than preset {preset.name!r} "
            f"with these options (e.g. {ex}, from preset {manifest.get('preset', {}).get('name')!r}); a changed "
            f"budget, --set or default changes every job id. Rows of different configs are never mixed. {elsewhere}")
    return warn


def write_manifest(out: str | Path, preset: Preset, jobs: list[Job], argv: list[str] | None = None) -> Path:
    """Create/update DIR/manifest.json (schema, code version, preset, job ids -> labels)."""
    out = Path(out)
    old = read_row(out / "manifest.json") or {}
    ver = code_version()
    commits = list(old.get("code", {}).get("git_commits", []))
    if ver["git_commit"] and ver["git_commit"] not in commits:
        commits.append(ver["git_commit"])
    job_map = dict(old.get("jobs", {}))
    job_map.update({j.job_id: j.label for j in jobs})
    man = {"rows_schema": ROWS_SCHEMA,
           "code": {"version": ver["version"], "git_commits": commits},
           "preset": {"name": preset.name, "source": preset.source, "data": preset.data},
           "jobs": job_map, "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
           "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": argv or old.get("argv")}
    atomic_write_json(out / "manifest.json", man)
    return out / "manifest.json"


def job_state(row: dict[str, Any] | None) -> str:
    if row is None:
        return "pending"
    return "done" if row.get("status") == "ok" else "failed"


def pending_jobs(jobs: list[Job], rows: dict[str, dict[str, Any]], retry_failed: bool) -> list[Job]:
    """Jobs without a row; failed rows too when ``retry_failed``."""
    todo = []
    for j in jobs:
        st = job_state(rows.get(j.job_id))
        if st == "pending" or (st == "failed" and retry_failed):
            todo.append(j)
    return todo


# --------------------------------------------------------------------------- preflight
def _load_bundle(run: dict[str, Any]):
    from benchmarks.data import load_dataset

    return load_dataset(run["dataset"], data_root=run.get("data_root"), download=bool(run.get("download", False)))


def _data_key(run: dict[str, Any]) -> tuple[Any, ...]:
    return run["dataset"], run.get("data_root"), bool(run.get("download", False))


def check_datasets(jobs: list[Job], preset_name: str = "") -> dict[tuple[Any, ...], Any]:
    """Load each dataset the jobs use once, so missing files fail before compute; returns
    the loaded bundles by (dataset, data_root, download)."""
    bundles: dict[tuple[Any, ...], Any] = {}
    for j in jobs:
        key = _data_key(j.run)
        if key in bundles:
            continue
        n = sum(1 for k in jobs if k.run["dataset"] == key[0])
        try:
            bundles[key] = _load_bundle(j.run)
        except DataError as exc:
            raise DataError(f"dataset {key[0]!r}, needed by {n} job(s) of preset {preset_name!r}, is not "
                            f"available; nothing was run.\n{exc}\nPoint --data-root at the folder holding it, "
                            f"or filter those jobs out with --only.") from exc
    return bundles


def job_data(run: dict[str, Any], bundle=None):
    """The data a job sees, as :func:`benchmarks.job.prepare` builds it: the dataset, then
    the deterministic subsets (seed DATA_SEED = 0), then (separately) the validation split."""
    from benchmarks.job import DATA_SEED

    bundle = bundle if bundle is not None else _load_bundle(run)
    if run.get("train_subset") is not None or run.get("test_subset") is not None:
        bundle = bundle.subset(run.get("train_subset"), run.get("test_subset"), seed=DATA_SEED)
    return bundle


def prepare_teachers(jobs: list[Job], log: Callable[[str], None] = print,
                     bundles: dict[tuple[Any, ...], Any] | None = None) -> None:
    """Train (or load from the cache) each distinct teacher once, in this process, before
    the jobs fan out, so workers only read the teacher cache. The key mirrors run_job's:
    (dataset, teacher, teacher_epochs, run seed, training subset, data root, device)."""
    if os.environ.get(FAKE_ENV):
        return
    from baselines.provenance import pick_device
    from benchmarks.job import teacher_seed
    from benchmarks.teachers import get_teacher

    done, raw = set(), dict(bundles or {})
    for j in jobs:
        if j.kind == "scratch":
            continue
        r = j.run
        key = (r["dataset"], r["teacher"], r.get("teacher_epochs"), teacher_seed(r), r.get("train_subset"),
               r.get("test_subset"), r.get("data_root"), r.get("device", "cpu"))
        if key in done:
            continue
        done.add(key)
        dkey = _data_key(r)
        if dkey not in raw:
            raw[dkey] = _load_bundle(r)
        log(f"teacher {r['dataset']}/{r['teacher']} seed {r.get('seed')}: training it (or reading the cache)...")
        t0 = time.perf_counter()
        _, info = get_teacher(r["teacher"], r["dataset"], job_data(r, raw[dkey]), epochs=r.get("teacher_epochs"),
                              seed=teacher_seed(r), device=pick_device(r.get("device", "cpu")),
                              progress=bool(r.get("progress", False)))
        acc = info.get("test_acc") if isinstance(info, dict) else None
        how = "from the cache" if info.get("cached") else "trained"
        log(f"teacher {r['dataset']}/{r['teacher']} seed {r.get('seed')}: {how} in "
            f"{time.perf_counter() - t0:.0f}s" + (f", test accuracy {acc:.2f}%" if isinstance(acc, (int, float)) else ""))


# --------------------------------------------------------------------------- job functions
def import_object(spec: str) -> Any:
    """``"module:attr"`` -> the object."""
    if ":" not in spec:
        raise ConfigError(f"{FAKE_ENV}={spec!r}: expected module:function.")
    mod, attr = spec.split(":", 1)
    return getattr(importlib.import_module(mod), attr)


def job_function(kind: str, override: str | None = None) -> Callable[..., dict[str, Any]]:
    """The function a worker runs for a job of ``kind`` (``override``/the env hook first)."""
    fake = override or os.environ.get(FAKE_ENV)
    if fake:
        return import_object(fake)
    if kind == "scratch":
        return run_scratch
    from benchmarks.job import run_job

    return run_job


def run_scratch(cfg: dict[str, Any], out_dir: str | None = None, on_eval=None) -> dict[str, Any]:
    """Reference row "scratch": the student trained with cross-entropy on the real labelled
    training set, for the same number of optimizer steps as KD (``epochs * kd_steps`` at
    ``batch_size``; SGD with momentum, cosine schedule, the dataset's crop+flip
    augmentation), evaluated on the real test set every ``eval_every`` epochs. Never raises:
    a failure gives a row with status "failed"."""
    t_start = time.perf_counter()
    try:
        return _run_scratch(cfg, out_dir, on_eval, t_start)
    except Exception as exc:  # noqa: BLE001 - any failure becomes a failed row
        row = failed_row(cfg, f"{type(exc).__name__}: {exc}")
        row["traceback"] = traceback.format_exc(limit=20)
        return row


def _run_scratch(cfg: dict[str, Any], out_dir: str | None, on_eval, t_start: float) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from baselines.distill import evaluate
    from baselines.errors import NonFiniteLossError
    from baselines.provenance import package_versions, peak_rss_mb, pick_device, set_seed
    from baselines.spec import random_crop_flip
    from benchmarks.job import DATA_SEED

    run, d = cfg["run"], cfg["distill"]
    seed = int(run.get("seed", 0))
    device = pick_device(run.get("device", "cpu"))
    set_seed(seed, device)
    bundle = job_data(run)
    val = None
    if run.get("val_size"):
        bundle, val = bundle.split_validation(int(run["val_size"]), seed=DATA_SEED)
    spec = bundle.spec
    student = STUDENTS.get(run["student"])(spec.channels, spec.num_classes, spec.image_size, T=run.get("T", 4),
                                           neuron=run.get("neuron", "lif"),
                                           surrogate=run.get("surrogate", "atan")).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=d["lr"], momentum=d["momentum"], weight_decay=d["weight_decay"])
    epochs, kd_steps, bs = int(d["epochs"]), int(d["kd_steps"]), int(d["batch_size"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * kd_steps))
    g = torch.Generator().manual_seed(seed)
    history, best, last, val_acc, step = [], float("-inf"), float("nan"), None, 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        student.train()
        loss_sum = 0.0
        for _ in range(kd_steps):
            idx = torch.randint(len(bundle.train_y), (bs,), generator=g)
            x = bundle.train_x[idx].float().div(255)
            x = random_crop_flip(x, spec.crop_padding, spec.hflip, generator=g)
            loss = F.cross_entropy(student(spec.normalize(x).to(device)), bundle.train_y[idx].to(device))
            if not torch.isfinite(loss):
                raise NonFiniteLossError("ce", "scratch training", step, float(loss.detach()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
            step += 1
        rec: dict[str, Any] = {"epoch": epoch, "ce_loss": loss_sum / max(1, kd_steps)}
        if (epoch + 1) % int(d.get("eval_every", 1)) == 0 or epoch == epochs - 1:
            last = evaluate(student, bundle.test_x, bundle.test_y, spec, int(d.get("eval_batch_size", 500)), device)
            best = max(best, last)
            rec["test_acc"] = last
            if val is not None:
                val_acc = evaluate(student, val[0], val[1], spec, int(d.get("eval_batch_size", 500)), device)
                rec["val_acc"] = val_acc
            if on_eval is not None:
                on_eval(epoch, {"test_acc": last, "val_acc": val_acc, "agreement": None})
        history.append(rec)
    train_s = time.perf_counter() - t0
    spiking, firing_rate, sops = None, None, None
    n = min(int(run.get("metrics_images", 256)), len(bundle.test_y))
    if n > 0:
        from baselines.snn_metrics import measure_spiking

        x = spec.normalize(bundle.test_x[:n].float().div(255).to(device))
        spiking = measure_spiking(student, x, batch_size=int(d.get("eval_batch_size", 500)))
        firing_rate, sops = spiking.get("mean_firing_rate"), spiking.get("sops_per_image")
    ver = code_version()
    row = {"run_id": f"scratch-{job_id_of(cfg)}", "dataset": run["dataset"], "teacher": run.get("teacher"),
           "student": run["student"], "T": run.get("T"), "synthesizer": "scratch", "regularizers": [],
           "seed": seed, "teacher_acc": None, "student_acc": last,
           "student_acc_best": best if best > float("-inf") else float("nan"), "val_acc": val_acc,
           "agreement": None, "firing_rate": firing_rate, "sops_per_image": sops, "spiking": spiking,
           "images_synthesized": 0,
           "synthesis_seconds": 0.0, "distill_seconds": train_s, "synth_timing": {}, "synth_losses": {},
           "diagnostics": {}, "history": history,
           "peak_rss_mb": peak_rss_mb(),
           "device": str(device), "status": "ok", "error": None, "config": cfg,
           "config_hash": config_hash(cfg), "git_commit": ver["git_commit"],
           "versions": package_versions(),
           "wall_seconds": time.perf_counter() - t_start}
    if out_dir:
        atomic_write_json(Path(out_dir) / "result.json", row)
    return row


# --------------------------------------------------------------------------- the run
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
    stars_params: str | None = None
    sets: list[str] = field(default_factory=list)
    data_root: str | None = None
    report: bool = True
    argv: list[str] | None = None


def default_out(preset: Preset) -> Path:
    return Path("results") / preset.name


def format_seconds(s: float) -> str:
    s = float(s)
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


def dry_run_text(preset: Preset, jobs: list[Job], rows: dict[str, dict[str, Any]], workers: int) -> str:
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
    teach = [k for k in teacher_keys(jobs)]
    t_est = sum(float(cost["teacher_epoch_s"]) * teacher_epochs(k) * float(cost["model_factor"].get(k[1], 1.0))
                for k in teach if "@" not in k[1])
    lines += ["", f"estimated cost of the {sum(job_state(rows.get(j.job_id)) != 'done' for j in jobs)} job(s) "
              f"not done: {format_seconds(todo)} of compute, about {format_seconds(todo / max(1, workers))} "
              f"wall with {workers} worker(s); plus up to {format_seconds(t_est)} for "
              f"{len(teach)} teacher(s) if not cached.",
              "cost model: overhead_s + F_model * (F_reg * epochs * (synth_batches * synth_batch_s[synthesizer] + "
              "kd_steps * kd_step_s) + n_evals * eval_s); "
              f"kd_step_s={cost['kd_step_s']}, eval_s={cost['eval_s']}, overhead_s={cost['overhead_s']} "
              "(preset [cost] overrides the defaults in benchmarks/runner.py)."]
    return "\n".join(lines)


def run_bench(opts: BenchOptions, log: Callable[[str], None] = print) -> int:
    """Expand, check, run and report a benchmark; returns the exit code (1 if a job failed)."""
    from . import executors

    preset = load_preset(opts.preset, opts.stars_params)
    _, ex_sets = split_sets(opts.sets)
    ex_opts = deep_merge(preset.data.get("executor", {}).get(opts.executor, {}), ex_sets.get(opts.executor, {}))
    for name in ex_sets:
        if name not in EXECUTORS:
            raise UnknownNameError("executor", name, list(EXECUTORS))
    executors.check_executor(opts.executor)
    if opts.workers is None:
        opts.workers = int(preset.data.get("executor", {}).get("local", {}).get("workers", 1))
    if opts.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {opts.workers}.")
    all_jobs = expand(preset, opts.sets, opts.data_root)
    jobs = filter_jobs(all_jobs, opts.only)
    if not jobs:
        raise ConfigError(f"--only {' '.join(opts.only)!r} matches none of the {len(all_jobs)} jobs of preset "
                          f"{preset.name!r}; e.g. {all_jobs[0].label!r} (use --dry-run to list them).")
    out = Path(opts.out) if opts.out else default_out(preset)
    rows = read_rows(out)
    if opts.dry_run:
        log(dry_run_text(preset, jobs, rows, opts.workers))
        return 0
    for w in check_out_dir(out, preset, all_jobs):
        log(f"warning: {w}")
    seeds = {s: i for i, s in enumerate(preset.bench["seeds"])}
    todo = sorted(pending_jobs(jobs, rows, opts.retry_failed),  # per seed, longest first (packs the pool)
                  key=lambda j: (seeds.get(j.run.get("seed"), 0), -j.est_seconds))
    skipped = len(jobs) - len(todo)
    log(f"preset {preset.name!r}: {len(jobs)} job(s), {skipped} already have a row, {len(todo)} to run -> {out}")
    if todo:
        bundles = check_datasets(todo, preset.name)
        write_manifest(out, preset, all_jobs, opts.argv)
        for p in rows_dir(out).glob(".*.tmp"):
            p.unlink(missing_ok=True)  # leftovers of a killed write
        prepare_teachers(todo, log, bundles)
        del bundles
        specs = [executors.job_spec(j, out) for j in todo]
        n_done = [0]

        def on_done(summary: dict[str, Any]) -> None:
            n_done[0] += 1
            acc = summary.get("student_acc")
            acc_s = f" acc {acc:.2f}%" if isinstance(acc, (int, float)) and acc == acc else ""
            err = f" error: {summary.get('error')}" if summary.get("status") != "ok" else ""
            log(f"[{n_done[0]}/{len(todo)}] {summary.get('status')} {summary.get('seconds', 0):.0f}s "
                f"{summary.get('label')}{acc_s}{err}")

        executors.run_jobs(specs, opts.executor, opts.workers, ex_opts, out, on_done)
    rows = read_rows(out)
    mine = [rows.get(j.job_id) for j in jobs]
    failed = [j for j, r in zip(jobs, mine) if r is None or r.get("status") != "ok"]
    if opts.report:
        from .leaderboard import write_report

        paths = write_report(out)
        log(f"leaderboard: {paths.get('leaderboard')}")
    if failed:
        log(f"{len(failed)} job(s) failed or have no row (e.g. {failed[0].label}); see the leaderboard's "
            "'Failed runs' section; re-run with --retry-failed to run only those again.")
        return 1
    return 0
