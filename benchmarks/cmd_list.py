"""``dfkd list [KIND]``: every registered name with its description and distribution."""
from __future__ import annotations

import argparse

from baselines.registry import KINDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered synthesizers, regularizers, teachers, students, datasets",
                       description="List every registered name per kind, with a one-line description "
                                   "and the distribution it comes from (entry points; third-party "
                                   "plugins included).")
    p.add_argument("kind", nargs="?", default=None, metavar="KIND",
                   help=f"one of {', '.join(KINDS)} (singular accepted); default: all")
    p.set_defaults(func=run)


def _kind(text: str) -> str:
    from baselines.errors import UnknownNameError

    t = text.strip().lower()
    for k in KINDS:
        if t in (k, k[:-1]):
            return k
    raise UnknownNameError("registry kind", text, list(KINDS))


def format_kind(kind: str) -> tuple[list[str], bool]:
    """Lines listing one registry, and whether every entry loaded."""
    from baselines.errors import DFKDError
    from baselines.registry import describe, registry

    reg = registry(kind)
    try:
        entries = reg.entries()
    except DFKDError as exc:  # e.g. the same name from two distributions
        return [f"{kind}:", f"  error: {exc}"], False
    lines, ok = [f"{kind}:"], True
    width = max((len(n) for n in entries), default=0)
    for name in sorted(entries):
        e = entries[name]
        try:
            desc = describe(e.load()) or "(no description)"
        except DFKDError as exc:
            desc, ok = f"(failed to load) {exc}", False
        lines.append(f"  {name:<{width}}  {desc}  [{e.source}]")
    if not entries:
        lines.append("  (none)")
    return lines, ok


def run(args: argparse.Namespace) -> int:
    """Print the listing; exit 0 even when a plugin fails to load (its error is listed)."""
    kinds = [_kind(args.kind)] if args.kind else list(KINDS)
    for i, kind in enumerate(kinds):
        lines, _ = format_kind(kind)
        if i:
            print()
        print("\n".join(lines))
    return 0
