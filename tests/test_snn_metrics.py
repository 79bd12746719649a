"""Firing rates and synaptic operations, checked by hand on a net with a known spike pattern."""
import pytest
import torch
from spikingjelly.activation_based import layer, neuron
from torch import nn

from baselines.errors import ConfigError
from baselines.hooks import count_hooks
from baselines.models import SpikingLayerState, SpikingStagedModel
from baselines.snn_metrics import E_AC_PJ, E_MAC_PJ, firing_rates, measure_spiking
from benchmarks.zoo import ann, snn


class TwoLayerSNN(SpikingStagedModel):
    """1x1 conv (w=1) -> IF | 3x3 conv (centre tap w2) -> IF | linear(1 -> 3).

    IF neurons (V_th = 1, hard reset to 0) with input current c spike at steps where the
    accumulated current reaches 1: c = 1 -> every step, c = 0.5 -> steps 1 and 3.
    """

    def __init__(self, w2: float = 0.5, T: int = 4):
        super().__init__(T)
        ifn = lambda: neuron.IFNode(v_threshold=1.0, v_reset=0.0, step_mode="m")
        c1 = layer.Conv2d(1, 1, 1, bias=False, step_mode="m")
        c2 = layer.Conv2d(1, 1, 3, padding=1, bias=False, step_mode="m")
        with torch.no_grad():
            c1.weight.fill_(1.0)
            c2.weight.zero_()
            c2.weight[0, 0, 1, 1] = w2
        self.stem = nn.Sequential(c1, ifn())
        self.stages = nn.ModuleList([nn.Sequential(c2, ifn())])
        self.fc = layer.Linear(1, 3, step_mode="m")


def _image() -> torch.Tensor:
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = x[0, 0, 0, 1] = 1.0  # spike at all 4 steps
    x[0, 0, 2, 2] = x[0, 0, 3, 3] = 0.5  # spike at steps 1 and 3
    return x


def test_firing_rates_hand_computed():
    a = SpikingLayerState("a", 0, torch.zeros(2, 1, 4), torch.tensor([[[1.0, 0, 0, 0]], [[0, 1.0, 0, 0]]]), 1.0)
    b = SpikingLayerState("b", 1, torch.zeros(2, 1, 2), torch.ones(2, 1, 2), 1.0)
    r = firing_rates([a, b])
    assert r["a"] == pytest.approx(0.25) and r["b"] == pytest.approx(1.0)
    assert r["mean"] == pytest.approx(6 / 12)  # neuron-weighted, not (0.25 + 1) / 2
    with pytest.raises(ConfigError, match="record_spiking"):
        firing_rates([])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_sops_hand_computed(batch_size):
    """Layer 1 spikes 12 of 16x4 (rate 3/16); layer 2 (w2 = 0.5) spikes 6 of 64, only at
    steps 1 and 3, so the pooled classifier input is nonzero at 2 of 4 steps.

    dense (1x1 conv, once)       16 x 1           = 16
    conv2 SOPs: MACs 16 x 9 = 144 per step, sum_t rate_t = 12/16  -> 108
    fc SOPs:    MACs 3 per step, nonzero at 2 steps               -> 6
    A second, all-zero image adds 16 dense MACs and no SOPs.
    """
    model = TwoLayerSNN()
    images = torch.cat([_image(), torch.zeros(1, 1, 4, 4)])
    m = measure_spiking(model, images, batch_size=batch_size)
    assert m["T"] == 4 and m["n_images"] == 2
    assert m["dense_macs_per_image"] == pytest.approx(16)
    assert m["sops_per_image"] == pytest.approx((108 + 6) / 2)
    assert m["layers"]["stages.0.0"]["sops_per_image"] == pytest.approx(108 / 2)
    assert m["layers"]["fc"]["sops_per_image"] == pytest.approx(6 / 2)
    assert m["layers"]["stem.0"]["sops_per_image"] == 0.0
    assert m["layers"]["stages.0.0"]["binary_input"] and not m["layers"]["fc"]["binary_input"]
    assert m["ann_macs_per_image"] == pytest.approx(16 + 144 + 3)
    assert m["firing_rates"]["stem.1"] == pytest.approx(12 / 128)
    assert m["firing_rates"]["stages.0.1"] == pytest.approx(6 / 128)
    assert m["mean_firing_rate"] == pytest.approx(18 / 256)
    assert m["energy_mj_per_image"] == pytest.approx((E_MAC_PJ * 16 + E_AC_PJ * 57) * 1e-9)


def test_zero_input_has_zero_rate_and_no_sops():
    model = snn.spiking_small_cnn(1, 10, 16)  # bias-free convs, fresh BN: BN(0) = 0
    m = measure_spiking(model, torch.zeros(3, 1, 16, 16))
    assert m["mean_firing_rate"] == 0.0
    assert all(v == 0.0 for v in m["firing_rates"].values())
    assert m["sops_per_image"] == 0.0
    assert m["dense_macs_per_image"] == pytest.approx(16 * 16 * 32 * 9)  # the stem conv, once


def test_matches_recorded_rates_and_restores_the_model():
    torch.manual_seed(1)
    model = snn.spiking_small_cnn(1, 10, 16)
    x = torch.randn(4, 1, 16, 16) * 3
    model.train()
    before = count_hooks(model)
    m = measure_spiking(model, x, batch_size=4)
    assert model.training and count_hooks(model) == before
    model.eval()
    with torch.no_grad():
        rec = firing_rates(model.forward_features(x, record_spiking=True).spiking)
    assert m["firing_rates"] == pytest.approx(rec)
    assert 0 < m["mean_firing_rate"] < 1
    # SOPs are at most T x the dense MACs of the spike-fed layers
    assert 0 < m["sops_per_image"] < model.T * (m["ann_macs_per_image"] - m["dense_macs_per_image"])
    # a failing forward (wrong channel count) still removes the hooks and restores the mode
    model.train()
    with pytest.raises(RuntimeError):
        measure_spiking(model, torch.randn(2, 3, 16, 16))
    assert model.training and count_hooks(model) == before


def test_ann_has_no_spiking_metrics():
    model = ann.small_cnn(1, 10, 16)
    m = measure_spiking(model, torch.randn(2, 1, 16, 16))
    assert m["firing_rates"] is None and m["mean_firing_rate"] is None and m["sops_per_image"] is None
    # stem 16x16x32x9 + 32->32 at 16x16 + 32->64 at 8x8 + 64->128 at 4x4 + fc 128x10
    macs = 256 * 32 * 9 + 256 * 32 * 288 + 64 * 64 * 288 + 16 * 128 * 576 + 1280
    assert m["dense_macs_per_image"] == pytest.approx(macs)
    assert m["ann_macs_per_image"] == pytest.approx(macs)
    # the spiking twin has the same per-step MACs
    assert measure_spiking(snn.spiking_small_cnn(1, 10, 16), torch.randn(2, 1, 16, 16))[
        "ann_macs_per_image"] == pytest.approx(macs)


def test_bad_input_raises():
    with pytest.raises(ConfigError, match="batch_size"):
        measure_spiking(TwoLayerSNN(), _image(), batch_size=0)
    with pytest.raises(ConfigError, match="non-empty"):
        measure_spiking(TwoLayerSNN(), torch.zeros(0, 1, 4, 4))
