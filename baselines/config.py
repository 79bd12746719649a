"""Typed, validated configuration sections (mdistiller style: one section per component).

A run's resolved config is a nested dict of plain values (TOML-serializable):
``{"run": {...}, "distill": {...}, "<synthesizer name>": {...}, "<regularizer name>": {...}}``.
Each component declares its section as a dataclass (``Config``); :func:`build` turns a
user dict into that dataclass, rejecting unknown keys (with the closest known key) and
wrong types, and calling the dataclass' ``validate()`` for range checks. All of this runs
before any compute is spent.

``--set section.key=value`` overrides are parsed as TOML values (``1e-3``, ``true``,
``[1, 2]``, ``"text"``); a bare word that is not valid TOML is taken as a string.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import typing
import warnings
from typing import Any, TypeVar

from .errors import ConfigError, UnknownNameError

C = TypeVar("C")


def build(cls: type[C], values: dict[str, Any] | None, section: str) -> C:
    """Instantiate config dataclass ``cls`` from ``values``; unknown keys / bad types are errors."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise UnknownNameError(f"key in [{section}]", key, list(fields))
    hints = typing.get_type_hints(cls)
    for key, val in list(values.items()):
        values[key] = _coerce(val, hints[key], f"{section}.{key}")
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def _coerce(val: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return val
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if val is None and type(None) in args:
            return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(val, a, where)
            except ConfigError as e:
                errs.append(str(e))
        raise ConfigError(f"{where}: {val!r} does not fit {hint}")
    if origin is typing.Literal:
        if val not in args:
            raise UnknownNameError(f"value for {where}", str(val), [str(a) for a in args])
        return val
    if origin in (list, tuple):
        if not isinstance(val, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {val!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, where) for v in val] if origin is list else tuple(val)
    if origin is dict or hint is dict:
        if not isinstance(val, dict):
            raise ConfigError(f"{where}: expected a table, got {val!r}")
        return dict(val)
    if hint is float:
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {val!r}")
        return float(val)
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


def nonneg(section: str, **vals: float) -> None:
    for k, v in vals.items():
        require(v >= 0, f"{section}.{k} = {v} is negative; weights and rates must be >= 0.")


def positive(section: str, **vals: float) -> None:
    for k, v in vals.items():
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
    out = json.loads(json.dumps(cfg))
    for item in sets or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(
                f"--set {item!r}: expected section.key=value, e.g. --set stars.alpha=0.5"
            )
        path, text = item.split("=", 1)
        *sections, key = path.strip().split(".")
        node = out
        for s in sections:
            node = node.setdefault(s, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {s!r} is a value, not a section")
        node[key] = parse_value(text.strip())
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
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
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path!r} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from exc
