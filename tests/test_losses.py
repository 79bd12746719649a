"""Loss terms of the baselines: hand computations, hook hygiene, bank bookkeeping."""
import math

import pytest
import torch
import torch.nn.functional as F
from tinymodels import TinyANN, tiny_pair

from baselines.errors import ConfigError
from baselines.hooks import count_hooks
from baselines.losses import (BNStatLoss, InstanceFeatures, MemoryBank, ProjectionHead, adi_loss,
                              bn_layers, channel_stats, class_loss, contrastive_loss, feature_layers,
                              js_divergence, kl_per_sample, l2_norm, masked_kl_adversarial,
                              total_variation)
from baselines.synthesizers.generator import Generator, check_generator_size, random_resized_crop


# -- BN statistics ---------------------------------------------------------------------------
def _bn_inputs_by_hand(t: TinyANN, x: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of the three BN layers of TinyANN, computed without hooks."""
    ins = []
    h = t.stem[0](x)
    ins.append(h)
    h = t.stem[2](t.stem[1](h))
    for stage in t.stages:
        h = stage[0](h)
        ins.append(h)
        h = stage[2](stage[1](h))
    return ins


def _r(bn, h, mean_override=None, var_override=None):
    mean = h.mean(dim=(0, 2, 3))
    var = ((h - mean.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
    if mean_override is not None:
        mean, var = mean_override(mean), var_override(var)
    return torch.sqrt(((bn.running_var - var) ** 2).sum()) + torch.sqrt(((bn.running_mean - mean) ** 2).sum())


def test_channel_stats_are_biased():
    x = torch.randn(3, 2, 4, 5)
    mean, var = channel_stats(x)
    ref = x.transpose(0, 1).reshape(2, -1)
    assert torch.allclose(mean, ref.mean(1))
    assert torch.allclose(var, ref.var(1, unbiased=False))
    assert not torch.allclose(var, ref.var(1, unbiased=True))


def test_bn_loss_matches_hand_computation():
    t, _ = tiny_pair()
    x = torch.randn(5, 1, 8, 8)
    bns = bn_layers(t)
    assert len(bns) == 3
    with torch.no_grad():
        expected = [_r(bn, h) for bn, h in zip(bns, _bn_inputs_by_hand(t, x))]
    n0 = count_hooks(t)
    with BNStatLoss(t, first_multiplier=10.0) as bnl:
        assert count_hooks(t) == n0 + 3
        t(x)
        got = bnl.layer_losses()
        total = bnl.loss()
    assert count_hooks(t) == n0
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-5)
    assert torch.allclose(total, 10 * expected[0] + expected[1] + expected[2], rtol=1e-5)
    assert float(total) > 0


def test_bn_loss_is_differentiable_wrt_input():
    t, _ = tiny_pair()
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    with BNStatLoss(t) as bnl:
        t(x)
        g, = torch.autograd.grad(bnl.loss(), x)
    assert g.abs().sum() > 0


def test_bn_loss_momentum_blends_with_ema():
    t, _ = tiny_pair()
    m = 0.9
    x1, x2 = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8) + 0.5
    bnl = BNStatLoss(t, momentum=m)
    with bnl:
        t(x1)
        first = bnl.loss()
    with torch.no_grad():
        plain1 = sum(_r(bn, h) for bn, h in zip(bn_layers(t), _bn_inputs_by_hand(t, x1)))
    assert torch.allclose(first, plain1, rtol=1e-5)  # no EMA yet: plain statistics
    bnl.update_ema()  # ema <- stats of x1
    ema1 = [tuple(s.clone() for s in e) for e in bnl.ema]
    with bnl:
        t(x2)
        second = bnl.loss()
    with torch.no_grad():
        hand = 0
        for bn, h, (em, ev) in zip(bn_layers(t), _bn_inputs_by_hand(t, x2), ema1):
            hand = hand + _r(bn, h, lambda mu: (1 - m) * mu + m * em, lambda v: (1 - m) * v + m * ev)
    assert torch.allclose(second, hand, rtol=1e-5)
    bnl.update_ema()  # ema <- m ema + (1 - m) stats(x2)
    with torch.no_grad():
        h0 = _bn_inputs_by_hand(t, x2)[0]
        mu2, var2 = channel_stats(h0)
    assert torch.allclose(bnl.ema[0][0], m * ema1[0][0] + (1 - m) * mu2, atol=1e-6)
    assert torch.allclose(bnl.ema[0][1], m * ema1[0][1] + (1 - m) * var2, atol=1e-6)
    # persistence round trip
    other = BNStatLoss(t, momentum=m)
    other.load_state_dict(bnl.state_dict())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(other.ema, bnl.ema))


def test_bn_loss_hooks_removed_on_error():
    t, _ = tiny_pair()
    n0 = count_hooks(t)
    with pytest.raises(RuntimeError):
        with BNStatLoss(t):
            raise RuntimeError("boom")
    assert count_hooks(t) == n0


def test_bn_loss_before_forward_is_an_error():
    t, _ = tiny_pair()
    with BNStatLoss(t) as bnl, pytest.raises(RuntimeError, match="before a forward"):
        bnl.loss()


# -- adversarial -----------------------------------------------------------------------------
def test_js_divergence_matches_reference_formula():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    T = 3.0
    p, q = F.softmax(s / T, 1), F.softmax(t / T, 1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    hand = 0.5 * (m * (m.log() - p.log())).sum(1).mean() + 0.5 * (m * (m.log() - q.log())).sum(1).mean()
    js = js_divergence(s, t, T)
    assert torch.allclose(js, hand, atol=1e-6)
    assert torch.allclose(adi_loss(s, t, T, "datafree"), -hand, atol=1e-6)
    assert torch.allclose(adi_loss(s, t, T, "nvlabs"), 1 - hand.clamp(0, 1), atol=1e-6)
    with pytest.raises(ValueError):
        adi_loss(s, t, T, "bogus")


def test_js_is_zero_for_identical_models_and_positive_otherwise():
    t = torch.randn(6, 3)
    assert abs(float(js_divergence(t, t.clone()))) < 1e-6  # student = teacher: nothing to push
    assert float(js_divergence(torch.randn(6, 3) * 3, t)) > 1e-4


def test_masked_kl_counts_only_agreeing_samples():
    t = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    s = torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 2.0]])  # rows 0 and 2 agree
    kl = kl_per_sample(s, t)
    hand = torch.stack([(F.softmax(t[i], 0) * (F.log_softmax(t[i], 0) - F.log_softmax(s[i], 0))).sum()
                        for i in range(3)])
    assert torch.allclose(kl, hand, atol=1e-6)
    loss = masked_kl_adversarial(s, t)
    assert torch.allclose(loss, -(hand[0] + hand[2]) / 3, atol=1e-6)
    assert float(loss) < 0
    assert abs(float(masked_kl_adversarial(t, t))) < 1e-6  # student = teacher: always 0


# -- priors ----------------------------------------------------------------------------------
def test_total_variation_by_hand():
    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, 0] = 1.0  # one bright pixel
    # right diff: (1-0), (0-0) -> [1, 0]; down: [1, 0]; diag (1:,:-1 - :-1,1:): x10 - x01 = 0;
    # diag (:-1,:-1 - 1:,1:): x00 - x11 = 1
    assert torch.allclose(total_variation(x, "l2"), torch.tensor(3.0))
    assert torch.allclose(total_variation(x, "l1"), torch.tensor(0.5 + 0.5 + 0.0 + 1.0))
    assert float(total_variation(torch.ones(2, 3, 4, 4))) == 0.0
    with pytest.raises(ValueError):
        total_variation(x, "l3")


def test_l2_norm_and_class_loss():
    x = torch.tensor([[3.0, 4.0]])
    assert float(l2_norm(x)) == pytest.approx(5.0)
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    assert torch.allclose(class_loss(logits, y), F.cross_entropy(logits, y))


# -- contrastive -----------------------------------------------------------------------------
def test_instance_features_are_spatial_means_of_bn_inputs():
    t, _ = tiny_pair()
    x = torch.randn(3, 1, 8, 8)
    n0 = count_hooks(t)
    with torch.no_grad(), InstanceFeatures(feature_layers(t, "bn")) as feats:
        t(x)
        got = feats.features()
    assert count_hooks(t) == n0
    with torch.no_grad():
        hand = torch.cat([h.mean(dim=(2, 3)) for h in _bn_inputs_by_hand(t, x)], 1)
    assert got.shape == (3, 8 + 8 + 16)
    assert torch.allclose(got, hand, atol=1e-6)
    # "stages": inputs of the stages = stem output and stage-0 output
    with torch.no_grad(), InstanceFeatures(feature_layers(t, "stages")) as feats:
        out = t.forward_features(x)
        st = feats.features()
        stem = t.stem(x)
    assert torch.allclose(st, torch.cat([stem.mean((2, 3)), out.features[0].mean((2, 3))], 1), atol=1e-6)


def test_projection_head_is_normalized():
    head = ProjectionHead(10, 7)
    y = head(torch.randn(5, 10))
    assert y.shape == (5, 7)
    assert torch.allclose(y.norm(dim=1), torch.ones(5), atol=1e-5)


def test_contrastive_loss_by_hand_and_split():
    torch.manual_seed(1)
    l, g = F.normalize(torch.randn(5, 4), dim=1), F.normalize(torch.randn(5, 4), dim=1)
    tau = 0.2
    logits = l @ g.T / tau
    ce = torch.stack([-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(5)])
    assert torch.allclose(contrastive_loss(l, g, n_current=5, tau=tau), ce.mean(), atol=1e-5)
    # 3 current rows + 2 bank rows: mean over each part, summed (the reference's split)
    assert torch.allclose(contrastive_loss(l, g, n_current=3, tau=tau), ce[:3].mean() + ce[3:].mean(), atol=1e-5)
    # the global side is detached
    l.requires_grad_(True)
    g.requires_grad_(True)
    contrastive_loss(l, g, 3, tau).backward()
    assert l.grad.abs().sum() > 0 and g.grad is None


def test_memory_bank_ring_buffer():
    bank = MemoryBank(size=5, dim=2)
    assert len(bank) == 0 and bank.sample(3).shape == (0, 2)
    rows = torch.arange(16.0).view(8, 2)
    bank.add(rows[:3])
    assert len(bank) == 3 and torch.equal(bank.contents(), rows[:3])
    bank.add(rows[3:6])  # 6 rows into 5 slots: the oldest is overwritten
    assert len(bank) == 5
    kept = {tuple(r.tolist()) for r in bank.contents()}
    assert kept == {tuple(r.tolist()) for r in rows[1:6]}
    bank.add(rows)  # more rows than the size: keep the last 5
    assert len(bank) == 5
    assert {tuple(r.tolist()) for r in bank.contents()} == {tuple(r.tolist()) for r in rows[3:]}
    s = bank.sample(4)
    assert s.shape == (4, 2) and len({tuple(r.tolist()) for r in s}) == 4
    assert all(tuple(r.tolist()) in kept or tuple(r.tolist()) in {tuple(x.tolist()) for x in rows[3:]} for r in s)
    assert bank.sample(100).shape == (5, 2)
    other = MemoryBank(size=1, dim=1)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.contents(), bank.contents()) and other.ptr == bank.ptr
    with pytest.raises(ValueError):
        bank.add(torch.zeros(2, 3))


# -- generator and views ---------------------------------------------------------------------
def test_generator_shapes_and_range():
    g = Generator(nz=6, ngf=4, image_size=8, channels=2)
    g.reset_parameters(0.02)
    lin = g.l1[0].weight.detach()
    assert abs(float(lin.std()) - 0.02) < 0.01 and float(g.l1[0].bias.detach().abs().sum()) == 0
    x = g(torch.randn(3, 6)).detach()
    assert x.shape == (3, 2, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    c = g.clone()
    with torch.no_grad():
        next(c.parameters()).add_(1.0)
    assert not torch.equal(next(c.parameters()), next(g.parameters()))


@pytest.mark.parametrize("size", [6, 2, 30])
def test_generator_rejects_sizes_it_cannot_make(size):
    with pytest.raises(ConfigError, match="multiple of 4"):
        check_generator_size(size, "cmi")
    with pytest.raises(ConfigError):
        Generator(4, 4, size, 1)


def test_random_resized_crop_identity_and_gradient():
    x = torch.rand(4, 2, 8, 8, requires_grad=True)
    same = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    assert torch.allclose(same, x, atol=1e-5)
    y = random_resized_crop(x, scale=(0.25, 1.0))
    assert y.shape == x.shape
    g, = torch.autograd.grad(y.sum(), x)
    assert g.abs().sum() > 0
    torch.manual_seed(3)
    a = random_resized_crop(x, (0.25, 0.5))
    torch.manual_seed(3)
    b = random_resized_crop(x, (0.25, 0.5))
    assert torch.equal(a, b) and not torch.allclose(a, x)
