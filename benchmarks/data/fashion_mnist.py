"""Fashion-MNIST (Xiao et al., 2017, arXiv:1708.07747): 60k/10k grey 28x28 images, 10 classes.

Read from the four original IDX files (``.gz`` or uncompressed). An explicit ``data_root``
is the only place looked: ``<data_root>/`` and ``<data_root>/FashionMNIST/raw/``
(torchvision's layout); it never falls back to another copy. Without one, in order: the
Debian package path ``/usr/share/datasets/fashion-mnist/``, the default root
(``$DFKD_DATA_ROOT`` or ``~/.cache/stars-dfkd/data``) and its ``FashionMNIST/raw/``. Only
with ``download=True`` does torchvision fetch them (into ``data_root`` or the default root).
Images are zero-padded 28 -> 32 so CIFAR-style networks run unchanged (``fashion-mnist``),
or kept at their native 28x28 (``fashion-mnist-28``: the same files, 0.77x the pixels, so
every convolution of a small CNN costs 0.77x; the generators' 4x upsampling from 7x7 fits).
Nothing is cached.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from baselines.errors import DataError
from baselines.spec import DataSpec

from . import data_error, default_root, not_found_cause
from .base import DatasetBundle
from .idx import read_idx

NAME = "fashion-mnist"
NAME_28 = "fashion-mnist-28"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
NUM_CLASSES = 10
PAD = 2  # 28 + 2 * 2 = 32
MEAN, STD = (0.2860,), (0.3530,)  # over the 28x28 training pixels
LAYOUT = ("the four IDX files " + ", ".join(f"{f}.gz" for f in FILES.values())
          + " (or uncompressed) directly in the directory, or in <dir>/FashionMNIST/raw/")
FIX = ("`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs them in "
       f"{DEBIAN_DIR}/), or pass --download (download=True) to fetch them with torchvision, "
       "or copy the four files into --data-root.")


def spec(pad: int = PAD) -> DataSpec:
    return DataSpec(NAME if pad == PAD else NAME_28, channels=1, image_size=28 + 2 * pad,
                    num_classes=NUM_CLASSES, mean=MEAN, std=STD, hflip=True, crop_padding=4)


def _find(directory: Path) -> dict[str, Path] | str:
    """The four files in ``directory`` (uncompressed preferred: faster), or why not usable."""
    if not directory.is_dir():
        return "no such directory"
    found, missing = {}, []
    for key, stem in FILES.items():
        for cand in (directory / stem, directory / f"{stem}.gz"):
            if cand.is_file():
                found[key] = cand
                break
        else:
            missing.append(stem)
    if missing:
        return f"missing {', '.join(missing)}"
    return found


def candidates(data_root: str | None) -> list[Path]:
    """Directories searched, in order: an explicit ``data_root`` and its torchvision sub-layout
    only (never another place); without one, the Debian directory, then the default root."""
    if data_root:
        root = Path(data_root).expanduser()
        return [root, root / "FashionMNIST" / "raw"]
    root = default_root()
    return [DEBIAN_DIR, root, root / "FashionMNIST" / "raw"]


def read_dir(files: dict[str, Path], pad: int = PAD) -> DatasetBundle:
    """Parse the four IDX files, check they agree, zero-pad by ``pad`` on each side."""
    arrs = {k: read_idx(p, ndim=3 if k.endswith("_x") else 1) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrs[f"{split}_x"], arrs[f"{split}_y"]
        if len(x) != len(y):
            raise DataError(f"{files[split + '_x']} holds {len(x)} images but {files[split + '_y']} "
                            f"holds {len(y)} labels: the files do not belong together; get them again.")
        if len(y) and int(y.max()) >= NUM_CLASSES:
            raise DataError(f"{files[split + '_y']}: label {int(y.max())} >= {NUM_CLASSES}; "
                            "not a Fashion-MNIST label file.")
        if x.shape[1:] != (28, 28):
            raise DataError(f"{files[split + '_x']}: images are {x.shape[1]}x{x.shape[2]}, expected 28x28; "
                            "not a Fashion-MNIST image file.")

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.pad(a, ((0, 0), (pad, pad), (pad, pad)))[:, None])

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return DatasetBundle(spec(pad), images(arrs["train_x"]), labels(arrs["train_y"]),
                         images(arrs["test_x"]), labels(arrs["test_y"]),
                         source=str(files["train_x"].parent))


def load(data_root: str | None = None, download: bool = False, pad: int = PAD) -> DatasetBundle:
    """Fashion-MNIST as uint8 [N, 1, 32, 32] (zero-padded) with int64 labels."""
    looked = []
    for d in candidates(data_root):
        found = _find(d)
        if isinstance(found, dict):
            return read_dir(found, pad)
        looked.append(f"{d} ({found})")
    if not download:
        raise data_error(NAME, looked, LAYOUT, FIX,
                         cause=not_found_cause(data_root, f"{DEBIAN_DIR} and the default root"))
    root = Path(data_root).expanduser() if data_root else default_root()
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # noqa: BLE001 - network / disk errors re-raised with the fix
        raise data_error(NAME, looked, LAYOUT, FIX,
                         cause=f"download into {root} failed ({type(exc).__name__}: {exc})") from exc
    raw = root / "FashionMNIST" / "raw"
    found = _find(raw)
    if not isinstance(found, dict):
        raise data_error(NAME, looked + [f"{raw} ({found})"], LAYOUT, FIX,
                         cause="torchvision reported success but the raw files are not there")
    return read_dir(found, pad)


def load_native(data_root: str | None = None, download: bool = False) -> DatasetBundle:
    """Fashion-MNIST at its native 28x28: uint8 [N, 1, 28, 28] with int64 labels."""
    return load(data_root, download, pad=0)
