"""The model zoo: every registered teacher / student builds for any channels / classes /
size, has 3-5 stages whose outputs are the listed feature maps, and (students) spiking
records that reproduce the spikes and carry gradients."""
import pytest
import torch
from torch import nn

from baselines.errors import ConfigError, UnknownNameError
from baselines.hooks import count_hooks
from baselines.models import SpikingStagedModel, StagedModel
from baselines.registry import STUDENTS, TEACHERS
from benchmarks.zoo import ann, count_parameters, snn

ANN = {"small_cnn": ann.small_cnn, "resnet18": ann.resnet18, "resnet34": ann.resnet34,
       "vgg11": ann.vgg11, "vgg16": ann.vgg16, "mobilenetv2": ann.mobilenetv2,
       "wrn40_2": ann.wrn40_2, "wrn16_2": ann.wrn16_2}
SNN = {"spiking_small_cnn": snn.spiking_small_cnn, "spiking_resnet18": snn.spiking_resnet18,
       "spiking_resnet19": snn.spiking_resnet19, "spiking_vgg11": snn.spiking_vgg11,
       "spiking_mobilenet": snn.spiking_mobilenet}
ALL = {**ANN, **SNN}
STAGES = {"small_cnn": 3, "resnet18": 4, "resnet34": 4, "vgg11": 5, "vgg16": 5, "mobilenetv2": 4,
          "wrn40_2": 3, "wrn16_2": 3, "spiking_small_cnn": 3, "spiking_resnet18": 4,
          "spiking_resnet19": 3, "spiking_vgg11": 5, "spiking_mobilenet": 4}
SLOW_64 = {"spiking_resnet18", "spiking_resnet19"}  # ~2 s each on one core


def _check_output(model: StagedModel, x: torch.Tensor, name: str, num_classes: int) -> None:
    seen: list[torch.Tensor] = []
    handles = [s.register_forward_hook(lambda m, i, o: seen.append(o)) for s in model.stages]
    try:
        with torch.no_grad():
            out = model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    n = x.shape[0]
    assert out.logits.shape == (n, num_classes)
    assert torch.isfinite(out.logits).all()
    assert model.num_stages == STAGES[name] and 3 <= model.num_stages <= 5
    assert isinstance(model.stages, nn.ModuleList)
    # every stage output is listed, as a feature map [N, C, H, W] (SNN: its mean over T)
    assert len(out.features) == len(seen) == model.num_stages
    for f, raw in zip(out.features, seen):
        assert f.dim() == 4 and f.shape[0] == n
        ref = raw.mean(0) if model.is_spiking else raw
        assert torch.equal(f, ref)
    sizes = [f.shape[-1] for f in out.features]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < x.shape[-1]
    assert out.pooled.shape == (n, out.features[-1].shape[1])
    assert out.spiking is None


def _build(name, c, k, s):
    torch.manual_seed(0)
    return ALL[name](in_channels=c, num_classes=k, image_size=s)


@pytest.mark.parametrize("name", list(ALL))
def test_builds_1ch_10cls_32(name):
    model = _build(name, 1, 10, 32)
    assert isinstance(model, SpikingStagedModel if name in SNN else StagedModel)
    assert model.is_spiking == (name in SNN)
    _check_output(model, torch.randn(2, 1, 32, 32), name, 10)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_64 else n
                                  for n in ALL])
def test_builds_3ch_100cls_64(name):
    model = _build(name, 3, 100, 64)
    _check_output(model, torch.randn(2, 3, 64, 64), name, 100)


@pytest.mark.parametrize("name", list(ALL))
def test_small_inputs_and_every_parameter_trained(name):
    """16x16 inputs work (global pooling, ceil-mode pools) and the loss reaches every parameter."""
    model = _build(name, 2, 7, 16)
    model(torch.randn(2, 2, 16, 16)).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing[:5]}"


def test_ann_bn_layers_are_batchnorm2d():
    for name, fn in ANN.items():
        m = fn(3, 10, 32)
        bns = [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
        assert bns and all(type(b) is nn.BatchNorm2d for b in bns), name
        convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
        assert convs[0].in_channels == 3, name


@pytest.mark.parametrize("c,k", [(1, 10), (3, 100)])
def test_small_cnn_size(c, k):
    for fn in (ann.small_cnn, snn.spiking_small_cnn):
        assert 100_000 <= count_parameters(fn(c, k, 32)) <= 200_000


def test_parameter_counts_match_the_literature():
    """CIFAR ResNet-18 11.2M, ResNet-34 21.3M, WRN-40-2 2.2M, WRN-16-2 0.7M, VGG-11-BN 9.2M."""
    expect = {"resnet18": 11.17e6, "resnet34": 21.28e6, "wrn40_2": 2.24e6, "wrn16_2": 0.69e6,
              "vgg11": 9.23e6, "vgg16": 14.72e6, "mobilenetv2": 2.24e6, "spiking_resnet19": 12.57e6}
    for name, n in expect.items():
        assert abs(count_parameters(ALL[name](3, 10, 32)) - n) / n < 0.01, name


def test_registry_entries_resolve_with_docstrings():
    assert set(ANN) - {"small_cnn"} <= set(TEACHERS.names())
    assert "smallcnn" in TEACHERS.names()
    for reg in (TEACHERS, STUDENTS):
        for name in reg.names():
            fn = reg.get(name)
            assert callable(fn) and (fn.__doc__ or "").strip(), name
    assert {"spiking_smallcnn", "spiking_resnet18", "spiking_resnet19", "spiking_vgg11",
            "spiking_mobilenet", "smallcnn", "resnet18"} <= set(STUDENTS.names())


def test_ann_students_accept_the_spiking_keys():
    m = STUDENTS.get("smallcnn")(1, 10, 32, T=4, neuron="lif", surrogate="atan")
    assert not m.is_spiking


def test_bad_arguments_raise_helpful_errors():
    with pytest.raises(UnknownNameError, match="plif"):
        snn.spiking_small_cnn(neuron="plf")
    with pytest.raises(UnknownNameError, match="sigmoid"):
        snn.spiking_small_cnn(surrogate="sigmod")
    with pytest.raises(ConfigError, match="width"):
        ann.small_cnn(widht=16)
    with pytest.raises(ConfigError, match="v_threshold"):
        snn.spiking_resnet18(v_treshold=0.5)
    with pytest.raises(ConfigError, match="num_classes"):
        ann.resnet18(3, 0, 32)
    with pytest.raises(ConfigError, match="T"):
        snn.spiking_vgg11(T=0)


@pytest.mark.parametrize("neuron,cls", [("lif", "LIFNode"), ("if", "IFNode"), ("plif", "ParametricLIFNode")])
@pytest.mark.parametrize("surrogate,scls", [("atan", "ATan"), ("sigmoid", "Sigmoid")])
def test_neuron_and_surrogate_selection(neuron, cls, surrogate, scls):
    from baselines.spiking import neuron_layers

    m = snn.spiking_small_cnn(1, 10, 16, T=3, neuron=neuron, surrogate=surrogate, v_threshold=0.75)
    layers = neuron_layers(m)
    assert len(layers) == 4
    for _, node in layers:
        assert type(node).__name__ == cls and type(node.surrogate_function).__name__ == scls
        assert node.step_mode == "m" and node.detach_reset and node.v_threshold == 0.75
    assert m.T == 3


# --------------------------------------------------------------------------- spiking behaviour
@pytest.mark.parametrize("name", ["spiking_small_cnn", "spiking_resnet18"])
def test_student_resets_itself(name):
    model = _build(name, 1, 10, 16)
    for n in (4, 3):  # different batch sizes, a backward after each
        x = torch.randn(n, 1, 16, 16)
        out = model(x)
        assert out.shape == (n, 10)
        out.sum().backward()
    x = torch.randn(2, 1, 16, 16)
    a, b = model(x), model(x)  # stale state would change the second pass
    assert torch.equal(a, b)
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", list(SNN))
def test_stage_outputs_are_spikes(name):
    """Stage features are spike rates: multiples of 1/T in [0, 1] (SOPs assume binary inputs)."""
    model = _build(name, 1, 10, 16)
    with torch.no_grad():
        out = model.forward_features(torch.randn(2, 1, 16, 16) * 3)
    for f in out.features:
        k = f * model.T
        assert torch.allclose(k, k.round(), atol=1e-5) and f.min() >= 0 and f.max() <= 1


@pytest.mark.parametrize("neuron", ["lif", "if", "plif"])
@pytest.mark.parametrize("v_reset", [0.0, None])
def test_v_pre_reproduces_spikes(neuron, v_reset):
    model = snn.spiking_small_cnn(1, 10, 16, T=4, neuron=neuron, v_reset=v_reset)
    out = model.forward_features(torch.randn(6, 1, 16, 16) * 3, record_spiking=True)
    assert out.spiking is not None and len(out.spiking) == 4
    assert sum(float(s.spikes.detach().sum()) for s in out.spiking) > 0  # the check is not vacuous
    for s in out.spiking:
        assert s.v_pre.shape == s.spikes.shape and s.v_pre.shape[0] == 4
        assert torch.equal(s.spikes, (s.v_pre >= s.v_threshold).to(s.spikes.dtype)), s.name
    assert [s.stage for s in out.spiking] == [0, 0, 1, 2]


@pytest.mark.parametrize("name", ["spiking_small_cnn", "spiking_resnet18"])
def test_v_pre_gradient_reaches_weights_and_image(name):
    model = _build(name, 1, 10, 16)
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    out = model.forward_features(x, record_spiking=True)
    loss = sum(s.v_pre.square().mean() for s in out.spiking)
    loss.backward()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert x.grad is not None and x.grad.abs().sum() > 0
    for c in (convs[0], convs[-1]):
        assert c.weight.grad is not None and c.weight.grad.abs().sum() > 0


def test_record_spiking_false_registers_no_hooks():
    model = snn.spiking_small_cnn(1, 10, 16)
    during: list[int] = []
    probe = model.fc.register_forward_pre_hook(lambda m, i: during.append(count_hooks(model)))
    before = count_hooks(model)
    model.forward_features(torch.randn(2, 1, 16, 16))
    model.forward_features(torch.randn(2, 1, 16, 16), record_spiking=True)
    assert during == [before, before + 4]  # only the probe, then the probe + 4 neuron hooks
    assert count_hooks(model) == before
    probe.remove()


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_v_pre_sample_equals_full_membrane_at_the_sampled_sites(neuron):
    """Recomputing H at sampled sites only gives exactly the full H there, with gradient."""
    from baselines.models import gather_sites, sample_sites
    model = snn.spiking_small_cnn(1, 10, 16, T=4, neuron=neuron)
    x = torch.randn(6, 1, 16, 16, requires_grad=True)
    out = model.forward_features(x * 3, record_spiking=True)
    rec = out.spiking[0]  # [T, 6, C, 16, 16]: 1536 sites
    torch.manual_seed(3)
    part = rec.v_pre_sample(200)
    assert not rec.computed  # the full membrane was never built
    torch.manual_seed(3)
    idx = sample_sites(rec.spikes, 200)
    full = gather_sites(rec.v_pre, idx)
    assert part.shape == (4, 200, rec.spikes.shape[2])
    assert torch.allclose(part, full, atol=1e-6)
    spikes = gather_sites(rec.spikes, idx)
    assert torch.equal((part >= rec.v_threshold).float(), spikes)
    part.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # fewer sites than asked: the whole layer, [T, N*H*W, C]
    last = out.spiking[-1]
    n_sites = last.spikes.shape[1] * last.spikes[0, 0, 0].numel()
    assert last.v_pre_sample(n_sites + 1).shape == (4, n_sites, last.spikes.shape[2])
