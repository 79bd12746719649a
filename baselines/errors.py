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
        close = closest(name, self.known)
        hint = f" Did you mean {close!r}?" if close else ""
        super().__init__(
            f"unknown {kind} {name!r}.{hint} Known {plural(kind)}: {', '.join(self.known) or '(none)'}."
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


#: similarity (difflib ratio of the lower-cased names) below which no name is suggested
SUGGEST_CUTOFF = 0.5


def closest(name: str, known) -> str | None:
    """The known name closest to ``name``, compared case-insensitively (a name that differs
    only in case wins); None when nothing is known or nothing is similar enough to suggest
    (difflib ratio < :data:`SUGGEST_CUTOFF`; a known name containing ``name`` or contained
    in it still counts)."""
    known = sorted(str(k) for k in known)
    text = str(name).strip().lower()
    lower = {}
    for k in known:
        lower.setdefault(k.lower(), k)
    if text in lower:
        return lower[text]
    m = difflib.get_close_matches(text, list(lower), n=1, cutoff=SUGGEST_CUTOFF)
    if m:
        return lower[m[0]]
    if len(text) >= 3:
        subs = [k for k in lower if text in k or (len(k) >= 3 and k in text)]
        if subs:
            return lower[min(subs, key=lambda k: (abs(len(k) - len(text)), k))]
    return None


def plural(kind: str) -> str:
    """Plural of a kind phrase: the noun before a qualifier (" in ", " for ", " of ")
    takes the plural: "key in [run]" -> "keys in [run]", "synthesizer" -> "synthesizers"."""
    head, qual = kind, ""
    for sep in (" in ", " for ", " of "):
        i = kind.find(sep)
        if i > 0 and (not qual or i < len(head)):
            head, qual = kind[:i], kind[i:]
    words = head.rsplit(" ", 1)
    noun = words[-1]
    if noun.endswith(("s", "x", "ch", "sh")):
        noun += "es"
    elif noun.endswith("y") and len(noun) > 1 and noun[-2].lower() not in "aeiou":
        noun = noun[:-1] + "ies"
    elif noun:
        noun += "s"
    return " ".join(words[:-1] + [noun]) + qual
