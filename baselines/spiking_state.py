"""The records a spiking forward pass exposes, and how to sample them (a leaf module).

:class:`SpikingLayerState` is one neuron layer's record over T steps (pre-reset membrane,
spikes, threshold); :func:`sample_sites` / :func:`gather_sites` draw and read random
(sample, pixel) sites of [T, N, C, ...] tensors; :func:`stage_of_modules` maps a staged
model's modules to their stage. Both :mod:`baselines.models` and :mod:`baselines.spiking`
import from here, so neither imports the other at module level.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

class SpikingLayerState:
    """One spiking neuron layer's record over the T time steps of a forward pass.

    v_pre: [T, N, ...] membrane potential *before* reset (the H[t] compared with V_th),
        differentiable w.r.t. the layer's input current (and so the weights and images).
        Computed lazily on first access when the recorder passes ``compute`` (a consumer
        that reads one layer per stage pays for that layer only).
    spikes: [T, N, ...] output spikes S[t] = Heaviside(H[t] - V_th) (surrogate gradient).
    v_threshold: the neuron's threshold V_th (a float).
    stage: index of the model stage the layer sits in.
    name: module path inside the model.
    """

    __slots__ = ("name", "stage", "_v_pre", "spikes", "v_threshold", "_compute", "_compute_at")

    def __init__(self, name: str, stage: int, v_pre: Tensor | None, spikes: Tensor,
                 v_threshold: float, compute=None, compute_at=None) -> None:
        if v_pre is None and compute is None:
            raise ValueError("SpikingLayerState needs v_pre or a compute() callable")
        self.name, self.stage, self.spikes, self.v_threshold = name, stage, spikes, v_threshold
        self._v_pre, self._compute, self._compute_at = v_pre, compute, compute_at

    @property
    def v_pre(self) -> Tensor:
        if self._v_pre is None:
            self._v_pre = self._compute()
            self._compute = None
        return self._v_pre

    def v_pre_sample(self, positions: int) -> Tensor:
        """Pre-reset membrane at ``positions`` random (sample, pixel) sites: [T, P, C].

        The neuron recurrence is elementwise over every axis but time, so H at a site
        depends on that site's input current alone: the recorder recomputes only the
        sampled sites (cost ~ P / (N * H * W) of ``v_pre``). Sites are drawn uniformly
        with replacement from torch's global generator, so any mean over them is an
        unbiased estimate of the mean over the whole batch. All channels are kept. When
        the layer has no more than ``positions`` sites (or ``positions <= 0``) this is
        ``v_pre`` itself, laid out as [T, N * H * W, C].
        """
        idx = sample_sites(self.spikes, positions) if positions > 0 else None
        if idx is not None and self._v_pre is None and self._compute_at is not None:
            return self._compute_at(idx)
        return gather_sites(self.v_pre, idx)

    @property
    def computed(self) -> bool:
        """Whether v_pre has been materialized (for tests of the lazy path)."""
        return self._v_pre is not None

    def __repr__(self) -> str:
        return (f"SpikingLayerState(name={self.name!r}, stage={self.stage}, "
                f"spikes={tuple(self.spikes.shape)}, v_threshold={self.v_threshold})")

def sample_sites(x: Tensor, positions: int) -> tuple[Tensor, Tensor] | None:
    """``positions`` random (sample n, flat pixel s) index pairs of x [T, N, C, ...], or
    None when x has no more sites than that."""
    n = x.shape[1]
    s = x[0, 0, 0].numel() if x.dim() > 3 else 1
    if n * s <= positions:
        return None
    flat = torch.randint(0, n * s, (positions,), device=x.device)
    return flat // s, flat % s

def gather_sites(x: Tensor, idx: tuple[Tensor, Tensor] | None) -> Tensor:
    """x [T, N, C, ...] at sites idx (see :func:`sample_sites`) as [T, P, C]; all sites
    (P = N * H * W) when idx is None. Differentiable (a gather)."""
    t, n, c = x.shape[:3]
    x4 = x.reshape(t, n, c, -1)
    if idx is None:
        return x4.permute(0, 1, 3, 2).reshape(t, -1, c)
    return x4[:, idx[0], :, idx[1]].transpose(0, 1)  # advanced indices first: [P, T, C]

def stage_of_modules(model: nn.Module) -> dict[nn.Module, int]:
    """Map every module inside ``model.stages[k]`` (and the stem, as stage 0) to its stage."""
    out: dict[nn.Module, int] = {}
    for m in model.stem.modules():
        out[m] = 0
    for k, stage in enumerate(model.stages):
        for m in stage.modules():
            out[m] = k
    return out


__all__ = ["SpikingLayerState", "sample_sites", "gather_sites", "stage_of_modules"]
