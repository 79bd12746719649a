"""The model interface every teacher and student implements (ANN or SNN).

A model is ``stem -> stages[0..K-1] -> global pool -> fc``. ``forward(x)`` returns logits;
``forward_features(x, record_spiking=False)`` returns a :class:`ModelOutput` with the
per-stage features a distillation term needs. Spiking students also expose, per spiking
layer, the pre-reset membrane potential H[t], the spikes S[t] and the threshold V_th
(:class:`SpikingLayerState`); they are captured only when ``record_spiking=True``, so
nobody pays for them otherwise.

Shapes follow SpikingJelly's multi-step convention internally (``[T, N, ...]``); what a
ModelOutput exposes is time-averaged (``[N, ...]``) except the spiking records.

Stages of a teacher and a student are matched by relative depth (:func:`match_stages`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .spiking_state import SpikingLayerState, gather_sites, sample_sites, stage_of_modules  # noqa: F401 (re-exported)





@dataclass
class ModelOutput:
    """What ``forward_features`` returns.

    logits: [N, K] (SNN: mean over T).
    features: per-stage outputs, list of [N, C, H, W] (SNN: spike rates, mean over T).
    pooled: [N, d], the classifier's input (SNN: mean over T).
    spiking: per spiking layer records (SNN with ``record_spiking=True``), else None.
    """

    logits: Tensor
    features: list[Tensor]
    pooled: Tensor
    spiking: list[SpikingLayerState] | None = None

    def stage_vectors(self) -> list[Tensor]:
        """Per-stage features pooled over space: list of [N, C]."""
        return [f.flatten(2).mean(-1) if f.dim() > 2 else f for f in self.features]


def match_stages(n_teacher: int, n_student: int) -> list[tuple[int, int]]:
    """Pairs (teacher stage, student stage) matched by relative depth.

    The shallower side's stages are each paired with the deeper side's stage at the same
    relative depth (stage k of K with stage round((k+1) * K'/K) - 1 of K'), so the last
    stages are always paired.
    """
    if n_teacher <= 0 or n_student <= 0:
        return []
    if n_student <= n_teacher:
        return [(round((s + 1) * n_teacher / n_student) - 1, s) for s in range(n_student)]
    return [(t, round((t + 1) * n_student / n_teacher) - 1) for t in range(n_teacher)]


class StagedModel(nn.Module):
    """Base class of ANN teachers/students: subclasses set stem, stages, pool, fc.

    ``pool`` maps the last stage output to [N, d] (default: global average pool).
    """

    is_spiking = False

    def __init__(self) -> None:
        super().__init__()
        self.stem: nn.Module = nn.Identity()
        self.stages = nn.ModuleList()
        self.fc: nn.Module = nn.Identity()

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def pool(self, h: Tensor) -> Tensor:
        return h.mean(dim=(-2, -1)) if h.dim() >= 4 else h

    def forward_features(self, x: Tensor, record_spiking: bool = False) -> ModelOutput:
        h = self.stem(x)
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        pooled = self.pool(h)
        return ModelOutput(self.fc(pooled), feats, pooled, None)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x).logits


class SpikingStagedModel(StagedModel):
    """Base class of spiking students (SpikingJelly multi-step, direct encoding).

    The input image [N, C, H, W] is repeated T times ([T, N, C, H, W], direct encoding);
    modules run in multi-step mode; logits, features and pooled vectors are averaged over
    T. Neuron state is reset at the start of every forward, so no caller can forget it.

    ``encode_once`` (default True): with direct encoding the stem's first, stateless module
    (a ``SeqToANNContainer``, e.g. conv + BN) sees the same image at every time step, so it
    runs once on [1, N, ...] and its output is broadcast over T (a view) instead of being
    computed T times. The result is the same function (BatchNorm's batch statistics over T
    identical copies equal those over one; only the running variance's n/(n-1) factor
    differs, by < 1e-4 relative), at 1/T of that module's cost.
    """

    is_spiking = True
    encode_once: bool = True
    #: the layout the input is converted to (``torch.channels_last`` under the
    #: ``compiled-cl`` neuron backend, whose conv weights are channels_last); None: as given
    input_memory_format: torch.memory_format | None = None

    def __init__(self, T: int = 4) -> None:
        super().__init__()
        if int(T) < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        self.T = int(T)

    def run_stem(self, x: Tensor) -> Tensor:
        """The stem on the direct-encoded input: [N, C, H, W] -> [T, N, ...]."""
        from spikingjelly.activation_based import layer

        stem = self.stem
        if (self.encode_once and isinstance(stem, nn.Sequential) and len(stem) > 0
                and isinstance(stem[0], layer.SeqToANNContainer)):
            h = stem[0](x.unsqueeze(0))
            h = h.expand(self.T, *h.shape[1:])
            for m in list(stem)[1:]:
                h = m(h)
            return h
        return stem(x.unsqueeze(0).expand(self.T, *x.shape))

    def pool(self, h: Tensor) -> Tensor:  # [T, N, C, H, W] -> [T, N, C]
        return h.mean(dim=(-2, -1)) if h.dim() >= 5 else h

    def forward_features(self, x: Tensor, record_spiking: bool = False) -> ModelOutput:
        from spikingjelly.activation_based import functional

        from .spiking import MembraneRecorder

        functional.reset_net(self)
        if self.input_memory_format is not None and x.dim() == 4:
            x = x.contiguous(memory_format=self.input_memory_format)
        rec = MembraneRecorder(self) if record_spiking else None
        if rec is not None:
            rec.__enter__()
        try:
            h = self.run_stem(x)  # direct encoding
            feats = []
            for stage in self.stages:
                h = stage(h)
                feats.append(h)
            if self.input_memory_format is not None:
                from .neuron_backend import grad_like_input

                h = grad_like_input(h)
            pooled = self.pool(h)
            logits = self.fc(pooled)
        finally:
            states = rec.collect() if rec is not None else None
            if rec is not None:
                rec.__exit__(None, None, None)
        return ModelOutput(
            logits.mean(0), [f.mean(0) for f in feats], pooled.mean(0), states
        )


#: Images x time steps one no-grad evaluation forward of a spiking model may hold (memory cap).
EVAL_IMAGE_STEPS = 512


def eval_chunk(model: nn.Module, batch_size: int) -> int:
    """The images per forward of an evaluation pass (no grad, eval mode) of ``model``:
    ``batch_size`` for an ANN, at most ``EVAL_IMAGE_STEPS // T`` for a spiking model (its
    activations are T times an ANN's: a 500-image batch at T = 4 held > 1 GB on CPU). Per-image
    results do not depend on it (eval-mode BN, no cross-sample terms)."""
    T = int(getattr(model, "T", 1)) if getattr(model, "is_spiking", False) else 1
    return max(1, min(int(batch_size), EVAL_IMAGE_STEPS // T)) if T > 1 else max(1, int(batch_size))

