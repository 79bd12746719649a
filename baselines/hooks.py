"""Regularizer hooks: the extension point STARS (and any third party) plugs into.

A regularizer is a class registered in the ``stars_dfkd.regularizers`` entry-point group.
It is attached by name to any synthesizer and to the distillation loop. At every inner
synthesis step and every KD step it receives one :class:`StepContext` and returns named
loss terms ``{"name": tensor}`` that are *already weighted*; they are added to that step's
objective and logged under ``"<regularizer>/<term>"``. It decides itself in which phase
it acts (``phases``), can keep state across steps, and is saved/restored with the run
(``state_dict`` / ``load_state_dict``).

Minimal third-party example::

    from dataclasses import dataclass
    from baselines.hooks import Regularizer, StepContext

    class LogitNorm(Regularizer):
        '''Penalize the teacher's logit norm on synthetic images.'''
        @dataclass
        class Config:
            weight: float = 0.1
            def validate(self): assert self.weight >= 0

        phases = ("synthesis",)

        def terms(self, ctx: StepContext):
            return {"logit_norm": self.cfg.weight * ctx.teacher.logits.norm(dim=1).mean()}

    # pyproject.toml of the third-party package:
    # [project.entry-points."stars_dfkd.regularizers"]
    # logit-norm = "my_pkg:LogitNorm"

Then ``dfkd distill ... --regularizer logit-norm --set logit-norm.weight=0.2``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import torch
from torch import Tensor, nn

from . import config as cfgmod
from .errors import ConfigError, NonFiniteLossError
from .models import ModelOutput, StagedModel
from .provenance import PrivateStream
from .spec import DataSpec

PHASES = ("synthesis", "distill")


@dataclass
class StepContext:
    """Everything a regularizer sees at one step.

    phase: "synthesis" (an inner step of synthesize(); gradients flow to the pixels or the
        generator/latent) or "distill" (a KD step; gradients flow to the student weights).
    images: the normalized batch exactly as the networks saw it (after augmentation).
    targets: sampled target labels (synthesis) or None (KD has no labels).
    teacher: teacher ModelOutput on ``images`` (synthesis: with grad to the images; distill:
        computed under no_grad).
    student: student ModelOutput (None when nobody asked for it in this phase); includes
        ``spiking`` records when the student is an SNN and a regularizer asked for them.
    teacher_model / student_model: the modules (e.g. to read BN parameters).
    spec: the dataset's DataSpec.
    step: global counter of this phase's steps; inner_step: index inside the current
        synthesize() call (0 in distill); epoch: the distillation epoch.
    synthesizer: name of the synthesizer in use.
    """

    phase: str
    images: Tensor
    targets: Tensor | None
    teacher: ModelOutput
    student: ModelOutput | None
    teacher_model: StagedModel
    student_model: StagedModel
    spec: DataSpec
    step: int = 0
    inner_step: int = 0
    epoch: int = 0
    synthesizer: str = ""


class Regularizer:
    """Base class of regularizer hooks (see module docstring).

    Subclasses define a ``Config`` dataclass (with an optional ``validate()``), ``phases``
    and ``terms(ctx)``. Override ``needs_student`` / ``needs_spiking`` to request the
    student's forward pass / spiking records in a phase (default: needs the student in
    every phase it acts in, spiking records never).
    """

    name: ClassVar[str] = ""

    @dataclass
    class Config:
        pass

    phases: tuple[str, ...] = PHASES

    def __init__(self, cfg: Any = None, name: str | None = None, **params: Any) -> None:
        if name is not None:
            self.name = name
        if cfg is None or isinstance(cfg, dict):
            cfg = cfgmod.build(self.Config, {**(cfg or {}), **params}, self.name or type(self).__name__)
        self.cfg = cfg
        for p in self.active_phases():
            if p not in PHASES:
                raise ConfigError(f"regularizer {self.name!r}: unknown phase {p!r}; known: {PHASES}")

    # -- what it acts on -----------------------------------------------------
    def active_phases(self) -> tuple[str, ...]:
        return tuple(self.phases)

    def acts_in(self, phase: str) -> bool:
        return phase in self.active_phases()

    def needs_student(self, phase: str) -> bool:
        return self.acts_in(phase)

    def needs_spiking(self, phase: str) -> bool:
        return False

    def grad_shares(self, phase: str) -> dict[str, float]:
        """Terms weighted by gradient share in ``phase``: {term: share}. Such terms are
        returned by ``terms()`` *unweighted*; the harness multiplies each by a detached
        scale, measured at probe steps, so that the norm of its gradient w.r.t. what the
        phase optimizes (pixels / generator in synthesis, student weights in distill) is
        ``share`` times the reference term's (BN statistics in synthesis, KD in distill).
        Default: none (every term already weighted)."""
        return {}

    def share_rescale(self, phase: str) -> str:
        """When the harness re-measures the scales of this regularizer's gradient-share terms
        within one synthesize() call: "doubling" (default: inner steps 0, 1, 2, 4, 8, ...) or
        "call" (the first inner step only). A scale held over a whole call drifts as the
        reference term's gradient shrinks (images leaving noise): measured on DeepInversion,
        a 0.5 share at step 0 was 4-24x BN's gradient from step 10 on
        (``python -m benchmarks.stars_share_drift``)."""
        return "doubling"

    # -- lifecycle -------------------------------------------------------------
    def setup(self, teacher: StagedModel, student: StagedModel, spec: DataSpec) -> None:
        """Called once before the run (e.g. to derive thresholds from the teacher)."""

    def check_models(self, teacher: StagedModel, student: StagedModel) -> None:
        """Raise ConfigError if the models lack what this regularizer needs."""

    def terms(self, ctx: StepContext) -> dict[str, Tensor]:
        raise NotImplementedError

    def diagnostics(self, ctx: StepContext) -> dict[str, Any]:
        """Optional per-run diagnostics (plain numbers) recorded in result.json."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


#: key of the regularizers' random streams in :meth:`RegularizerSet.state_dict`
STREAMS_KEY = "__random_streams__"


class RegularizerSet:
    """The regularizers attached to a run; merges their terms under ``name/term``."""

    def __init__(self, regs: Iterable[Regularizer] = ()) -> None:
        self.regs = list(regs)
        names = [r.name for r in self.regs]
        if len(set(names)) != len(names):
            raise ConfigError(f"regularizer attached twice: {names}")
        # each regularizer draws (TAR's sampled sites, calibration batches, ...) from its own
        # stream, so attaching one never shifts the synthesizer's or distillation's draws
        self.streams = {r.name: PrivateStream(f"regularizer:{r.name}") for r in self.regs}

    def __iter__(self):
        return iter(self.regs)

    def __len__(self) -> int:
        return len(self.regs)

    def needs_student(self, phase: str) -> bool:
        return any(r.needs_student(phase) for r in self.regs)

    def needs_spiking(self, phase: str) -> bool:
        return any(r.needs_spiking(phase) for r in self.regs)

    def grad_shares(self, phase: str) -> dict[str, float]:
        """The attached regularizers' gradient shares in ``phase``, keyed ``name/term``."""
        out: dict[str, float] = {}
        for r in self.regs:
            if r.acts_in(phase):
                for k, v in (r.grad_shares(phase) or {}).items():
                    out[f"{r.name}/{k}"] = float(v)
        return out

    def share_rescale(self, phase: str) -> str:
        """"call" when every regularizer with gradient shares in ``phase`` asks for it, else
        "doubling" (see :meth:`Regularizer.share_rescale`)."""
        asks = {r.share_rescale(phase) for r in self.regs if r.acts_in(phase) and r.grad_shares(phase)}
        return "call" if asks == {"call"} else "doubling"

    def setup(self, teacher: StagedModel, student: StagedModel, spec: DataSpec) -> None:
        for r in self.regs:
            r.check_models(teacher, student)
            with self.streams[r.name]:
                r.setup(teacher, student, spec)

    def terms(self, ctx: StepContext) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for r in self.regs:
            if r.acts_in(ctx.phase):
                with self.streams[r.name]:
                    got = r.terms(ctx)
                for k, v in got.items():
                    out[f"{r.name}/{k}"] = v
        return out

    def diagnostics(self, ctx: StepContext) -> dict[str, dict[str, float]]:
        """Each regularizer's diagnostics on ``ctx``, drawn from its own stream."""
        out = {}
        for r in self.regs:
            with self.streams[r.name]:
                out[r.name] = r.diagnostics(ctx)
        return out

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {r.name: r.state_dict() for r in self.regs}
        state[STREAMS_KEY] = {name: s.state_dict() for name, s in self.streams.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for r in self.regs:
            if r.name in state:
                r.load_state_dict(state[r.name])
        for name, s in (state.get(STREAMS_KEY) or {}).items():  # absent in older checkpoints
            if name in self.streams:
                self.streams[name].load_state_dict(s)


def total_loss(terms: dict[str, Tensor], where: str, step: int) -> Tensor:
    """Sum of the (already weighted) terms; raises NonFiniteLossError naming a bad term."""
    tot = None
    for k, v in terms.items():
        if not torch.isfinite(v).all():
            raise NonFiniteLossError(k, where, step, float(v.detach().float().sum()))
        tot = v if tot is None else tot + v
    if tot is None:
        raise ConfigError(f"{where}: no loss term is enabled (all weights are zero?)")
    return tot


def detach_terms(terms: dict[str, Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}


class ModuleHooks:
    """Context manager owning forward hooks on modules; removes them all on exit.

    >>> with ModuleHooks() as hooks:
    ...     hooks.add(bn, fn)          # fn(module, inputs, output)
    """

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def add(self, module: nn.Module, fn, pre: bool = False) -> None:
        h = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
        self.handles.append(h)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def __enter__(self) -> "ModuleHooks":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def count_hooks(module: nn.Module) -> int:
    """Number of forward (pre-)hooks on ``module`` and all its submodules."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
