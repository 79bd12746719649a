"""Run provenance: seeding, device choice, code version, package versions, memory.

Everything a result row needs to say *what* produced it (git commit, package versions,
device) and to be reproduced (one seed for python, numpy and torch; deterministic
algorithms on CPU, where a fixed seed then gives identical numbers).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as md
import os
import platform
import random
import resource
import subprocess
import zlib
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .allocator import malloc_state
from .errors import ConfigError

#: Distributions whose versions every result records (missing ones are recorded as None).
TRACKED_PACKAGES = ("torch", "torchvision", "spikingjelly", "optuna", "numpy", "stars-dfkd")


def set_seed(seed: int, device: str | torch.device = "cpu") -> None:
    """Seed python's ``random``, numpy and torch (all devices) with ``seed``.

    On CPU also switch torch to deterministic algorithms (``warn_only=True``: an op without
    a deterministic kernel warns instead of failing), so one seed gives identical numbers.
    On CUDA this is not forced (it needs ``CUBLAS_WORKSPACE_CONFIG`` and costs speed); GPU
    runs are reproducible only up to floating-point reduction order.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if torch.device(device).type == "cpu":
        deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def deterministic_algorithms(mode: bool = True) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=True)`` without its import of
    ``torch._inductor`` (several seconds at every process start); the inductor flag is set
    only when inductor is already loaded (nothing here uses torch.compile)."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # a future torch without the private setter
        torch.use_deterministic_algorithms(mode, warn_only=True)
        return
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = mode
    setter(mode, warn_only=True)


@contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block without disturbing the caller's random streams (python, numpy, torch).

    Used around teacher training, so a run's student and synthesis draw the same numbers
    whether its teacher was trained now or read from the cache.
    """
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def rng_state() -> dict[str, Any]:
    """The random streams' states (python, numpy, torch CPU and every CUDA device), for a
    checkpoint; :func:`set_rng_state` restores them, so a resumed run draws the same numbers."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class PrivateStream:
    """A component's own random stream, so that its draws never shift the run's.

    ``with stream:`` swaps the global random states (python, numpy, torch CPU and CUDA) for
    the stream's and restores the caller's on exit. A with/without-regularizer pair of one
    seed then shares every draw of the synthesizer and of distillation (common random
    numbers): their difference is the regularizer's effect, not also that of a shifted
    stream. Seeded on first use from the run's torch seed (``torch.initial_seed()``) and
    ``name``, so a run draws the same numbers each time; ``state_dict`` / ``load_state_dict``
    carry it through a checkpoint. Not re-entrant."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._state: dict[str, Any] | None = None
        self._caller: dict[str, Any] | None = None

    def __enter__(self) -> "PrivateStream":
        self._caller = rng_state()
        if self._state is None:
            seed = (torch.initial_seed() * 1_000_003 + zlib.crc32(self.name.encode())) % 2**63
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
        else:
            set_rng_state(self._state)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._state = rng_state()
        set_rng_state(self._caller)
        self._caller = None

    def state_dict(self) -> dict[str, Any] | None:
        return self._state

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self._state = state


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda if available, else cpu; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``.

    Raises ConfigError when CUDA is asked for and not available (or N is out of range).
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r} was asked for but CUDA is not available here "
                f"(torch {torch.__version__}, torch.version.cuda={torch.version.cuda}). "
                "Use --device cpu (or auto), or run on a machine with an NVIDIA GPU and a CUDA build of torch."
            )
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible "
                f"(indices 0..{torch.cuda.device_count() - 1})."
            )
        return dev
    raise ConfigError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")


def _repo_root() -> Path:
    """The directory holding the ``baselines`` package (the checkout for editable installs)."""
    return Path(__file__).resolve().parent.parent


#: environment variable naming the commit of a tree that travels without its own .git
GIT_COMMIT_ENV = "DFKD_GIT_COMMIT"

#: top-level directories of a checkout that hold benchmark outputs, not code
OUTPUT_DIRS = ("results", "runs")


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """Commit hash of the checkout this code runs from, ``"<hash>-dirty"`` when files have
    uncommitted changes (tracked files, or new files not ignored by .gitignore) outside the
    output directories (:data:`OUTPUT_DIRS`);
    None outside a git checkout (e.g. an installed wheel), without commits, or without git.

    The checkout must be the one holding this package: a site-packages directory that
    happens to lie inside some other repository (a ``.venv`` in a checkout) does not count.

    ``$DFKD_GIT_COMMIT``, when set, is returned as is for this package's own checkout
    (``path`` None): a copy of the tree sent to another machine may carry no ``.git``, or a
    stale one (the GPU session's copy reported the previous commit, "-dirty"), so the sender
    names the commit (``scripts/gpu-session.sh`` reads it from ``.gpu/COMMIT``).
    """
    if path is None and os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV].strip()
    root = Path(path) if path is not None else _repo_root()

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                 timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return None
    head = git("rev-parse", "HEAD")
    if not head:
        return None  # a repository without commits
    # benchmark outputs (committed results/, uncommitted runs/) change with every run and
    # are not the code that made it: they do not make a checkout dirty
    status = git("status", "--porcelain", "--", ".", *(f":(exclude){d}" for d in OUTPUT_DIRS))
    return f"{head}-dirty" if status else head


def package_versions() -> dict[str, Any]:
    """Versions of the packages a result depends on, plus python, the platform and torch's
    intra-op thread count (``torch_threads``): on a CPU the same seed gives the same numbers
    only at the same thread count, since the thread count sets the order in which
    convolutions and reductions sum (the quick preset's real-KD job: 50.80% with one thread,
    50.40% with two)."""
    out: dict[str, Any] = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    out["cuda"] = torch.version.cuda
    out["platform"] = platform.platform(terse=True)
    out["torch_threads"] = torch.get_num_threads()
    out["cpu"] = cpu_identity()
    out["malloc"] = malloc_state()
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


#: environment variables that cap the instruction set of torch's CPU kernels (ATen, oneDNN, MKL)
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS")


def cpu_identity() -> str:
    """The CPU a result was computed on, as far as it decides the numbers: model name, family /
    model / stepping (``/proc/cpuinfo``; else ``platform.processor()``), the instruction set
    torch's CPU kernels dispatch to, and any variable in :data:`ISA_CAPS` that caps it.

    On a CPU the same seed gives the same numbers on the same CPU model only: the instruction
    set and the cache sizes pick oneDNN's and MKL's kernels and blockings, hence the order of
    the sums. Measured (smallcnn teacher, fashion-mnist-28, 5 epochs, seed 0, one thread, the
    same wheels): 90.55% on the AVX2 EPYC of sessions 3-10, 90.53% on an AVX-512 EPYC
    (family 25, model 17), 90.62% on that one with its kernels capped at AVX2; so a cap does
    not make two CPU models agree, and rows record the CPU instead."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')}, stepping {fields.get('stepping', '?')})"
    try:
        name += f"; kernels {torch.backends.cpu.get_cpu_capability()}"
    except (AttributeError, RuntimeError):
        pass
    caps = [f"{k}={os.environ[k]}" for k in ISA_CAPS if os.environ.get(k)]
    return name + (f"; {', '.join(caps)}" if caps else "")


def weights_digest(model: torch.nn.Module, length: int = 16) -> str:
    """SHA-256 (first ``length`` hex digits) of a model's state dict: every entry's name, dtype,
    shape and bytes, in name order. Two rows with one digest used bit-identical weights,
    whatever the checkpoint's path or file format; a teacher retrained on a GPU (not
    bit-reproducible) gets another digest even under the same path and seed."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``getrusage`` ru_maxrss)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds (``2025-01-31T12:00:00+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["weights_digest", "set_seed", "rng_state", "set_rng_state", "PrivateStream", "deterministic_algorithms", "preserve_rng", "pick_device", "git_commit", "GIT_COMMIT_ENV", "package_versions", "cpu_identity",
           "peak_rss_mb", "now_iso", "TRACKED_PACKAGES"]
