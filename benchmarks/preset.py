"""Presets: the one loader, schema check and config layering used by ``dfkd bench``,
``dfkd tune`` and ``dfkd compare``.

A *preset* (``benchmarks/presets/<name>.toml`` or the user's own file; its schema is
documented at the top of ``presets/quick.toml``) names datasets, teacher:student pairs,
synthesizers, regularizer sets, the *treatment* (the regularizer set whose effect the
leaderboard, the tuner and ``dfkd compare`` measure: "with / without" means with / without
that set), seeds, reference rows and per-method budgets. :func:`load_preset` checks every
table, key and name against the registries before any compute; :func:`user_config` is the
one layering of a preset into the unresolved config of one job:

    [run], [distill]  <  [budget.<method>] (scratch falls back to real's)  <  [params.<reg>]
    <  [overrides.<dataset>] (the same tables)  <  --set  <  the job's identity keys

with ``[bench].T`` below all of them.
"""
from __future__ import annotations

import copy
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from baselines.config import apply_sets, deep_merge, load_toml
from baselines.errors import ConfigError, UnknownNameError
from baselines.registry import DATASETS, REGULARIZERS, STUDENTS, SYNTHESIZERS, TEACHERS, Registry

from .executor_options import NAMES as EXECUTORS, check_options

PRESET_DIR = Path(__file__).resolve().parent / "presets"
REFERENCES = ("teacher", "real", "noise", "scratch")
#: Run keys set by the cell itself; ``--set`` may not override them.
IDENTITY_KEYS = ("dataset", "teacher", "student", "synthesizer", "regularizers", "seed")
TOP_KEYS = ("bench", "run", "distill", "budget", "params", "overrides", "cost", "executor", "tune")
BENCH_KEYS = ("name", "description", "datasets", "pairs", "synthesizers", "regularizer_sets", "treatment",
              "seeds", "references", "T")
OVERRIDE_KEYS = ("run", "distill", "budget", "params")
COST_KEYS = ("overhead_s", "kd_step_s", "eval_s", "teacher_epoch_s", "synth_batch_s",
             "regularizer_factor", "model_factor")
COST_TABLES = ("synth_batch_s", "regularizer_factor", "model_factor")  # name -> number


@dataclass
class Preset:
    """A validated preset: ``data`` is the TOML dict with [bench] defaults filled."""

    name: str
    source: str
    data: dict[str, Any]

    @property
    def bench(self) -> dict[str, Any]:
        return self.data["bench"]

    @property
    def treatment(self) -> list[str]:
        """The regularizer set compared against none (``[bench].treatment``; [] = none named)."""
        return list(self.bench["treatment"])

    def require_treatment(self, what: str) -> list[str]:
        if not self.treatment:
            raise ConfigError(f"preset {self.source}: {what} needs the regularizer set it measures; add "
                              "treatment = [\"<regularizer>\", ...] to [bench] (the shipped presets say [\"stars\"]).")
        return self.treatment

    @property
    def path(self) -> str:
        return self.source


def preset_names() -> list[str]:
    """Names of the presets shipped in ``benchmarks/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def find_preset(name_or_file: str) -> Path:
    """The file of a shipped preset name, or the given preset file."""
    path = Path(name_or_file).expanduser()
    if path.suffix == ".toml" or os.sep in name_or_file or path.is_file():
        if not path.is_file():
            raise ConfigError(f"preset file {str(path)!r} not found. Shipped presets: "
                              f"{', '.join(preset_names())} (pass a name, or the path of a TOML file).")
        return path.resolve()
    names = preset_names()
    if name_or_file not in names:
        raise UnknownNameError("preset", name_or_file, names)
    return PRESET_DIR / f"{name_or_file}.toml"


def load_preset(name_or_file: str, params_file: str | None = None) -> Preset:
    """Load and validate a shipped preset (by name) or a preset file (by path).

    ``params_file``: a TOML file of regularizer sections (``[stars] alpha = 0.4``, e.g. the
    tuner's output) merged into the preset's ``[params.<regularizer>]``."""
    path = find_preset(name_or_file)
    data = read_preset_file(path)
    if params_file:
        data = merge_params_file(data, params_file)
    data = validate_preset(data, str(path))
    data["bench"].setdefault("name", path.stem)
    return Preset(data["bench"]["name"], str(path), data)


def parse_seeds(spec: str) -> list[int]:
    """``"0-6"``, ``"5,6"`` or ``"0-4,7"`` -> sorted distinct seeds (``dfkd bench --seeds``)."""
    seeds: set[int] = set()
    for part in (p.strip() for p in str(spec).split(",")):
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            a, b = 0, -1
        if not part or a > b or a < 0:
            raise ConfigError(f"--seeds {spec!r}: {part!r} is not a seed (an integer >= 0) or a range such as "
                              "0-6; write e.g. --seeds 0-6 or --seeds 5,6.")
        seeds.update(range(a, b + 1))
    return sorted(seeds)


def with_seeds(preset: Preset, seeds: Iterable[int]) -> Preset:
    """The preset with ``[bench].seeds`` replaced (a copy; job ids of a seed do not depend on the others)."""
    data = copy.deepcopy(preset.data)
    data["bench"]["seeds"] = sorted(set(seeds))
    return Preset(preset.name, preset.source, data)


def read_preset_file(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset's TOML with its top-level ``extends = "NAME|FILE"`` resolved: the base preset
    (a shipped name, or a file relative to this one) deep-merged under this file's tables, so
    a variant states only what it changes. The base's ``[bench] name`` is not inherited."""
    data = load_toml(str(path))
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"preset {path}: extends must be a preset name or file, got {base!r}.")
    rel = path.parent / base
    base_path = find_preset(str(rel) if base.endswith(".toml") and not Path(base).is_absolute() else base)
    if base_path in (*_seen, path):
        chain = " -> ".join(str(p) for p in (*_seen, path, base_path))
        raise ConfigError(f"preset {path}: extends forms a cycle ({chain}); remove one extends.")
    parent = read_preset_file(base_path, (*_seen, path))
    parent.get("bench", {}).pop("name", None)
    return deep_merge(parent, data)


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
        raise ConfigError(f"preset {where} must be a table, got {table!r}; write it as a [section] header "
                          "followed by key = value lines.")
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


def _check_names(names: Iterable[str], known: Registry | list[str], kind: str) -> list[str]:
    """``names`` spelled as registered (a registry's lookup ignores case, as the CLI's does:
    "CMI" -> "cmi"); UnknownNameError (known names, closest) for a name nothing knows."""
    if isinstance(known, Registry):
        return [known.canonical(n) for n in names]
    for n in names:
        if n not in known:
            raise UnknownNameError(kind, n, known)
    return list(names)


def _no_dates(val: Any, source: str, where: str) -> None:
    """TOML dates and times cannot be hashed into job ids or saved in rows: refuse them by key."""
    if isinstance(val, dict):
        for k, v in val.items():
            _no_dates(v, source, f"{where}.{k}" if where else str(k))
    elif isinstance(val, list):
        for i, v in enumerate(val):
            _no_dates(v, source, f"{where}[{i}]")
    elif isinstance(val, (dt.date, dt.time)):  # datetime is a date
        raise ConfigError(f"preset {source}: {where} = {val.isoformat()} is a TOML {type(val).__name__}, which "
                          "presets do not support; write a number or a quoted string instead.")


def _check_name(bench: dict[str, Any], source: str) -> None:
    """[bench].name becomes the folder results/<name>: one plain, short path component."""
    name = bench.get("name")
    if name is None:
        return
    if not isinstance(name, str) or not name.strip() or name.strip(".") == "" or any(
            c in name for c in ("/", "\\", os.sep, "\0")) or ".." in name:
        raise ConfigError(f"preset {source}: [bench].name = {str(name)[:80]!r} must be a plain folder name "
                          "(no '/', '\\', '..' or NUL; it becomes results/<name>); rename it, e.g. \"my-bench\".")
    if len(name.encode()) > 200:
        raise ConfigError(f"preset {source}: [bench].name is {len(name.encode())} bytes long; it becomes the folder "
                          "results/<name>, and file systems allow 255 bytes per name: shorten it to 200 at most.")


def parse_pair(text: str) -> tuple[str, str]:
    """``"teacher:student"`` -> (teacher, student)."""
    parts = text.split(":") if isinstance(text, str) else []
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"preset pair {text!r} must read 'teacher:student', e.g. 'smallcnn:spiking_smallcnn'.")
    return parts[0].strip(), parts[1].strip()


def _reg_set(rs: Any, where: str) -> list[str]:
    rs = [] if rs in ("none", "") else _str_list(rs, where)
    return _check_names(rs, REGULARIZERS, "regularizer")


def _treatment(bench: dict[str, Any], source: str) -> list[str]:
    """[bench].treatment, else the only non-empty regularizer set, else [] (no treatment:
    the leaderboard has no with / without columns, and ``dfkd tune`` asks for one)."""
    if "treatment" in bench:
        t = _reg_set(bench["treatment"], "[bench].treatment")
        if not t:
            raise ConfigError(f"preset {source}: [bench].treatment must name at least one regularizer.")
        return t
    sets = [rs for rs in bench.get("regularizer_sets", []) if rs]
    return sets[0] if len(sets) == 1 else []


def validate_preset(data: dict[str, Any], source: str = "<preset>") -> dict[str, Any]:
    """Check a preset's structure and names (registries); fill [bench] defaults."""
    data = copy.deepcopy(data)
    _check_keys(data, TOP_KEYS, f"file {source} (top level)")
    _no_dates(data, source, "")
    bench = _check_keys(data.get("bench", {}), BENCH_KEYS, "[bench]")
    _check_name(bench, source)
    for req in ("datasets", "pairs", "synthesizers"):
        if req not in bench:
            raise ConfigError(f"preset {source}: [bench] needs {req!r} (see the schema in presets/quick.toml).")
    bench["datasets"] = _check_names(_str_list(bench["datasets"], "[bench].datasets"), DATASETS, "dataset")
    bench["pairs"] = [":".join([*_check_names([t], TEACHERS, "teacher"), *_check_names([s], STUDENTS, "student")])
                      for t, s in map(parse_pair, _str_list(bench["pairs"], "[bench].pairs"))]
    bench["synthesizers"] = _check_names(_str_list(bench["synthesizers"], "[bench].synthesizers"), SYNTHESIZERS,
                                         "synthesizer")
    sets = bench.get("regularizer_sets")
    if sets is None:
        treatment = _treatment(bench, source)
        sets = [[], treatment] if treatment else [[]]
    if not isinstance(sets, list) or not sets:
        raise ConfigError(f"preset [bench].regularizer_sets must be a non-empty list of lists, got {sets!r}.")
    norm_sets: list[list[str]] = []
    for rs in sets:
        rs = _reg_set(rs, "[bench].regularizer_sets entry")
        if rs not in norm_sets:
            norm_sets.append(rs)
    bench["regularizer_sets"] = norm_sets
    bench["treatment"] = _treatment(bench, source)
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
    for key, val in cost.items():
        for k, v in (_table(val, f"[cost.{key}]") if key in COST_TABLES else {"": val}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ConfigError(f"preset {source}: [cost] {key}{'.' + k if k else ''} = {v!r} must be a "
                                  "non-negative number of seconds (or a factor); fix it or remove the key.")
    ex = _check_keys(data.get("executor", {}), EXECUTORS, "[executor]")
    for name, opts in ex.items():
        check_options(name, opts, f"preset {source} [executor.{name}]")
    if not isinstance(data.get("tune", {}), dict):
        raise ConfigError(f"preset {source}: [tune] must be a table (see `dfkd tune --help`).")
    return data


def _table(val: Any, where: str) -> dict[str, Any]:
    """``val`` when it is a table (its keys are checked elsewhere), else a ConfigError."""
    return _check_keys(val, list(val) if isinstance(val, dict) else [], where)


def _validate_sections(data: dict[str, Any], source: str, methods: set[str]) -> None:
    for sec in ("run", "distill"):
        _table(data.get(sec, {}), f"[{sec}]")  # keys: resolve_config
    for key in data.get("run", {}):
        if key in IDENTITY_KEYS:
            raise ConfigError(f"preset {source}: [run].{key} is set per job by [bench]; list it there.")
    budget = _check_keys(data.get("budget", {}), sorted(methods), "[budget]")
    for synth, b in budget.items():
        _check_keys(b, ["distill"] if synth == "scratch" else ["distill", synth], f"[budget.{synth}]")
    params = _check_keys(data.get("params", {}), REGULARIZERS.names(), "[params]")
    for reg, p in params.items():
        _table(p, f"[params.{reg}]")


# --------------------------------------------------------------------------- layering
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
                regs: list[str], seed: int, kind: str = "distill", sets: list[str] | None = None,
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
