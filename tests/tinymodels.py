"""Tiny models implementing the baselines model interface, for fast unit tests.

TinyANN: 2 stages with BatchNorm (teacher or ANN student). TinySNN: 2 stages of
conv-BN-LIF in SpikingJelly multi-step mode (spiking student).
"""
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from baselines.models import SpikingStagedModel, StagedModel
from baselines.spec import DataSpec

TINY_SPEC = DataSpec("tiny", channels=1, image_size=8, num_classes=3, mean=(0.5,), std=(0.25,))


class TinyANN(StagedModel):
    def __init__(self, in_channels=1, num_classes=3, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                          nn.BatchNorm2d(2 * width), nn.ReLU()),
        ])
        self.fc = nn.Linear(2 * width, num_classes)


class TinySNN(SpikingStagedModel):
    def __init__(self, in_channels=1, num_classes=3, width=8, T=2):
        super().__init__(T=T)
        lif = lambda: neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), step_mode="m")
        self.stem = nn.Sequential(layer.Conv2d(in_channels, width, 3, padding=1, bias=False, step_mode="m"),
                                  layer.BatchNorm2d(width, step_mode="m"), lif())
        self.stages = nn.ModuleList([
            nn.Sequential(layer.Conv2d(width, width, 3, padding=1, bias=False, step_mode="m"),
                          layer.BatchNorm2d(width, step_mode="m"), lif()),
            nn.Sequential(layer.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False, step_mode="m"),
                          layer.BatchNorm2d(2 * width, step_mode="m"), lif()),
        ])
        self.fc = layer.Linear(2 * width, num_classes, step_mode="m")


def tiny_pair(seed=0):
    torch.manual_seed(seed)
    t, s = TinyANN(), TinySNN()
    # give the teacher non-trivial BN running statistics
    t.train()
    with torch.no_grad():
        for _ in range(3):
            t(torch.randn(16, 1, 8, 8))
    t.eval()
    for p in t.parameters():
        p.requires_grad_(False)
    return t, s
