"""Spiking-student metrics: firing rates and synaptic operations (the SNN energy proxy).

Synaptic operations (SOPs). A conv / linear layer whose input is a spike tensor only
accumulates weights where an input is nonzero, so per image

    SOPs = sum_layers sum_t MACs_layer x r_layer[t],

with MACs_layer the layer's dense multiply-accumulates for one time step and r_layer[t]
the fraction of nonzero input elements at step t (Merolla et al., Science 2014; the
estimate used by e.g. Zhou et al., "Spikformer", ICLR 2023). The first layer receives the
real-valued image (direct encoding), so it costs dense MACs; the image is the same at
every step, so it is counted once per image (``dense_macs_per_image``; multiply by T if
your hardware recomputes it). Every later conv / linear layer counts as SOPs, including
one fed by an average (real-valued, mostly nonzero) -- the per-layer record says whether
its input was binary. ``energy_mj_per_image`` applies the 45 nm figures of Horowitz (ISSCC
2014): 4.6 pJ per 32-bit float MAC, 0.9 pJ per accumulate.

Only module types are used (``nn.Conv1d/2d/3d``, ``nn.Linear`` and SpikingJelly neurons),
through temporary forward hooks that are removed before returning.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .hooks import ModuleHooks
from .models import SpikingLayerState
from .spiking import neuron_layers

E_MAC_PJ = 4.6  # 32-bit float multiply-accumulate, 45 nm (Horowitz, ISSCC 2014)
E_AC_PJ = 0.9  # 32-bit float accumulate, 45 nm

_OPS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def firing_rates(outputs: list[SpikingLayerState]) -> dict[str, float]:
    """Mean spike rate of every recorded layer (spikes per neuron per time step), plus "mean".

    "mean" is the rate over all recorded neurons together (total spikes / total neuron
    steps), i.e. weighted by layer size. A layer recorded twice is pooled under its name.
    """
    if not outputs:
        raise ConfigError(
            "firing_rates got no spiking records; call forward_features(x, record_spiking=True) "
            "on a spiking student."
        )
    sums: dict[str, list[float]] = {}
    for rec in outputs:
        s = rec.spikes.detach()
        acc = sums.setdefault(rec.name, [0.0, 0.0])
        acc[0] += float(s.float().sum())
        acc[1] += s.numel()
    out = {name: tot / max(n, 1) for name, (tot, n) in sums.items()}
    total = sum(v[0] for v in sums.values())
    count = sum(v[1] for v in sums.values())
    out["mean"] = total / max(count, 1)
    return out


def _fan_in(m: nn.Module) -> int:
    """Multiply-accumulates per output element of a conv / linear layer."""
    if isinstance(m, nn.Linear):
        return m.in_features
    return (m.in_channels // m.groups) * math.prod(m.kernel_size)


class _Tally:
    """Accumulates per-layer operation counts and per-neuron spike counts over batches."""

    def __init__(self) -> None:
        self.ops: dict[str, dict[str, float]] = {}
        self.spikes: dict[str, list[float]] = {}
        self.order: list[str] = []  # op layers in the order of their first call
        self.first: str | None = None
        self._calls_in_pass = 0

    def new_pass(self) -> None:
        self._calls_in_pass = 0

    def op_hook(self, name: str):
        def fn(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]
            if self._calls_in_pass == 0:
                self.first = self.first or name
            self._calls_in_pass += 1
            rec = self.ops.get(name)
            if rec is None:
                rec = self.ops[name] = {"macs": 0.0, "sops": 0.0, "nnz": 0.0, "numel": 0.0,
                                        "binary": 1.0}
                self.order.append(name)
            macs = float(output.numel()) * _fan_in(module)
            nnz = float(torch.count_nonzero(x))
            rec["macs"] += macs
            rec["sops"] += macs * nnz / max(x.numel(), 1)
            rec["nnz"] += nnz
            rec["numel"] += float(x.numel())
            if rec["binary"] and not bool(((x == 0) | (x == 1)).all()):
                rec["binary"] = 0.0

        return fn

    def neuron_hook(self, name: str):
        def fn(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            acc = self.spikes.setdefault(name, [0.0, 0.0])
            acc[0] += float(output.detach().float().sum())
            acc[1] += float(output.numel())

        return fn


@torch.no_grad()
def measure_spiking(model: nn.Module, images: Tensor, batch_size: int = 256) -> dict[str, Any]:
    """Firing rates and operation counts of ``model`` on ``images`` (normalized, [N, C, H, W]).

    Runs the model in eval mode (its train/eval state is restored) without gradients and
    returns:
      firing_rates: {neuron layer: rate, ..., "mean": rate over all neurons} (ANN: None)
      mean_firing_rate: float (ANN: None)
      sops_per_image: synaptic operations per image, summed over T (ANN: None)
      dense_macs_per_image: SNN: the first (image-fed) layer's MACs, once;
          ANN: all MACs of the network
      ann_macs_per_image: dense MACs of every conv / linear layer for one pass (one step)
      energy_mj_per_image: E_MAC * dense MACs + E_AC * SOPs (mJ)
      layers: {conv/linear name: {macs_per_step, input_rate, sops_per_image, binary_input}}
      T, n_images.
    """
    if images.dim() < 2 or images.shape[0] == 0:
        raise ConfigError(f"measure_spiking needs a non-empty batch [N, C, H, W], got {tuple(images.shape)}.")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    neurons = neuron_layers(model)
    spiking = bool(getattr(model, "is_spiking", False)) or bool(neurons)
    T = int(getattr(model, "T", 1)) if spiking else 1
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = images.device
    n = images.shape[0]
    tally = _Tally()
    was_training = model.training
    model.eval()
    try:
        with ModuleHooks() as hooks:
            for name, m in model.named_modules():
                if isinstance(m, _OPS):
                    hooks.add(m, tally.op_hook(name))
            for name, m in neurons:
                hooks.add(m, tally.neuron_hook(name))
            for chunk in images.split(int(batch_size)):
                tally.new_pass()
                model(chunk.to(device))
    finally:
        model.train(was_training)

    steps = n * T  # sample-steps every op layer ran over
    layers: dict[str, dict[str, Any]] = {}
    ann_macs = dense = sops = 0.0
    for name in tally.order:
        r = tally.ops[name]
        first = spiking and name == tally.first
        layer_sops = 0.0 if (first or not spiking) else r["sops"] / n
        layers[name] = {"macs_per_step": r["macs"] / steps,
                        "input_rate": r["nnz"] / max(r["numel"], 1.0),
                        "sops_per_image": layer_sops if spiking else None,
                        "binary_input": bool(r["binary"])}
        ann_macs += r["macs"] / steps
        if not spiking:
            dense += r["macs"] / n
        elif first:
            dense += r["macs"] / steps  # same image at every step: computed once
        else:
            sops += layer_sops
    rates = None
    if spiking and tally.spikes:
        rates = {k: v[0] / max(v[1], 1.0) for k, v in tally.spikes.items()}
        rates["mean"] = (sum(v[0] for v in tally.spikes.values())
                         / max(sum(v[1] for v in tally.spikes.values()), 1.0))
    return {
        "firing_rates": rates,
        "mean_firing_rate": rates["mean"] if rates else None,
        "sops_per_image": sops if spiking else None,
        "dense_macs_per_image": dense,
        "ann_macs_per_image": ann_macs,
        "energy_mj_per_image": (E_MAC_PJ * dense + E_AC_PJ * sops) * 1e-9,
        "layers": layers,
        "T": T,
        "n_images": n,
    }
