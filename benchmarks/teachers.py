"""ANN teachers: training with a documented recipe per dataset, a checkpoint cache, and
loading a user's own checkpoint.

Recipe (the DFKD references' CIFAR recipe, He et al. 2016 style): SGD lr 0.1, momentum
0.9, weight decay 5e-4, batch 128, cosine learning-rate schedule over all steps, cross
entropy, train augmentation = random crop with the dataset's padding (4 for 32x32) + a
horizontal flip where the dataset allows it (``DataSpec.hflip``). Epochs per (dataset,
model), see :data:`EPOCHS` (a ``--epochs`` given by the user wins):

========================  ======  ==============================================
dataset / model           epochs  note
========================  ======  ==============================================
fashion-mnist / smallcnn  3       CPU-friendly (~1.7 min/epoch on 2 cores); >= 88%
fashion-mnist / others    15
cifar10, cifar100         200     references: ResNet-34 95.7 / 78.1
tiny-imagenet             200
toy                       10      unit tests and smoke runs
anything else             30
========================  ======  ==============================================

Cache: ``<root>/<dataset>/<model>-<recipe hash>-seed<seed>.pt`` (the state_dict) and a
``.json`` beside it (test accuracy, recipe, seconds, package versions, ...); ``<root>`` is
``cache_dir``, else ``$DFKD_CACHE/teachers``, else ``~/.cache/stars-dfkd/teachers``. The
recipe hash covers the recipe, the model name and a fingerprint of the training images
and labels, so a subset, another ``--data-root`` holding other files, or another recipe
never collides. A second call with the same key loads the checkpoint (no training).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.config import config_hash
from baselines.errors import ConfigError
from baselines.models import StagedModel
from baselines.optim import sgd_cosine
from baselines.provenance import (git_commit, now_iso, package_versions, pick_device,
                                  preserve_rng, set_seed)
from baselines.spec import DataSpec, random_crop_flip

from .data.base import DatasetBundle
from .store import atomic_write_json
from .teacher_checkpoints import (build_teacher, check_state_dict, check_teacher_spec,  # noqa: F401
                                  extract_state_dict, freeze, load_teacher_spec, parse_teacher_spec)

#: Environment variable naming the cache root (teachers go to ``$DFKD_CACHE/teachers``).
ENV_CACHE = "DFKD_CACHE"

#: Default epochs per (dataset, model); ``(dataset, None)`` is the dataset's default.
EPOCHS: dict[tuple[str, str | None], int] = {
    ("fashion-mnist", "smallcnn"): 3,
    ("fashion-mnist", None): 15,
    ("fashion-mnist-28", "smallcnn"): 5,  # 90.55% on the 10k test images (the evidence teacher)
    ("fashion-mnist-28", None): 15,
    ("cifar10", None): 200,
    ("cifar100", None): 200,
    ("tiny-imagenet", None): 200,
    ("toy", None): 10,
}
FALLBACK_EPOCHS = 30


@dataclass(frozen=True)
class Recipe:
    """How a teacher is trained (see module docstring)."""

    epochs: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"
    augment: bool = True  # crop (spec.crop_padding) + flip (spec.hflip)
    eval_batch_size: int = 500

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def recipe_for(dataset: str, model: str, epochs: int | None = None) -> Recipe:
    """The documented recipe of (dataset, model); ``epochs`` overrides the default."""
    if epochs is None:
        epochs = EPOCHS.get((dataset, model), EPOCHS.get((dataset, None), FALLBACK_EPOCHS))
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"teacher epochs must be a positive integer, got {epochs!r}.")
    return Recipe(epochs=epochs)


# ------------------------------------------------------------------------------ cache
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Teacher cache directory: ``cache_dir``, else ``$DFKD_CACHE/teachers``, else
    ``~/.cache/stars-dfkd/teachers``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE)
    base = Path(env).expanduser() if env else Path("~/.cache/stars-dfkd").expanduser()
    return base / "teachers"


def data_fingerprint(bundle: DatasetBundle) -> str:
    """Content hash of the training images and labels (16 hex digits)."""
    h = hashlib.sha256()
    for t in (bundle.train_x, bundle.train_y):
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def cache_paths(dataset: str, model: str, recipe: Recipe, seed: int, fingerprint: str,
                cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(checkpoint path, info JSON path) of the teacher with this key."""
    key = config_hash({"recipe": recipe.to_dict(), "model": model, "data": fingerprint})
    stem = cache_root(cache_dir) / dataset / f"{model}-{key}-seed{int(seed)}"
    return stem.with_suffix(".pt"), stem.with_suffix(".json")


def accuracy_text(info: dict[str, Any]) -> str:
    """``"test accuracy 81.32% on 10,000 test images"`` from a teacher's info ('' without an
    accuracy). The figure is the one measured when the teacher was trained, on that run's test
    set: the cache is keyed by the training data, so a teacher trained by `dfkd train-teacher`
    (all test images) and read by `dfkd bench` (a preset's test subset), or the other way round,
    shows the other command's figure (one set of weights read 81.32% and 82.10%)."""
    acc = info.get("test_acc")
    if not isinstance(acc, (int, float)):
        return ""
    n_test = info.get("n_test")
    return f"test accuracy {acc:.2f}%" + (f" on {n_test:,} test images" if isinstance(n_test, int) else "")


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on ``path`` (POSIX flock): parallel jobs needing the same teacher
    train it once; the others wait and then read the cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # non-POSIX: no locking
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _json_default(o: Any) -> Any:
    if isinstance(o, Tensor):
        return o.item() if o.numel() == 1 else o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


# ------------------------------------------------------------------------------ build / train
def fit(model: nn.Module, bundle: DatasetBundle, recipe: Recipe, device: torch.device,
        progress: bool = False, desc: str = "teacher") -> None:
    """Train ``model`` on ``bundle``'s training set with ``recipe`` (in place).

    Per step: a batch of uint8 images -> [0, 1] -> crop(pad)+flip -> normalize -> cross
    entropy; SGD with momentum and weight decay; cosine schedule over all steps.
    """
    spec = bundle.spec
    x_all, y_all = bundle.train_x.to(device), bundle.train_y.to(device)
    n = len(y_all)
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    opt, sched = sgd_cosine(model.parameters(), recipe.lr, recipe.momentum, recipe.weight_decay,
                            recipe.epochs * steps_per_epoch)
    model.to(device).train()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.epochs * steps_per_epoch, desc=desc, unit="step")
    try:
        for epoch in range(recipe.epochs):
            perm = torch.randperm(n).to(device)
            for i in range(steps_per_epoch):
                idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
                xb = x_all[idx].float().div_(255)
                if recipe.augment:
                    xb = random_crop_flip(xb, spec.crop_padding, spec.hflip)
                loss = F.cross_entropy(model(spec.normalize(xb)), y_all[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"teacher training loss became {loss.item()} at epoch "
                                             f"{epoch}, step {i}; lower the learning rate.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    finally:
        if bar is not None:
            bar.close()


def train_teacher(dataset: str, model: str, epochs: int | None = None, seed: int = 0,
                  data_root: str | None = None, download: bool = False,
                  cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  progress: bool = True, *, bundle: DatasetBundle | None = None,
                  train_subset: int | None = None) -> tuple[StagedModel, dict[str, Any]]:
    """The teacher ``model`` trained on ``dataset`` with the documented recipe, cached.

    Returns ``(model, info)``: the frozen model (eval mode, on ``device``) and the info
    stored beside the checkpoint (``test_acc`` in %, ``recipe``, ``train_seconds``,
    ``checkpoint``, ``versions``, ...; ``cached`` tells whether it came from the cache).
    ``bundle`` passes already loaded data (its train set is what the teacher sees);
    ``train_subset`` trains on a deterministic random subset (tests, smoke runs).
    Does not disturb the caller's random streams.
    """
    with preserve_rng():  # building models consumes random numbers, cache hit or not
        return _train_teacher(dataset, model, epochs, seed, data_root, download, cache_dir, device,
                              progress, bundle, train_subset)


def _train_teacher(dataset: str, model: str, epochs: int | None, seed: int, data_root: str | None,
                   download: bool, cache_dir: str | os.PathLike | None, device: str | torch.device,
                   progress: bool, bundle: DatasetBundle | None, train_subset: int | None
                   ) -> tuple[StagedModel, dict[str, Any]]:
    from .data import load_dataset

    recipe = recipe_for(dataset, model, epochs)
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    if bundle is None:
        bundle = load_dataset(dataset, data_root=data_root, download=download)
    if train_subset is not None:
        bundle = bundle.subset(n_train=train_subset, seed=seed)
    build_teacher(model, bundle.spec)  # name / argument errors before the lock and the data hash
    fp = data_fingerprint(bundle)
    ckpt, meta = cache_paths(dataset, model, recipe, seed, fp, cache_dir)
    with _file_lock(ckpt.with_suffix(".lock")):
        hit = _load_cached(model, bundle.spec, ckpt, meta, dev)
        if hit is not None:
            return hit
        set_seed(seed, dev)
        net = build_teacher(model, bundle.spec)
        t0 = time.perf_counter()
        fit(net, bundle, recipe, dev, progress=progress, desc=f"teacher {model}@{dataset}")
        seconds = time.perf_counter() - t0
        from baselines.distill import evaluate

        freeze(net)
        acc = evaluate(net, bundle.test_x, bundle.test_y, bundle.spec, recipe.eval_batch_size, dev)
        info = {
            "dataset": dataset, "model": model, "seed": int(seed), "recipe": recipe.to_dict(),
            "test_acc": acc, "train_seconds": seconds, "n_train": len(bundle.train_y),
            "n_test": len(bundle.test_y), "data_fingerprint": fp, "data_source": bundle.source,
            "device": str(dev), "checkpoint": str(ckpt), "created": now_iso(),
            "git_commit": git_commit(), "versions": package_versions(),
        }
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        _atomic_write_bytes(ckpt, lambda p: torch.save(state, p))
        atomic_write_json(meta, info, indent=2, default=_json_default)
    return net, {**info, "cached": False}


def _load_cached(model: str, spec: DataSpec, ckpt: Path, meta: Path,
                 device: torch.device) -> tuple[StagedModel, dict[str, Any]] | None:
    if not (ckpt.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        net = build_teacher(model, spec)
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - a corrupt cache entry is retrained, with a warning
        import warnings

        warnings.warn(f"teacher cache entry {ckpt} is unreadable ({type(exc).__name__}: {exc}); retraining it.")
        return None
    return freeze(net.to(device)), {**info, "checkpoint": str(ckpt), "cached": True}


# ------------------------------------------------------------------------------ user checkpoints
def get_teacher(spec: str, dataset: str, bundle: DatasetBundle, epochs: int | None = None,
                seed: int = 0, device: str | torch.device = "cpu",
                cache_dir: str | os.PathLike | None = None, progress: bool = False
                ) -> tuple[StagedModel, dict[str, Any]]:
    """The teacher a run asks for: ``MODEL@CHECKPOINT`` loads the user's weights, a bare
    ``MODEL`` is trained with the recipe on ``bundle`` (or read from the cache). Either way
    the caller's random streams are left as they were."""
    name, path = parse_teacher_spec(spec)
    if path is not None:
        with preserve_rng():
            return load_teacher_spec(spec, bundle.spec, device)
    return train_teacher(dataset, name, epochs=epochs, seed=seed, cache_dir=cache_dir,
                         device=device, progress=progress, bundle=bundle)


__all__ = ["Recipe", "EPOCHS", "recipe_for", "cache_root", "cache_paths", "data_fingerprint",
           "train_teacher", "fit", "build_teacher", "parse_teacher_spec", "check_teacher_spec",
           "extract_state_dict", "check_state_dict", "load_teacher_spec", "get_teacher",
           "ENV_CACHE"]
