"""Map other code bases' checkpoint layouts onto this project's zoo (:mod:`.ann`).

``--teacher resnet34@file.pt`` loads a state_dict. When its keys are already the zoo's
(``stem.*``, ``stages.*``, ``fc.*``) nothing is renamed. Otherwise :func:`adapt_state_dict`
recognizes the layout by its key names and renames the tensors, so that the zoo model
computes *the same function* (same logits in eval mode, tested to 1e-5):

=======================  ==============================================  =====================
layout                   keys                                            zoo model
=======================  ==============================================  =====================
cifar-resnet             ``conv1, bn1, layerK.J.{conv1,bn1,conv2,bn2,    resnet18 / resnet34
(Fast-Datafree / DAFL)   shortcut.0/1}, linear``
torchvision-resnet       ``conv1, bn1, layerK.J.{..., downsample.0/1},   resnet18 / resnet34
(CIFAR-adapted)          fc`` with a 3x3 ``conv1``
cifar-wrn (Fast-         ``conv1, blockK.layer.J.{bn1,conv1,bn2,conv2,   wrn16_2 / wrn40_2
Datafree / ZSKT)         convShortcut}, bn1, fc``
=======================  ==============================================  =====================

Layouts that are recognized but cannot give the same logits are refused with the reason
(:class:`baselines.errors.CheckpointError`) instead of being loaded wrong:

- torchvision ResNet with its ImageNet stem (7x7 stride-2 ``conv1`` + max-pool): the zoo's
  ResNets have a 3x3 stride-1 stem and no max-pool.
- Bottleneck ResNets (ResNet-50 and deeper; ``conv3`` in the blocks): no zoo teacher.
- The reference harness' VGG (RepDistiller's ``block0..4`` + ``classifier``): on 32x32
  inputs it skips the pool after ``block3`` and average-pools after ``block4``; the zoo's
  VGG max-pools after every stage, so ``block4`` would run at another resolution.
- MobileNetV2 in the torchvision layout (``features.N`` + ``classifier.1``, also the
  reference harness' copy): stride-2 stem and second block; the zoo's CIFAR MobileNetV2
  has stride 1 in both, which the weights cannot tell.

A torchvision ResNet with a 3x3 ``conv1`` is taken to be the usual CIFAR adaptation
(``conv1 = Conv2d(C, 64, 3, 1, 1)``, ``maxpool = Identity()``): the checkpoint cannot say
whether the stride or the max-pool were changed, so the report says it was assumed.

Tensors the mapping does not know keep their names, so the loader's fit check
(:func:`benchmarks.teachers.check_state_dict`) reports them as unexpected and refuses the
checkpoint; nothing is dropped silently.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import Tensor

from baselines.errors import CheckpointError

#: layouts this module maps (name -> one-line description)
LAYOUTS = {
    "zoo": "this project's own layout (stem / stages / fc)",
    "cifar-resnet": "CIFAR ResNet of the DFKD reference code (Fast-Datafree, DAFL, CMI): "
                    "conv1/bn1/layer1..4/linear, shortcut.0/1",
    "torchvision-resnet": "torchvision ResNet adapted to CIFAR (3x3 conv1, no max-pool): "
                          "conv1/bn1/layer1..4/fc, downsample.0/1",
    "cifar-wrn": "Wide ResNet of the DFKD reference code (Fast-Datafree, ZSKT): "
                 "conv1/block1..3.layer.J/bn1/fc",
}


@dataclass
class ImportReport:
    """What :func:`adapt_state_dict` did: the layout it recognized, the tensors it renamed
    and those it left under their own names."""

    layout: str
    mapped: int = 0
    left_over: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.layout == "zoo":
            return "zoo layout (no renaming)"
        left = (f"{len(self.left_over)} left over ({', '.join(self.left_over[:6])}"
                + (" ..." if len(self.left_over) > 6 else "") + ")") if self.left_over else "none left over"
        text = f"recognized the {self.layout} layout ({LAYOUTS.get(self.layout, '')}); mapped {self.mapped} tensors; {left}"
        return text + "".join(f"; {n}" for n in self.notes)

    def to_dict(self) -> dict:
        return {"layout": self.layout, "mapped": self.mapped, "left_over": list(self.left_over),
                "notes": list(self.notes), "summary": self.summary()}


_ZOO_ROOTS = ("stem.", "stages.", "fc.")
_RESNET_BLOCK = {"conv1": "body.0", "bn1": "body.1", "conv2": "body.3", "bn2": "body.4",
                 "shortcut.0": "shortcut.0", "shortcut.1": "shortcut.1",
                 "downsample.0": "shortcut.0", "downsample.1": "shortcut.1"}
_RE_RESNET = re.compile(r"^layer([1-9])\.(\d+)\.(conv1|bn1|conv2|bn2|shortcut\.[01]|downsample\.[01])\.(\w+)$")
_RE_WRN = re.compile(r"^block([1-9])\.layer\.(\d+)\.(bn1|conv1|bn2|conv2|convShortcut)\.(\w+)$")
_WRN_BLOCK = {"bn1": "bn1", "conv1": "conv1", "bn2": "bn2", "conv2": "conv2", "convShortcut": "shortcut"}


def _refuse(path: str, what: str, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {what}, which this project's zoo cannot reproduce: {why}. "
                           "Loading it would give other logits than the network it was trained in, so it is "
                           "refused; train a zoo teacher instead (dfkd train-teacher) or convert the model "
                           "to one of the layouts listed in benchmarks/zoo/import_ckpt.py.")


def detect_layout(state: dict[str, Tensor]) -> str | None:
    """The layout name of ``state`` (see :data:`LAYOUTS`), or None when unknown."""
    keys = list(state)
    if any(k.startswith(_ZOO_ROOTS) for k in keys) and not any(k.startswith(("layer1.", "block1.")) for k in keys):
        return "zoo"
    if "conv1.weight" in state and any(_RE_WRN.match(k) for k in keys):
        return "cifar-wrn"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in keys):
        if "linear.weight" in state or any(".shortcut." in k for k in keys):
            return "cifar-resnet"
        return "torchvision-resnet"
    return None


def _check_refused(state: dict[str, Tensor], path: str) -> None:
    keys = list(state)
    if any(re.match(r"^layer\d+\.\d+\.(conv3|bn3)\.", k) for k in keys):
        raise _refuse(path, "a bottleneck ResNet (ResNet-50 style, 'conv3' in the blocks)",
                      "the zoo has basic-block ResNets only (resnet18, resnet34)")
    if "block0.0.weight" in state and any(k.startswith("classifier.") for k in keys):
        raise _refuse(path, "a VGG in the reference harness' layout (RepDistiller: block0..4 + classifier)",
                      "on 32x32 inputs it skips the max-pool after block3 and average-pools after block4, "
                      "while the zoo's vgg11 / vgg16 max-pool after every stage (block4 would run at 2x2 "
                      "instead of 4x4); its convolutions also carry biases")
    if any(re.match(r"^features\.\d+\.conv\.", k) for k in keys) and "classifier.1.weight" in state:
        raise _refuse(path, "a MobileNetV2 in the torchvision layout (features.N + classifier.1, as in the "
                            "reference harness)",
                      "it has a stride-2 stem and a stride-2 second block, the zoo's CIFAR mobilenetv2 "
                      "stride 1 in both, and the weights cannot tell them apart")
    w = state.get("conv1.weight")
    if w is not None and w.dim() == 4 and any(k.startswith("layer1.") for k in keys) and w.shape[-1] != 3:
        raise _refuse(path, f"a ResNet with a {w.shape[-2]}x{w.shape[-1]} stem convolution "
                            "(torchvision's ImageNet stem: 7x7 stride 2, then a 3x3 max-pool)",
                      "the zoo's resnet18 / resnet34 have a 3x3 stride-1 stem and no max-pool")


def _rename(state: dict[str, Tensor], report: ImportReport, rule) -> dict[str, Tensor]:
    """Apply ``rule(key) -> new key | None`` to every tensor; unmapped keys are kept as they
    are and listed in ``report.left_over`` (the fit check then refuses them)."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        new = rule(k)
        if new is None:
            report.left_over.append(k)
            out[k] = v
        else:
            out[new] = v
            report.mapped += 1
    return out


def _stage_rule(prefixes: dict[str, str], block_re, block_parts: dict[str, str]):
    """A rename rule: a key starting with a ``prefixes`` key gets that prefix replaced; a key
    matching ``block_re`` (stage, block, part, leaf) goes to ``stages.<stage-1>.<block>.<part>``."""
    def rule(k: str) -> str | None:
        for old, new in prefixes.items():
            if k.startswith(old):
                return new + k[len(old):]
        m = block_re.match(k)
        if m:
            stage, block, part, leaf = m.groups()
            return f"stages.{int(stage) - 1}.{block}.{block_parts[part]}.{leaf}"
        return None
    return rule


def _map_resnet(state: dict[str, Tensor], report: ImportReport) -> dict[str, Tensor]:
    prefixes = {"conv1.": "stem.0.", "bn1.": "stem.1.", "linear.": "fc.", "fc.": "fc."}
    return _rename(state, report, _stage_rule(prefixes, _RE_RESNET, _RESNET_BLOCK))


def _map_wrn(state: dict[str, Tensor], report: ImportReport) -> dict[str, Tensor]:
    blocks: dict[int, set[int]] = {}
    for k in state:
        m = _RE_WRN.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    last = max(blocks) if blocks else 3
    n_last = len(blocks.get(last, ()))  # the final BN follows the last stage's blocks
    prefixes = {"conv1.": "stem.", "bn1.": f"stages.{last - 1}.{n_last}.", "fc.": "fc."}
    return _rename(state, report, _stage_rule(prefixes, _RE_WRN, _WRN_BLOCK))


def adapt_state_dict(state: dict[str, Tensor], path: str = "<checkpoint>"
                     ) -> tuple[dict[str, Tensor], ImportReport]:
    """``state`` renamed onto the zoo's layout, and a report of what was done.

    Raises CheckpointError for a recognized layout the zoo cannot reproduce exactly (see
    the module docstring). An unknown layout is returned unchanged (layout "unknown"): the
    loader's fit check then says what differs.
    """
    _check_refused(state, path)
    layout = detect_layout(state)
    if layout in (None, "zoo"):
        return state, ImportReport(layout or "unknown")
    report = ImportReport(layout)
    if layout == "cifar-wrn":
        return _map_wrn(state, report), report
    if layout == "torchvision-resnet":
        report.notes.append("assumed the CIFAR adaptation of torchvision's ResNet (3x3 stride-1 conv1, "
                            "max-pool removed): the checkpoint cannot tell")
    return _map_resnet(state, report), report


__all__ = ["LAYOUTS", "ImportReport", "detect_layout", "adapt_state_dict"]
