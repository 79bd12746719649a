"""Tiny-ImageNet-200 (Le & Yang, 2015; Stanford CS231n): 100k/10k RGB 64x64 images, 200 classes.

Layout of the official ``tiny-imagenet-200.zip``: ``tiny-imagenet-200/wnids.txt``,
``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` labelled by
``val/val_annotations.txt`` (``file<TAB>wnid<TAB>box...``). The labelled val split is the
test split (the official test split has no labels). Classes = the wnids of ``wnids.txt``
sorted by name (torchvision ImageFolder order, as the DFKD references use), so
``num_classes`` is however many it lists. Grey JPEGs are converted to RGB. Normalization:
the ImageNet mean/std, as the CMI / Fast-DFKD harnesses use for Tiny-ImageNet.
Looked for in ``data_root`` only when it is given (never elsewhere; the root may also be
the tree itself), else in the default root. No package or torchvision class ships it, so ``download=True`` cannot help: the error
says where to get it. Decoding 110k JPEGs takes tens of seconds.
"""
from __future__ import annotations

from pathlib import Path

import torch

from baselines.errors import DataError
from baselines.spec import DataSpec

from . import data_error, default_root, not_found_cause
from .base import DatasetBundle
from .imagefolder import read_images

NAME = "tiny-imagenet"
FOLDER = "tiny-imagenet-200"
IMAGE_SIZE = 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
LAYOUT = (f"<root>/{FOLDER}/{{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
          "val/val_annotations.txt} (the unzipped official archive)")
FIX = (f"download tiny-imagenet-200.zip from the Stanford CS231n course site ({URL}) and unzip it into "
       "--data-root; no package ships it and --download cannot fetch it.")


def _problem(folder: Path) -> str | None:
    """Why ``folder`` is not a Tiny-ImageNet tree (None when it looks complete)."""
    if not folder.is_dir():
        return "no such directory"
    missing = [p for p in ("wnids.txt", "train", "val/images", "val/val_annotations.txt") if not (folder / p).exists()]
    return f"missing {', '.join(missing)}" if missing else None


def read_tree(folder: Path) -> DatasetBundle:
    wnids = sorted({w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()})
    if not wnids:
        raise DataError(f"{folder / 'wnids.txt'} lists no class ids; the archive is damaged: unzip it again.")
    index = {w: i for i, w in enumerate(wnids)}
    tr_paths, tr_labels = [], []
    for w in wnids:
        d = folder / "train" / w / "images"
        if not d.is_dir():
            raise DataError(f"{d}: missing (class {w} is listed in wnids.txt). Expected {LAYOUT}; unzip the archive "
                            "again.")
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in (".jpeg", ".jpg", ".png"))
        tr_paths += files
        tr_labels += [index[w]] * len(files)
    ann = folder / "val" / "val_annotations.txt"
    te_paths, te_labels = [], []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(f"{ann}:{n}: expected '<file> <wnid> ...' with a wnid from wnids.txt, got {line!r}.")
        te_paths.append(folder / "val" / "images" / parts[0])
        te_labels.append(index[parts[1]])
    if not tr_paths or not te_paths:
        raise DataError(f"{folder}: found {len(tr_paths)} train and {len(te_paths)} val images. Expected {LAYOUT}.")
    missing = [p for p in te_paths if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: listed in {ann} but missing ({len(missing)} such files); unzip the archive "
                        "again.")
    tx = read_images(tr_paths, "RGB", size=IMAGE_SIZE)
    ex = read_images(te_paths, "RGB", size=IMAGE_SIZE)
    sp = DataSpec(NAME, channels=3, image_size=IMAGE_SIZE, num_classes=len(wnids), mean=MEAN, std=STD,
                  hflip=True, crop_padding=4)
    return DatasetBundle(sp, torch.from_numpy(tx), torch.tensor(tr_labels, dtype=torch.int64),
                         torch.from_numpy(ex), torch.tensor(te_labels, dtype=torch.int64),
                         source=str(folder))


def load(data_root: str | None = None, download: bool = False) -> DatasetBundle:
    """Tiny-ImageNet as uint8 [N, 3, 64, 64] with int64 labels; ``download`` cannot help (see FIX)."""
    looked = []
    for root in [Path(data_root).expanduser()] if data_root else [default_root()]:  # explicit: only there
        # also accept a root that is the tree itself (has wnids.txt)
        for folder in [root / FOLDER] + ([root] if (root / "wnids.txt").is_file() else []):
            why = _problem(folder)
            if why is None:
                return read_tree(folder)
            looked.append(f"{folder} ({why})")
    cause = not_found_cause(data_root) + ("; --download cannot fetch Tiny-ImageNet" if download else "")
    raise data_error(NAME, looked, LAYOUT, FIX, cause=cause)
