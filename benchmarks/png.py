"""Figures written as the smallest lossless PNG: the plots are committed under results/, and the
tree plus what a lent GPU session carries must stay under the device's 64 MiB.

matplotlib writes RGBA; a figure that is fully opaque loses nothing without its alpha channel,
and one whose pixels all have R = G = B (the sample grids of one-channel data, gray-scale
plots) loses nothing as an 8-bit gray image. :func:`save_figure` writes that reduced image
(``optimize=True``); the pixels shown are the ones matplotlib rendered (tested).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def lean_image(rgba: np.ndarray) -> Image.Image:
    """The smallest lossless mode of an RGBA pixel array: L, RGB or RGBA."""
    if rgba.shape[-1] == 4 and not (rgba[..., 3] == 255).all():
        return Image.fromarray(rgba, "RGBA")
    rgb = rgba[..., :3]
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return Image.fromarray(np.ascontiguousarray(rgb[..., 0]), "L")
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


def save_figure(fig: Any, path: str | Path, **savefig_kw: Any) -> Path:
    """``fig.savefig(path, **savefig_kw)`` as a PNG in its smallest lossless mode."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kw)
    buf.seek(0)
    with Image.open(buf) as im:
        rgba = np.asarray(im.convert("RGBA"))
    lean_image(rgba).save(path, format="PNG", optimize=True)
    return Path(path)
