"""Reading a SpikingJelly network's spiking state: membrane potentials, spikes, metrics.

:class:`MembraneRecorder` hooks every neuron (``BaseNode``) of a multi-step network for
one forward pass, keeps its input current X[T, N, ...] and output spikes S[T, N, ...], and
recomputes the pre-reset membrane potential H[t] with the neuron's own recurrence
(SpikingJelly 2.0, ``neuron.LIFNode`` with decay_input):

    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau        (LIF; IF: H = V + X)
    V[t] = S[t] * V_reset + (1 - S[t]) * H[t]                 (hard reset)
    V[t] = H[t] - S[t] * V_th                                  (soft reset, V_reset = None)

H is differentiable w.r.t. X (hence the weights and the images) and reproduces the
library's spikes exactly (S = [H >= V_th]); H is computed lazily, per layer, on first
access to ``v_pre``, or at sampled sites only (``v_pre_sample``); ``store_v_seq`` would give the post-reset V,
not H. Hooks live only inside the ``with`` block, so nobody pays when nobody records.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .spiking_state import SpikingLayerState, gather_sites, stage_of_modules


def _neuron_types() -> tuple[type, ...]:
    from spikingjelly.activation_based import neuron

    return (neuron.BaseNode,)


def neuron_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All spiking neuron modules of ``model`` with their names, in forward order."""
    types = _neuron_types()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, types)]


def membrane_recurrence(node: nn.Module, x_seq: Tensor, s_seq: Tensor) -> Tensor:
    """Pre-reset membrane H[T, N, ...] of ``node`` given its input current and spikes."""
    from spikingjelly.activation_based import neuron

    v_reset = node.v_reset
    v_th = float(node.v_threshold)
    if isinstance(node, neuron.ParametricLIFNode):
        inv_tau = node.w.sigmoid()
        tau = None
    elif hasattr(node, "tau"):
        inv_tau, tau = None, float(node.tau)
    else:  # IF
        inv_tau, tau = None, None
    decay_input = getattr(node, "decay_input", True)
    v = torch.full_like(x_seq[0], 0.0 if v_reset is None else float(v_reset))
    vr = 0.0 if v_reset is None else float(v_reset)
    hs = []
    for t in range(x_seq.shape[0]):
        x = x_seq[t]
        if tau is None and inv_tau is None:
            h = v + x
        else:
            k = inv_tau if inv_tau is not None else 1.0 / tau
            h = v + (x - (v - vr)) * k if decay_input else v - (v - vr) * k + x
        s = s_seq[t]
        if getattr(node, "detach_reset", False):
            s = s.detach()
        v = s * vr + (1 - s) * h if v_reset is not None else h - s * v_th
        hs.append(h)
    return torch.stack(hs)


class MembraneRecorder:
    """Context manager recording every neuron layer of ``model`` for one forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.records: list[tuple[str, nn.Module, Tensor, Tensor]] = []
        self.handles: list[Any] = []
        self._stage = stage_of_modules(model) if hasattr(model, "stages") else {}

    def __enter__(self) -> "MembraneRecorder":
        for name, m in neuron_layers(self.model):
            self.handles.append(m.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def fn(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]
            if module.step_mode != "m":  # single-step call: add a time axis of 1
                x, output = x.unsqueeze(0), output.unsqueeze(0)
            self.records.append((name, module, x, output))

        return fn

    def collect(self) -> list[SpikingLayerState]:
        out = []
        for name, m, x, s in self.records:
            out.append(SpikingLayerState(
                name, self._stage.get(m, 0), None, s, float(m.v_threshold),
                compute=lambda m=m, x=x, s=s: membrane_recurrence(m, x, s),
                compute_at=lambda idx, m=m, x=x, s=s: membrane_recurrence(
                    m, gather_sites(x, idx), gather_sites(s, idx))))
        return out

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.records.clear()
