"""Teacher import: checkpoints of the DFKD reference harness (CIFAR ResNet, WRN) and
CIFAR-adapted torchvision ResNets load onto the zoo and give the source model's logits;
layouts the zoo cannot reproduce (ImageNet stem, the harness' VGG and MobileNetV2,
bottleneck ResNets) are refused with the reason; empty files get a clear error.

The source models are written here, after the reference layouts (module names and forward
computation), so the test needs no other code base."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.errors import CheckpointError
from baselines.spec import DataSpec
from benchmarks.teachers import load_teacher_spec
from benchmarks.zoo.import_ckpt import adapt_state_dict, detect_layout


def _spec(channels=3, classes=10, size=32):
    return DataSpec("test", channels=channels, image_size=size, num_classes=classes,
                    mean=(0.5,) * channels, std=(0.25,) * channels)


# ------------------------------------------------------------ reference-style source models
class RefBlock(nn.Module):
    """Basic block named as in the harness' CIFAR ResNet (conv1/bn1/conv2/bn2/shortcut)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class RefCifarResNet(nn.Module):
    """conv1/bn1/layer1..4/linear, 3x3 stride-1 stem, no max-pool, global average pool."""

    def __init__(self, blocks, in_channels=3, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (n, w) in enumerate(zip(blocks, (64, 128, 256, 512))):
            layers = []
            for j in range(n):
                layers.append(RefBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(1, 5):
            out = getattr(self, f"layer{i}")(out)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class RefWideBlock(nn.Module):
    """Pre-activation block named as in the harness' WRN (bn1/conv1/bn2/conv2/convShortcut)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return (x if self.equal else self.convShortcut(a)) + out


class RefNetworkBlock(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(*[RefWideBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                                     for j in range(n)])

    def forward(self, x):
        return self.layer(x)


class RefWRN(nn.Module):
    """conv1 / block1..3.layer.J / bn1 / fc (depth 6n+4, widths 16k/32k/64k)."""

    def __init__(self, depth, widen, in_channels=3, num_classes=10):
        super().__init__()
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.block1 = RefNetworkBlock(n, w[0], w[1], 1)
        self.block2 = RefNetworkBlock(n, w[1], w[2], 2)
        self.block3 = RefNetworkBlock(n, w[2], w[3], 2)
        self.bn1 = nn.BatchNorm2d(w[3])
        self.fc = nn.Linear(w[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def torchvision_cifar_resnet18(in_channels=3, num_classes=10):
    """torchvision's resnet18 with the usual CIFAR adaptation: 3x3 stride-1 conv1, no max-pool."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN statistics far from the defaults, so a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.5 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(123)
    return model.eval()


def _check_same_logits(source, name, spec, path, capsys=None, layout=None):
    x = torch.randn(3, spec.channels, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = source(x)
    net, info = load_teacher_spec(f"{name}@{path}", spec)
    with torch.no_grad():
        got = net(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    assert want.std() > 1e-2  # the logits are not trivially equal
    if layout is not None:
        assert info["import"]["layout"] == layout
        assert info["import"]["left_over"] == []
        n_src = len(source.state_dict())
        assert info["import"]["mapped"] == n_src
        if capsys is not None:
            err = capsys.readouterr().err
            assert f"recognized the {layout} layout" in err and f"mapped {n_src} tensors" in err
    return info


# ------------------------------------------------------------ layouts that map exactly
@pytest.mark.parametrize("wrap", ["plain", "state_dict+module"])
def test_reference_cifar_resnet18_gives_the_same_logits(tmp_path, capsys, wrap):
    spec = _spec(3, 10, 32)
    src = _randomize(RefCifarResNet((2, 2, 2, 2)), 1)
    sd = src.state_dict()
    obj = sd if wrap == "plain" else {"state_dict": {f"module.{k}": v for k, v in sd.items()},
                                      "epoch": 199, "best_acc1": 95.1}
    torch.save(obj, tmp_path / "r18.pt")
    _check_same_logits(src, "resnet18", spec, tmp_path / "r18.pt", capsys, "cifar-resnet")


def test_reference_cifar_resnet34_16x16_one_channel(tmp_path):
    spec = _spec(1, 4, 16)
    src = _randomize(RefCifarResNet((3, 4, 6, 3), in_channels=1, num_classes=4), 2)
    torch.save(src.state_dict(), tmp_path / "r34.pt")
    _check_same_logits(src, "resnet34", spec, tmp_path / "r34.pt", layout="cifar-resnet")


def test_torchvision_resnet18_cifar_adapted_gives_the_same_logits(tmp_path, capsys):
    spec = _spec(3, 10, 32)
    src = _randomize(torchvision_cifar_resnet18(), 3)
    torch.save({"model": src.state_dict()}, tmp_path / "tv18.pt")
    info = _check_same_logits(src, "resnet18", spec, tmp_path / "tv18.pt", capsys, "torchvision-resnet")
    assert "assumed the CIFAR adaptation" in info["import"]["summary"]


@pytest.mark.parametrize("depth, name", [(16, "wrn16_2"), (40, "wrn40_2")])
def test_reference_wrn_gives_the_same_logits(tmp_path, depth, name):
    spec = _spec(3, 10, 32)
    src = _randomize(RefWRN(depth, 2), 4)
    torch.save(src.state_dict(), tmp_path / "wrn.pt")
    _check_same_logits(src, name, spec, tmp_path / "wrn.pt", layout="cifar-wrn")


def test_zoo_layout_is_left_alone():
    from benchmarks.zoo import ann

    sd = ann.small_cnn(1, 4).state_dict()
    out, report = adapt_state_dict(sd)
    assert out is sd and report.layout == "zoo" and report.mapped == 0


# ------------------------------------------------------------ refused or misfit
def test_torchvision_imagenet_stem_is_refused(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "tv.pt")
    with pytest.raises(CheckpointError, match=r"7x7 stem .*3x3 stride-1 stem and no max-pool"):
        load_teacher_spec(f"resnet18@{tmp_path / 'tv.pt'}", _spec())


def test_reference_vgg_and_mobilenetv2_and_bottleneck_are_refused_with_the_reason():
    vgg = {"block0.0.weight": torch.zeros(64, 3, 3, 3), "block0.0.bias": torch.zeros(64),
           "block0.1.weight": torch.zeros(64), "classifier.weight": torch.zeros(10, 512)}
    with pytest.raises(CheckpointError, match="skips the max-pool after block3"):
        adapt_state_dict(vgg, "vgg.pt")
    mbv2 = {"features.0.0.weight": torch.zeros(32, 3, 3, 3), "features.1.conv.0.0.weight": torch.zeros(32, 1, 3, 3),
            "classifier.1.weight": torch.zeros(10, 1280)}
    with pytest.raises(CheckpointError, match="stride-2 stem"):
        adapt_state_dict(mbv2, "mbv2.pt")
    r50 = {"conv1.weight": torch.zeros(64, 3, 3, 3), "layer1.0.conv3.weight": torch.zeros(256, 64, 1, 1),
           "linear.weight": torch.zeros(10, 2048)}
    with pytest.raises(CheckpointError, match="bottleneck ResNet"):
        adapt_state_dict(r50, "r50.pt")


def test_mapped_checkpoint_of_another_depth_is_refused_with_what_differs(tmp_path):
    src = RefCifarResNet((2, 2, 2, 2))
    torch.save(src.state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError) as ei:
        load_teacher_spec(f"resnet34@{tmp_path / 'r18.pt'}", _spec())
    msg = str(ei.value)
    assert "missing key(s): stages.0.2.body.0.weight" in msg
    assert "looks like a resnet18" in msg and "read as follows: recognized the cifar-resnet layout" in msg


def test_unknown_leftover_tensor_is_reported_not_dropped(tmp_path):
    sd = dict(RefCifarResNet((2, 2, 2, 2)).state_dict())
    sd["aux_head.weight"] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): aux_head.weight.*1 left over \(aux_head.weight\)"):
        load_teacher_spec(f"resnet18@{tmp_path / 'extra.pt'}", _spec())


def test_empty_file_gives_a_clear_error(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        load_teacher_spec(f"resnet18@{tmp_path / 'empty.pt'}", _spec())
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_teacher_spec(f"resnet18@{tmp_path / 'trunc.pt'}", _spec())


def test_detect_layout():
    assert detect_layout(RefCifarResNet((2, 2, 2, 2)).state_dict()) == "cifar-resnet"
    assert detect_layout(RefWRN(16, 2).state_dict()) == "cifar-wrn"
    assert detect_layout({"foo.weight": torch.zeros(1)}) is None
