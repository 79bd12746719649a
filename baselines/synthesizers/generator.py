"""The generator of CMI and Fast-DFKD, and the differentiable views they optimize through.

Generator (zju-vipa ``datafree.models.generator.Generator``): z [N, nz] -> Linear ->
[N, 2*ngf, s/4, s/4] -> BN -> Upsample x2 -> Conv3x3 -> BN -> LeakyReLU(0.2) -> Upsample x2
-> Conv3x3 -> BN -> LeakyReLU(0.2) -> Conv3x3 -> Sigmoid: pixel-space images in [0, 1] of
size s (s must be divisible by 4). It is used in train mode (batch statistics).

Views (tensor ops, differentiable w.r.t. the images, torch RNG only):
``random_resized_crop`` (CMI's local view, kornia RandomResizedCrop(scale, ratio 3/4-4/3)
+ flip, bilinear) and, from :mod:`baselines.spec`, ``random_crop_flip`` (crop with zero
padding + flip; CMI's global view and Fast's augmentation).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

UPSAMPLES = 2


def check_generator_size(image_size: int, where: str) -> None:
    """ConfigError unless the 2-upsample generator can make ``image_size`` x ``image_size``."""
    factor = 2 ** UPSAMPLES
    if image_size < factor or image_size % factor:
        raise ConfigError(
            f"{where}: the generator upsamples {UPSAMPLES} times (x{factor}) from a "
            f"(image_size/{factor})^2 map, so it cannot make {image_size}x{image_size} images; "
            f"use a dataset whose image size is a multiple of {factor}, or resize it."
        )


class Generator(nn.Module):
    """z [N, nz] -> images [N, channels, image_size, image_size] in [0, 1] (see module doc)."""

    def __init__(self, nz: int = 256, ngf: int = 64, image_size: int = 32, channels: int = 3) -> None:
        super().__init__()
        check_generator_size(image_size, "Generator")
        self.nz, self.ngf, self.image_size, self.channels = nz, ngf, image_size, channels
        self.init_size = image_size // 2 ** UPSAMPLES
        self.l1 = nn.Sequential(nn.Linear(nz, ngf * 2 * self.init_size ** 2))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(ngf * 2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ngf * 2, ngf * 2, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(ngf * 2, ngf, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, channels, 3, stride=1, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: Tensor) -> Tensor:
        out = self.l1(z).view(z.shape[0], -1, self.init_size, self.init_size)
        return self.conv_blocks(out)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """CMI's ``reset_model``: conv/linear weights N(0, std), biases 0; BN weight N(1, std), bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, std)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()

    @torch.no_grad()
    def reset_first_layers(self, std: float = 0.02) -> None:
        """Fast-DFKD's ``reset_l0`` (upstream fix c188487): ``l1.0`` (the linear layer) and
        ``conv_blocks.0`` (the first BatchNorm) get weights N(0, std) and zero biases."""
        for m in (self.l1[0], self.conv_blocks[0]):
            nn.init.normal_(m.weight, 0.0, std)
            nn.init.zeros_(m.bias)

    def clone(self) -> "Generator":
        """An independent copy (parameters, buffers and mode), on the same device."""
        return copy.deepcopy(self)


def random_resized_crop(x: Tensor, scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: bool = True) -> Tensor:
    """Per-sample random resized crop (+ flip, p = 0.5) of x [N, C, H, W], differentiable.

    Area fraction a ~ U(scale), aspect r ~ logU(ratio); crop width sqrt(a r), height
    sqrt(a / r) (relative, clipped to 1), centre uniform inside the image; resampled to
    H x W with bilinear interpolation (affine_grid + grid_sample).
    """
    n = x.shape[0]
    dev, dt = x.device, x.dtype
    area = torch.empty(n).uniform_(scale[0], scale[1])
    logr = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    r = logr.exp()
    w = (area * r).sqrt().clamp(max=1.0)
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(n) * 2 - 1) * (1 - w)
    cy = (torch.rand(n) * 2 - 1) * (1 - h)
    sx = w.clone()
    if hflip:
        flip = torch.rand(n) < 0.5
        sx = torch.where(flip, -sx, sx)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta.to(dev, dt), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
