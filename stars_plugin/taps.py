"""Where TAR measures: the teacher's stage BatchNorm output and the student neuron layer it
corresponds to, STARS (arXiv 2605.27409).

The ``bn`` thresholds tau_c = beta_c + |gamma_c| z_q describe a BatchNorm's *output* (under
the running statistics a channel's BN output is ~ N(beta_c, gamma_c^2) on real data). A
stage's output is something else: after ReLU + max-pool (small CNN, VGG) or a residual add
(ResNet) its tail mass above tau is not 1 - q (on Fashion-MNIST 0.09-0.15 instead of 0.05).
So TAR reads, for every matched teacher stage, the output of the stage's last BatchNorm
(:func:`stars_plugin.thresholds.stage_batchnorm`), and, on the student side, the pre-reset
membrane of the neuron layer that BN feeds in the student (:func:`student_tap_layer`).

:class:`TeacherTaps` captures the teacher's BN outputs with forward hooks installed once
(``install``, from ``STARS.setup``) and removed with :meth:`TeacherTaps.remove` or when the
regularizer is garbage-collected. A hook keeps a reference to the BN output only (no copy,
no extra compute); the stage's own forward hook binds it to the stage output tensor, and
:meth:`TeacherTaps.get` finds the BN outputs of exactly the forward pass a
:class:`ModelOutput` came from (by tensor identity of ``features[k]``), so a second teacher
forward between the step's forward and ``terms()`` (CMI's local view, evaluation) cannot
be confused with it. When no captured pass matches (hooks not installed yet, hand-made
outputs), the teacher is re-run on ``ctx.images`` under temporary hooks (eval mode).
A stage without a BatchNorm is measured at its output.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import torch
from torch import Tensor, nn

from baselines.hooks import ModuleHooks
from baselines.models import ModelOutput

from .thresholds import _BN_TYPES, _SHORTCUT_WORDS, stage_batchnorm

_KEEP = 2  # captured passes kept per stage (only those whose stage output is still alive)


def _is_neuron(m: nn.Module) -> bool:
    return hasattr(m, "v_threshold")


def student_tap_layer(stage: nn.Module) -> str | None:
    """Relative name of the neuron layer fed by ``stage``'s last (non-shortcut) BatchNorm:
    the first neuron layer after that BN in module order; else the stage's last neuron
    layer; None without neurons. In every zoo student this is the stage's last neuron layer
    (small CNN / VGG: the LIF before the max-pool; ResNet: the block's output neuron, whose
    input is that BN plus the shortcut)."""
    mods = list(stage.named_modules())
    bn_idx = [i for i, (n, m) in enumerate(mods) if isinstance(m, _BN_TYPES)]
    main = [i for i in bn_idx if not any(w in mods[i][0].lower() for w in _SHORTCUT_WORDS)]
    pick = main or bn_idx
    if pick:
        for n, m in mods[pick[-1] + 1:]:
            if _is_neuron(m):
                return n
    neurons = [n for n, m in mods if _is_neuron(m)]
    return neurons[-1] if neurons else None


def _remove(handles: list) -> None:
    for h in handles:
        h.remove()
    handles.clear()


class TeacherTaps:
    """The teacher's stage-BN outputs of a forward pass (see module docstring)."""

    def __init__(self) -> None:
        self.handles: list = []
        self.stages: list[int] = []
        self._pending: dict[int, Tensor] = {}
        self._seen: dict[int, list[tuple[weakref.ref, Tensor]]] = {}
        self._finalizer = weakref.finalize(self, _remove, self.handles)

    # -- persistent hooks ---------------------------------------------------------------
    def install(self, teacher: nn.Module, stages: Sequence[int]) -> None:
        """Hook the last BN of each of ``stages`` (stages without BN are read at their output)."""
        self.remove()
        self.stages = list(stages)
        me = weakref.ref(self)
        for k in self.stages:
            bn = stage_batchnorm(teacher.stages[k])
            if bn is None:
                continue
            self.handles.append(bn.register_forward_hook(_BNHook(me, k)))
            self.handles.append(teacher.stages[k].register_forward_hook(_StageHook(me, k)))

    def remove(self) -> None:
        _remove(self.handles)
        self._pending.clear()
        self._seen.clear()

    def _bind(self, k: int, out: Tensor) -> None:
        a = self._pending.pop(k, None)
        if a is None or not isinstance(out, Tensor):
            return
        alive = [(r, x) for r, x in self._seen.get(k, []) if r() is not None]
        self._seen[k] = alive[len(alive) - (_KEEP - 1):] + [(weakref.ref(out), a)]

    # -- lookup ---------------------------------------------------------------------------
    def get(self, teacher: nn.Module, out: ModelOutput, images: Tensor | None,
            stages: Sequence[int]) -> dict[int, Tensor]:
        """{teacher stage: activations at the measuring point} for the pass ``out`` came from."""
        acts: dict[int, Tensor] = {}
        missing = []
        for k in stages:
            if stage_batchnorm(teacher.stages[k]) is None:
                acts[k] = out.features[k]
                continue
            hit = next((x for r, x in reversed(self._seen.get(k, [])) if r() is out.features[k]), None)
            if hit is None:
                missing.append(k)
            else:
                acts[k] = hit
        if missing:
            acts.update(capture(teacher, images, missing))
        return acts


class _BNHook:
    def __init__(self, taps: weakref.ref, k: int) -> None:
        self.taps, self.k = taps, k

    def __call__(self, module: nn.Module, inputs, output: Tensor) -> None:
        t = self.taps()
        if t is not None:
            t._pending[self.k] = output


class _StageHook(_BNHook):
    def __call__(self, module: nn.Module, inputs, output: Tensor) -> None:
        t = self.taps()
        if t is not None:
            t._bind(self.k, output)


def capture(teacher: nn.Module, images: Tensor | None, stages: Sequence[int]) -> dict[int, Tensor]:
    """Re-run ``teacher`` on ``images`` (eval mode, grad as the caller has it) and return the
    outputs of the stages' last BatchNorms (the fallback of :meth:`TeacherTaps.get`)."""
    if images is None:
        raise ValueError("TAR needs the teacher's stage-BN outputs; no captured forward pass "
                         "matches and no images were given to recompute them")
    got: dict[int, Tensor] = {}
    was = teacher.training
    teacher.eval()
    try:
        with ModuleHooks() as hooks:
            for k in stages:
                bn = stage_batchnorm(teacher.stages[k])
                hooks.add(bn, lambda m, i, o, k=k: got.__setitem__(k, o))
            teacher.forward_features(images)
    finally:
        teacher.train(was)
    return got
