"""Typed, validated configuration sections (mdistiller style: one section per component).

A run's resolved config is a nested dict of plain values (TOML-serializable):
``{"run": {...}, "distill": {...}, "<synthesizer name>": {...}, "<regularizer name>": {...}}``.
Each component declares its section as a dataclass (``Config``); :func:`build` turns a
user dict into that dataclass, rejecting unknown keys (with the closest known key) and
wrong types, and calling the dataclass' ``validate()`` for range checks. All of this runs
before any compute is spent.

Keys and string choices (``Literal``) match ignoring case. Every number must be finite
(``nan`` is "not a number", ``inf`` "infinite"); every learning rate (``lr``, ``lr_*``,
``*_lr``) must be <= ``MAX_LR`` (10); ``distill.kd_steps = 0`` is refused unless every
epoch is a warm-up (``distill.warmup >= distill.epochs``).

``--set section.key=value`` overrides are parsed as TOML values (``1e-3``, ``true``,
``[1, 2]``, ``"text"``); a bare word that is not valid TOML is taken as a string.
"""
from __future__ import annotations

import dataclasses
import copy
import hashlib
import json
import math
import os
import tomllib
import typing
import warnings
from typing import Any, TypeVar

from .errors import ConfigError, UnknownNameError

C = TypeVar("C")


def build(cls: type[C], values: dict[str, Any] | None, section: str) -> C:
    """Instantiate config dataclass ``cls`` from ``values``; unknown keys / bad types are errors.

    Keys are matched ignoring case (``LR`` is ``lr``); besides the types and the class'
    own ``validate()``, every section gets the generic checks of :func:`check_generic`
    (finite numbers, learning rates <= :data:`MAX_LR`) and the cross-key rules of
    :data:`SECTION_RULES`.
    """
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"config section [{section}] must be a table of key = value, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    lower = {name.lower(): name for name in fields}
    given: dict[str, Any] = {}
    for key, val in (values or {}).items():
        name = key if key in fields else lower.get(key.strip().lower()) if isinstance(key, str) else None
        if name is None:
            raise UnknownNameError(f"key in [{section}]", str(key), list(fields))
        if name in given:
            raise ConfigError(f"[{section}] sets {name!r} twice (as {name!r} and {key!r}, which differ only "
                              "in case); keep one.")
        given[name] = val
    hints = typing.get_type_hints(cls)
    for key, val in list(given.items()):
        given[key] = _coerce(val, hints[key], f"{section}.{key}")
    check_generic(section, given)
    cfg = cls(**given)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    for rule in SECTION_RULES.get(section, ()):
        rule(cfg)
    return cfg


#: Upper bound of every learning rate (keys ``lr``, ``lr_*``, ``*_lr``): larger values
#: diverge with any optimizer used here, so they are refused before compute.
MAX_LR = 10.0


def is_lr_key(key: str) -> bool:
    return key == "lr" or key.startswith("lr_") or key.endswith("_lr")


def check_generic(section: str, values: dict[str, Any]) -> None:
    """Checks every section gets: learning rates within (0, MAX_LR] (0 is left to the
    component's own check). Finite numbers are enforced by the type coercion."""
    for key, val in values.items():
        if is_lr_key(key) and isinstance(val, (int, float)) and not isinstance(val, bool) and val > MAX_LR:
            raise ConfigError(f"{section}.{key} = {val} is too large: learning rates must be <= {MAX_LR:g} "
                              "(typical values are 1e-4 .. 0.5).")


def _distill_rules(cfg: Any) -> None:
    """[distill]: zero KD steps would report an untrained student as "ok"; it is allowed
    only when every epoch is a synthesis-only warm-up (``warmup >= epochs``)."""
    kd, epochs, warm = getattr(cfg, "kd_steps", None), getattr(cfg, "epochs", None), getattr(cfg, "warmup", None)
    if kd == 0 and not (isinstance(warm, int) and isinstance(epochs, int) and warm >= epochs):
        raise ConfigError(
            f"distill.kd_steps = 0 trains no student (the run would report an untrained student): set "
            f"distill.kd_steps >= 1, or, for a synthesis-only run, distill.warmup >= distill.epochs "
            f"(= {epochs}).")


#: Cross-key rules per section name, run after the section's own ``validate()``.
SECTION_RULES: dict[str, tuple[typing.Callable[[Any], None], ...]] = {"distill": (_distill_rules,)}


_PLAIN = (str, int, float, bool, type(None))


def _plain(val: Any, where: str) -> Any:
    """``val`` if it is made of TOML-plain values (str, numbers, booleans, lists, tables with
    string keys); dates, times and other objects are refused (they cannot be hashed or saved)."""
    if isinstance(val, float) and math.isnan(val):
        raise ConfigError(f"{where} = nan is not a number; give a finite value.")
    if isinstance(val, _PLAIN):
        return val
    if isinstance(val, (list, tuple)):
        return [_plain(v, where) for v in val]
    if isinstance(val, dict):
        for k in val:
            if not isinstance(k, str):
                raise ConfigError(f"{where}: table keys must be strings, got {k!r}")
        return {k: _plain(v, f"{where}.{k}") for k, v in val.items()}
    raise ConfigError(f"{where}: {type(val).__name__} values ({val!r}) are not supported; use a number, "
                      "string, boolean, list or table.")


def _coerce(val: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return _plain(val, where)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if val is None and type(None) in args:
            return None
        errs = []
        inner = [a for a in args if a is not type(None)]
        for a in inner:
            try:
                return _coerce(val, a, where)
            except ConfigError as e:
                errs.append(e)
        if len(errs) == 1:  # e.g. float | None: the float's own message says what is wrong
            raise errs[0]
        names = " or ".join(getattr(a, "__name__", str(a)) for a in inner)
        raise ConfigError(f"{where}: {val!r} is not a valid value (expected {names}"
                          + (" or unset" if type(None) in args else "") + ")")
    if origin is typing.Literal:
        if isinstance(val, str):
            for a in args:
                if isinstance(a, str) and a.lower() == val.strip().lower():
                    return a
        if val not in args:
            raise UnknownNameError(f"value for {where}", str(val), [str(a) for a in args])
        return val
    if origin in (list, tuple):
        if not isinstance(val, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {val!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, where) for v in val] if origin is list else tuple(_plain(list(val), where))
    if origin is dict or hint is dict:
        if not isinstance(val, dict):
            raise ConfigError(f"{where}: expected a table, got {val!r}")
        return _plain(dict(val), where)
    if hint is float:
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {val!r}")
        val = float(val)
        if math.isnan(val):
            raise ConfigError(f"{where} = nan is not a number; give a finite value.")
        if math.isinf(val):
            raise ConfigError(f"{where} = {val} is infinite; give a finite value.")
        return val
    if hint is int:
        if isinstance(val, bool) or not (isinstance(val, int) or (isinstance(val, float) and val.is_integer())):
            raise ConfigError(f"{where}: expected an integer, got {val!r}")
        return int(val)
    if hint is bool:
        if not isinstance(val, bool):
            raise ConfigError(f"{where}: expected true or false, got {val!r}")
        return val
    if hint is str:
        if not isinstance(val, str):
            raise ConfigError(f"{where}: expected a string, got {val!r}")
        return val
    return val


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# -- range helpers used by validate() methods --------------------------------
def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _not_nan(section: str, key: str, v: Any) -> None:
    if isinstance(v, float) and math.isnan(v):
        raise ConfigError(f"{section}.{key} = nan is not a number; give a finite value.")


def nonneg(section: str, **vals: float) -> None:
    for k, v in vals.items():
        _not_nan(section, k, v)
        require(v >= 0, f"{section}.{k} = {v} is negative; weights and rates must be >= 0.")


def positive(section: str, **vals: float) -> None:
    for k, v in vals.items():
        _not_nan(section, k, v)
        require(v > 0, f"{section}.{k} = {v} must be > 0.")


def soft_range(section: str, key: str, val: float, lo: float, hi: float) -> None:
    """Warn (not fail) when a valid value lies outside the recommended range."""
    if not lo <= val <= hi:
        warnings.warn(
            f"{section}.{key} = {val} is outside the recommended range [{lo}, {hi}]", stacklevel=3
        )


# -- --set parsing, merging, hashing -------------------------------------------
def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_sets(cfg: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a nested dict (returns a new dict)."""
    out = copy.deepcopy(cfg)
    for item in sets or []:
        path = item.split("=", 1)[0] if isinstance(item, str) else ""
        parts = [p.strip() for p in path.split(".")]
        if "=" not in item or len(parts) < 2 or not all(parts):
            raise ConfigError(
                f"--set {item!r}: expected section.key=value, e.g. --set stars.alpha=0.5"
            )
        text = item.split("=", 1)[1]
        *sections, key = parts
        node = out
        for s in sections:
            if not isinstance(node, dict):
                break
            node = node.setdefault(s, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(sections)!r} is a value, not a section")
        node[key] = parse_value(text.strip())
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def config_hash(cfg: dict[str, Any], length: int = 12) -> str:
    """Stable hash of a resolved config (key order does not matter)."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config file; ConfigError (naming the file and the fix) when it is
    missing, a directory, unreadable, not UTF-8 or not valid TOML."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise ConfigError(f"config file {p!r} is a directory; pass a .toml file (e.g. --config run.toml).")
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {p!r} not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p!r} is not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} "
                          f"at offset {exc.start}); TOML files must be UTF-8: re-save it as UTF-8.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p!r} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {p!r} cannot be read ({type(exc).__name__}: {exc.strerror or exc}).") from exc
