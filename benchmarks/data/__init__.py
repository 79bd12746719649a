"""Dataset loaders: files on disk -> an in-memory :class:`DatasetBundle`.

Every loader is an entry point in group ``stars_dfkd.datasets`` with the signature
``load(data_root: str | None = None, download: bool = False) -> DatasetBundle``.
``load_dataset(name, ...)`` looks the name up in :data:`baselines.registry.DATASETS`.

Missing or corrupt files raise :class:`baselines.errors.DataError` listing every place
looked, the expected layout and how to get the data; no loader ever substitutes random
data. An explicit ``data_root`` is the only place a loader looks (with the sub-layouts
its docstring names): it never falls back to the default root or a system copy.
Label sets are validated (:func:`benchmarks.data.npz.check_labels`): classes 0..K-1 all
present in the training split, every test label among them.
"""
from __future__ import annotations

import os
from pathlib import Path

from baselines.errors import DataError, PluginError
from baselines.registry import DATASETS

from .base import DatasetBundle

__all__ = ["DatasetBundle", "load_dataset", "default_root", "data_error", "not_found_cause", "ENV_ROOT"]

#: Environment variable naming the default data root (used when ``data_root`` is None).
ENV_ROOT = "DFKD_DATA_ROOT"


def default_root() -> Path:
    """Where downloads go and where loaders look when no ``data_root`` is given:
    ``$DFKD_DATA_ROOT`` if set, else ``~/.cache/stars-dfkd/data``."""
    env = os.environ.get(ENV_ROOT)
    return Path(env).expanduser() if env else Path("~/.cache/stars-dfkd/data").expanduser()


def data_error(dataset: str, looked: list[str], layout: str, fix: str, cause: str = "") -> DataError:
    """A DataError whose message lists the places looked, the layout expected and the fix."""
    lines = [f"{dataset}: {cause or 'dataset files not found'}."]
    if looked:
        lines.append("Looked in:")
        lines += [f"  - {p}" for p in looked]
    lines.append(f"Expected layout: {layout}")
    lines.append(f"How to get it: {fix}")
    return DataError("\n".join(lines))


def not_found_cause(data_root: str | None, elsewhere: str = "the default root") -> str:
    """The cause line of a DataError for files that are not where the user said."""
    if not data_root:
        return "dataset files not found"
    return (f"dataset files not found in the given data root {str(Path(data_root).expanduser())!r} "
            f"(an explicit data root is the only place looked; leave it unset to search {elsewhere})")


def load_dataset(name: str, data_root: str | None = None, download: bool = False) -> DatasetBundle:
    """Load the registered dataset ``name`` (UnknownNameError lists the known names)."""
    loader = DATASETS.get(name)
    bundle = loader(data_root=data_root, download=download)
    if not isinstance(bundle, DatasetBundle):
        raise PluginError(f"dataset loader {name!r} returned {type(bundle).__name__}, not a DatasetBundle; "
                        "fix the plugin that registers it.")
    return bundle
