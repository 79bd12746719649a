"""Mixed precision (``run.precision``): autocast contexts and the fp16 gradient scaler.

``fp32`` (default) runs everything in float32. ``bf16`` autocasts the KD step, the
synthesis forward passes and the evaluation to bfloat16 (CPU through
``torch.autocast("cpu")``, CUDA through ``torch.autocast("cuda")``). ``fp16`` is CUDA only:
the KD step and evaluation autocast to float16 with a ``torch.amp.GradScaler`` on the KD
loss; synthesis stays float32 (the synthesizers' own optimizers take no scaler, and
unscaled float16 image gradients underflow).

Synthesis autocasts with the weight-cast cache off (``cache_enabled=False``): autocast caches
the low-precision copy of every leaf tensor that requires grad for as long as its context is
open, and ``synthesize()`` runs its whole inner optimization inside one context, so with the
cache a generator's (or a latent's) in-place optimizer updates never reached its forward pass
and synthesis optimized nothing (measured: CMI in bf16 on CPU kept its BN loss at the first
step's 11.5 for the whole run and distilled a 16% student; 72% in fp32).

Losses are computed in float32 (logits are cast up before the KL). On CPUs without native
bfloat16 (e.g. AVX2-only AMD EPYC) bf16 is much *slower* than fp32 (measured ~10x for the
spiking student: ``python -m benchmarks.spiking_speed --precision bf16``); it pays only on
GPUs and CPUs with AMX/AVX512-BF16 (on an AVX512-BF16 EPYC: 1.95x on the eager 32x32
training step, 1.1x on the compiled 28x28 one, 1.22-1.32x per evidence job).
:func:`distill` warns when bf16 is asked for on a CPU whose ``/proc/cpuinfo`` shows no
native bfloat16 (:func:`slow_precision_warning`).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str | None = None) -> None:
    """ConfigError for an unknown precision, or fp16 on a CPU device."""
    if precision not in PRECISIONS:
        raise ConfigError(f"run.precision = {precision!r}: use one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" and device is not None and torch.device(device).type != "cuda":
        raise ConfigError("run.precision = 'fp16' needs a CUDA device (float16 autocast on CPU is not "
                          "supported for training); use 'bf16' or 'fp32' on CPU.")


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16 / AMX, arm64 BF16


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU computes bfloat16 natively, from the ``flags`` / ``Features`` lines of
    ``/proc/cpuinfo`` (or the text given); None where that file does not exist (not Linux)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if not flags:
        return None
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def slow_precision_warning(precision: str, device: torch.device | str,
                           cpuinfo: str | None = None) -> str | None:
    """What to tell a user who asks for bf16 on a CPU without native bfloat16 (there autocast
    emulates it: the spiking step was about 10x slower than fp32 on an AVX2-only EPYC), else
    None (fp32, CUDA, a native-bf16 CPU, or a CPU we cannot inspect)."""
    if precision != "bf16" or torch.device(device).type != "cpu":
        return None
    if cpu_has_native_bf16(cpuinfo) is not False:
        return None
    return ("run.precision = 'bf16' on a CPU without native bfloat16 (no avx512_bf16 / amx_bf16 / "
            "bf16 flag in /proc/cpuinfo): autocast emulates it, measured about 10x slower than fp32 "
            "for the spiking student on an AVX2-only EPYC; use run.precision = 'fp32' here, or "
            "check with python -m benchmarks.spiking_speed --precision fp32,bf16.")


def autocast(precision: str, device: torch.device | str, where: str = "kd") -> Any:
    """The autocast context of ``precision`` on ``device`` for ``where`` ("kd", "eval" or
    "synthesis"); a null context for fp32 (and for fp16 synthesis, see module docstring).
    Synthesis gets no cast cache: its optimizer steps run inside the context."""
    if precision == "fp32" or (precision == "fp16" and where == "synthesis"):
        return contextlib.nullcontext()
    dev = torch.device(device).type
    return torch.autocast(device_type="cuda" if dev == "cuda" else "cpu", dtype=_DTYPES[precision],
                          cache_enabled=where != "synthesis")


def grad_scaler(precision: str, device: torch.device | str) -> Any:
    """A GradScaler for fp16 on CUDA, else None (bf16 and fp32 need no loss scaling)."""
    if precision != "fp16" or torch.device(device).type != "cuda":
        return None
    return torch.amp.GradScaler("cuda")


__all__ = ["PRECISIONS", "check_precision", "autocast", "grad_scaler", "cpu_has_native_bf16",
           "slow_precision_warning"]
