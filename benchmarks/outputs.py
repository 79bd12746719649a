"""Output locations: checked before compute, written so that nothing computed is lost.

* :func:`check_out_dir_writable` refuses (ConfigError, before any compute) an output path
  that is an existing file, lies in a directory that cannot be written (read-only, no
  permission), or has a name longer than the file system allows.
* :func:`write_or_keep` writes a JSON result atomically; when the final location cannot be
  written after compute (disk full, read-only, removed), the result goes to a fallback
  folder (``$DFKD_CACHE/orphaned-results``, else ``~/.cache/stars-dfkd/orphaned-results``,
  else the system temp dir) and the returned message names both places.
* :func:`bench_lock` is ``dfkd bench``'s exclusive lock on its output directory
  (``fcntl.flock`` on ``OUT/.bench.lock``): a second bench on the same directory exits with
  a message naming the holder's PID instead of waiting.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from baselines.errors import ConfigError

from .store import atomic_write_json

LOCK_NAME = ".bench.lock"
ORPHANS = "orphaned-results"


def _name_max(existing: Path) -> int:
    try:
        return int(os.pathconf(existing, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + "..."


def check_out_dir_writable(out: str | os.PathLike, flag: str = "--out") -> Path:
    """Create ``out`` (a directory) and a probe file in it, then remove both; ConfigError naming
    the path and what to do when that fails. Runs before compute, so no result is computed in vain."""
    path = Path(out).expanduser()
    chain = [path.absolute(), *path.absolute().parents]
    missing = [p for p in chain if not os.path.exists(p)]  # made by the probe, removed after it
    limit = _name_max(chain[len(missing)])
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise ConfigError(f"{flag} {_short(str(path), 80)!r}: the name {_short(part, 40)!r} is "
                              f"{len(os.fsencode(part))} bytes long, more than the file system allows ({limit}); "
                              "choose a shorter name.")
    if os.path.exists(path) and not path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is an existing file, not a directory; pass the path of a "
                          "directory (new or existing) to write the results into.")
    probe = path / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "w") as fh:
            fh.write("probe\n")
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(f"{flag} {str(path)!r} cannot be written ({why}); pass a directory you can write to "
                          "(not read-only, with free space).") from exc
    finally:  # leave no trace: the folders are made again when something is written
        with contextlib.suppress(OSError):
            probe.unlink()
        for p in missing:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()
    return path


def orphan_dirs() -> list[Path]:
    """Fallback folders for results whose final location could not be written, in order."""
    env = os.environ.get("DFKD_CACHE")
    base = Path(env).expanduser() if env else Path("~/.cache/stars-dfkd").expanduser()
    return [base / ORPHANS, Path(tempfile.gettempdir()) / f"stars-dfkd-{ORPHANS}"]


def write_or_keep(path: str | os.PathLike, obj: Any, tag: str, indent: int = 1) -> tuple[Path, str | None]:
    """Write ``obj`` as JSON to ``path`` (atomically); on OSError write it to the first
    fallback folder that works, as ``<time>-<tag>-<name>``. Returns (where it is, None) or
    (the fallback file or None, a message naming the failure, the fallback and what to do)."""
    path = Path(path)
    try:
        return atomic_write_json(path, obj, indent=indent), None
    except OSError as exc:
        first = exc
    tried = []
    for d in orphan_dirs():
        dest = d / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}-{path.name}"
        try:
            return atomic_write_json(dest, obj, indent=indent), (
                f"could not write {path} ({_why(first)}); the result was saved to {dest} instead; free space "
                f"(or fix the permissions) and move it to {path}")
        except OSError as exc:
            tried.append(f"{d}: {_why(exc)}")
    return None, (f"could not write {path} ({_why(first)}), nor any fallback ({'; '.join(tried)}); the numbers "
                  "are only in this output; free space and re-run")


def _why(exc: OSError) -> str:
    return f"[Errno {exc.errno}] {os.strerror(exc.errno)}" if exc.errno else f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def bench_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``out`` (``OUT/.bench.lock``) for the block; a second holder
    gets a ConfigError naming the first one's PID (it exits, it does not wait)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield Path(out)
        return
    path = Path(out) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").split()
            raise ConfigError(f"{out} is in use by another dfkd bench (pid {holder[0] if holder else 'unknown'}, "
                              f"lock {path}); wait for it to finish (this run exits rather than waits) or pass "
                              "another --out.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield Path(out)
    finally:
        os.close(fd)  # releases the lock
