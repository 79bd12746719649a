"""Spiking-student metrics: firing rates and synaptic operations (the SNN energy proxy).

Synaptic operations (SOPs). A conv / linear layer whose input is a spike tensor only
accumulates weights where an input is nonzero, so per image

    SOPs = sum_layers sum_t sum_{nonzero input elements i at step t} fanout_layer(i),

with fanout(i) the number of weights input element i is multiplied with: ``out_features``
for a linear layer; for a convolution ``out_channels / groups`` times the number of output
windows covering i (fewer near a zero-padded border; padded zeros cost nothing). This is
SpikingJelly 2.0's ``op_counter.SynOpCounter`` definition, and the test suite checks the two
agree exactly on every spike-fed layer. It is close to the usual estimate
``MACs_layer x r_layer[t]`` (dense MACs for one step times the fraction of nonzero inputs;
Merolla et al., Science 2014; Zhou et al., "Spikformer", ICLR 2023), which also counts the
taps on padded zeros: 2-5% more on 32x32 maps with 3x3 'same' convolutions, more on small
maps (releases before this fix reported that estimate). The first layer receives the
real-valued image (direct encoding), so it costs dense MACs; the image is the same at
every step, so it is counted once per image (``dense_macs_per_image``; multiply by T if
your hardware recomputes it). Every later conv / linear layer counts as SOPs, including
one fed by an average (real-valued, mostly nonzero) -- the per-layer record says whether
its input was binary (SpikingJelly's SynOpCounter counts only binary-input layers: it
reports 0 for the image-fed layer and for one fed by an average). ``energy_mj_per_image``
applies the 45 nm figures of Horowitz (ISSCC 2014): 4.6 pJ per 32-bit float MAC, 0.9 pJ
per accumulate.

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
from .models import SpikingLayerState, eval_chunk
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


def weight_uses(m: nn.Module, x: Tensor) -> float:
    """Exact number of (nonzero input element, weight) products of conv / linear ``m`` on
    input ``x``: each nonzero input element counted once per output element it reaches.

    A linear layer uses every input ``out_features`` times. A convolution uses an input
    pixel once per output position whose window covers it, times ``out_channels / groups``:
    pixels near a zero-padded border are covered by fewer windows (a 3x3 'same' conv uses
    a corner pixel 4 times, an interior one 9 times), and the padded zeros themselves cost
    nothing. This is what SpikingJelly's ``op_counter.SynOpCounter`` counts for a spike
    input; ``dense MACs x input rate`` would count the padded taps too (about 4% more on a
    32x32 map, 8% on 16x16).
    """
    nz = (x != 0).to(torch.float32)
    if isinstance(m, nn.Linear):
        return float(nz.sum(dtype=torch.float64)) * m.out_features
    import torch.nn.functional as F

    d = len(m.kernel_size)
    if x.dim() == d + 3:  # a multi-step SpikingJelly conv: [T, N, C, ...]
        x, nz = x.flatten(0, 1), nz.flatten(0, 1)
    n, cin, g = x.shape[0], x.shape[1], m.groups
    per_group = nz.reshape(n, g, cin // g, *x.shape[2:]).sum(2)  # [N, g, *spatial]
    ones = torch.ones(g, 1, *m.kernel_size, dtype=per_group.dtype, device=x.device)
    padding = m.padding
    if m.padding_mode != "zeros":  # reflect / replicate / circular pad with real inputs
        per_group = F.pad(per_group, m._reversed_padding_repeated_twice, mode=m.padding_mode)
        padding = 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    cover = conv(per_group, ones, None, m.stride, padding, m.dilation, g)
    return float(cover.sum(dtype=torch.float64)) * (m.out_channels // g)


def _fan_in(m: nn.Module) -> int:
    """Multiply-accumulates per output element of a conv / linear layer."""
    if isinstance(m, nn.Linear):
        return m.in_features
    return (m.in_channels // m.groups) * math.prod(m.kernel_size)


def _macs_per_sample(m: nn.Module, output: Tensor) -> float:
    """Dense MACs of one image at one step, whatever the batch layout ([N], [T*N] or [T, N])."""
    if isinstance(m, nn.Linear):
        return float(m.out_features * m.in_features)
    spatial = math.prod(output.shape[-len(m.kernel_size):])
    return float(m.out_channels * spatial * _fan_in(m))


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
                                        "binary": 1.0, "per_sample": 0.0}
                self.order.append(name)
            rec["per_sample"] = max(rec["per_sample"], _macs_per_sample(module, output))
            macs = float(output.numel()) * _fan_in(module)
            nnz = float(torch.count_nonzero(x))
            rec["macs"] += macs
            rec["sops"] += weight_uses(module, x) if nnz else 0.0
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
            for chunk in images.split(eval_chunk(model, batch_size)):  # counts are per image
                tally.new_pass()
                model(chunk.to(device))
    finally:
        model.train(was_training)

    layers: dict[str, dict[str, Any]] = {}
    ann_macs = dense = sops = 0.0
    for name in tally.order:
        r = tally.ops[name]
        first = spiking and name == tally.first
        layer_sops = 0.0 if (first or not spiking) else r["sops"] / n
        layers[name] = {"macs_per_step": r["per_sample"],
                        "input_rate": r["nnz"] / max(r["numel"], 1.0),
                        "sops_per_image": layer_sops if spiking else None,
                        "binary_input": bool(r["binary"])}
        ann_macs += r["per_sample"]
        if not spiking:
            dense += r["macs"] / n
        elif first:
            dense += r["per_sample"]  # same image at every step: computed once
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
