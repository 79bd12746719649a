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

import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import config as cfgmod
from ..errors import ConfigError
from ..hooks import RegularizerSet, StepContext, detach_terms
from ..models import ModelOutput, StagedModel
from ..pool import ImagePool
from ..spec import DataSpec, random_crop_flip


@dataclass
class SynthesisSetup:
    """What a synthesizer is built with (live objects; built by the caller).

    real: (images uint8 [N, C, H, W], labels) of the training set, only for transfer sets
        that need real data (``real``); None otherwise.
    student_mode: how synthesis queries the student (adversarial terms, regularizer hooks):
        "batch-stats" (default): BatchNorm normalizes with the synthetic batch's own
        statistics, as in the KD step that trains it, without touching the running
        statistics; "eval": the running statistics (the references' ``student.eval()``;
        at initialization they are mean 0 / var 1, so a freshly built spiking student is
        silent there and the first batch gets no student signal at all).
    grad_probe_every: measure every term's gradient norm relative to the reference term
        (BN statistics) at the first inner step of every N-th synthesize() call (0 = never,
        unless a regularizer weights by gradient share, which needs it every call).
    """

    teacher: StagedModel
    student: StagedModel
    spec: DataSpec
    regularizers: RegularizerSet = field(default_factory=RegularizerSet)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    real: tuple[Tensor, Tensor] | None = None
    student_mode: str = "batch-stats"
    grad_probe_every: int = 1


STUDENT_MODES = ("batch-stats", "eval")


@dataclass
class SynthesisResult:
    """images: pixel space [N, C, H, W] in [0, 1]; targets: [N] labels the images were
    made for; seconds: wall time of the call; losses: the named terms at the final (kept)
    step; timing: seconds spent in teacher_forward / student_forward / backward / other;
    grad_norms: at the call's first step (a gradient-share regularizer's terms: at the last
    re-measure, steps 0, 1, 2, 4, ...), each term's gradient norm w.r.t. the images
    (``images/<term>``) and the optimized tensors (``params/<term>``), divided by the
    reference term's (empty when not probed)."""

    images: Tensor
    targets: Tensor
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    grad_norms: dict[str, float] = field(default_factory=dict)


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


class BestStep:
    """The lowest-loss inner step of one synthesize() call: its images (a detached copy) and
    its terms. The references keep the best batch, not the last (the zju-vipa port aliased
    the two); every synthesizer that optimizes for several steps keeps one of these.

    ``offer(loss, images, terms)`` returns True when this step is the new best (so callers
    can keep step-specific extras, e.g. CMI's bank features)."""

    def __init__(self) -> None:
        self.loss = math.inf
        self.images: Tensor | None = None
        self.terms: dict[str, float] = {}

    def offer(self, loss: Tensor, images: Tensor, terms: dict[str, Tensor]) -> bool:
        value = float(loss.detach())
        if value < self.loss or self.images is None:
            self.loss, self.images, self.terms = value, images.detach().clone(), detach_terms(terms)
            return True
        return False


def batchnorm_modules(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@contextmanager
def batch_stats(model: torch.nn.Module):
    """BatchNorm layers of ``model`` normalize with the current batch's statistics and leave
    their running statistics (and counters) untouched; restored on exit.

    (``training = True`` with ``track_running_stats = False`` makes torch pass no running
    buffers to ``batch_norm``, so nothing is updated.)"""
    saved = [(m, m.training, m.track_running_stats) for m in batchnorm_modules(model)]
    for m, _, _ in saved:
        m.train(True)
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, training, track in saved:
            m.train(training)
            m.track_running_stats = track


@contextmanager
def synthesis_mode(teacher: torch.nn.Module, student: torch.nn.Module, student_mode: str = "batch-stats"):
    """The models as synthesis queries them: both frozen (:func:`eval_frozen`), the teacher
    on its running statistics, the student in ``student_mode`` (see :class:`SynthesisSetup`)."""
    if student_mode not in STUDENT_MODES:
        raise ConfigError(f"student_mode = {student_mode!r}: use one of {STUDENT_MODES}.")
    with eval_frozen(teacher, student):
        if student_mode == "batch-stats":
            with batch_stats(student):
                yield
        else:
            yield


def _grad_norm(loss: Tensor, wrt: list[Tensor]) -> float:
    return _grad_norms(loss, {"all": wrt})["all"]


def _grad_norms(loss: Tensor, groups: dict[str, list[Tensor]]) -> dict[str, float]:
    """||d loss / d group|| for each group of tensors, from one backward pass."""
    flat = [(name, t) for name, ts in groups.items() for t in ts if t.requires_grad]
    out = {name: 0.0 for name in groups}
    if not flat or not loss.requires_grad:
        return out
    grads = torch.autograd.grad(loss, [t for _, t in flat], retain_graph=True, allow_unused=True)
    for (name, _), g in zip(flat, grads):
        if g is not None:
            out[name] += float(g.detach().float().pow(2).sum())
    return {name: sq ** 0.5 for name, sq in out.items()}


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
        self.calls = 0  # synthesize() calls finished (for probing and schedules)
        self.total_epochs: int | None = None  # set by the distillation loop
        self._scales: dict[str, float] = {}
        self._grad_norms: dict[str, float] = {}
        self.check_setup(setup)

    # -- to implement ---------------------------------------------------------
    def check_setup(self, setup: SynthesisSetup) -> None:
        """Raise ConfigError for a setup this method cannot serve (before compute)."""

    def synthesize(self) -> SynthesisResult:
        raise NotImplementedError

    # -- shared machinery ------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def kd_warmup_epochs(self) -> int:
        """Epochs at the start of distillation that synthesize only (no KD step, KD schedule
        not stepped) when ``distill.warmup`` is left to the synthesizer; 0 here."""
        return 0

    def frozen_models(self):
        """Context: teacher and student as synthesis queries them (:func:`synthesis_mode`)."""
        return synthesis_mode(self.teacher, self.student, self.setup.student_mode)

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

    # -- gradient shares -----------------------------------------------------------
    def probing(self, inner_step: int) -> bool:
        """Whether this inner step measures per-term gradient norms: the first inner step of
        every ``grad_probe_every``-th call; when a regularizer weights by gradient share, the
        first of every call and, under its ``share_rescale`` "doubling" (default), inner steps
        1, 2, 4, 8, ... too, so its scales follow the reference term as it shrinks."""
        if self.regularizers.grad_shares("synthesis"):
            if inner_step == 0:
                return True
            doubling = self.regularizers.share_rescale("synthesis") == "doubling"
            return doubling and inner_step & (inner_step - 1) == 0
        if inner_step != 0:
            return False
        every = self.setup.grad_probe_every
        return every > 0 and self.calls % every == 0

    def balance(self, terms: dict[str, Tensor], images: Tensor, inner_step: int) -> dict[str, Tensor]:
        """Measure (at probe steps) and apply gradient-share weights; returns the terms.

        The reference term is ``bn`` (the BN-statistics loss) when the synthesizer has one,
        else the sum of the synthesizer's own terms. At a probe step every term's gradient
        norm w.r.t. ``images`` (pixel space, as generated) and w.r.t. the optimized tensors
        is recorded relative to the reference's. A term a regularizer declares in
        ``grad_shares`` (raw, unweighted) is multiplied by share * |g_ref| / |g_term| (w.r.t.
        the optimized tensors, measured at the probe step and held until the next one), so
        its gradient is ``share`` times the reference's whatever the synthesizer or model.

        The re-measures after a call's first step (``share_rescale`` "doubling": steps 1, 2, 4,
        ...) exist only to update those scales, so they backpropagate the reference and the
        shared terms alone (one backward each); the other terms' recorded norms stay those of
        the first step, the same step at which a run without shares records them."""
        shares = self.regularizers.grad_shares("synthesis")
        if self.probing(inner_step):
            ref = terms.get("bn")
            if ref is None:
                own = [v for k, v in terms.items() if "/" not in k]
                ref = sum(own) if own else None
            rescale_only = inner_step > 0
            with self.timer("grad_probe"):
                leaves = self.optimized_tensors()
                probe = {"images": [images]} if not (len(leaves) == 1 and leaves[0] is images) else {}
                probe["params"] = leaves or [images]
                per_term = {k: _grad_norms(v, probe) for k, v in terms.items()  # one backward each
                            if not rescale_only or k in shares}
                g_ref = (per_term["bn"] if "bn" in per_term and ref is terms.get("bn")
                         else _grad_norms(ref, probe)) if ref is not None else dict.fromkeys(probe, 0.0)
                norms: dict[str, float] = dict(self._grad_norms) if rescale_only else {}
                for where in probe:
                    for k, gk in per_term.items():
                        g = gk[where]
                        if where == "params" and k in shares:
                            ok = g > 1e-12 * max(g_ref[where], 1e-30)
                            self._scales[k] = shares[k] * g_ref[where] / g if ok else 0.0
                            g = g * self._scales[k]
                        norms[f"{where}/{k}"] = g / g_ref[where] if g_ref[where] > 0 else float("nan")
                self._grad_norms = norms
        if shares:
            terms = {k: (v * self._scales.get(k, 0.0) if k in shares else v) for k, v in terms.items()}
        return terms

    def optimized_tensors(self) -> list[Tensor]:
        """The leaf tensors the current synthesize() call optimizes (override)."""
        return []

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
        norms, self._grad_norms = self._grad_norms, {}
        self.calls += 1
        return SynthesisResult(images_pixel, targets.detach().cpu(), seconds, losses, timing, norms)

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
                "calls": self.calls, "scales": dict(self._scales),
                "regularizers": self.regularizers.state_dict(), "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.load_state_dict(state["pool"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.calls = state.get("calls", 0)
        self._scales = dict(state.get("scales", {}))
        self.regularizers.load_state_dict(state.get("regularizers", {}))
        self.load_extra_state(state.get("extra", {}))


__all__ = ["SynthesisSetup", "SynthesisResult", "Synthesizer", "StepTimer", "eval_frozen", "detach_terms", "BestStep",
           "batch_stats", "synthesis_mode", "STUDENT_MODES"]
