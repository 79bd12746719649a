"""The two-call synthesizer contract of the DFKD harnesses, without their if/elif chains.

``synthesize()`` does one unit of synthesis work (one batch), adds the images to the
in-memory pool and returns a :class:`SynthesisResult`; ``sample(n)`` serves a KD batch
from the pool with the dataset's train augmentation, normalized for the networks.

Every synthesizer builds its objective as a dict of named, *weighted* loss terms in one
place (``objective``); regularizer hooks (baselines.hooks) add their own terms through
:meth:`Synthesizer.step_terms`, so logs show each term and any synthesizer can be wrapped
by any regularizer.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import config as cfgmod
from ..hooks import RegularizerSet, StepContext, detach_terms
from ..models import ModelOutput, StagedModel
from ..pool import ImagePool
from ..spec import DataSpec, random_crop_flip


@dataclass
class SynthesisSetup:
    """What a synthesizer is built with (live objects; built by the caller).

    real: (images uint8 [N, C, H, W], labels) of the training set, only for transfer sets
        that need real data (``real``); None otherwise.
    """

    teacher: StagedModel
    student: StagedModel
    spec: DataSpec
    regularizers: RegularizerSet = field(default_factory=RegularizerSet)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    real: tuple[Tensor, Tensor] | None = None


@dataclass
class SynthesisResult:
    """images: pixel space [N, C, H, W] in [0, 1]; targets: [N] labels the images were
    made for; seconds: wall time of the call; losses: the named terms at the final (kept)
    step; timing: seconds spent in teacher_forward / student_forward / backward / other."""

    images: Tensor
    targets: Tensor
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)


class StepTimer:
    """Accumulates wall time per named section (for the synthesis cost breakdown)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - t0

    def reset(self) -> dict[str, float]:
        out = dict(self.totals)
        self.totals.clear()
        return out


@contextmanager
def eval_frozen(*modules: torch.nn.Module):
    """Put modules in eval mode with frozen parameters; restore both on exit.

    Synthesis optimizes images/generators only: the teacher and the student must neither
    update BN running statistics nor accumulate parameter gradients."""
    saved = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in modules]
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for m, training, params in saved:
            m.train(training)
            for p, rg in params:
                p.requires_grad_(rg)


class Synthesizer:
    """Base class. Subclasses set ``name``, a ``Config`` dataclass and implement
    ``synthesize``. ``Config`` must have ``batch_size`` (images per synthesize() call)."""

    name: ClassVar[str] = ""
    #: True when the method optimizes against the student (adversarial term); used to
    #: decide whether a student forward pass is needed at all.
    uses_student: ClassVar[bool] = True

    @dataclass
    class Config:
        batch_size: int = 256

    def __init__(self, setup: SynthesisSetup, cfg: Any = None, **params: Any) -> None:
        if cfg is None or isinstance(cfg, dict):
            cfg = cfgmod.build(self.Config, {**(cfg or {}), **params}, self.name)
        self.cfg = cfg
        self.setup = setup
        self.teacher, self.student, self.spec = setup.teacher, setup.student, setup.spec
        self.regularizers = setup.regularizers
        self.device = setup.device
        self.pool = ImagePool()
        self.timer = StepTimer()
        self.step = 0  # global inner-step counter
        self.epoch = 0
        self.check_setup(setup)

    # -- to implement ---------------------------------------------------------
    def check_setup(self, setup: SynthesisSetup) -> None:
        """Raise ConfigError for a setup this method cannot serve (before compute)."""

    def synthesize(self) -> SynthesisResult:
        raise NotImplementedError

    # -- shared machinery ------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def need_student(self, adversarial_on: bool) -> bool:
        return adversarial_on or self.regularizers.needs_student("synthesis")

    def forward_pair(self, images: Tensor, need_student: bool) -> tuple[ModelOutput, ModelOutput | None]:
        """Teacher (and, when needed, student) forward on normalized ``images``, timed."""
        with self.timer("teacher_forward"):
            t_out = self.teacher.forward_features(images)
        s_out = None
        if need_student:
            with self.timer("student_forward"):
                s_out = self.student.forward_features(
                    images, record_spiking=self.regularizers.needs_spiking("synthesis")
                )
        return t_out, s_out

    def step_terms(self, images: Tensor, targets: Tensor | None, t_out: ModelOutput,
                   s_out: ModelOutput | None, inner_step: int) -> dict[str, Tensor]:
        """The attached regularizers' terms for this inner synthesis step."""
        if not len(self.regularizers):
            return {}
        ctx = StepContext(
            phase="synthesis", images=images, targets=targets, teacher=t_out, student=s_out,
            teacher_model=self.teacher, student_model=self.student, spec=self.spec,
            step=self.step, inner_step=inner_step, epoch=self.epoch, synthesizer=self.name,
        )
        with self.timer("regularizers"):
            return self.regularizers.terms(ctx)

    def backward(self, loss: Tensor) -> None:
        with self.timer("backward"):
            loss.backward()

    def finish(self, images_pixel: Tensor, targets: Tensor, t0: float,
               terms: dict[str, Tensor] | dict[str, float]) -> SynthesisResult:
        """Add the batch to the pool and build the result (timing in seconds)."""
        images_pixel = images_pixel.detach().clamp(0, 1).cpu()
        self.pool.add(images_pixel, targets)
        seconds = time.perf_counter() - t0
        timing = self.timer.reset()
        timing["other"] = max(0.0, seconds - sum(timing.values()))
        losses = {k: (float(v.detach()) if isinstance(v, Tensor) else float(v)) for k, v in terms.items()}
        return SynthesisResult(images_pixel, targets.detach().cpu(), seconds, losses, timing)

    def random_targets(self, n: int) -> Tensor:
        return torch.randint(0, self.spec.num_classes, (n,), device=self.device)

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """A KD batch from the pool: train augmentation, normalized, on the device."""
        x, y = self.pool.sample(batch_size)
        x = random_crop_flip(x, self.spec.crop_padding, self.spec.hflip)
        return self.spec.normalize(x.to(self.device)), y.to(self.device)

    # -- persistence ---------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """Method-specific state (generators, optimizers, banks); override."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.state_dict(), "step": self.step, "epoch": self.epoch,
                "regularizers": self.regularizers.state_dict(), "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.load_state_dict(state["pool"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.regularizers.load_state_dict(state.get("regularizers", {}))
        self.load_extra_state(state.get("extra", {}))


__all__ = ["SynthesisSetup", "SynthesisResult", "Synthesizer", "StepTimer", "eval_frozen", "detach_terms"]
