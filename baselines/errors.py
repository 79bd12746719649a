"""Errors with messages a user can act on.

Every error raised on bad input derives from :class:`DFKDError`; the CLI prints its
message (what was wrong and what to do) instead of a traceback.
"""
from __future__ import annotations

import difflib


class DFKDError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(DFKDError, ValueError):
    """A configuration value, key or name is invalid (raised before compute is spent)."""


class UnknownNameError(ConfigError, KeyError):
    """A name that no registry / config section knows."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = difflib.get_close_matches(name, self.known, n=1, cutoff=0.0)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(self.known) or '(none)'}."
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class DataError(DFKDError, FileNotFoundError):
    """Dataset files missing or corrupt; the message says where we looked and how to get them."""


class CheckpointError(DFKDError):
    """A checkpoint that does not fit the model it is loaded into."""


class PluginError(DFKDError, ImportError):
    """A plugin (entry point) that failed to load; names the plugin and its distribution."""


class NonFiniteLossError(DFKDError, FloatingPointError):
    """A loss term became NaN or infinite; the run is stopped and marked failed."""

    def __init__(self, term: str, where: str, step: int, value: float):
        self.term, self.where, self.step, self.value = term, where, step, value
        super().__init__(
            f"loss term {term!r} became {value} in {where} at step {step}; the run was stopped. "
            "Lower the learning rate or that term's weight and re-run."
        )


def closest(name: str, known) -> str | None:
    """Closest known name to ``name`` (None if nothing is known)."""
    m = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.0)
    return m[0] if m else None
