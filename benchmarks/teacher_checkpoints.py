"""Teacher checkpoints: building a zoo teacher, parsing ``MODEL@CHECKPOINT``, reading and
checking a state dict against the model (with the layout mapping of
:mod:`benchmarks.zoo.import_ckpt`), loading the user's weights. Split from
:mod:`benchmarks.teachers` (training and the cache), which re-exports these names."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from baselines.errors import CheckpointError, ConfigError
from baselines.models import StagedModel
from baselines.provenance import pick_device
from baselines.registry import TEACHERS
from baselines.spec import DataSpec


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
