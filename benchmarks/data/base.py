"""The in-memory form every dataset loader returns."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from baselines.errors import ConfigError
from baselines.spec import DataSpec


@dataclass
class DatasetBundle:
    """A labelled image dataset held in memory.

    train_x / test_x: uint8 tensors [N, C, H, W] (pixel space, 0..255);
    train_y / test_y: int64 labels [N]; spec: normalization, size, classes, flip policy;
    source: where the files were read from (recorded in result.json).
    """

    spec: DataSpec
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    source: str = ""

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> "DatasetBundle":
        """A deterministic random subset (for quick runs and tests).

        ``n`` equal to the split's size keeps it whole; a larger ``n`` is a ConfigError
        (run.train_subset / run.test_subset asked for more images than exist), never
        silently clamped."""
        for n, y, key, split in ((n_train, self.train_y, "train_subset", "training"),
                                 (n_test, self.test_y, "test_subset", "test")):
            if n is not None and n > len(y):
                raise ConfigError(
                    f"run.{key} = {n} (--{key.replace('_', '-')}) is larger than the {split} set of {len(y)} "
                    f"images of {self.spec.name} ({self.source or 'in memory'}); pass at most {len(y)}, or leave "
                    "it unset to use every image.")
        g = torch.Generator().manual_seed(seed)

        def pick(x: Tensor, y: Tensor, n: int | None) -> tuple[Tensor, Tensor]:
            if n is None or n >= len(y):
                return x, y
            idx = torch.randperm(len(y), generator=g)[:n]
            return x[idx], y[idx]

        tx, ty = pick(self.train_x, self.train_y, n_train)
        ex, ey = pick(self.test_x, self.test_y, n_test)
        return DatasetBundle(self.spec, tx, ty, ex, ey, self.source)

    def split_validation(self, n_val: int, seed: int = 0) -> tuple["DatasetBundle", tuple[Tensor, Tensor]]:
        """Carve a labelled validation split out of the training set (disjoint from test).

        Returns (bundle whose train set excludes the split, (val_x, val_y))."""
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self.train_y), generator=g)
        vi, ti = perm[:n_val], perm[n_val:]
        rest = DatasetBundle(self.spec, self.train_x[ti], self.train_y[ti], self.test_x, self.test_y, self.source)
        return rest, (self.train_x[vi], self.train_y[vi])
