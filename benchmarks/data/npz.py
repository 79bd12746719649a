"""Any labelled image set saved as one ``.npz`` file; also the array -> bundle helpers.

``data_root`` is the path of a ``.npz`` holding ``x_train``, ``y_train``, ``x_test``,
``y_test``: images uint8 ``N x H x W`` (grey) or ``N x H x W x C`` (channels last), labels
integer ``N``. Size policy (shared with ``imagefolder``), square images only:
28x28 is zero-padded to 32x32 (as Fashion-MNIST); 32 and 64 are kept; any other size is
resized to 32x32 with bilinear interpolation (antialiased when shrinking).
Normalization mean/std are computed per channel from ``x_train`` as given (before padding
or resizing); ``num_classes`` = K, the largest training label + 1; labels are validated
(:func:`check_labels`): classes 0..K-1 each present in the training split, every test
label among them; ``hflip`` defaults to True.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from baselines.errors import DataError
from baselines.spec import DataSpec

from . import data_error
from .base import DatasetBundle

KEPT_SIZES = (32, 64)
PAD_FROM, PAD_TO = 28, 32
RESIZE_TO = 32
MIN_STD = 1.0 / 255  # floor for a constant channel, so normalization stays finite

LAYOUT = ("one .npz file with arrays x_train, x_test (uint8, N x H x W or N x H x W x C, square) "
          "and y_train, y_test (integer labels 0..K-1, length N)")


def target_size(size: int) -> int:
    """Side length after the size policy: 28 -> 32, 32/64 kept, else 32."""
    if size in KEPT_SIZES:
        return size
    return PAD_TO if size == PAD_FROM else RESIZE_TO


def fit_size(x: np.ndarray) -> torch.Tensor:
    """uint8 [N, C, S, S] -> uint8 [N, C, S', S'] by the size policy (see module docstring)."""
    s = x.shape[-1]
    t = torch.from_numpy(np.ascontiguousarray(x))
    out = target_size(s)
    if out == s:
        return t
    if s == PAD_FROM:
        p = (PAD_TO - PAD_FROM) // 2
        return F.pad(t, (p, p, p, p))
    chunks = []
    for c in torch.split(t, 4096):  # bounded float memory
        y = F.interpolate(c.float(), size=(out, out), mode="bilinear", align_corners=False,
                          antialias=out < s)
        chunks.append(y.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(chunks) if chunks else torch.empty((0, x.shape[1], out, out), dtype=torch.uint8)


def channel_stats(x: np.ndarray | torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 [N, C, H, W] pixels, in [0, 1] units.

    Computed from a 256-bin histogram per channel, so memory stays O(1) in N.
    """
    a = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    v = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(a.shape[1]):
        h = np.bincount(np.ascontiguousarray(a[:, c]).reshape(-1), minlength=256).astype(np.float64)
        n = h.sum()
        if n == 0:
            raise DataError("cannot compute normalization statistics from an empty training set.")
        m = float((h * v).sum() / n)
        sd = float(np.sqrt((h * (v - m) ** 2).sum() / n))
        means.append(round(m, 6))
        stds.append(round(max(sd, MIN_STD), 6))
    return tuple(means), tuple(stds)


def to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    """N x H x W or N x H x W x C (square) -> N x C x H x W; DataError on anything else."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{what} has shape {x.shape}; expected N x H x W or N x H x W x C.")
    if x.shape[2] != x.shape[3]:
        raise DataError(f"{what} has images of {x.shape[2]}x{x.shape[3]} (H x W) with {x.shape[1]} channels; "
                        "only square images are supported (channels last: N x H x W x C). Crop or resize "
                        "them to a square first.")
    return x


def _ranges(vals: list[int], limit: int = 8) -> str:
    """"3, 5, 7..9" style list of sorted ints (at most ``limit`` items shown)."""
    parts, i = [], 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}..{vals[j]}")
        i = j + 1
    return ", ".join(parts[:limit]) + (f", ... ({len(vals)} in all)" if len(parts) > limit else "")


def check_labels(y_train: np.ndarray, y_test: np.ndarray, source: str) -> int:
    """Validate a labelled split and return K, the number of classes.

    Labels must be integers 0..K-1 with K = the largest training label + 1, every class
    0..K-1 present in the training split (contiguous classes), and every test label one of
    the training labels; anything else raises DataError saying which labels are wrong and
    how to fix them (a model trained on K classes can never predict a class it did not see;
    one stray label would add a class)."""
    ytr, yte = (np.asarray(y).astype(np.int64).reshape(-1) for y in (y_train, y_test))
    for y, what in ((ytr, "train"), (yte, "test")):
        if y.size and y.min() < 0:
            raise DataError(f"{source}: negative {what} label {int(y.min())}; labels must be 0..K-1.")
    if not ytr.size:
        raise DataError(f"{source}: the training split has no labels.")
    present = np.unique(ytr)
    k = int(present[-1]) + 1
    if len(present) != k:
        gaps = sorted(set(range(k)) - set(present.tolist()))
        raise DataError(
            f"{source}: training labels span 0..{k - 1} but class(es) {_ranges(gaps)} have no training images; "
            f"classes must be contiguous 0..K-1, each with training images. Relabel them "
            "(e.g. labels = numpy.unique(y_train, return_inverse=True)[1], applied to both splits).")
    extra = sorted(set(np.unique(yte).tolist()) - set(present.tolist()))
    if extra:
        raise DataError(
            f"{source}: test label(s) {_ranges(extra)} do not occur among the training labels 0..{k - 1}; "
            "a model trained on the training classes can never predict them. Use the same label "
            "numbering in both splits, or drop those test images.")
    return k


def bundle_from_arrays(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                       y_test: np.ndarray, source: str, hflip: bool = True) -> DatasetBundle:
    """uint8 [N, C, S, S] images + integer labels -> DatasetBundle (size policy, stats from train)."""
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{source}: train images are {tuple(x_train.shape[1:])} (C, H, W) but test images are "
                        f"{tuple(x_test.shape[1:])}; both splits must share channels and size.")
    if len(x_train) == 0 or len(x_test) == 0:
        raise DataError(f"{source}: empty split ({len(x_train)} train, {len(x_test)} test images).")
    k = check_labels(y_train, y_test, source)
    labels = [torch.from_numpy(np.asarray(y).astype(np.int64)) for y in (y_train, y_test)]
    mean, std = channel_stats(x_train)
    size = target_size(x_train.shape[-1])
    spec = DataSpec(name, channels=int(x_train.shape[1]), image_size=size, num_classes=k, mean=mean, std=std,
                    hflip=hflip, crop_padding=4)
    return DatasetBundle(spec, fit_size(x_train), labels[0], fit_size(x_test), labels[1], source=source)


def load(data_root: str | None = None, download: bool = False) -> DatasetBundle:
    """Load ``data_root`` (a .npz path; ``download`` is ignored); see the module docstring."""
    fix = ("save your arrays with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) "
           "and pass the file as --data-root.")
    if not data_root:
        raise data_error("npz", [], LAYOUT, fix, cause="no file given (data_root is None)")
    path = Path(data_root).expanduser()
    if not path.is_file():
        raise data_error("npz", [f"{path} ({'a directory' if path.is_dir() else 'no such file'})"], LAYOUT, fix)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in keys]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)} (found: {', '.join(sorted(keys))}). "
                                f"Expected {LAYOUT}.")
            arrs = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc}). Expected {LAYOUT}.") from exc
    for k in ("x_train", "x_test"):
        if arrs[k].dtype != np.uint8:
            raise DataError(f"{path}: {k} has dtype {arrs[k].dtype}, expected uint8 (0..255). Expected {LAYOUT}; "
                            "convert float images in [0, 1] with (x * 255).round().astype('uint8').")
    for k, xk in (("y_train", "x_train"), ("y_test", "x_test")):
        y = arrs[k]
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: {k} has dtype {y.dtype}, expected integer class labels. Expected {LAYOUT}.")
        if y.ndim == 2 and y.shape[1] == 1:
            arrs[k] = y = y[:, 0]
        if y.ndim != 1 or len(y) != len(arrs[xk]):
            raise DataError(f"{path}: {k} has shape {y.shape} but {xk} holds {len(arrs[xk])} images; "
                            f"expected one label per image. Expected {LAYOUT}.")
    xs = {k: to_nchw(arrs[k], f"{path}: {k}") for k in ("x_train", "x_test")}
    return bundle_from_arrays(f"npz-{path.stem}", xs["x_train"], arrs["y_train"], xs["x_test"], arrs["y_test"],
                              source=str(path))
