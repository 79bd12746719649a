"""STARS regularizer hooks: RCA + TAR around any synthesizer (arXiv 2605.27409).

Registered (``stars_dfkd.regularizers``) as ``stars`` (:class:`STARS`, both terms),
``rca`` (:class:`RCAOnly`), ``tar`` (:class:`TAROnly`) and ``stars-seedtar``
(:class:`STARSSeedTAR`: both terms with the seed's literal TAR, the fifth cell of the
ablation); config sections of the same names.

Weighting (``weighting``):
- ``"raw"``: ``terms(ctx)`` returns ``{"rca": alpha * L_RCA,
  "tar": beta * L_TAR}`` (the enabled ones), so the step objective is
  ``baseline terms + alpha * L_RCA + beta * L_TAR``; ``grad_shares(phase)`` is empty.
- ``"grad-share"`` (default): alpha and beta are *gradient shares*. ``grad_shares(phase)`` returns
  ``{"rca": alpha, "tar": beta}`` for the enabled terms that act in ``phase``, and
  ``terms(ctx)`` returns those terms unweighted (raw L_RCA, with its sign, and L_TAR);
  the harness (``baselines.hooks.Regularizer.grad_shares``) rescales each at every step by
  a detached factor so that the norm of its gradient w.r.t. what the phase optimizes
  (pixels or generator/latent in synthesis, student weights in distill) is share times
  that of the reference term (BN statistics in synthesis, KD in distill). This removes the
  dependence of alpha / beta on the raw scale of each loss (a squared error of ~5% tail
  probabilities next to a BN loss of O(10)). Shares must be >= 0 (0 switches the term
  off); the seed's recommended weight ranges do not apply to shares (no range warning).
  Why the default: measured on the evidence pair (fashion-mnist-28, smallcnn -> spiking
  smallcnn, one synthesize() call each, ``results/stars_shares``), the raw terms' gradients
  at alpha 0.5 / beta 0.3 are 5e-5 / 6e-5 of BN's (DeepInversion), 8e-3 / 4e-4 (CMI) and
  5e-4 / 3e-5 (Fast): raw STARS cannot move the images. With grad-share they are alpha / beta.

Defaults (provisional; the ablations in results/ decide them):
- alpha / beta depend on the weighting when left unset: gradient shares 0.1 / 0.05 under
  ``grad-share`` (:data:`stars_plugin.config.DEFAULT_SHARES`; measured in session 6 on the evidence pair, seed 0,
  RCA detached: against 0.5 / 0.3 they gave DeepInversion 52.58 vs 40.40, CMI 62.63 vs
  55.23, Fast 53.79 vs 49.08, without STARS 47.41 / 63.57 / 51.47; at 0.5 / 0.3 the two
  terms carry 0.8 of BN's gradient and drown the synthesizers' own class and adversarial
  terms), the seed's 0.5 / 0.3 under ``raw`` (:data:`stars_plugin.config.SEED_WEIGHTS`). q = 0.95. The seed's
  ranges [0.3, 0.7], [0.2, 0.5], [0.90, 0.98] warn in ``raw`` weighting only; negative
  weights or shares, q outside (0, 1) or kappa <= 0 are errors.
- RCA: cosine relations on the pooled features over the live samples (silent samples
  have no relation and are left out, :mod:`stars_plugin.relations`), synthesis only,
  cooperative sign (the seed's pseudo-code computes both terms inside the synthesis loop).
- TAR: the ``aligned`` form with BN-derived per-channel thresholds (``bn``: data-free,
  zero per-step cost), measured where they apply: the teacher's stage-BN output, and the
  student's pre-reset membrane of the neuron layer its stage BN feeds
  (:mod:`stars_plugin.taps`); kappa = 0.1 relative to each layer's scale, both sides on,
  synthesis only, student/teacher compared per stage (``granularity = "stage"``; channels
  are never paired), the teacher's tail mass a detached target of the student side,
  squared error (``tar_error``) estimated without bias from sampled sites.
Every option: :mod:`stars_plugin.config`. See also :mod:`stars_plugin.rca`, :mod:`stars_plugin.tar`,
:mod:`stars_plugin.thresholds`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from baselines import ConfigError
from baselines.hooks import PHASES, Regularizer, StepContext
from baselines.models import StagedModel, match_stages

from .config import (RCAConfig, STARSConfig, STARSSeedTARConfig, TARConfig, TARFields,
                     thresholds_of)
from .rca import live_fractions, rca_loss, stage_discrepancies
from .taps import TeacherTaps, student_tap_layer
from .tar import TailAware, seed_tar
from .thresholds import stage_batchnorm

__all__ = ["STARS", "RCAOnly", "TAROnly", "STARSSeedTAR", "STARSConfig", "RCAConfig",
           "TARConfig", "STARSSeedTARConfig"]


def _has_neuron(module: nn.Module) -> bool:
    return any(hasattr(m, "v_threshold") for m in module.modules())


# ----------------------------------------------------------------------------- regularizers
class STARS(Regularizer):
    """STARS: Relational Consistency Alignment + Tail-Aware Regularization (arXiv 2605.27409)."""

    name = "stars"
    Config = STARSConfig
    has_rca = True
    has_tar = True

    def __init__(self, cfg: Any = None, name: str | None = None, **params: Any) -> None:
        if isinstance(cfg, self.Config):
            cfg.validate()
        super().__init__(cfg, name=name, **params)
        c = self.cfg
        # TAR thresholds; RCAOnly keeps default ones for its diagnostics only.
        self.thresholds = thresholds_of(c if self.has_tar else TARFields())
        self.tail = TailAware(self.thresholds,
                              getattr(c, "tar_teacher_side", True),
                              getattr(c, "tar_student_side", True),
                              getattr(c, "student_layers", "last"),
                              getattr(c, "granularity", "stage"),
                              getattr(c, "tar_error", "squared"),
                              getattr(c, "tar_positions", 0))
        self.pairs: list[tuple[int, int]] | None = None
        self.taps = TeacherTaps()  # the teacher's stage-BN outputs (hooks from setup())
        self.student_taps: dict[int, str | None] = {}  # student stage -> neuron layer name
        self._tapped: nn.Module | None = None

    # -- weighting -----------------------------------------------------------------------
    def share_rescale(self, phase: str) -> str:
        return getattr(self.cfg, "rescale", "doubling")

    def grad_shares(self, phase: str) -> dict[str, float]:
        """{"rca": alpha, "tar": beta} for the enabled terms acting in ``phase`` under
        ``weighting = "grad-share"`` (those terms are then returned unweighted); {} under
        ``"raw"``. See the module docstring."""
        c = self.cfg
        if getattr(c, "weighting", "raw") != "grad-share":
            return {}
        out: dict[str, float] = {}
        if phase in self.rca_phases():
            out["rca"] = float(c.alpha)
        if phase in self.tar_phases():
            out["tar"] = float(c.beta)
        return out

    # -- where each term acts ----------------------------------------------------------
    def rca_phases(self) -> tuple[str, ...]:
        c = self.cfg
        return tuple(p for p in PHASES if p in c.rca_phases) if self.has_rca and c.alpha > 0 else ()

    def tar_phases(self) -> tuple[str, ...]:
        c = self.cfg
        return tuple(p for p in PHASES if p in c.tar_phases) if self.has_tar and c.beta > 0 else ()

    def active_phases(self) -> tuple[str, ...]:
        on = set(self.rca_phases()) | set(self.tar_phases())
        return tuple(p for p in PHASES if p in on)

    def _aligned(self) -> bool:
        return self.has_tar and self.cfg.tar_variant == "aligned"

    def _student_side(self, phase: str) -> bool:
        return (phase in self.tar_phases() and self._aligned()
                and self.cfg.tar_student_side)

    def _teacher_side(self, phase: str) -> bool:
        return (phase == "synthesis" and phase in self.tar_phases() and self._aligned()
                and self.cfg.tar_teacher_side)

    def needs_student(self, phase: str) -> bool:
        return (phase in self.rca_phases() or self._student_side(phase)
                or (phase in self.tar_phases() and self.cfg.tar_variant == "seed"))

    def needs_spiking(self, phase: str) -> bool:
        return self._student_side(phase)

    # -- lifecycle -----------------------------------------------------------------------
    def check_models(self, teacher: StagedModel, student: StagedModel) -> None:
        """ConfigError naming what is missing and which option to change."""
        sec = self.name
        nt, ns = getattr(teacher, "num_stages", 0), getattr(student, "num_stages", 0)
        staged_rca = self.has_rca and self.rca_phases() and self.cfg.rca_features != "pooled"
        if staged_rca and (nt == 0 or ns == 0):
            raise ConfigError(f"{sec}: rca_features = {self.cfg.rca_features!r} needs staged "
                              f"models, but the teacher has {nt} and the student {ns} stages; "
                              f"set {sec}.rca_features = \"pooled\".")
        if not (self._aligned() and self.tar_phases()):
            return
        if nt == 0 or ns == 0:
            raise ConfigError(f"{sec}: TAR needs teacher and student stages (teacher has {nt}, "
                              f"student {ns}); set {sec}.tar_variant = \"seed\" or {sec}.beta = 0.")
        pairs = match_stages(nt, ns)
        if any(self._student_side(p) for p in PHASES):
            if not getattr(student, "is_spiking", False):
                raise ConfigError(
                    f"{sec}: the TAR student side needs a spiking student (membrane potentials "
                    f"and V_th), but the student {type(student).__name__} is an ANN. Set "
                    f"{sec}.tar_student_side = false, or use a spiking student."
                )
            empty = [s for _, s in pairs if not _has_neuron(student.stages[s])]
            if empty:
                raise ConfigError(
                    f"{sec}: student stages {empty} contain no spiking neuron, so the TAR "
                    f"student side has no membrane to read there; set "
                    f"{sec}.tar_student_side = false or use a student with neurons in every stage."
                )
        if self.cfg.strategy == "bn":
            missing = [t for t, _ in pairs if stage_batchnorm(teacher.stages[t]) is None]
            if missing:
                raise ConfigError(
                    f"{sec}: strategy = \"bn\" derives thresholds from the teacher's BatchNorm, "
                    f"but teacher stages {missing} have none; set {sec}.strategy = "
                    f"\"percentile\" or \"distribution\"."
                )

    def setup(self, teacher: StagedModel, student: StagedModel, spec: Any = None) -> None:
        """Match stages; derive BN thresholds (strategy bn) once; hook the teacher's stage
        BNs (TAR's measuring points, :mod:`stars_plugin.taps`) and find the student layer
        each student stage BN feeds."""
        self.pairs = match_stages(teacher.num_stages, student.num_stages)
        t_stages = [t for t, _ in self.pairs]
        self.taps.install(teacher, t_stages)
        self._tapped = teacher
        self.student_taps = {}
        for _, si in self.pairs:
            name = student_tap_layer(student.stages[si]) if si < len(student.stages) else None
            self.student_taps[si] = f"stages.{si}.{name}" if name else None
        try:
            self.thresholds.setup(teacher, t_stages)
        except ConfigError:
            if self.has_tar:
                raise  # RCAOnly: no BN thresholds -> no tail diagnostics, nothing else lost

    def teardown(self) -> None:
        """Remove the teacher hooks (also done when the regularizer is garbage-collected)."""
        self.taps.remove()
        self._tapped = None

    def _ensure_setup(self, ctx: StepContext) -> list[tuple[int, int]]:
        if (self.pairs is None or not self.thresholds.ready
                or self._tapped is not ctx.teacher_model):
            self.setup(ctx.teacher_model, ctx.student_model, ctx.spec)
        return self.pairs

    def teacher_points(self, ctx: StepContext) -> dict[int, Tensor]:
        """Teacher stage -> its activations at TAR's measuring point (stage-BN output) in
        the forward pass ``ctx.teacher`` came from."""
        pairs = self._ensure_setup(ctx)
        return self.taps.get(ctx.teacher_model, ctx.teacher, ctx.images, [t for t, _ in pairs])

    # -- the terms -------------------------------------------------------------------------
    def terms(self, ctx: StepContext) -> dict[str, Tensor]:
        ph, c, out = ctx.phase, self.cfg, {}
        distill = ph == "distill"
        shares = self.grad_shares(ph)  # terms named there are returned unweighted
        if ph in self.rca_phases():
            s = self._student(ctx, "RCA")
            loss = rca_loss(ctx.teacher, s, relation=c.relation, temperature=c.temperature,
                            features=c.rca_features,
                            detach_teacher=distill or c.rca_teacher_path == "detached")
            sign = -1.0 if (not distill and c.rca_sign == "adversarial") else 1.0
            out["rca"] = (sign * (1.0 if "rca" in shares else c.alpha)) * loss
        if ph in self.tar_phases():
            if c.tar_variant == "seed":
                s = self._student(ctx, "TAR (seed)")
                t_logits = ctx.teacher.logits.detach() if distill else ctx.teacher.logits
                loss = seed_tar(s.logits, t_logits, c.q)
            else:
                pairs = self._ensure_setup(ctx)
                s_side = self._student_side(ph)
                if s_side:
                    s = self._student(ctx, "TAR student side")
                    if s.spiking is None:
                        raise ConfigError(
                            f"{self.name}: the TAR student side needs the student's spiking "
                            f"records, but the {ph} step passed none; the caller must run "
                            f"forward_features(..., record_spiking=needs_spiking({ph!r}))."
                        )
                res = self.tail(self.teacher_points(ctx), ctx.student, pairs,
                                teacher_side=self._teacher_side(ph), student_side=s_side,
                                update=True, detach_teacher=distill, taps=self.student_taps)
                loss = res.total
            if loss is not None:
                out["tar"] = loss if "tar" in shares else c.beta * loss
        return out

    def _student(self, ctx: StepContext, what: str):
        if ctx.student is None:
            raise ConfigError(f"{self.name}: {what} needs the student's output in the "
                              f"{ctx.phase} step, but none was passed; the caller must run the "
                              f"student when needs_student({ctx.phase!r}) is true.")
        return ctx.student

    # -- diagnostics -------------------------------------------------------------------------
    def diagnostics(self, ctx: StepContext) -> dict[str, float]:
        """Per matched stage pair ``t{i}_s{j}``: ``teacher_tail_mass`` (at the teacher's
        stage-BN output, where the thresholds apply), ``teacher_threshold``,
        ``student_firing_prob`` (soft, at the neuron layer the student's stage BN feeds),
        ``student_spike_rate`` (same layer), ``tail_gap`` (= firing prob - tail mass),
        ``relational_discrepancy`` (over the live samples) and ``live_fraction`` (share of
        samples with non-zero features on both sides, the ones RCA compares); plus
        ``pooled/relational_discrepancy`` and ``pooled/live_fraction``. Keys are
        ``"<pair>/<name>"``; student keys need a student with spiking records, tail keys
        thresholds (always available except strategy bn on a teacher without BN). The
        relation kind is the configured one (cosine for TAROnly). Nothing is updated.
        (Before the measuring-point fix, the tail mass was read at the stage output and
        the student's firing probability at the stage's last neuron layer: same keys.)"""
        out: dict[str, float] = {}
        with torch.no_grad():
            if ctx.student is not None:
                rel = getattr(self.cfg, "relation", "cosine")
                temp = getattr(self.cfg, "temperature", 0.1)
                for k, v in stage_discrepancies(ctx.teacher, ctx.student, relation=rel,
                                                temperature=temp).items():
                    out[f"{k}/relational_discrepancy"] = v
                for k, v in live_fractions(ctx.teacher, ctx.student).items():
                    out[f"{k}/live_fraction"] = v
            if ctx.teacher_model is not None and ctx.student_model is not None:
                self._ensure_setup(ctx)
            if self.pairs is not None and self.thresholds.ready:
                acts = self.taps.get(ctx.teacher_model, ctx.teacher, ctx.images,
                                     [t for t, _ in self.pairs])
                res = self.tail(acts, ctx.student, self.pairs, teacher_side=False,
                                student_side=False, update=False, stats=True,
                                taps=self.student_taps)
                for pair, rec in res.stats.items():
                    for k, v in rec.items():
                        out[f"{pair}/{k}"] = float(v)
        return out

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"thresholds": self.thresholds.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "thresholds" in state:
            self.thresholds.load_state_dict(state["thresholds"])


class RCAOnly(STARS):
    """STARS' Relational Consistency Alignment alone (section [rca])."""

    name = "rca"
    Config = RCAConfig
    has_tar = False


class TAROnly(STARS):
    """STARS' Tail-Aware Regularization alone (section [tar])."""

    name = "tar"
    Config = TARConfig
    has_rca = False


class STARSSeedTAR(STARS):
    """STARS with the seed's literal TAR (-log mean sigmoid on logits, ``tar.seed_tar``) next
    to the aligned RCA: ``stars`` with ``tar_variant = "seed"`` under its own name (section
    [stars-seedtar]), so that an ablation preset can bench both forms side by side."""

    name = "stars-seedtar"
    Config = STARSSeedTARConfig
