"""The transfer set: synthetic images accumulated across synthesize() calls.

Held in memory as pixel-space uint8 tensors by default (the references wrote PNG files and
re-read the whole folder every epoch; uint8 keeps the same quantization at a quarter of the
memory of float32). ``directory`` additionally writes each added batch as a .pt shard.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor


class ImagePool:
    def __init__(self, max_size: int | None = None, directory: str | None = None) -> None:
        self.max_size = max_size
        self.directory = directory
        self._x: list[Tensor] = []
        self._y: list[Tensor] = []
        self._cat: tuple[Tensor, Tensor] | None = None
        self._shards = 0

    def __len__(self) -> int:
        return sum(x.shape[0] for x in self._x)

    def add(self, images: Tensor, labels: Tensor | None = None) -> None:
        """Add pixel-space images in [0, 1], shape [N, C, H, W]."""
        x = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        y = (labels.detach().cpu().long() if labels is not None
             else torch.full((x.shape[0],), -1, dtype=torch.long))
        self._x.append(x)
        self._y.append(y)
        self._cat = None
        if self.max_size is not None:
            while len(self) > self.max_size and len(self._x) > 1:
                self._x.pop(0)
                self._y.pop(0)
        if self.directory:
            os.makedirs(self.directory, exist_ok=True)
            torch.save({"x": x, "y": y}, os.path.join(self.directory, f"shard_{self._shards:05d}.pt"))
            self._shards += 1

    def pop_last(self, n: int) -> tuple[Tensor, Tensor]:
        """Remove and return the last ``n`` images added (e.g. a held-out synthetic set)."""
        x, y = self.tensors()
        n = min(n, x.shape[0])
        keep_x, keep_y = x[: x.shape[0] - n], y[: y.shape[0] - n]
        self._x, self._y, self._cat = ([keep_x], [keep_y], None) if keep_x.shape[0] else ([], [], None)
        return x[x.shape[0] - n:].float().div(255), y[y.shape[0] - n:]

    def tensors(self) -> tuple[Tensor, Tensor]:
        if self._cat is None:
            if not self._x:
                raise RuntimeError("the image pool is empty: call synthesize() before sample()")
            self._cat = (torch.cat(self._x), torch.cat(self._y))
        return self._cat

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """A uniform random batch (with replacement across calls), pixel space float [0, 1]."""
        x, y = self.tensors()
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
        return x[idx].float().div_(255), y[idx]

    def state_dict(self) -> dict[str, Any]:
        x, y = self.tensors() if self._x else (torch.empty(0, dtype=torch.uint8), torch.empty(0))
        return {"x": x, "y": y}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._x, self._y, self._cat = [], [], None
        if state["x"].numel():
            self._x, self._y = [state["x"]], [state["y"]]
