"""Reference transfer sets that plug into the same loop as the synthesizers.

``real``: KD on real training images, the upper reference row of every DFKD table.
``noise``: Gaussian noise in normalized pixel space, the floor.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..config import nonneg
from ..errors import ConfigError
from .base import SynthesisResult, SynthesisSetup, Synthesizer


class RealData(Synthesizer):
    """KD on real training images (upper reference; not data-free)."""

    name = "real"
    uses_student = False

    @dataclass
    class Config:
        #: images added per synthesize() call; 0 = the whole training set on the first call.
        batch_size: int = 0

        def validate(self) -> None:
            nonneg("real", batch_size=self.batch_size)

    def check_setup(self, setup: SynthesisSetup) -> None:
        if setup.real is None:
            raise ConfigError("synthesizer 'real' needs the training images (SynthesisSetup.real); "
                              "run it through `dfkd distill`, which passes them")

    def __init__(self, setup: SynthesisSetup, cfg=None, **params) -> None:
        super().__init__(setup, cfg, **params)
        x, y = setup.real
        self._x, self._y = x, y
        self._order = torch.randperm(len(y))
        self._next = 0

    def synthesize(self) -> SynthesisResult:
        t0 = time.perf_counter()
        n = len(self._order) if self.cfg.batch_size == 0 else self.cfg.batch_size
        if self._next >= len(self._order):  # every real image is already in the pool
            empty = self._x[:0].float()
            return SynthesisResult(empty, self._y[:0], time.perf_counter() - t0, {}, {})
        idx = self._order[self._next:self._next + n]
        self._next += len(idx)
        images = self._x[idx].float().div(255)
        return self.finish(images, self._y[idx], t0, {})

    def extra_state(self):
        return {"order": self._order, "next": self._next}

    def load_extra_state(self, state) -> None:
        if state:
            self._order, self._next = state["order"], state["next"]


class GaussianNoise(Synthesizer):
    """Gaussian noise in normalized pixel space, clamped to the valid range (the floor)."""

    name = "noise"
    uses_student = False

    @dataclass
    class Config:
        batch_size: int = 256

        def validate(self) -> None:
            if self.batch_size <= 0:
                raise ConfigError(f"noise.batch_size must be > 0, got {self.batch_size}")

    def synthesize(self) -> SynthesisResult:
        t0 = time.perf_counter()
        x = torch.randn(self.cfg.batch_size, *self.spec.shape)
        x = self.spec.clamp_normalized(x)
        targets = torch.full((self.cfg.batch_size,), -1, dtype=torch.long)
        return self.finish(self.spec.denormalize(x), targets, t0, {})
