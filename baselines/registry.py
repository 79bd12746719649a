"""Registries of named components, bound to entry-point groups.

One registry per kind (synthesizers, regularizers, teachers, students, datasets). The
entry points (``importlib.metadata.entry_points(group="stars_dfkd.<kind>")``) are the
source of truth: this project's own pyproject declares its built-ins through the same
groups a third-party distribution uses, so subprocess and cluster workers see exactly the
same names. ``@REGISTRY.register("name")`` additionally registers an object in-process
(handy in notebooks and tests); it never shadows an entry point silently.

Loading is lazy: ``names()`` reads metadata only, ``get(name)`` imports the one object.
Lookups ignore case (``get("CMI")`` is ``get("cmi")``; :meth:`Registry.canonical` gives the
registered spelling); an unknown name lists the known ones and the closest (case-insensitive).

Example, a third-party ``pyproject.toml``::

    [project.entry-points."stars_dfkd.regularizers"]
    my-reg = "my_pkg.reg:MyRegularizer"
"""
from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError, PluginError, UnknownNameError

GROUP_PREFIX = "stars_dfkd."
KINDS = ("synthesizers", "regularizers", "teachers", "students", "datasets")


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    source: str  # distribution name, or "<runtime>" for decorator registrations
    target: str  # "module:attr"
    _ep: Any = None
    _obj: Any = None

    def load(self) -> Any:
        if self._obj is not None:
            return self._obj
        try:
            return self._ep.load()
        except Exception as exc:  # noqa: BLE001 - re-raised with the plugin's name
            raise PluginError(
                f"{self.kind[:-1]} {self.name!r} from distribution {self.source!r} "
                f"({self.target}) failed to load: {type(exc).__name__}: {exc}. "
                f"Reinstall or fix {self.source!r}; other {self.kind} still work."
            ) from exc


_DIST_NAMES: dict[tuple[str, float], str] = {}


def _dist_name(dist: Any) -> str:
    """A distribution's name; cached per metadata directory and its mtime (parsing METADATA
    costs ~5 ms, and every lookup lists every entry point of a group)."""
    if dist is None:
        return "?"
    path = getattr(dist, "_path", None)
    try:
        key = (str(path), path.stat().st_mtime) if path is not None else None
    except (OSError, AttributeError):
        key = None
    if key is not None and key in _DIST_NAMES:
        return _DIST_NAMES[key]
    name = dist.name
    if key is not None:
        _DIST_NAMES[key] = name
    return name


def describe(obj: Any) -> str:
    """One-line description: the first line of the object's docstring."""
    doc = getattr(obj, "description", None) or (obj.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


class Registry:
    """Named components of one kind; see module docstring."""

    def __init__(self, kind: str):
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}; known: {KINDS}")
        self.kind = kind
        self.group = GROUP_PREFIX + kind
        self._runtime: dict[str, Entry] = {}

    # -- registration -------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator registering ``obj`` in this process under ``name``."""

        def deco(obj: Any) -> Any:
            key = name or getattr(obj, "name", None) or obj.__name__
            target = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', key)}"
            self._runtime[key] = Entry(key, self.kind, "<runtime>", target, _obj=obj)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        self._runtime.pop(name, None)

    # -- lookup -------------------------------------------------------------
    def entries(self) -> dict[str, Entry]:
        """All entries; raises ConfigError when two distributions claim one name."""
        found: dict[str, list[Entry]] = {}
        for ep in md.entry_points(group=self.group):
            src = _dist_name(getattr(ep, "dist", None))
            e = Entry(ep.name, self.kind, src, ep.value, _ep=ep)
            lst = found.setdefault(ep.name, [])
            if all(x.source != src for x in lst):  # same dist seen twice (e.g. editable + build)
                lst.append(e)
        out: dict[str, Entry] = {}
        for key, lst in found.items():
            if len(lst) > 1:
                raise ConfigError(
                    f"{self.kind[:-1]} name {key!r} is declared by several distributions: "
                    f"{', '.join(f'{e.source} ({e.target})' for e in lst)}. "
                    "Uninstall one of them or rename its entry point."
                )
            out[key] = lst[0]
        for key, e in self._runtime.items():
            if key in out and out[key].target != e.target:
                raise ConfigError(
                    f"{self.kind[:-1]} name {key!r} is registered at runtime ({e.target}) "
                    f"and declared by distribution {out[key].source!r} ({out[key].target})."
                )
            out.setdefault(key, e)
        return out

    def names(self) -> list[str]:
        return sorted(self.entries())

    def _match(self, name: Any, ents: dict[str, Entry]) -> str | None:
        """The registered name ``name`` refers to: itself, else the one name equal to it
        ignoring case and surrounding blanks (None when there is none)."""
        if not isinstance(name, str):
            return None
        if name in ents:
            return name
        text = name.strip().lower()
        hits = [k for k in ents if k.lower() == text]
        if len(hits) > 1:
            raise ConfigError(f"{name!r} matches several {self.kind} that differ only in "
                              f"case ({', '.join(sorted(hits))}); spell it exactly.")
        return hits[0] if hits else None

    def canonical(self, name: str) -> str:
        """The registered spelling of ``name`` (lookups ignore case: "CMI" -> "cmi");
        UnknownNameError (known names, closest match) when none fits."""
        ents = self.entries()
        key = self._match(name, ents)
        if key is None:
            raise UnknownNameError(self.kind[:-1], str(name), list(ents))
        return key

    def entry(self, name: str) -> Entry:
        """The entry of ``name`` (case-insensitive; see :meth:`canonical`)."""
        ents = self.entries()
        key = self._match(name, ents)
        if key is None:
            raise UnknownNameError(self.kind[:-1], str(name), list(ents))
        return ents[key]

    def get(self, name: str) -> Any:
        """The registered object (class or factory) for ``name``, imported on first use."""
        return self.entry(name).load()

    def __contains__(self, name: str) -> bool:
        return self._match(name, self.entries()) is not None


SYNTHESIZERS = Registry("synthesizers")
REGULARIZERS = Registry("regularizers")
TEACHERS = Registry("teachers")
STUDENTS = Registry("students")
DATASETS = Registry("datasets")
REGISTRIES = {r.kind: r for r in (SYNTHESIZERS, REGULARIZERS, TEACHERS, STUDENTS, DATASETS)}


def registry(kind: str) -> Registry:
    key = kind.strip().lower() if isinstance(kind, str) else kind
    if key not in REGISTRIES:
        raise UnknownNameError("registry kind", str(kind), list(REGISTRIES))
    return REGISTRIES[key]
