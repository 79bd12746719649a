"""A tiny procedural labelled image set for unit tests and smoke runs (no files).

Class k of K is a sinusoidal grating oriented at angle k * pi / K (+- a small jitter):
``x(u, v) = b + a * sin(2 pi f (u cos t + v sin t) + phi) + noise``, with random
frequency f (period 4..8 px), phase phi, contrast a, brightness b and Gaussian pixel noise,
clipped to [0, 1] and stored as uint8. Orientation is the only class cue, so a horizontal
flip (angle t -> pi - t) changes the class: ``hflip=False``. Fully determined by the seed.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from baselines.errors import ConfigError
from baselines.spec import DataSpec

from .base import DatasetBundle
from .npz import channel_stats


def _gratings(rng: np.random.Generator, n: int, size: int, num_classes: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    y = rng.permutation(np.arange(n) % num_classes)
    t = y * math.pi / num_classes + rng.uniform(-0.15, 0.15, n) * math.pi / num_classes
    f = 1.0 / rng.uniform(4.0, 8.0, n)
    phi = rng.uniform(0, 2 * math.pi, n)
    a = rng.uniform(0.25, 0.45, n)
    b = rng.uniform(0.4, 0.6, n)
    c = np.arange(size) - (size - 1) / 2
    u, v = np.meshgrid(c, c, indexing="xy")  # u: column (x), v: row (y)
    proj = np.cos(t)[:, None, None] * u + np.sin(t)[:, None, None] * v
    img = b[:, None, None] + a[:, None, None] * np.sin(2 * math.pi * f[:, None, None] * proj + phi[:, None, None])
    img = img + noise * rng.standard_normal(img.shape)
    x = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)[:, None]
    return x, y.astype(np.int64)


def make_toy(n_train: int = 512, n_test: int = 256, image_size: int = 16, num_classes: int = 4,
             noise: float = 0.1, seed: int = 0) -> DatasetBundle:
    """Oriented-grating dataset: uint8 [N, 1, S, S], balanced int64 labels; mean/std from train."""
    if n_train < 1 or n_test < 1 or image_size < 4 or num_classes < 2 or noise < 0:
        raise ConfigError(f"toy dataset needs n_train, n_test >= 1, image_size >= 4, num_classes >= 2, noise >= 0; "
                          f"got {n_train}, {n_test}, {image_size}, {num_classes}, {noise}.")
    tr_rng, te_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    tx, ty = _gratings(tr_rng, n_train, image_size, num_classes, noise)
    ex, ey = _gratings(te_rng, n_test, image_size, num_classes, noise)
    mean, std = channel_stats(tx)
    spec = DataSpec("toy", channels=1, image_size=image_size, num_classes=num_classes, mean=mean, std=std,
                    hflip=False, crop_padding=max(1, image_size // 8))
    return DatasetBundle(spec, torch.from_numpy(tx), torch.from_numpy(ty), torch.from_numpy(ex),
                         torch.from_numpy(ey), source=f"toy:gratings(seed={seed})")


def load(data_root: str | None = None, download: bool = False) -> DatasetBundle:
    """The default toy set: 512 train / 256 test, 1 x 16 x 16, 4 classes (arguments ignored)."""
    return make_toy()
