"""CIFAR-10 / CIFAR-100 (Krizhevsky, 2009): 50k/10k RGB 32x32 images, 10 or 100 classes.

Read from torchvision's layout of the official "python version" archives:
``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch}`` and
``<root>/cifar-100-python/{train, test}``: pickled dicts with ``b"data"`` (uint8 N x 3072,
channel-major RGB) and ``b"labels"`` / ``b"fine_labels"``. The pickles are read with an
unpickler that only admits numpy arrays, so a tampered file cannot run code. Looked for in
``data_root`` only when it is given (never elsewhere), else in the default root
(``$DFKD_DATA_ROOT`` or ``~/.cache/stars-dfkd/data``);
``download=True`` delegates to ``torchvision.datasets.CIFAR10/100(root, download=True)``.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from baselines.errors import DataError
from baselines.spec import DataSpec

from . import data_error, default_root, not_found_cause
from .base import DatasetBundle


@dataclass(frozen=True)
class CifarVariant:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    url: str
    tv_class: str


CIFAR10 = CifarVariant("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                       "test_batch", b"labels", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "CIFAR10")
CIFAR100 = CifarVariant("cifar100", "cifar-100-python", ("train",), "test", b"fine_labels", 100,
                        (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "CIFAR100")

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler admitting only builtin containers and numpy arrays (as CIFAR's pickles hold)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (uint8 [N, 3, 32, 32], int64 [N]); DataError names the file if bad."""
    def bad(why: str) -> DataError:
        return DataError(f"{path}: not a CIFAR python batch ({why}). The file is corrupt or from another "
                         "archive: delete the folder and get it again.")

    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise bad(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise bad(f"expected a dict with keys b'data' and {label_key!r}, found {keys}")
    x, y = np.asarray(d[b"data"]), np.asarray(d[label_key])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise bad(f"b'data' is {x.dtype} {x.shape}, expected uint8 N x 3072")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise bad(f"{label_key!r} has shape {y.shape} ({y.dtype}), expected {len(x)} integer labels")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _missing(folder: Path, v: CifarVariant) -> list[str]:
    return [f for f in (*v.train_files, v.test_file) if not (folder / f).is_file()]


def spec(v: CifarVariant) -> DataSpec:
    return DataSpec(v.name, channels=3, image_size=32, num_classes=v.num_classes, mean=v.mean, std=v.std,
                    hflip=True, crop_padding=4)


def read_folder(folder: Path, v: CifarVariant) -> DatasetBundle:
    parts = [read_batch(folder / f, v.label_key) for f in v.train_files]
    tx, ty = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    ex, ey = read_batch(folder / v.test_file, v.label_key)
    for y, f in ((ty, v.train_files[-1]), (ey, v.test_file)):
        if len(y) and (y.min() < 0 or y.max() >= v.num_classes):
            raise DataError(f"{folder / f}: labels span {y.min()}..{y.max()}, expected 0..{v.num_classes - 1}; "
                            f"is this really {v.name}?")
    return DatasetBundle(spec(v), torch.from_numpy(tx), torch.from_numpy(ty), torch.from_numpy(ex),
                         torch.from_numpy(ey), source=str(folder))


def _load(v: CifarVariant, data_root: str | None, download: bool) -> DatasetBundle:
    roots = [Path(data_root).expanduser()] if data_root else [default_root()]  # explicit: only there
    layout = (f"<root>/{v.folder}/{{{', '.join((*v.train_files, v.test_file))}}} (torchvision's layout: "
              f"the extracted {v.url.rsplit('/', 1)[-1]})")
    fix = (f"pass --download (download=True) to fetch it with torchvision.datasets.{v.tv_class}, or download "
           f"{v.url} (the CIFAR page of the University of Toronto) and extract it into --data-root.")
    looked = []
    for root in roots:
        folder = root / v.folder
        missing = _missing(folder, v) if folder.is_dir() else None
        if missing == []:
            return read_folder(folder, v)
        looked.append(f"{folder} ({'no such directory' if missing is None else 'missing ' + ', '.join(missing)})")
    if not download:
        raise data_error(v.name, looked, layout, fix, cause=not_found_cause(data_root))
    root = roots[0]
    try:
        import torchvision.datasets as tvd

        getattr(tvd, v.tv_class)(str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001 - network / disk errors re-raised with the fix
        raise data_error(v.name, looked, layout, fix,
                         cause=f"download into {root} failed ({type(exc).__name__}: {exc})") from exc
    missing = _missing(root / v.folder, v)
    if missing:
        raise data_error(v.name, looked + [f"{root / v.folder} (missing {', '.join(missing)})"], layout, fix,
                         cause="torchvision reported success but the files are not there")
    return read_folder(root / v.folder, v)


def load_cifar10(data_root: str | None = None, download: bool = False) -> DatasetBundle:
    """CIFAR-10 as uint8 [N, 3, 32, 32] with int64 labels 0..9."""
    return _load(CIFAR10, data_root, download)


def load_cifar100(data_root: str | None = None, download: bool = False) -> DatasetBundle:
    """CIFAR-100 (fine labels) as uint8 [N, 3, 32, 32] with int64 labels 0..99."""
    return _load(CIFAR100, data_root, download)
