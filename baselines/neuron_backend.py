"""A compiled CPU path for SpikingJelly's multi-step LIF / IF recurrences.

SpikingJelly 2.0 runs its neurons on CUDA with fused Triton/native kernels, but on the CPU
it runs a Torch reference loop over T whose many small elementwise ops (and their
autograd records) cost about as much as the convolutions of a small spiking CNN. Here the
*same* library function (``functional.lif_multi_step`` / ``if_multi_step``, same surrogate
object) is wrapped in ``torch.compile`` (inductor, dynamic shapes), which fuses the
recurrence and its backward into a few C++ loops: spikes are bit-identical to the eager
path (tested) and the neuron's fwd+bwd was 2.7-7x faster on this project's 2-core CPU
(``python -m benchmarks.spiking_speed``). Nothing of SpikingJelly is copied or patched:
:func:`compiled` returns a subclass of the library's own ``LIFNode`` / ``IFNode`` whose
``multi_step_forward`` calls the compiled library function on CPU tensors and defers to
the library otherwise (CUDA, ``store_v_seq``, reduced neuron precision).

Cost: inductor compiles once per process and shape family (~15-40 s on this CPU, cached
on disk under ``$TORCHINDUCTOR_CACHE_DIR`` so later processes start faster); it needs a
C++ compiler. ``run.neuron_backend = "eager"`` (the default) avoids both.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

BACKENDS = ("eager", "compiled")


def _lif(x_seq, v, tau: float, decay_input: bool, v_threshold: float, v_reset, sg, detach_reset: bool):
    from spikingjelly.activation_based import functional

    spikes, v, _ = functional.lif_multi_step(x_seq, v, tau, decay_input, v_threshold, v_reset, sg,
                                             detach_reset, False)
    return spikes, v


def _if(x_seq, v, v_threshold: float, v_reset, sg, detach_reset: bool):
    from spikingjelly.activation_based import functional

    spikes, v, _ = functional.if_multi_step(x_seq, v, v_threshold, v_reset, sg, detach_reset, False)
    return spikes, v


@lru_cache(maxsize=None)
def _compiled(fn_name: str):
    fn = {"lif": _lif, "if": _if}[fn_name]
    # The synthesizers' gradient probes backpropagate with retain_graph=True, which AOT
    # autograd's donated buffers forbid; keep the saved tensors instead.
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    return torch.compile(fn, dynamic=True)


@lru_cache(maxsize=None)
def shared_surrogate(cls: type, alpha: float) -> Any:
    """One surrogate instance per (class, alpha): compiled graphs guard on the object, so
    layers sharing it share one compiled graph instead of recompiling per layer."""
    return cls(alpha=alpha)


class _CompiledMixin:
    """multi_step_forward through the compiled library function when it applies."""

    _kind: str = "lif"

    def _use_compiled(self, x_seq: torch.Tensor, args: tuple, kwargs: dict) -> bool:
        return (x_seq.device.type == "cpu" and not args and not kwargs and not self.store_v_seq
                and self._neuron_precision is None and x_seq.dtype == torch.float32)

    def multi_step_forward(self, x_seq: torch.Tensor, *args: Any, **kwargs: Any):
        if not self._use_compiled(x_seq, args, kwargs):
            return super().multi_step_forward(x_seq, *args, **kwargs)
        v = self.materialize_states((x_seq,), tuple(self._memories.values()), "m")[0]
        sg = self.surrogate_function
        if self._kind == "lif":
            spikes, v = _compiled("lif")(x_seq, v, float(self.tau), bool(self.decay_input),
                                         float(self.v_threshold), self.v_reset, sg, bool(self.detach_reset))
        else:
            spikes, v = _compiled("if")(x_seq, v, float(self.v_threshold), self.v_reset, sg,
                                        bool(self.detach_reset))
        self._memories["v"] = v
        self.v_seq = None
        return spikes


@lru_cache(maxsize=None)
def compiled(cls: type) -> type:
    """The compiled-CPU subclass of SpikingJelly's ``LIFNode`` or ``IFNode`` (else ``cls``)."""
    from spikingjelly.activation_based import neuron

    if cls is neuron.LIFNode:
        kind = "lif"
    elif cls is neuron.IFNode:
        kind = "if"
    else:
        return cls
    return type(f"Compiled{cls.__name__}", (_CompiledMixin, cls), {"_kind": kind, "__module__": __name__})


__all__ = ["BACKENDS", "compiled", "shared_surrogate"]
