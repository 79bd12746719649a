"""DFQ's BN-statistics term in the paper's Gaussian-KL form (Choi et al., CVPRW 2020):
zero when the statistics agree, positive otherwise, differentiable, the closed form on a
tiny example, and the DFQ option that selects it."""
import math

import pytest
import torch
from torch import nn

from baselines.errors import ConfigError
from baselines.losses import BNStatLoss, bn_gaussian_kl, channel_stats
from baselines.synthesizers.dfq import DFQ
from test_more_synthesizers import build, spy_total_loss


def one_bn(channels: int, eps: float = 1e-5) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels, eps=eps)).eval()


def kl_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with BNStatLoss(model, form="gaussian-kl") as bnl:
        model(x)
        return bnl.loss()


def test_zero_when_batch_statistics_equal_the_running_ones():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * torch.tensor([0.5, 2.0, 1.0]).view(1, 3, 1, 1) + 1.5
    bn = one_bn(3)
    mean, var = channel_stats(x)
    bn[0].running_mean.copy_(mean)
    bn[0].running_var.copy_(var)
    assert abs(float(kl_loss(bn, x))) < 1e-6


@pytest.mark.parametrize("shift, scale", [(0.3, 1.0), (0.0, 1.7), (0.0, 0.4), (-1.0, 2.5)])
def test_positive_when_they_differ(shift, scale):
    torch.manual_seed(1)
    x = torch.randn(8, 3, 4, 4)
    bn = one_bn(3)
    mean, var = channel_stats(x)
    bn[0].running_mean.copy_(mean + shift)
    bn[0].running_var.copy_(var * scale)
    assert float(kl_loss(bn, x)) > 1e-4


def test_matches_the_closed_form_by_hand():
    # channel 0: values 1, 3 -> mean 2, var 1; running N(0, 4):
    #   KL = 1/2 ln(4 / 1) + (1 + (2 - 0)^2) / (2 * 4) - 1/2 = ln 2 + 5/8 - 1/2
    # channel 1: values -1, 1 -> mean 0, var 1; running N(1, 1):
    #   KL = 0 + (1 + 1) / 2 - 1/2 = 1/2
    x = torch.tensor([[1.0, -1.0], [3.0, 1.0]]).view(2, 2, 1, 1)
    bn = one_bn(2, eps=0.0)
    bn[0].running_mean.copy_(torch.tensor([0.0, 1.0]))
    bn[0].running_var.copy_(torch.tensor([4.0, 1.0]))
    expected = math.log(2) + 5 / 8 - 1 / 2 + 1 / 2
    assert float(kl_loss(bn, x)) == pytest.approx(expected, rel=1e-6)
    # the function itself, with eps on both variances
    got = bn_gaussian_kl(torch.tensor([0.0]), torch.tensor([4.0]), torch.tensor([2.0]), torch.tensor([1.0]), eps=1.0)
    assert float(got) == pytest.approx(0.5 * math.log(5 / 2) + (2 + 4) / 10 - 0.5, rel=1e-6)


def test_dead_channel_stays_finite():
    x = torch.zeros(4, 1, 2, 2)  # var 0: only the BN eps keeps the log finite
    assert torch.isfinite(kl_loss(one_bn(1), x))


def test_gradient_reaches_the_images():
    torch.manual_seed(2)
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    bn = one_bn(3)
    bn[0].running_mean.fill_(0.5)
    g, = torch.autograd.grad(kl_loss(bn, x), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_dfq_defaults_to_the_paper_form_and_l2_is_the_script_form(monkeypatch):
    assert DFQ.Config().bn_form == "gaussian-kl"
    syn = build("dfq")
    assert syn.bn_loss.form == "gaussian-kl"
    assert build("dfq", bn_form="l2").bn_loss.form == "l2"
    with pytest.raises(ConfigError, match="bn_form"):
        build("dfq", bn_form="cosine")
    # the "bn" term of a DFQ step has a gradient to the generator's parameters
    seen = {}

    def on_terms(terms):
        if not seen:
            params = list(syn.generator.parameters())
            grads = torch.autograd.grad(terms["bn"], params, retain_graph=True, allow_unused=True)
            seen["bn"] = sum(float(g.abs().sum()) for g in grads if g is not None)

    spy_total_loss(monkeypatch, syn, on_terms)
    res = syn.synthesize()
    assert seen["bn"] > 0 and float(res.losses["bn"]) > 0
