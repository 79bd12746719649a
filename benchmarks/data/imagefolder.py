"""A directory of image files, one sub-directory per class (torchvision ImageFolder style).

``data_root/train/<class>/*.{png,jpg,jpeg}`` and ``data_root/test/<class>/...``; classes
are the train sub-directories sorted by name (label i = i-th name), and every test class
must be one of them; no class folder may be empty (DataError naming it). All images must be square and of one size; the size policy is the
npz one (28 -> zero-padded 32, 32/64 kept, other sizes resized bilinearly to 32). Images
are read as grey (1 channel) when every file is grey, otherwise as RGB (alpha dropped).
Normalization mean/std are computed per channel from the training images.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from baselines.errors import DataError

from . import data_error
from .base import DatasetBundle
from .npz import bundle_from_arrays

EXTS = (".png", ".jpg", ".jpeg")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
LAYOUT = ("<root>/train/<class>/*.png|jpg|jpeg and <root>/test/<class>/... (one sub-directory per class, "
          "the same class names in both; square images of one size)")
FIX = "arrange your images in that layout and pass the directory as --data-root."


def image_mode(paths: list[Path]) -> str:
    """'L' when every image is grey, else 'RGB' (headers only, no decoding)."""
    from PIL import Image

    for p in paths:
        try:
            with Image.open(p) as im:
                if im.mode not in GREY_MODES:
                    return "RGB"
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
            raise DataError(f"{p}: cannot read image ({type(exc).__name__}: {exc}); delete or replace it.") from exc
    return "L"


def read_images(paths: list[Path], mode: str, size: int | None = None) -> np.ndarray:
    """Decode ``paths`` (threads) into uint8 [N, C, S, S]; every image must be S x S (``size`` or
    the first image's); DataError names the first file that cannot be read or differs."""
    from PIL import Image

    if not paths:
        return np.zeros((0, 1 if mode == "L" else 3, size or 0, size or 0), dtype=np.uint8)

    def one(p: Path) -> np.ndarray:
        try:
            with Image.open(p) as im:
                return np.asarray(im.convert(mode))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{p}: cannot read image ({type(exc).__name__}: {exc}); delete or replace it.") from exc

    first = one(paths[0])
    want = (size, size) if size else first.shape[:2]
    if want[0] != want[1]:
        raise DataError(f"{paths[0]}: image is {want[1]}x{want[0]} (W x H); only square images are supported.")
    channels = first.shape[2] if first.ndim == 3 else 1
    out = np.empty((len(paths), channels, *want), dtype=np.uint8)  # filled in place: no 2x memory peak

    def fill(i: int) -> None:
        a = first if i == 0 else one(paths[i])
        if a.shape[:2] != want:
            raise DataError(f"{paths[i]}: image is {a.shape[1]}x{a.shape[0]} (W x H) but expected "
                            f"{want[1]}x{want[0]} like {paths[0]}; all images must share one square size: "
                            "resize them first.")
        out[i] = a.transpose(2, 0, 1) if a.ndim == 3 else a[None]

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as ex:
        list(ex.map(fill, range(len(paths)), chunksize=256))
    return out


def list_split(split_dir: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """Image files and labels of one split; ``classes`` defaults to the sorted sub-directories."""
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if classes is None:
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise DataError(f"{split_dir}: class folder(s) {', '.join(extra[:5])} do not exist in the train split "
                            f"(train classes: {', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}).")
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for c in found:
        files = sorted(f for f in (split_dir / c).iterdir() if f.is_file() and f.suffix.lower() in EXTS)
        if not files:
            raise DataError(f"{split_dir / c}: class folder holds no {'/'.join(EXTS)} images; every class folder "
                            "needs at least one image (an empty class cannot be learned or tested). Add images "
                            "or remove the folder.")
        paths += files
        labels += [index[c]] * len(files)
    return paths, labels, classes


def load(data_root: str | None = None, download: bool = False) -> DatasetBundle:
    """Load ``data_root`` (train/ and test/ class folders; ``download`` is ignored); see module docstring."""
    if not data_root:
        raise data_error("imagefolder", [], LAYOUT, FIX, cause="no directory given (data_root is None)")
    root = Path(data_root).expanduser()
    looked = [f"{root / s} ({'found' if (root / s).is_dir() else 'no such directory'})" for s in ("train", "test")]
    if not all((root / s).is_dir() for s in ("train", "test")):
        raise data_error("imagefolder", looked, LAYOUT, FIX)
    tr_paths, tr_labels, classes = list_split(root / "train")
    te_paths, te_labels, _ = list_split(root / "test", classes)
    if not tr_paths or not te_paths:
        raise data_error("imagefolder", looked, LAYOUT, FIX,
                         cause=f"no {'/'.join(EXTS)} images found ({len(tr_paths)} train, {len(te_paths)} test)")
    mode = image_mode(tr_paths + te_paths)
    tx = read_images(tr_paths, mode)
    ex = read_images(te_paths, mode, size=tx.shape[-1])
    b = bundle_from_arrays(f"imagefolder-{root.resolve().name}", tx, np.asarray(tr_labels), ex,
                           np.asarray(te_labels), source=str(root))
    return b
