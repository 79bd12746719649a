"""STARS' options: the config sections [stars], [rca], [tar] and [stars-seedtar] (arXiv 2605.27409).

One dataclass per section, built from three field groups: :class:`WeightingFields` (how alpha
and beta are read: gradient shares or raw loss weights), :class:`RCAFields` and
:class:`TARFields`. Each validates its own ranges (negative weights, q outside (0, 1),
kappa <= 0 are errors; the seed's recommended ranges warn under raw weighting only).
What the options do and why the defaults are what they are: :mod:`stars_plugin.stars`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from baselines import config as cfgmod

from .thresholds import TeacherThresholds

Phase = Literal["synthesis", "distill"]
#: alpha / beta when unset, per weighting: gradient shares (measured, see the docstring of
#: :mod:`stars_plugin.stars`) and the seed's raw loss weights.
DEFAULT_SHARES = {"alpha": 0.1, "beta": 0.05}
SEED_WEIGHTS = {"alpha": 0.5, "beta": 0.3}


@dataclass
class WeightingFields:
    """weighting: "grad-share" (default: alpha / beta are gradient shares relative to the
    reference term) | "raw" (alpha / beta multiply the losses); see :mod:`stars_plugin.stars`.
    rescale: under grad-share, when the scales are re-measured in synthesis: "doubling"
    (default; inner steps 0, 1, 2, 4, 8, ... of every call) | "call" (first inner step only,
    the session-3 behaviour: on DeepInversion the shares then drifted to 4-24x BN's)."""

    weighting: Literal["raw", "grad-share"] = "grad-share"
    rescale: Literal["doubling", "call"] = "doubling"

    def __post_init__(self) -> None:
        """Fill an unset alpha / beta with the weighting's default (DEFAULT_SHARES under
        grad-share, SEED_WEIGHTS under raw), so the resolved config records the value used."""
        table = DEFAULT_SHARES if self.weighting == "grad-share" else SEED_WEIGHTS
        for key, val in table.items():
            if hasattr(self, key) and getattr(self, key) is None:
                setattr(self, key, val)


@dataclass
class RCAFields(WeightingFields):
    """RCA options.

    alpha: the gradient share of L_RCA under weighting = "grad-share" (default 0.1), or its
        loss weight under "raw" (default 0.5, the seed's; recommended [0.3, 0.7]); 0
        disables RCA.
    relation: "cosine" (default) | "distance" | "rank" | "softmax-kl" (stars_plugin.relations).
    temperature: softness of "rank" and "softmax-kl" (cosine units; default 0.1).
    rca_features: "pooled" (default) | "stages" (each matched stage, spatially pooled) |
        "pooled+stages" (mean of both).
    rca_phases: where RCA acts: ["synthesis"] (default), ["distill"] or both.
    rca_sign: in synthesis, "cooperative" (+L, default) or "adversarial" (-L).
    rca_teacher_path: in synthesis, "detached" (default: the teacher's relations are the
        target, the gradient reaches the images through the student only) | "live" (through
        both networks, sessions 1-5: 95-96% of the image gradient then went through the
        teacher, pulling its relations towards the student's near-uniform ones;
        ``python -m benchmarks.rca_paths``). In distillation the teacher is always detached.
    """

    alpha: float | None = None
    relation: Literal["cosine", "distance", "rank", "softmax-kl"] = "cosine"
    temperature: float = 0.1
    rca_features: Literal["pooled", "stages", "pooled+stages"] = "pooled"
    rca_phases: list[Phase] = field(default_factory=lambda: ["synthesis"])
    rca_sign: Literal["cooperative", "adversarial"] = "cooperative"
    rca_teacher_path: Literal["detached", "live"] = "detached"

    def _validate_rca(self, sec: str) -> None:
        cfgmod.nonneg(sec, alpha=self.alpha)
        cfgmod.positive(sec, temperature=self.temperature)
        if self.alpha > 0 and self.weighting == "raw":  # alpha = 0 is the explicit "off" switch: no warning
            cfgmod.soft_range(sec, "alpha", self.alpha, 0.3, 0.7)


@dataclass
class TARFields(WeightingFields):
    """TAR options.

    beta: the gradient share of L_TAR under weighting = "grad-share" (default 0.05), or its
        loss weight under "raw" (default 0.3, the seed's; recommended [0.2, 0.5]); 0
        disables TAR.
    q: threshold quantile; real-data tail mass 1 - q (default 0.95, recommended [0.90, 0.98]).
    kappa: softness of e(x) = sigmoid((x - tau) / kappa), > 0 (default 0.1).
    kappa_scale: "relative" (default: kappa times each layer's scale: |gamma| for bn, the
        running std for percentile, V_th on the student side) | "absolute" (raw units).
        Under "distribution" kappa is always in normalized units.
    tar_variant: "aligned" (default) | "seed" (the seed's -log mean sigmoid on logits).
    tar_phases: ["synthesis"] (default), ["distill"] or both.
    tar_teacher_side: the synthetic batch's teacher tail mass -> 1 - q (synthesis only).
    tar_student_side: the student's soft firing probability -> the teacher's tail mass
        (needs a spiking student).
    strategy: thresholds: "bn" (default) | "percentile" | "distribution" (thresholds.py).
    per_channel: thresholds per channel (default) or per layer.
    normalizer: for "distribution": "standardize" (default, own mean/std) | "percentile"
        (divide by the norm_percentile-quantile, as ANN-to-SNN conversion).
    norm_percentile: that quantile (default 0.999).
    student_layers: neuron layers of a matched student stage: "last" (default: the layer
        fed by the stage's last BatchNorm, the point corresponding to the teacher's
        stage-BN output; the stage's last neuron layer in every zoo student) | "all" (mean
        over the stage's neuron layers; not all at the corresponding point).
    granularity: how the student's firing probabilities meet the teacher's tail masses
        (channels never correspond, whatever the widths): "stage" (default, stage means) |
        "sorted" (the sorted per-channel values at min(C_T, C_S) quantile levels).
    subsample: positions sampled per step for kthvalue quantiles (default 4096).
    momentum: EMA momentum of the running threshold estimates (default 0.1).
    mask_nonpositive: leave out channels whose bn/percentile threshold is <= 0 (default
        false: TAR measures at the BN output, where tau <= 0 is as meaningful as any;
        only a stage without BN, read after a ReLU, has no tail information there).
    tar_error: "squared" (default, (p - t)^2) | "chi2" ((p - t)^2 / (t (1 - t))) |
        "bernoulli-kl" (KL(Bern(t) || Bern(p))): how tail probabilities are compared.
    tar_positions: the student's firing probability is estimated on this many random
        (sample, pixel) sites per layer and step (an unbiased estimate, and an unbiased
        squared / chi2 error by the product of two half-sample estimates; the membrane
        recurrence runs on those sites only, which keeps the synthesis step within the
        1.15x budget); 0 = every site (exact, ~1.3-1.6x on the small CPU pair).
    """

    beta: float | None = None
    q: float = 0.95
    kappa: float = 0.1
    kappa_scale: Literal["relative", "absolute"] = "relative"
    tar_variant: Literal["aligned", "seed"] = "aligned"
    tar_phases: list[Phase] = field(default_factory=lambda: ["synthesis"])
    tar_teacher_side: bool = True
    tar_student_side: bool = True
    strategy: Literal["bn", "percentile", "distribution"] = "bn"
    per_channel: bool = True
    normalizer: Literal["standardize", "percentile"] = "standardize"
    norm_percentile: float = 0.999
    student_layers: Literal["last", "all"] = "last"
    granularity: Literal["stage", "sorted"] = "stage"
    subsample: int = 4096
    momentum: float = 0.1
    mask_nonpositive: bool = False
    tar_error: Literal["squared", "chi2", "bernoulli-kl"] = "squared"
    tar_positions: int = 1024

    def _validate_tar(self, sec: str) -> None:
        cfgmod.nonneg(sec, beta=self.beta)
        cfgmod.require(0.0 < self.q < 1.0, f"{sec}.q = {self.q} must lie in (0, 1), e.g. 0.95.")
        cfgmod.require(self.kappa > 0, f"{sec}.kappa = {self.kappa} must be > 0 (e.g. 0.1).")
        cfgmod.require(self.subsample >= 2, f"{sec}.subsample = {self.subsample} must be >= 2.")
        cfgmod.require(self.tar_positions >= 0,
                       f"{sec}.tar_positions = {self.tar_positions} must be >= 0 "
                       f"(0 = every site, exact; e.g. 1024).")
        cfgmod.require(0.0 < self.momentum <= 1.0,
                       f"{sec}.momentum = {self.momentum} must lie in (0, 1].")
        cfgmod.require(0.0 < self.norm_percentile <= 1.0,
                       f"{sec}.norm_percentile = {self.norm_percentile} must lie in (0, 1].")
        if self.tar_variant == "aligned":
            cfgmod.require(self.tar_teacher_side or self.tar_student_side,
                           f"{sec}: tar_teacher_side and tar_student_side are both false; "
                           f"enable one, or set {sec}.beta = 0 to switch TAR off.")
            cfgmod.require(self.tar_student_side or "synthesis" in self.tar_phases
                           or not self.tar_phases,
                           f"{sec}: the TAR teacher side acts only in synthesis (the teacher "
                           f"has no gradient in distillation), but tar_phases = "
                           f"{self.tar_phases}; add \"synthesis\" or set tar_student_side = true.")
        if self.beta > 0 and self.weighting == "raw":  # 0 = "off": no warning
            cfgmod.soft_range(sec, "beta", self.beta, 0.2, 0.5)
        cfgmod.soft_range(sec, "q", self.q, 0.90, 0.98)


@dataclass
class STARSConfig(RCAFields, TARFields):
    """[stars]: both terms (see RCAFields and TARFields for every option)."""

    _section = "stars"

    def validate(self) -> None:
        self._validate_rca(self._section)
        self._validate_tar(self._section)


@dataclass
class STARSSeedTARConfig(STARSConfig):
    """[stars-seedtar]: both terms, TAR in the seed's literal form by default."""

    _section = "stars-seedtar"
    tar_variant: Literal["aligned", "seed"] = "seed"


@dataclass
class RCAConfig(RCAFields):
    """[rca]: RCA only."""

    _section = "rca"

    def validate(self) -> None:
        self._validate_rca(self._section)


@dataclass
class TARConfig(TARFields):
    """[tar]: TAR only."""

    _section = "tar"

    def validate(self) -> None:
        self._validate_tar(self._section)


def thresholds_of(c: TARFields) -> TeacherThresholds:
    """The threshold estimator (tau per stage and channel) that these TAR options describe."""
    return TeacherThresholds(c.strategy, c.q, c.kappa, c.per_channel, c.kappa_scale,
                             c.subsample, c.momentum, c.normalizer, c.norm_percentile,
                             c.mask_nonpositive)
