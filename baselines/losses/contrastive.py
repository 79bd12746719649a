"""Contrastive model inversion (CMI, Fang et al. IJCAI 2021, Eq. 6-8).

Instance features: the per-channel spatial means of the *inputs* of hooked teacher layers
(all BatchNorm2d layers by default; ``"stages"`` hooks the inputs of ``model.stages``, which
is what the reference's "block outputs" for ResNet-34 really read: the input of layer k is
the output of layer k-1), concatenated to a vector of size d per image.

An MLP head h (d -> d -> 256, L2-normalized) projects local-view and global-view features.
With the current batch (N) followed by M negatives drawn from a memory bank of past batches'
features, logits = h(local) . h(global)^T / tau ([N+M, N+M], the global side detached as in
the reference), cross-entropy with the positives on the diagonal. As in the reference the
loss is split: mean over the current rows + mean over the bank rows (when the bank is
non-empty), so the bank does not dilute the gradient reaching the generator.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hooks import ModuleHooks
from .bn import bn_layers

FeatureSource = Literal["bn", "stages"]


def feature_layers(model: nn.Module, source: FeatureSource = "bn") -> list[nn.Module]:
    """Layers whose inputs make CMI's instance features: all BN layers, or the model stages."""
    if source == "bn":
        return list(bn_layers(model))
    if source == "stages":
        stages = getattr(model, "stages", None)
        if stages is None or len(stages) == 0:
            return []
        return list(stages)
    raise ValueError(f"unknown CMI feature source {source!r}; known: 'bn', 'stages'")


class InstanceFeatures:
    """Context manager: per-image features = concat_l mean_{H,W}(input of layer l), [N, d]."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers
        self._feats: dict[int, Tensor] = {}
        self._hooks = ModuleHooks()

    def _hook(self, idx: int):
        def fn(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]
            self._feats[idx] = x.flatten(2).mean(-1) if x.dim() > 2 else x
        return fn

    def __enter__(self) -> "InstanceFeatures":
        self._feats.clear()
        for i, m in enumerate(self.layers):
            self._hooks.add(m, self._hook(i))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.remove()
        self._feats.clear()

    def features(self) -> Tensor:
        """Features of the last forward pass, [N, d]."""
        if len(self._feats) != len(self.layers):
            raise RuntimeError("InstanceFeatures.features() called before a forward pass inside `with`")
        return torch.cat([self._feats[i] for i in range(len(self.layers))], dim=1)


class ProjectionHead(nn.Module):
    """CMI's MLP head: Linear(d, h) -> ReLU -> Linear(h, out) -> L2 normalize (h = d)."""

    def __init__(self, dim_in: int, dim_out: int = 256, dim_hidden: int | None = None) -> None:
        super().__init__()
        dim_hidden = dim_hidden or dim_in
        self.net = nn.Sequential(nn.Linear(dim_in, dim_hidden), nn.ReLU(inplace=True),
                                 nn.Linear(dim_hidden, dim_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.net(x), dim=1, p=2)


class MemoryBank:
    """Ring buffer of past feature rows (CPU); keeps at most ``size`` rows, oldest overwritten."""

    def __init__(self, size: int, dim: int) -> None:
        if size < 1:
            raise ValueError(f"memory bank size must be >= 1, got {size}")
        self.size, self.dim = int(size), int(dim)
        self.data = torch.zeros(self.size, self.dim)
        self.ptr = 0  # next row to write
        self.count = 0  # rows filled (<= size)

    def __len__(self) -> int:
        return self.count

    def add(self, feats: Tensor) -> None:
        """Append rows [n, dim] (detached); if n > size only the last ``size`` rows are kept."""
        feats = feats.detach().to("cpu", self.data.dtype)
        if feats.dim() != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"memory bank rows must be [n, {self.dim}], got {tuple(feats.shape)}")
        feats = feats[-self.size:]
        n = feats.shape[0]
        idx = (self.ptr + torch.arange(n)) % self.size
        self.data[idx] = feats
        self.ptr = int((self.ptr + n) % self.size)
        self.count = min(self.size, self.count + n)

    def contents(self) -> Tensor:
        """The filled rows [count, dim] (a copy)."""
        return self.data[: self.count].clone()

    def sample(self, k: int, device: torch.device | str = "cpu") -> Tensor:
        """min(k, len) distinct rows drawn uniformly (torch RNG), on ``device``."""
        k = min(int(k), self.count)
        if k <= 0:
            return self.data.new_zeros(0, self.dim).to(device)
        idx = torch.randperm(self.count)[:k]
        return self.data[idx].to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data[: self.count].clone() if self.count < self.size else self.data.clone(),
                "ptr": self.ptr, "count": self.count, "size": self.size, "dim": self.dim}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size, self.dim = int(state["size"]), int(state["dim"])
        self.data = torch.zeros(self.size, self.dim)
        self.data[: state["data"].shape[0]] = state["data"]
        self.ptr, self.count = int(state["ptr"]), int(state["count"])


def contrastive_loss(local_proj: Tensor, global_proj: Tensor, n_current: int, tau: float) -> Tensor:
    """InfoNCE of CMI: logits = local . global^T / tau, positives on the diagonal.

    local_proj, global_proj: [N + M, D] projected (normalized) features, the current batch's N
    rows first, then M bank rows. Loss = CE over the current rows (mean) + CE over the bank
    rows (mean) when M > 0 (the reference's split). The global side is detached.
    """
    logits = local_proj @ global_proj.detach().T / tau
    labels = torch.arange(logits.shape[0], device=logits.device)
    ce = F.cross_entropy(logits, labels, reduction="none")
    if ce.shape[0] > n_current:
        return ce[:n_current].mean() + ce[n_current:].mean()
    return ce.mean()
