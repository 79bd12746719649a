"""glibc malloc settings that keep a training step's activations out of fresh ``mmap``s.

PyTorch's CPU allocator passes every tensor to the C library (``posix_memalign`` / ``free``,
64-byte aligned, no caching). glibc serves a block over ``M_MMAP_THRESHOLD`` with a fresh
``mmap`` and unmaps it on ``free``; its dynamic threshold rises to the largest block freed,
but the heap's top is still given back whenever more than ``M_TRIM_THRESHOLD`` (twice that
threshold) is free at once, which a training step does every time it releases its
activations. The next step then touches new pages, and the kernel zeroes each on its first
touch: a step of the spiking student (activations ``[T*N, C, H, W]`` of 6-26 MB) spent
0.03-0.10 s of system time in those page faults, 15,000-32,000 per step (one thread, batch
64, T = 4; ``python -m benchmarks.malloc_speed``). The CPU performance guides of PyTorch
and oneDNN advise a caching allocator (jemalloc, tcmalloc via ``LD_PRELOAD``) for this;
:func:`tune_malloc` gets the same effect from glibc itself, without a new dependency or a
restart, by ``mallopt``:

- ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's maximum on 64-bit): blocks up to that come from the
  heap (a fixed threshold also switches the dynamic one off);
- ``M_TRIM_THRESHOLD`` = 1 GiB and ``M_TOP_PAD`` = 64 MiB: freed heap memory is kept for the
  next step instead of being given back and faulted in again.

What it costs: the heap keeps what a step freed, so the resident size stays near its peak
between steps (it was near it during every step anyway); ``malloc_speed`` prints the peak
RSS both ways. What it does not change: the numbers. Tensors stay 64-byte aligned and the
kernels do not depend on where the allocator puts them (tested: a few training steps give
bit-identical weights either way).

``DFKD_MALLOC=default`` in the environment leaves glibc's settings alone; on a C library
other than glibc (macOS, musl) nothing is done. Rows record which applied
(``versions.malloc``).
"""
from __future__ import annotations

import ctypes
import os
import sys

#: the environment variable that opts out (``default``) of :func:`tune_malloc`
ENV = "DFKD_MALLOC"

# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3

#: the settings :func:`tune_malloc` applies: (name, mallopt parameter, value in bytes)
SETTINGS = (
    ("mmap_threshold", M_MMAP_THRESHOLD, 32 * 1024 * 1024),
    ("trim_threshold", M_TRIM_THRESHOLD, 1024 * 1024 * 1024),
    ("top_pad", M_TOP_PAD, 64 * 1024 * 1024),
)

_state: str | None = None  # what this process's last tune_malloc call did


def _glibc():
    """The process's C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def tune_malloc() -> str:
    """Apply :data:`SETTINGS` to this process's glibc malloc, unless ``DFKD_MALLOC=default``;
    return what applies, as recorded in rows: ``"glibc mmap_threshold=... ..."``,
    ``"default (DFKD_MALLOC=default)"`` or ``"default (not glibc)"``. Idempotent; affects
    allocations made after the call."""
    global _state
    choice = os.environ.get(ENV, "").strip().lower()
    if choice not in ("", "tuned", "default"):
        from .errors import ConfigError

        raise ConfigError(f"{ENV}={os.environ[ENV]!r} is not a malloc setting; use 'default' (glibc's own "
                          f"settings) or 'tuned' (the default: {describe_settings()})")
    if choice == "default":
        _state = f"default ({ENV}=default)"
        return _state
    libc = _glibc()
    if libc is None:
        _state = "default (not glibc)"
        return _state
    failed = [name for name, param, value in SETTINGS if libc.mallopt(param, value) != 1]
    _state = ("glibc " + describe_settings()) if not failed else f"default (mallopt refused {', '.join(failed)})"
    return _state


def describe_settings() -> str:
    return " ".join(f"{name}={value}" for name, _, value in SETTINGS)


def malloc_state() -> str:
    """What :func:`tune_malloc` did in this process (``"default"`` when it was not called)."""
    return _state or "default"


__all__ = ["ENV", "SETTINGS", "describe_settings", "malloc_state", "tune_malloc"]
