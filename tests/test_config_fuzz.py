"""Fuzz the config and preset parsers: random sections, keys, types and values (seeded, a few
hundred cases, a few seconds) fed to :func:`benchmarks.job.resolve_config` and to the preset
validation; only DFKDError subclasses (baselines.errors) may escape, never a bare Python
exception (TypeError, AttributeError, ValueError, ...), and an accepted config must be
plain TOML-able data (it is hashed and written to result.json).

``hypothesis`` is not a dependency; a seeded ``random.Random`` drives the cases, and a
failure prints the seed and the input so it can be replayed.
"""
import copy
import datetime as dt
import json
import math
import random
import traceback
from pathlib import Path

import pytest

from baselines.config import apply_sets, deep_merge, parse_value
from baselines.errors import DFKDError
from benchmarks.job import resolve_config

try:  # the preset loader moved out of runner.py in the benchmarks restructuring
    from benchmarks.preset import validate_preset
except ImportError:  # pragma: no cover - older layout
    from benchmarks.runner import validate_preset

N_CASES = 400
NAMES = ["run", "distill", "deepinversion", "cmi", "fast", "real", "noise", "stars", "rca", "tar", "CMI",
         "Run", "bench", "budget", "params", "overrides", "cost", "executor", "tune", "", " ", "x.y", "épreuve",
         "lr", "LR", "epochs", "kd_steps", "dataset", "teacher", "student", "synthesizer", "regularizers", "seed",
         "train_subset", "data_root", "T", "student_args", "warmup", "schedule", "temperature", "alpha",
         "datasets", "pairs", "synthesizers", "regularizer_sets", "treatment", "seeds", "references"]
STRINGS = ["", " ", "toy", "TOY", "fashion-mnist", "cmi", "CMI", "stars", "smallcnn", "smallcnn@", "@x.pt",
           "smallcnn@/nonexistent.pt", "smallcnn@\x00", "spiking_smallcnn", "smallcnn:spiking_smallcnn", ":", "a:b:c",
           "none", "cuda:x", "cuda:0", "cpu", "auto", "cosine-step", "nan", "\x00", "ü",
           "x" * 300, "../..", "/nonexistent"]


def rand_value(r: random.Random, depth: int = 0):
    kind = r.randrange(12 if depth < 2 else 8)
    if kind == 0:
        return r.choice(STRINGS)
    if kind == 1:
        return r.choice([0, 1, -1, 2, 3, 4, 10, 2 ** 31, 2 ** 63, -(2 ** 63), 10 ** 30])
    if kind == 2:
        return r.choice([0.0, -0.0, 0.5, -1.5, 1e-9, 1e20, -1e20, math.nan, math.inf, -math.inf, 1e308])
    if kind == 3:
        return r.choice([True, False])
    if kind == 4:
        return r.choice([dt.date(1979, 5, 27), dt.datetime(1979, 5, 27, 7, 32), dt.time(7, 32)])
    if kind == 5:
        return r.choice([[], [""], ["stars"], ["stars", "stars"], [1, 2], [[]], ["CMI"]])
    if kind == 6:
        return {}
    if kind == 7:
        return r.choice(NAMES)
    if kind in (8, 9):
        return [rand_value(r, depth + 1) for _ in range(r.randrange(4))]
    return {r.choice(NAMES): rand_value(r, depth + 1) for _ in range(r.randrange(4))}


def mutate(base: dict, r: random.Random, n: int) -> dict:
    cfg = copy.deepcopy(base)
    for _ in range(n):
        op = r.randrange(6)
        sec = r.choice(list(cfg) + NAMES[:12]) if cfg else r.choice(NAMES)
        if op == 0:  # set a key of a section
            node = cfg.setdefault(sec, {})
            if isinstance(node, dict):
                keys = list(node) + NAMES
                node[r.choice(keys)] = rand_value(r)
        elif op == 1:  # replace a whole section
            cfg[sec] = rand_value(r)
        elif op == 2:  # drop a section or a key
            node = cfg.get(sec)
            if isinstance(node, dict) and node and r.random() < 0.7:
                node.pop(r.choice(list(node)))
            else:
                cfg.pop(sec, None)
        elif op == 3:  # a new, random section
            cfg[r.choice(NAMES)] = {r.choice(NAMES): rand_value(r) for _ in range(r.randrange(3))}
        elif op == 4:  # a nested table one level down
            node = cfg.setdefault(sec, {})
            if isinstance(node, dict) and node:
                k = r.choice(list(node))
                if isinstance(node[k], dict):
                    node[k][r.choice(NAMES)] = rand_value(r)
                else:
                    node[k] = rand_value(r)
        else:  # a --set override, parsed as the CLI does
            key = f"{sec}.{r.choice(NAMES)}"
            text = r.choice(["1", "0", "-3", "1e20", "nan", "inf", "true", "[1, 2]", "{a = 1}", "1979-05-27",
                             "cmi", "'x'", "", "=", "\"\\u00e9\"", "[", "{", "0x10"])
            try:
                cfg = apply_sets(cfg, [f"{key}={text}"])
            except DFKDError:
                pass
    return cfg


def check(fn, arg, seed, plain=True):
    """'ok', 'error' (a DFKDError with a message) or ('bare', signature, report) for any
    other exception; ``plain``: an accepted result must be JSON-able plain data."""
    try:
        out = fn(arg)
        if plain:
            json.dumps(out, allow_nan=True)  # accepted configs are hashed and written as JSON
    except DFKDError as exc:
        assert str(exc).strip(), f"seed {seed}: empty error message"
        return "error"
    except Exception as exc:  # noqa: BLE001 - the point of the test
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.name}"
        return ("bare", (type(exc).__name__, where), f"seed {seed}: bare {type(exc).__name__} in {where}: {exc}\n"
                                                     f"input: {arg!r}")
    return "ok"


def tally(results):
    """Counts of ok / error; fails on a bare exception (one report per signature)."""
    seen = {"ok": 0, "error": 0}
    bare = {}
    for res in results:
        if isinstance(res, tuple):
            bare.setdefault(res[1], res[2])
        else:
            seen[res] += 1
    assert not bare, "\n\n".join(bare.values())
    return seen


@pytest.fixture(scope="module", autouse=True)
def _cached_entry_points():
    """Entry-point discovery reads every installed distribution's metadata (~30 ms per
    lookup); the parsers, not the discovery, are under test, so it is memoized here."""
    import functools
    import importlib.metadata as md
    from types import SimpleNamespace

    import baselines.registry as registry

    cached = functools.lru_cache(maxsize=None)(lambda group: tuple(md.entry_points(group=group)))
    mp = pytest.MonkeyPatch()
    mp.setattr(registry, "md", SimpleNamespace(entry_points=lambda group: cached(group)))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def base_config():
    return resolve_config({"run": {"dataset": "toy", "synthesizer": "cmi", "regularizers": ["stars"]}})


@pytest.fixture(scope="module")
def base_preset():
    from baselines.config import load_toml
    from benchmarks.preset import PRESET_DIR

    return load_toml(str(PRESET_DIR / "quick.toml"))


def test_resolve_config_raises_only_dfkd_errors(base_config):
    def cases():
        for seed in range(N_CASES):
            r = random.Random(seed)
            yield check(resolve_config, mutate(base_config if r.random() < 0.8 else {}, r, 1 + r.randrange(3)), seed)

    seen = tally(cases())
    assert seen["ok"] > 10 and seen["error"] > 50, seen  # both paths are exercised


def test_resolve_config_rejects_non_tables():
    for seed, val in enumerate([1, "run", [], [{"run": {}}], 1.5, True]):
        assert check(resolve_config, val, seed) == "error"


def test_preset_validation_raises_only_dfkd_errors(base_preset):
    """(A section such as [run] given a non-table value, run = 1979-05-27, was a TypeError in
    preset.py's _validate_sections; now an error naming the section.)"""
    def cases():
        for seed in range(N_CASES):
            r = random.Random(10_000 + seed)
            data = mutate(base_preset, r, 1 + r.randrange(3))
            yield check(lambda d: validate_preset(d, f"<fuzz {seed}>"), data, seed, plain=False)

    seen = tally(cases())
    assert seen["ok"] > 10 and seen["error"] > 50, seen


MINI = {"bench": {"datasets": ["toy"], "pairs": ["smallcnn:spiking_smallcnn"], "synthesizers": ["cmi"]}}


@pytest.mark.parametrize("section, value, text", [
    ("run", 3, "preset [run] must be a table, got 3; write it as a [section] header"),
    ("distill", "x", "preset [distill] must be a table"),
    ("run", dt.date(1979, 5, 27), "run = 1979-05-27 is a TOML date"),
    ("budget", {"cmi": 1}, "preset [budget.cmi] must be a table, got 1"),
    ("params", {"stars": [1]}, "preset [params.stars] must be a table"),
    ("cost", {"synth_batch_s": 3}, "preset [cost.synth_batch_s] must be a table"),
    ("cost", {"kd_step_s": "slow"}, "[cost] kd_step_s = 'slow' must be a non-negative number"),
    ("executor", {"local": 2}, "[executor.local] must be a table of options of the local executor, got 2"),
])
def test_preset_sections_of_the_wrong_type_are_clear_errors(section, value, text):
    with pytest.raises(DFKDError) as e:
        validate_preset(dict(copy.deepcopy(MINI), **{section: value}), "p.toml")
    assert text in str(e.value), str(e.value)


@pytest.mark.parametrize("where, value, text", [
    (("distill", "lr"), dt.date(1979, 5, 27), "preset p.toml: distill.lr = 1979-05-27 is a TOML date, which presets "
                                              "do not support; write a number or a quoted string instead."),
    (("run", "teacher_epochs"), dt.time(7, 32), "run.teacher_epochs = 07:32:00 is a TOML time"),
    (("params", "stars"), {"alpha": [dt.datetime(1979, 5, 27, 7, 32)]},
     "params.stars.alpha[0] = 1979-05-27T07:32:00 is a TOML datetime"),
    (("tune", "alpha"), dt.date(2000, 1, 1), "tune.alpha = 2000-01-01 is a TOML date"),
])
def test_preset_dates_and_times_are_errors_naming_the_key(where, value, text):
    data = copy.deepcopy(MINI)
    data.setdefault(where[0], {})[where[1]] = value
    with pytest.raises(DFKDError) as e:
        validate_preset(data, "p.toml")
    assert text in str(e.value), str(e.value)


def test_preset_names_ignore_case_like_the_cli():
    data = {"bench": {"datasets": ["TOY"], "pairs": ["SmallCNN:Spiking_SmallCNN"], "synthesizers": ["CMI", "Fast"],
                      "regularizer_sets": [[], ["STARS"]], "treatment": ["Stars"]},
            "budget": {"cmi": {"cmi": {"iterations": 2}}}}
    bench = validate_preset(data, "p.toml")["bench"]
    assert bench["datasets"] == ["toy"] and bench["pairs"] == ["smallcnn:spiking_smallcnn"]
    assert bench["synthesizers"] == ["cmi", "fast"] and bench["regularizer_sets"] == [[], ["stars"]]
    assert bench["treatment"] == ["stars"]
    with pytest.raises(DFKDError, match="unknown synthesizer 'CMIX'. Did you mean 'cmi'"):
        validate_preset({"bench": dict(data["bench"], synthesizers=["CMIX"])}, "p.toml")


@pytest.mark.parametrize("text", ["1", "nan", "[1, {a = 1}]", "1979-05-27", "=", "", "x y", "'", "\x00", "[" * 50])
def test_set_values_parse_without_bare_exceptions(text):
    parse_value(text)
    try:
        deep_merge(apply_sets({"run": {"seed": 1}}, [f"run.seed={text}"]), {"distill": {"lr": 0.1}})
    except DFKDError:
        pass
