"""What a synthesizer and the KD loop need to know about a dataset, and pixel handling.

Images are kept in *pixel space* ([0, 1], shape [N, C, H, W]) in pools and datasets, and
normalized ((x - mean) / std) just before a network sees them, as torchvision does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DataSpec:
    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = True  # False for digit-like data where a flip changes the class
    crop_padding: int = 4

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return m, s

    def normalize(self, x: Tensor) -> Tensor:
        m, s = self._stats(x)
        return (x - m) / s

    def denormalize(self, x: Tensor) -> Tensor:
        m, s = self._stats(x)
        return x * s + m

    def pixel_bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Valid range of normalized pixels: [-mean/std, (1-mean)/std] per channel."""
        m, s = self._stats(x)
        return -m / s, (1 - m) / s

    def clamp_normalized(self, x: Tensor) -> Tensor:
        lo, hi = self.pixel_bounds(x)
        return torch.max(torch.min(x, hi), lo)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)


def random_crop_flip(x: Tensor, padding: int = 4, hflip: bool = True,
                     generator: torch.Generator | None = None) -> Tensor:
    """Per-sample random crop with zero padding + horizontal flip (p = 0.5), batched.

    The train augmentation of the DFKD references (RandomCrop(size, padding) +
    RandomHorizontalFlip), applied to a pixel-space batch [N, C, H, W].
    """
    n, c, h, w = x.shape
    dev = x.device
    if padding > 0:
        xp = torch.nn.functional.pad(x, (padding,) * 4)
        ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        rows = (oy.view(n, 1) + torch.arange(h, device=dev).view(1, h))  # [N, H]
        cols = (ox.view(n, 1) + torch.arange(w, device=dev).view(1, w))  # [N, W]
        idx_r = rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
        xr = xp.gather(2, idx_r)
        idx_c = cols.view(n, 1, 1, w).expand(n, c, h, w)
        x = xr.gather(3, idx_c)
    if hflip:
        flip = torch.rand(n, generator=generator).to(dev) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    return x
