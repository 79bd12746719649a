"""Model zoo: CIFAR-style ANN teachers (:mod:`.ann`) and SpikingJelly students (:mod:`.snn`).

Every factory has the registry signature ``fn(in_channels, num_classes, image_size, **kw)``
(students also ``T``, ``neuron``, ``surrogate``) and returns a
:class:`baselines.models.StagedModel` (``stem -> stages -> global average pool -> fc``).
All models pool globally, so any input size works (16x16 to 64x64 and beyond); the
``image_size`` argument is validated but does not change the architecture.
"""
from __future__ import annotations

from typing import Any, Iterable

from baselines.errors import ConfigError, closest

# Keys student factories receive (neuron_backend only when not "eager"); ANN factories
# registered as students ignore them.
SPIKING_KEYS = ("T", "neuron", "surrogate", "neuron_backend")


def check_build_args(model: str, in_channels: int, num_classes: int, image_size: int,
                     kw: dict[str, Any], allowed: Iterable[str] = ()) -> None:
    """Raise ConfigError for non-positive sizes or keyword arguments ``model`` does not take."""
    for key, val in (("in_channels", in_channels), ("num_classes", num_classes),
                     ("image_size", image_size)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(f"{model}: {key} must be a positive int, got {val!r}.")
    allowed = sorted(set(allowed))
    for key in kw:
        if key not in allowed:
            near = closest(key, allowed)
            hint = f" Did you mean {near!r}?" if near else ""
            raise ConfigError(
                f"{model}: unknown argument {key!r}.{hint} "
                f"Accepted extra arguments: {', '.join(allowed) or '(none)'}."
            )


def count_parameters(model) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def init_weights(model) -> None:
    """The zoo's initialization, ANN and SNN alike: Kaiming-normal convs (fan_out, ReLU gain),
    BatchNorm weight 1 / bias 0, linear biases 0 (linear weights keep torch's default)."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
