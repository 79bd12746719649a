"""Figures are written in their smallest lossless PNG mode: the pixels shown are exactly the
ones matplotlib rendered, in fewer bytes (benchmarks/png.py)."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.png import save_figure  # noqa: E402


def _rendered(fig, **kw) -> tuple[np.ndarray, int]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **kw)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGBA")), len(buf.getvalue())


def _check(fig, path, mode: str, **kw) -> None:
    want, plain_bytes = _rendered(fig, **kw)
    save_figure(fig, path, **kw)
    with Image.open(path) as im:
        assert im.mode == mode
        got = np.asarray(im.convert("RGBA"))
    assert np.array_equal(got, want)  # lossless
    if mode != "RGBA":
        assert path.stat().st_size < plain_bytes


def test_gray_figures_become_8_bit_gray(tmp_path):
    fig, ax = plt.subplots()
    ax.imshow(np.random.default_rng(0).random((28, 28)), cmap="gray")
    ax.set_title("synthetic samples", color="black")
    _check(fig, tmp_path / "gray.png", "L", dpi=60)
    plt.close(fig)


def test_colored_opaque_figures_lose_only_the_alpha_channel(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 3, 2], color="tab:orange")
    _check(fig, tmp_path / "color.png", "RGB", dpi=60)
    plt.close(fig)


def test_transparent_figures_keep_their_alpha(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], color="tab:blue")
    _check(fig, tmp_path / "clear.png", "RGBA", dpi=60, transparent=True)
    plt.close(fig)
