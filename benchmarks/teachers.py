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
from baselines.errors import CheckpointError, ConfigError
from baselines.models import StagedModel
from baselines.optim import sgd_cosine
from baselines.provenance import (git_commit, now_iso, package_versions, pick_device,
                                  preserve_rng, set_seed)
from baselines.registry import TEACHERS
from baselines.spec import DataSpec, random_crop_flip

from .data.base import DatasetBundle
from .store import atomic_write_json

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
def build_teacher(model: str, spec: DataSpec) -> StagedModel:
    """An untrained teacher ``model`` for ``spec`` (UnknownNameError for unknown names)."""
    factory = TEACHERS.get(model)
    return factory(in_channels=spec.channels, num_classes=spec.num_classes, image_size=spec.image_size)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (a teacher is never updated by distillation)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


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
def parse_teacher_spec(spec: str) -> tuple[str, str | None]:
    """``"resnet34"`` -> ("resnet34", None); ``"resnet34@path/w.pt"`` -> ("resnet34", "path/w.pt")."""
    name, sep, path = str(spec).partition("@")
    name = name.strip()
    if not name:
        raise ConfigError(f"teacher {spec!r}: expected MODEL or MODEL@CHECKPOINT, e.g. resnet34@weights.pt")
    if sep and not path.strip():
        raise ConfigError(f"teacher {spec!r}: no checkpoint path after '@'")
    return name, (os.path.expanduser(path.strip()) if sep else None)


def check_teacher_spec(spec: str) -> tuple[str, str | None]:
    """Cheap validation (no model built): the name is registered, the checkpoint exists."""
    name, path = parse_teacher_spec(spec)
    TEACHERS.entry(name)
    if path is not None and not os.path.isfile(path):
        raise CheckpointError(f"teacher checkpoint {path!r} (from --teacher {spec!r}) does not exist.")
    return name, path


def extract_state_dict(obj: Any, path: str = "<checkpoint>") -> dict[str, Tensor]:
    """The parameter dict of a checkpoint: a state_dict, or ``{"state_dict": ...}`` /
    ``{"model": ...}`` (also ``"net"``, ``"model_state_dict"``); a DataParallel
    ``module.`` prefix is removed."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "net", "teacher"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: not a state_dict (found {keys}). Save the weights with "
            "torch.save(model.state_dict(), path), or as {'state_dict': model.state_dict()}."
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _first(state: dict[str, Tensor], ndim: int, last: bool = False) -> tuple[str, Tensor] | None:
    items = [(k, v) for k, v in state.items() if v.dim() == ndim and k.endswith("weight")]
    if not items:
        return None
    return items[-1] if last else items[0]


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _guess_architecture(state: dict[str, Tensor], spec: DataSpec, exclude: str) -> str | None:
    """The registered teacher whose parameters match ``state`` exactly (names and shapes)."""
    conv, fc = _first(state, 4), _first(state, 2, last=True)
    cin = conv[1].shape[1] if conv else spec.channels
    ncls = fc[1].shape[0] if fc else spec.num_classes
    want = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for name in TEACHERS.names():
        if name == exclude:
            continue
        try:
            net = TEACHERS.get(name)(in_channels=cin, num_classes=ncls, image_size=spec.image_size)
        except Exception:  # noqa: BLE001 - a hint only
            continue
        have = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
        if have == want:
            return f"{name} (in_channels {cin}, num_classes {ncls})"
    return None


def check_state_dict(model: nn.Module, state: dict[str, Tensor], model_name: str, spec: DataSpec,
                     path: str = "<checkpoint>") -> None:
    """Raise CheckpointError saying how ``state`` differs from ``model``'s parameters:
    number of classes, input channels, shape mismatches (layer, both shapes), missing and
    unexpected keys, and the registered architecture it matches, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, _shape(state[k]), _shape(own[k])) for k in own if k in state
              and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts: list[str] = []
    # in_channels / num_classes are read from the tensors the model's first convolution and
    # last linear layer load from; when such a key is missing (reported below) nothing is
    # inferred, except for a checkpoint sharing no key with the model (another layout),
    # whose first convolution / last linear layer are the best guess.
    foreign = not any(k in own for k in state)
    m_conv, m_fc = _first(own, 4), _first(own, 2, last=True)
    c_conv = (m_conv[0], state[m_conv[0]]) if m_conv and m_conv[0] in state else _first(state, 4) if foreign else None
    c_fc = (m_fc[0], state[m_fc[0]]) if m_fc and m_fc[0] in state else _first(state, 2, last=True) if foreign else None
    if c_conv and m_conv and c_conv[1].dim() == 4 and c_conv[1].shape[1] != m_conv[1].shape[1]:
        parts.append(f"in_channels {c_conv[1].shape[1]} vs {spec.channels} (checkpoint vs dataset)")
    if c_fc and m_fc and c_fc[1].dim() == 2 and c_fc[1].shape[0] != m_fc[1].shape[0]:
        parts.append(f"num_classes {c_fc[1].shape[0]} vs {spec.num_classes} (checkpoint vs dataset)")
    if shapes:
        shown = "; ".join(f"{k}: {a} in the checkpoint vs {b} in the model" for k, a, b in shapes[:6])
        more = f" (+{len(shapes) - 6} more)" if len(shapes) > 6 else ""
        parts.append(f"{len(shapes)} shape mismatch(es): {shown}{more}")
    if missing:
        parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:6])}"
                     + (" ..." if len(missing) > 6 else ""))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected[:6])}"
                     + (" ..." if len(unexpected) > 6 else ""))
    if missing or unexpected:
        guess = _guess_architecture(state, spec, model_name)
        if guess:
            parts.append(f"the checkpoint looks like a {guess}: use --teacher {guess.split()[0]}@{path}")
        elif len(missing) + len(unexpected) > len(own) // 2:
            parts.append(f"the checkpoint is probably not a {model_name!r} of this project")
    raise CheckpointError(
        f"checkpoint {path} does not fit teacher {model_name!r} built for {spec.name} "
        f"(in_channels={spec.channels}, num_classes={spec.num_classes}, "
        f"image_size={spec.image_size}): " + "; ".join(parts) + ". "
        "Pass a checkpoint of this architecture trained on this dataset, or train one with "
        f"`dfkd train-teacher --dataset {spec.name} --model {model_name}`."
    )


def load_teacher_spec(spec: str, data_spec: DataSpec, device: str | torch.device = "cpu"
                      ) -> tuple[StagedModel, dict[str, Any]]:
    """Load ``"MODEL@CHECKPOINT"``: build MODEL for ``data_spec`` and load the weights.

    The checkpoint may be a state_dict or a dict holding one under ``"state_dict"`` /
    ``"model"``; it is read with ``weights_only=True`` (no code runs from the file). When
    it does not fit, CheckpointError says what differs (see :func:`check_state_dict`).
    """
    name, path = check_teacher_spec(spec)
    if path is None:
        raise ConfigError(f"teacher {spec!r} names no checkpoint; use MODEL@CHECKPOINT")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes); was the "
                              "download or the torch.save() interrupted?")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or ["(no message: truncated or not a torch.save() file?)"])[0]
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {first}. "
            "It must be a torch.save() file of a state_dict (tensors only; pickled objects "
            "such as argparse namespaces are refused for safety: re-save just the state_dict)."
        ) from exc
    state = extract_state_dict(obj, path)
    from .zoo.import_ckpt import adapt_state_dict  # other code bases' layouts -> the zoo's

    state, imported = adapt_state_dict(state, path)
    net = build_teacher(name, data_spec)
    try:
        check_state_dict(net, state, name, data_spec, path)
    except CheckpointError as exc:
        if imported.layout in ("zoo", "unknown"):
            raise
        raise CheckpointError(f"{exc} (Its keys were read as follows: {imported.summary()}.)") from None
    net.load_state_dict(state, strict=False)  # only num_batches_tracked may be absent
    info = {"model": name, "checkpoint": os.path.abspath(path), "cached": False, "user_checkpoint": True,
            "import": imported.to_dict()}
    if imported.layout not in ("zoo", "unknown"):
        import sys

        print(f"teacher checkpoint {path}: {imported.summary()}", file=sys.stderr)
    return freeze(net.to(device if isinstance(device, torch.device) else pick_device(device))), info


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
