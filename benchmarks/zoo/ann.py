"""CIFAR-style ANN teachers (and ANN students) implementing :class:`StagedModel`.

All convolutions are followed by ``nn.BatchNorm2d`` (the DeepInversion BN-statistics loss
hooks them), every model ends with global average pooling + one linear layer, and stages
are the usual feature-map groups used by feature distillation:

- ResNet-18/34 (He et al., 2016), CIFAR variant: 3x3 stem, no max-pool, 4 stages.
- VGG-11/16 with BN (Simonyan & Zisserman, 2015), CIFAR variant: 5 stages, each a conv
  block ended by a 2x2 max-pool (ceil mode, so 16x16 inputs work), linear classifier.
- MobileNetV2 (Sandler et al., 2018), CIFAR variant: stride-1 stem and first stride-2
  block made stride 1; the 17 inverted-residual blocks grouped into 4 stages.
- WRN-40-2 / WRN-16-2 (Zagoruyko & Komodakis, 2016): pre-activation wide blocks, 3 stages
  (the final BN-ReLU belongs to the last stage).
- small_cnn: 4 conv-BN-ReLU layers (stem + 3 stages, widths 32/32/64/128, ~0.1M
  parameters) for CPU work.

ANN factories also appear in the students registry; there they receive (and ignore) the
spiking keys ``T``, ``neuron`` and ``surrogate``.
"""
from __future__ import annotations

from torch import Tensor, nn

from baselines.models import StagedModel

from . import SPIKING_KEYS, check_build_args, init_weights


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """[Conv(k x k, 'same' padding, no bias), BatchNorm2d]."""
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


# --------------------------------------------------------------------------- small CNN
class SmallCNN(StagedModel):
    """stem conv(C->w) | [conv(w->w), pool] | [conv(w->2w), pool] | [conv(2w->4w), pool]."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(*conv_bn(in_channels, w), nn.ReLU())
        self.stages = nn.ModuleList(
            nn.Sequential(*conv_bn(cin, cout), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True))
            for cin, cout in ((w, w), (w, 2 * w), (2 * w, 4 * w))
        )
        self.fc = nn.Linear(4 * w, num_classes)
        init_weights(self)


# --------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut (identity or 1x1 conv-BN), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(),
                                  *conv_bn(cout, cout, 3))
        self.shortcut = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(StagedModel):
    """CIFAR ResNet: 3x3 stem (64), 4 stages of basic blocks (64/128/256/512, strides 1/2/2/2)."""

    def __init__(self, blocks: tuple[int, ...], in_channels: int = 3, num_classes: int = 10,
                 widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, widths[0]), nn.ReLU())
        cin, stages = widths[0], []
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)


# --------------------------------------------------------------------------- VGG
VGG_CFG = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


class VGG(StagedModel):
    """VGG with BN: 5 stages of conv-BN-ReLU blocks, each ended by a 2x2 max-pool."""

    def __init__(self, cfg: list[list[int]], in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        cin, stages = in_channels, []
        for widths in cfg:
            layers: list[nn.Module] = []
            for w in widths:
                layers += [*conv_bn(cin, w), nn.ReLU()]
                cin = w
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)


# --------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    """1x1 expand (ratio t) - 3x3 depthwise - 1x1 linear projection; residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hid = cin * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [*conv_bn(cin, hid, 1), nn.ReLU6()]
        layers += [*conv_bn(hid, hid, 3, stride, groups=hid), nn.ReLU6(),
                   *conv_bn(hid, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.residual else self.body(x)


# (expansion t, channels c, repeats n, stride s, stage index); CIFAR: second row stride 1.
MBV2_CFG = [(1, 16, 1, 1, 0), (6, 24, 2, 1, 0), (6, 32, 3, 2, 1), (6, 64, 4, 2, 2),
            (6, 96, 3, 1, 2), (6, 160, 3, 2, 3), (6, 320, 1, 1, 3)]


class MobileNetV2(StagedModel):
    """CIFAR MobileNetV2: stride-1 3x3 stem (32), 17 inverted residuals in 4 stages, 1x1 conv to 1280."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, last: int = 1280) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(in_channels, 32), nn.ReLU6())
        groups: list[list[nn.Module]] = [[] for _ in range(4)]
        cin = 32
        for t, c, n, s, k in MBV2_CFG:
            for j in range(n):
                groups[k].append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        groups[3] += [*conv_bn(cin, last, 1), nn.ReLU6()]
        self.stages = nn.ModuleList(nn.Sequential(*g) for g in groups)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)


# --------------------------------------------------------------------------- WideResNet
class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv(stride)-BN-ReLU-conv + shortcut (1x1 conv if shapes change)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(a))))
        # as in the reference code: a changed shape takes the shortcut from the activation
        return out + (x if self.equal else self.shortcut(a))


class WideResNet(StagedModel):
    """WRN-d-k: 3x3 stem (16), 3 stages of (d-4)/6 pre-activation blocks, widths 16k/32k/64k."""

    def __init__(self, depth: int, widen: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        cin, stages = 16, []
        for i, w in enumerate(widths):
            blocks: list[nn.Module] = []
            for j in range(n):
                blocks.append(WideBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            stages.append(blocks)
        stages[-1] += [nn.BatchNorm2d(cin), nn.ReLU()]
        self.stages = nn.ModuleList(nn.Sequential(*b) for b in stages)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)


# --------------------------------------------------------------------------- factories
def _args(name: str, in_channels: int, num_classes: int, image_size: int, kw: dict,
          extra: tuple[str, ...] = ()) -> dict:
    check_build_args(name, in_channels, num_classes, image_size, kw, (*SPIKING_KEYS, *extra))
    return {k: v for k, v in kw.items() if k in extra}


def small_cnn(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **kw) -> StagedModel:
    """Small CNN, 4 conv-BN-ReLU (3 stages, ~0.1M params; kw: width=32) for CPU runs."""
    return SmallCNN(in_channels, num_classes, **_args("small_cnn", in_channels, num_classes,
                                                      image_size, kw, ("width",)))


def resnet18(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **kw) -> StagedModel:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool, 4 stages, 11.2M params)."""
    _args("resnet18", in_channels, num_classes, image_size, kw)
    return ResNet((2, 2, 2, 2), in_channels, num_classes)


def resnet34(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **kw) -> StagedModel:
    """ResNet-34, CIFAR variant (3x3 stem, no max-pool, 4 stages, 21.3M params)."""
    _args("resnet34", in_channels, num_classes, image_size, kw)
    return ResNet((3, 4, 6, 3), in_channels, num_classes)


def vgg11(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **kw) -> StagedModel:
    """VGG-11 with BN, CIFAR variant (5 conv stages each ended by max-pool, linear head)."""
    _args("vgg11", in_channels, num_classes, image_size, kw)
    return VGG(VGG_CFG["vgg11"], in_channels, num_classes)


def vgg16(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **kw) -> StagedModel:
    """VGG-16 with BN, CIFAR variant (5 conv stages each ended by max-pool, linear head)."""
    _args("vgg16", in_channels, num_classes, image_size, kw)
    return VGG(VGG_CFG["vgg16"], in_channels, num_classes)


def mobilenetv2(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **kw) -> StagedModel:
    """MobileNetV2, CIFAR variant (stride-1 stem, inverted residuals in 4 stages)."""
    _args("mobilenetv2", in_channels, num_classes, image_size, kw)
    return MobileNetV2(in_channels, num_classes)


def wrn40_2(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **kw) -> StagedModel:
    """Wide ResNet 40-2 (pre-activation, 3 stages, 2.2M params)."""
    _args("wrn40_2", in_channels, num_classes, image_size, kw)
    return WideResNet(40, 2, in_channels, num_classes)


def wrn16_2(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **kw) -> StagedModel:
    """Wide ResNet 16-2 (pre-activation, 3 stages, 0.7M params)."""
    _args("wrn16_2", in_channels, num_classes, image_size, kw)
    return WideResNet(16, 2, in_channels, num_classes)
