"""The search space of ``dfkd tune``: one :class:`Param` per searched value, validated
before any trial, and the ``best_params.toml`` it writes.

A param named ``key`` belongs to the *home* section: the first regularizer of the preset's
treatment (``[bench].treatment``; ``stars`` in the shipped presets); ``section.key`` names
another section (``distill.lr``). :data:`DEFAULT_SPACES` holds the published ranges of the
regularizers that have them; any other treatment takes its whole space from ``[tune]``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from baselines.config import deep_merge
from baselines.errors import ConfigError, UnknownNameError

#: Published search ranges per regularizer (STARS, arXiv 2605.27409: alpha in [0.3, 0.7],
#: beta in [0.2, 0.5], q in [0.90, 0.98]): loss weights, used when the tuned regularizer
#: runs with ``weighting = "raw"``.
DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "stars": {"alpha": (0.3, 0.7), "beta": (0.2, 0.5), "q": (0.90, 0.98)}}
#: The same under ``weighting = "grad-share"`` (STARS' default), where alpha / beta are
#: gradient shares relative to BN's, not loss weights: log ranges around the measured
#: default 0.1 / 0.05 and the seed's numbers (session-6 seed-0 sweep: 0.1 / 0.05 beat 0.5 / 0.3
#: on all three synthesizers); q keeps the published range.
SHARE_SPACES: dict[str, dict[str, Any]] = {
    "stars": {"alpha": {"low": 0.02, "high": 0.7, "log": True}, "beta": {"low": 0.01, "high": 0.5, "log": True},
              "q": (0.90, 0.98)}}
#: keys checked as loss weights (>= 0), a percentile (0 < q < 1), a softness (> 0)
WEIGHT_KEYS = ("alpha", "beta")
RANGE_KEYS = ("alpha", "beta", "q", "kappa")
#: [tune] keys that are settings (see benchmarks/tune.py); every other key is a search entry.
SETTING_KEYS = ("objective", "val_size", "heldout_images", "n_startup_trials", "prune_startup_trials",
                "prune_warmup_steps", "max_retry")


@dataclass(frozen=True)
class Param:
    """One searched value: ``name`` is ``key`` (in the ``home`` section) or ``section.key``."""

    name: str
    kind: str  # "float" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    lists: bool = False  # choices are lists (e.g. phases), encoded for Optuna as "a+b"
    home: str = ""  # the section of an undotted name (the treatment's first regularizer)

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0] if "." in self.name else self.home

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[1] if "." in self.name else self.name

    def to_json(self) -> dict[str, Any]:
        if self.kind == "float":
            return {"type": "float", "low": self.low, "high": self.high, "log": self.log}
        return {"type": "categorical", "choices": list(self.choices)}

    def decode(self, value: Any) -> Any:
        """The config value of an Optuna value (``"synthesis+distill"`` -> a list)."""
        return value.split("+") if self.lists and isinstance(value, str) else value

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _parse_param(name: str, val: Any, home: str) -> Param | None:
    where = f"[tune] {name}"
    if isinstance(val, list) and not val:
        return None  # an empty list removes a default entry (the config value is used)
    if isinstance(val, dict):
        unknown = set(val) - {"low", "high", "log", "choices"}
        if unknown:
            raise UnknownNameError(f"key in {where}", sorted(unknown)[0],
                                   ["low", "high", "log", "choices"])
        if "choices" in val:
            return Param(name, "categorical", *_choices(where, val["choices"]))
        if "low" not in val or "high" not in val:
            raise ConfigError(f"{where}: a range table needs low and high, e.g. "
                              f"{name} = {{low = 0.1, high = 0.9}}")
        return Param(name, "float", _num(where, val["low"]), _num(where, val["high"]),
                     bool(val.get("log", False)))
    if isinstance(val, list) and len(val) == 2 and all(_is_num(v) for v in val):
        return Param(name, "float", float(val[0]), float(val[1]))
    if isinstance(val, list):
        if name.removeprefix(home + ".") in RANGE_KEYS:
            raise ConfigError(f"{where} = {val!r}: expected a range [low, high] of two numbers")
        return Param(name, "categorical", *_choices(where, val))
    known = sorted(SETTING_KEYS)
    raise ConfigError(
        f"{where} = {val!r} is neither a known [tune] setting ({', '.join(known)}) nor a "
        f"search range. Give a range [low, high], a list of choices, or fix the value with "
        f"--set {home}.{name}={val!r}."
    )


def _num(where: str, v: Any) -> float:
    if not _is_num(v) or not math.isfinite(float(v)):
        raise ConfigError(f"{where}: {v!r} is not a finite number")
    return float(v)


def _choices(where: str, vals: Any) -> tuple[None, None, bool, tuple[Any, ...], bool]:
    """Positional (low, high, log, choices, lists) of a categorical Param."""
    if not isinstance(vals, list) or not vals:
        raise ConfigError(f"{where}: choices must be a non-empty list")
    if all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in vals):
        return None, None, False, tuple("+".join(v) for v in vals), True
    for v in vals:
        if not isinstance(v, (str, int, float, bool)):
            raise ConfigError(f"{where}: choice {v!r} must be a string, number or boolean "
                              "(or every choice a list of strings, e.g. phases)")
    return None, None, False, tuple(vals), False


@dataclass(frozen=True)
class SearchSpace:
    """The searched parameters, validated: weights >= 0, 0 < q < 1, kappa > 0, low <= high."""

    params: tuple[Param, ...]
    home: str = ""

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None, home: str,
                       weighting: str | None = None) -> "SearchSpace":
        """The default space of ``home`` (if any: :data:`SHARE_SPACES` when it runs with
        ``weighting = "grad-share"``, else :data:`DEFAULT_SPACES`), changed by a preset's
        [tune] entries."""
        table = SHARE_SPACES if weighting == "grad-share" else DEFAULT_SPACES
        merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else list(v)
                                  for k, v in table.get(home, {}).items()}
        flat: dict[str, Any] = {}
        for k, v in (overrides or {}).items():  # TOML dotted keys: distill.lr = [..]
            if isinstance(v, dict) and not set(v) & {"low", "high", "log", "choices"}:
                flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                flat[k] = v
        for k, v in flat.items():
            merged[k.removeprefix(home + ".")] = v
        params = [dataclasses.replace(p, home=home) for k, v in merged.items()
                  if (p := _parse_param(k, v, home)) is not None]
        space = cls(tuple(params), home)
        space.validate()
        return space

    def validate(self) -> None:
        if not self.params:
            raise ConfigError("the search space is empty: give at least one range in [tune]")
        for p in self.params:
            where = f"search range {p.name}"
            if p.kind != "float":
                continue
            if p.low > p.high:
                raise ConfigError(f"{where} = [{p.low}, {p.high}]: low is above high")
            if p.log and p.low <= 0:
                raise ConfigError(f"{where}: a log range needs low > 0")
            default = DEFAULT_SPACES.get(self.home, {}).get(p.key)
            if p.key in WEIGHT_KEYS and p.section == self.home and p.low < 0:
                raise ConfigError(f"{where} = [{p.low}, {p.high}] includes a negative weight; "
                                  f"{self.home} weights must be >= 0" + (f" (default {default})" if default else ""))
            if p.key == "q" and p.section == self.home and not (0 < p.low and p.high < 1):
                raise ConfigError(f"{where} = [{p.low}, {p.high}] leaves (0, 1): q is a "
                                  "percentile as a fraction, e.g. [0.90, 0.98]")
            if p.key == "kappa" and p.section == self.home and p.low <= 0:
                raise ConfigError(f"{where} = [{p.low}, {p.high}]: the softness kappa must be "
                                  "> 0, e.g. [0.05, 0.5]")

    def to_json(self) -> dict[str, Any]:
        return {p.name: p.to_json() for p in self.params}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {p.name: p.suggest(trial) for p in self.params}

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Optuna's values -> config values (list-valued choices split back)."""
        by = {p.name: p for p in self.params}
        return {k: by[k].decode(v) if k in by else v for k, v in params.items()}

    def corners(self) -> list[dict[str, Any]]:
        """Points that exercise every bound and choice (validated before any trial)."""
        lo = {p.name: (p.low if p.kind == "float" else p.choices[0]) for p in self.params}
        hi = {p.name: (p.high if p.kind == "float" else p.choices[-1]) for p in self.params}
        pts = [lo, hi]
        for p in self.params:
            for c in p.choices[1:-1]:
                pts.append({**lo, p.name: c})
        return [self.decode(pt) for pt in pts]


def apply_params(base: dict[str, Any], params: dict[str, Any], home: str | None = None) -> dict[str, Any]:
    """``base`` with each param written into its section (``home`` unless dotted; default: the
    base config's first regularizer)."""
    home = home or base["run"]["regularizers"][0]
    over: dict[str, Any] = {}
    for name, val in params.items():
        section, key = (name.split(".", 1) if "." in name else (home, name))
        over.setdefault(section, {})[key] = val
    return deep_merge(base, over)



def format_toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)  # TOML reads Python's float repr (1e-05, inf, nan) as written
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_best_params(path: Path, params: dict[str, Any], header: list[str], home: str) -> None:
    """``[<home>]`` TOML as ``dfkd bench --params FILE`` reads it; dotted params as notes."""
    lines = [f"# {h}" for h in header]
    other = {k: v for k, v in params.items() if "." in k and not k.startswith(home + ".")}
    for k, v in other.items():
        lines.append(f"# also tuned, not a [{home}] key: --set {k}={format_toml_value(v)}")
    lines.append(f"[{home}]")
    for k, v in params.items():
        if k in other:
            continue
        lines.append(f"{k.removeprefix(home + '.')} = {format_toml_value(v)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


