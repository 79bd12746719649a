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

``"compiled-cl"`` adds three things around the same compiled recurrence (a training step
of spiking_smallcnn 1.15-1.2x faster than ``"compiled"``, measured side by side in
``benchmarks/spiking_speed.py``):

- channels_last convolutions: the student's conv weights and input are converted to
  ``torch.channels_last`` (:func:`memory_format`), so oneDNN runs its NHWC kernels instead
  of reordering every activation to its blocked layout and back (oneDNN's verbose log: the
  reorders were about a third of a convolution's backward here). The neuron permutes a
  channels_last ``[T, N, C, H, W]`` to its memory order and runs the recurrence on a flat
  ``[T, M]`` view of it (:func:`flat_view`; elementwise, so the same result), so no copy is
  made and one compiled graph serves every stage's shape. The convolutions then sum in
  another order, so spikes are *not* bit-identical to the eager path:
  ``tests/test_neuron_backend.py`` bounds the spike mismatch and the logit drift.
- the stem's time broadcast (``encode_once``: one conv+BN output expanded over T with a
  zero stride, :func:`unbroadcast`) is passed to the compiled recurrence unexpanded, so
  the backward's sum of the T input gradients happens in the recurrence's own loop.
- the head's gradient is handed back channels_last (:func:`grad_like_input`), so the last
  max-pool's backward does not convert its tensors to NCHW and back.

None of this changes what the library's recurrence computes: on the same input currents
its spikes are bit-identical to ``"compiled"`` and ``"eager"`` (tested).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

BACKENDS = ("eager", "compiled", "compiled-cl")


def _lif(x_seq, v, tau: float, decay_input: bool, v_threshold: float, v_reset, sg, detach_reset: bool):
    from spikingjelly.activation_based import functional

    spikes, v, _ = functional.lif_multi_step(x_seq, v, tau, decay_input, v_threshold, v_reset, sg,
                                             detach_reset, False)
    return spikes, v


def _if(x_seq, v, v_threshold: float, v_reset, sg, detach_reset: bool):
    from spikingjelly.activation_based import functional

    spikes, v, _ = functional.if_multi_step(x_seq, v, v_threshold, v_reset, sg, detach_reset, False)
    return spikes, v


# compiled-cl's entry points: separate functions (code objects), so their graphs neither
# count against the recompile limit of ``compiled``'s _lif / _if nor share their guards.
# *_flat: the recurrence on a flat [T, M] view; *_steps: the same current [M] at every one
# of ``steps`` steps (the stem under encode_once), expanded inside the graph, so the
# backward sums the T gradients in its own loop.
def _lif_flat(x, v, tau: float, decay_input: bool, v_threshold: float, v_reset, sg, detach_reset: bool):
    return _lif(x, v, tau, decay_input, v_threshold, v_reset, sg, detach_reset)


def _if_flat(x, v, v_threshold: float, v_reset, sg, detach_reset: bool):
    return _if(x, v, v_threshold, v_reset, sg, detach_reset)


def _lif_steps(x, v, tau: float, decay_input: bool, v_threshold: float, v_reset, sg, detach_reset: bool,
               steps: int):
    return _lif(x.unsqueeze(0).expand(steps, *x.shape), v, tau, decay_input, v_threshold, v_reset, sg,
                detach_reset)


def _if_steps(x, v, v_threshold: float, v_reset, sg, detach_reset: bool, steps: int):
    return _if(x.unsqueeze(0).expand(steps, *x.shape), v, v_threshold, v_reset, sg, detach_reset)


@lru_cache(maxsize=None)
def _compiled(fn_name: str):
    fn = {"lif": _lif, "if": _if, "lif-flat": _lif_flat, "if-flat": _if_flat, "lif-steps": _lif_steps,
          "if-steps": _if_steps}[fn_name]
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


#: a channels_last [N, C, H, W] / [T, N, C, H, W] permuted to its memory order, and back
_TO_MEMORY_ORDER = {4: (0, 2, 3, 1), 5: (0, 1, 3, 4, 2)}
_FROM_MEMORY_ORDER = {4: (0, 3, 1, 2), 5: (0, 1, 4, 2, 3)}


def _is_channels_last(x0: torch.Tensor) -> bool:
    """``x0`` ([N, C, H, W]) is laid out channels_last, not (also) contiguous."""
    return (x0.dim() == 4 and x0.shape[1] > 1 and not x0.is_contiguous()
            and x0.is_contiguous(memory_format=torch.channels_last))


def unbroadcast(x_seq: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(x, T)`` when ``x_seq`` [T, N, ...] is one tensor ``x`` [N, ...] repeated over T by a
    zero-stride view (``encode_once``'s stem output), else ``(x_seq, 0)``. ``x`` is a view
    of the tensor autograd knows (the view's base), so its gradient is the sum over T."""
    base = x_seq._base
    if (x_seq.dim() < 2 or x_seq.shape[0] < 2 or x_seq.stride(0) != 0 or base is None
            or base.data_ptr() != x_seq.data_ptr() or base.numel() != x_seq[0].numel()):
        return x_seq, 0
    try:
        x = base.view(x_seq.shape[1:])
    except RuntimeError:
        return x_seq, 0
    return (x, int(x_seq.shape[0])) if x.stride() == x_seq.stride()[1:] else (x_seq, 0)


def flat_view(x: torch.Tensor, steps: int) -> tuple[torch.Tensor, tuple | None, tuple]:
    """``x`` ([T, N, ...], or one step's [N, ...] when ``steps``) as a [T, M] (or [M]) view
    in memory order, with the permutation used (channels_last) and the per-step shape in
    that order; ``x`` itself (permutation None, shape ()) when no such view exists. The
    recurrence is elementwise, so it runs on the view unchanged, and the compiled graph
    sees one flat shape whatever the layout and sizes (no recompiles per stage)."""
    x0 = x if steps else x[0]
    perm = _TO_MEMORY_ORDER[x.dim()] if _is_channels_last(x0) else None
    xp = x.permute(perm) if perm else x
    if not xp.is_contiguous():
        return x, None, ()
    shape = tuple(xp.shape if steps else xp.shape[1:])
    return (xp.reshape(-1) if steps else xp.reshape(xp.shape[0], -1)), perm, shape


class _CompiledMixin:
    """multi_step_forward through the compiled library function when it applies."""

    _kind: str = "lif"
    #: compiled-cl: the recurrence on a flat view in memory order, the stem's broadcast unexpanded
    _layout_aware: bool = False

    def _use_compiled(self, x_seq: torch.Tensor, args: tuple, kwargs: dict) -> bool:
        return (x_seq.device.type == "cpu" and not args and not kwargs and not self.store_v_seq
                and self._neuron_precision is None and x_seq.dtype == torch.float32)

    def multi_step_forward(self, x_seq: torch.Tensor, *args: Any, **kwargs: Any):
        if not self._use_compiled(x_seq, args, kwargs):
            return super().multi_step_forward(x_seq, *args, **kwargs)
        v = next(iter(self._memories.values()))
        x, steps, perm, shape = x_seq, 0, None, ()
        if self._layout_aware:
            x, steps = unbroadcast(x_seq)
            x, perm, shape = flat_view(x, steps)
            if shape and isinstance(v, torch.Tensor) and v.numel() == x.shape[-1]:
                v = (v.permute(_TO_MEMORY_ORDER[v.dim()]) if perm and v.dim() == 4 else v).reshape(-1)
        v = self.materialize_states((x,), (v,), "s" if steps else "m")[0]
        sg, more = self.surrogate_function, ((steps,) if steps else ())
        fn = _compiled(self._kind + ("-steps" if steps else "-flat" if shape else ""))
        if self._kind == "lif":
            spikes, v = fn(x, v, float(self.tau), bool(self.decay_input), float(self.v_threshold),
                           self.v_reset, sg, bool(self.detach_reset), *more)
        else:
            spikes, v = fn(x, v, float(self.v_threshold), self.v_reset, sg, bool(self.detach_reset), *more)
        if shape:
            spikes, v = spikes.view(spikes.shape[0], *shape), v.view(shape)
        if perm:
            spikes, v = spikes.permute(_FROM_MEMORY_ORDER[5]), v.permute(_FROM_MEMORY_ORDER[4])
        self._memories["v"] = v
        self.v_seq = None
        return spikes


class _GradLikeInput(torch.autograd.Function):
    """The identity, whose backward lays the gradient out like the input (one copy)."""

    @staticmethod
    def forward(ctx, x):
        ctx.like = torch.empty_like(x, device="meta")
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        like = ctx.like
        if g.stride() == like.stride():
            return g
        return torch.empty_strided(like.shape, like.stride(), dtype=g.dtype, device=g.device).copy_(g)


def grad_like_input(x: torch.Tensor) -> torch.Tensor:
    """``x``, with its gradient laid out as ``x`` is. Under compiled-cl the head's global mean
    sends back a gradient expanded over H, W (zero strides), which the last max-pool's
    backward would take as NCHW: it then copied its channels_last input and output both ways
    (~20 ms of a 0.4 s step); one small copy of the gradient here avoids that."""
    return _GradLikeInput.apply(x) if x.requires_grad and torch.is_grad_enabled() else x


@lru_cache(maxsize=None)
def compiled(cls: type, layout_aware: bool = False) -> type:
    """The compiled-CPU subclass of SpikingJelly's ``LIFNode`` or ``IFNode`` (else ``cls``);
    ``layout_aware`` for the ``compiled-cl`` backend."""
    from spikingjelly.activation_based import neuron

    if cls is neuron.LIFNode:
        kind = "lif"
    elif cls is neuron.IFNode:
        kind = "if"
    else:
        return cls
    name = f"Compiled{cls.__name__}" + ("CL" if layout_aware else "")
    return type(name, (_CompiledMixin, cls), {"_kind": kind, "_layout_aware": bool(layout_aware),
                                              "__module__": __name__})


def memory_format(backend: str) -> torch.memory_format:
    """The memory format a student built for ``backend`` keeps its convolutions in."""
    return torch.channels_last if str(backend).lower() == "compiled-cl" else torch.contiguous_format


__all__ = ["BACKENDS", "compiled", "flat_view", "grad_like_input", "memory_format", "shared_surrogate",
           "unbroadcast"]
