"""Spiking students (SpikingJelly 2.0, multi-step, direct encoding) implementing
:class:`SpikingStagedModel`.

Built from ``layer.SeqToANNContainer`` (conv + BN folded over T), neurons in multi-step
mode and a ``layer.Linear(step_mode='m')`` classifier on [T, N, d]; the base class repeats
the image over T (direct encoding), averages logits over T and resets the neurons at the
start of every forward. CIFAR-style stems (3x3, stride 1, no max-pool) throughout; pooling
inside the networks is max-pooling, so every conv/linear after the first layer sees binary
spikes (what the SOP count of :mod:`baselines.snn_metrics` assumes).

- spiking_small_cnn: the spiking twin of ``ann.small_cnn`` (conv-BN-LIF, 3 stages).
- spiking_small_cnn_avg: the same with 2x2 average pooling: every layer has a NIR node
  (NIR has no max-pool), so ``dfkd export --format nir`` can write it. The convolutions
  after a pool then see spike rates (multiples of 1/4), not binary spikes.
- spiking_resnet18: CIFAR ResNet-18 with spiking basic blocks
  (conv-BN-LIF, conv-BN, + shortcut, LIF), as in Zheng et al., AAAI 2021 ("tdBN").
- spiking_resnet19: the ResNet-19 of Zheng et al. (2021): 128-channel stem, stages of
  3/3/2 basic blocks with widths 128/256/512. (Their extra 256-unit FC layer is omitted:
  every model here ends with global pooling + one linear layer.)
- spiking_vgg11: VGG-11 with BN, 5 stages each ended by max-pool.
- spiking_mobilenet: MobileNetV1-style depthwise-separable blocks (Howard et al., 2017),
  CIFAR stride-1 stem, 13 blocks in 4 stages.

Neurons (``neuron=``): ``lif`` (LIFNode, tau=2.0), ``if`` (IFNode), ``plif``
(ParametricLIFNode, init_tau=2.0; Fang et al., ICCV 2021); all with v_threshold=1.0, hard
reset to v_reset=0.0 and detach_reset=True. Surrogate gradients (``surrogate=``): ``atan``
(alpha=2) or ``sigmoid`` (alpha=4). Override with the keyword arguments tau, v_threshold,
v_reset (None = soft reset), detach_reset, alpha.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from baselines.errors import ConfigError, UnknownNameError
from baselines.models import SpikingStagedModel

from . import check_build_args, init_weights

NEURONS = ("lif", "if", "plif")
SURROGATES = ("atan", "sigmoid")
NEURON_KEYS = ("tau", "v_threshold", "v_reset", "detach_reset", "alpha")

SpikeFn = Callable[[], nn.Module]


def neuron_factory(neuron: str = "lif", surrogate: str = "atan", tau: float = 2.0,
                   v_threshold: float = 1.0, v_reset: float | None = 0.0,
                   detach_reset: bool = True, alpha: float | None = None,
                   backend: str = "eager") -> SpikeFn:
    """A zero-argument constructor of multi-step neuron layers with these settings.

    backend: "eager" (SpikingJelly as is), "compiled" (the library's own LIF / IF
    recurrence through torch.compile on CPU tensors, :mod:`baselines.neuron_backend`;
    bit-identical spikes; PLIF stays eager) or "compiled-cl" (the same recurrence reading
    channels_last activations in place and the stem's time broadcast unexpanded; the
    student's convolutions go channels_last, see :func:`_finish`).
    Raises UnknownNameError for a neuron / surrogate / backend name outside NEURONS /
    SURROGATES / BACKENDS.
    """
    from spikingjelly.activation_based import neuron as sj_neuron
    from spikingjelly.activation_based import surrogate as sj_surrogate

    from baselines.neuron_backend import BACKENDS, compiled, shared_surrogate

    nkey, skey = str(neuron).lower(), str(surrogate).lower()
    if nkey not in NEURONS:
        raise UnknownNameError("neuron", str(neuron), list(NEURONS))
    if skey not in SURROGATES:
        raise UnknownNameError("surrogate", str(surrogate), list(SURROGATES))
    if str(backend).lower() not in BACKENDS:
        raise UnknownNameError("neuron backend", str(backend), list(BACKENDS))
    fast = str(backend).lower() in ("compiled", "compiled-cl")
    layout_aware = str(backend).lower() == "compiled-cl"
    if float(tau) <= 1.0 and nkey != "if":
        raise ConfigError(f"neuron tau must be > 1 (the decay is 1/tau), got {tau}.")
    if float(v_threshold) <= (0.0 if v_reset is None else float(v_reset)):
        raise ConfigError(f"v_threshold ({v_threshold}) must exceed v_reset ({v_reset}).")
    sg_cls = sj_surrogate.ATan if skey == "atan" else sj_surrogate.Sigmoid
    sg_kw = {} if alpha is None else {"alpha": float(alpha)}
    common = dict(v_threshold=float(v_threshold),
                  v_reset=None if v_reset is None else float(v_reset),
                  detach_reset=bool(detach_reset), step_mode="m")

    def make() -> nn.Module:
        sg = sg_cls(**sg_kw)
        if fast and nkey != "plif":
            sg = shared_surrogate(sg_cls, float(sg.alpha))
        if nkey == "lif":
            cls = compiled(sj_neuron.LIFNode, layout_aware) if fast else sj_neuron.LIFNode
            return cls(tau=float(tau), surrogate_function=sg, **common)
        if nkey == "plif":
            return sj_neuron.ParametricLIFNode(init_tau=float(tau), surrogate_function=sg, **common)
        cls = compiled(sj_neuron.IFNode, layout_aware) if fast else sj_neuron.IFNode
        return cls(surrogate_function=sg, **common)

    return make


def seq_conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Module:
    """Conv(k x k, 'same' padding, no bias) + BatchNorm2d applied to [T, N, C, H, W]."""
    from spikingjelly.activation_based import layer

    return layer.SeqToANNContainer(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


def seq_maxpool() -> nn.Module:
    """2x2 max-pool (ceil mode) over [T, N, C, H, W]; keeps spikes binary."""
    from spikingjelly.activation_based import layer

    return layer.SeqToANNContainer(nn.MaxPool2d(2, ceil_mode=True))


def seq_avgpool() -> nn.Module:
    """2x2 average pool (stride 2, floor) over [T, N, C, H, W]: what NIR (``AvgPool2d``) and
    neuromorphic back-ends express; its output is a spike *rate* in {0, 1/4, ..., 1}."""
    from spikingjelly.activation_based import layer

    return layer.SeqToANNContainer(nn.AvgPool2d(2))


def seq_linear(d: int, k: int) -> nn.Module:
    """Linear classifier over [T, N, d]."""
    from spikingjelly.activation_based import layer

    return layer.Linear(d, k, step_mode="m")


# --------------------------------------------------------------------------- small CNN
class SpikingSmallCNN(SpikingStagedModel):
    """stem conv-BN-SN (C->w) | conv-BN-SN-pool (w, 2w, 4w): the twin of ann.SmallCNN."""

    def __init__(self, in_channels: int, num_classes: int, T: int, spike: SpikeFn,
                 width: int = 32, pool: str = "max") -> None:
        super().__init__(T)
        w = width
        make_pool = seq_avgpool if pool == "avg" else seq_maxpool
        self.stem = nn.Sequential(seq_conv_bn(in_channels, w), spike())
        self.stages = nn.ModuleList(
            nn.Sequential(seq_conv_bn(cin, cout), spike(), make_pool())
            for cin, cout in ((w, w), (w, 2 * w), (2 * w, 4 * w))
        )
        self.fc = seq_linear(4 * w, num_classes)
        init_weights(self)


# --------------------------------------------------------------------------- ResNets
class SpikingBasicBlock(nn.Module):
    """SN(BN(conv(SN(BN(conv(x))))) + shortcut(x)); shortcut = identity or 1x1 conv-BN."""

    def __init__(self, cin: int, cout: int, stride: int, spike: SpikeFn) -> None:
        super().__init__()
        self.conv1, self.sn1 = seq_conv_bn(cin, cout, 3, stride), spike()
        self.conv2 = seq_conv_bn(cout, cout, 3)
        self.shortcut = (seq_conv_bn(cin, cout, 1, stride)
                         if stride != 1 or cin != cout else nn.Identity())
        self.sn2 = spike()

    def forward(self, x: Tensor) -> Tensor:
        return self.sn2(self.conv2(self.sn1(self.conv1(x))) + self.shortcut(x))


class SpikingResNet(SpikingStagedModel):
    """CIFAR spiking ResNet: 3x3 stem conv-BN-SN, stages of spiking basic blocks."""

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], in_channels: int,
                 num_classes: int, T: int, spike: SpikeFn, stem_width: int | None = None) -> None:
        super().__init__(T)
        cin = stem_width or widths[0]
        self.stem = nn.Sequential(seq_conv_bn(in_channels, cin), spike())
        stages = []
        for i, (n, w) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(SpikingBasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, spike))
                cin = w
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = seq_linear(cin, num_classes)
        init_weights(self)


# --------------------------------------------------------------------------- VGG
SVGG11_CFG = [[64], [128], [256, 256], [512, 512], [512, 512]]


class SpikingVGG(SpikingStagedModel):
    """Spiking VGG with BN: 5 stages of conv-BN-SN blocks, each ended by a 2x2 max-pool."""

    def __init__(self, cfg: list[list[int]], in_channels: int, num_classes: int, T: int,
                 spike: SpikeFn) -> None:
        super().__init__(T)
        cin, stages = in_channels, []
        for widths in cfg:
            layers: list[nn.Module] = []
            for w in widths:
                layers += [seq_conv_bn(cin, w), spike()]
                cin = w
            layers.append(seq_maxpool())
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = seq_linear(cin, num_classes)
        init_weights(self)


# --------------------------------------------------------------------------- MobileNet
# (out channels, stride) per depthwise-separable block, grouped into 4 stages (CIFAR).
SMOBILENET_CFG = [[(64, 1), (128, 2), (128, 1)], [(256, 2), (256, 1)],
                  [(512, 2)] + [(512, 1)] * 5, [(1024, 2), (1024, 1)]]


class SpikingMobileNet(SpikingStagedModel):
    """Spiking MobileNetV1: stride-1 3x3 stem (32), blocks dw3x3-BN-SN-pw1x1-BN-SN."""

    def __init__(self, in_channels: int, num_classes: int, T: int, spike: SpikeFn,
                 stem_width: int = 32) -> None:
        super().__init__(T)
        self.stem = nn.Sequential(seq_conv_bn(in_channels, stem_width), spike())
        cin, stages = stem_width, []
        for cfg in SMOBILENET_CFG:
            layers: list[nn.Module] = []
            for cout, s in cfg:
                layers += [seq_conv_bn(cin, cin, 3, s, groups=cin), spike(),
                           seq_conv_bn(cin, cout, 1), spike()]
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.fc = seq_linear(cin, num_classes)
        init_weights(self)


# --------------------------------------------------------------------------- factories
def _spike(name: str, in_channels: int, num_classes: int, image_size: int, T: int, neuron: str,
           surrogate: str, kw: dict[str, Any], extra: tuple[str, ...] = ()) -> tuple[SpikeFn, dict]:
    check_build_args(name, in_channels, num_classes, image_size, kw,
                     (*NEURON_KEYS, "neuron_backend", "bn_weight", *extra))
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ConfigError(f"{name}: T (time steps) must be a positive int, got {T!r}.")
    spike = neuron_factory(neuron, surrogate, backend=kw.get("neuron_backend", "eager"),
                           **{k: v for k, v in kw.items() if k in NEURON_KEYS})
    return spike, {k: v for k, v in kw.items() if k in extra}


def _finish(model: SpikingStagedModel, kw: dict[str, Any]) -> SpikingStagedModel:
    """Apply the build options common to every student: ``bn_weight`` (initial BatchNorm
    scale gamma; default 1.0). A larger gamma makes a freshly built student fire more
    (pre-activations ~ N(0, gamma^2) against V_th = 1). ``neuron_backend="compiled-cl"``
    converts the conv weights to channels_last and makes the model convert its input."""
    from baselines.neuron_backend import memory_format

    fmt = memory_format(kw.get("neuron_backend", "eager"))
    if fmt is not torch.contiguous_format:
        model.to(memory_format=fmt)
        model.input_memory_format = fmt
    if "bn_weight" in kw:
        w = kw["bn_weight"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            raise ConfigError(f"bn_weight must be a positive number, got {w!r}.")
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, float(w))
    return model


def spiking_small_cnn(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, T: int = 4,
                      neuron: str = "lif", surrogate: str = "atan", **kw) -> SpikingStagedModel:
    """Spiking small CNN, 4 conv-BN-LIF (3 stages, ~0.1M params; kw: width=32) for CPU runs."""
    spike, extra = _spike("spiking_small_cnn", in_channels, num_classes, image_size, T, neuron,
                          surrogate, kw, ("width",))
    return _finish(SpikingSmallCNN(in_channels, num_classes, T, spike, **extra), kw)


def spiking_small_cnn_avg(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, T: int = 4,
                          neuron: str = "lif", surrogate: str = "atan", **kw) -> SpikingStagedModel:
    """Spiking small CNN with 2x2 average pooling instead of max-pooling (NIR-exportable)."""
    spike, extra = _spike("spiking_small_cnn_avg", in_channels, num_classes, image_size, T, neuron,
                          surrogate, kw, ("width",))
    return _finish(SpikingSmallCNN(in_channels, num_classes, T, spike, pool="avg", **extra), kw)


def spiking_resnet18(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, T: int = 4,
                     neuron: str = "lif", surrogate: str = "atan", **kw) -> SpikingStagedModel:
    """Spiking ResNet-18, CIFAR variant (spiking basic blocks, 4 stages, 11.2M params)."""
    spike, _ = _spike("spiking_resnet18", in_channels, num_classes, image_size, T, neuron, surrogate, kw)
    return _finish(SpikingResNet((2, 2, 2, 2), (64, 128, 256, 512), in_channels, num_classes, T, spike), kw)


def spiking_resnet19(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, T: int = 4,
                     neuron: str = "lif", surrogate: str = "atan", **kw) -> SpikingStagedModel:
    """Spiking ResNet-19 (Zheng et al. 2021: 3/3/2 blocks, widths 128/256/512, 3 stages)."""
    spike, _ = _spike("spiking_resnet19", in_channels, num_classes, image_size, T, neuron, surrogate, kw)
    return _finish(SpikingResNet((3, 3, 2), (128, 256, 512), in_channels, num_classes, T, spike), kw)


def spiking_vgg11(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, T: int = 4,
                  neuron: str = "lif", surrogate: str = "atan", **kw) -> SpikingStagedModel:
    """Spiking VGG-11 with BN (5 conv stages each ended by max-pool, linear head)."""
    spike, _ = _spike("spiking_vgg11", in_channels, num_classes, image_size, T, neuron, surrogate, kw)
    return _finish(SpikingVGG(SVGG11_CFG, in_channels, num_classes, T, spike), kw)


def spiking_mobilenet(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, T: int = 4,
                      neuron: str = "lif", surrogate: str = "atan", **kw) -> SpikingStagedModel:
    """Spiking MobileNetV1 (depthwise-separable conv-BN-LIF blocks, 4 stages, 3.2M params)."""
    spike, _ = _spike("spiking_mobilenet", in_channels, num_classes, image_size, T, neuron, surrogate, kw)
    return _finish(SpikingMobileNet(in_channels, num_classes, T, spike), kw)
