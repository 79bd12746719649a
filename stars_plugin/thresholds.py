"""Teacher-derived thresholds tau_l for Tail-Aware Regularization, STARS (arXiv 2605.27409).

One threshold per matched teacher stage l, per layer (a scalar) or per channel ([C]), with
a softness kappa_l in the same units, from one of three strategies (the seed's list):

``bn`` (default; layer-wise adaptive, data-free, zero per-step cost)
    From the teacher's own BatchNorm parameters: under the BN running statistics a
    channel's BN output is ~ N(beta_c, gamma_c^2) on real data, so
    tau_c = beta_c + |gamma_c| * z_q (z_q = ndtri(q)) has real-data tail mass 1 - q.
    Per layer: the q-quantile of the channel mixture (1/C) sum_c N(beta_c, gamma_c^2),
    found once by bisection. Computed once in ``setup``.
    *Where it is measured*: at the output of the stage's **last BatchNorm** (in module
    order, skipping BNs inside ``shortcut`` / ``downsample`` branches when another BN
    exists), the point these thresholds describe, captured by :mod:`stars_plugin.taps`
    (not at the stage output: after ReLU + max-pool or a residual add the tail mass above
    tau is not 1 - q). Every strategy measures at that point (percentile and distribution
    estimate their thresholds there too); a stage without BN is measured at its output.
    ``mask_nonpositive`` (default off) leaves out channels with tau_c <= 0; that only
    matters where a stage without BN is read after a ReLU (no tail information there).
``percentile``
    tau = running (EMA, ``momentum``) estimate of the q-quantile of the teacher's stage
    activations on the batches it sees, each estimate taken by ``kthvalue`` on a random
    subsample of ``subsample`` positions (per channel: the same positions for all
    channels). Never sorts whole tensors, never calls ``torch.quantile``. Because the
    threshold comes from the synthetic batches themselves, the synthesis-side TAR target
    (tail mass 1 - q) is met almost by construction under this strategy.
``distribution``
    Teacher activations a and student membrane potentials u are each put on a common
    scale with their own statistics of the current batch (detached, from the same kind of
    subsample): ``standardize`` -> (x - mean) / std, or ``percentile`` -> x / P_p(x) (the
    ANN-to-SNN conversion normalization, p = ``norm_percentile``). The threshold is the
    running q-quantile tau_hat of the normalized teacher activations; the student is
    thresholded at the *same* normalized value (relative thresholds, the seed's remedy for
    the ANN/membrane scale mismatch), so teacher tail mass and student firing probability
    are comparable. kappa is in normalized units on both sides.

Every strategy reduces to raw-unit (tau, kappa) per stage: e(x) = sigmoid((x - tau)/kappa).
``kappa_scale = "relative"`` multiplies kappa by the layer's scale (|gamma_c| for bn, the
running std for percentile, the normalizer for distribution; V_th on the student side for
bn/percentile); ``"absolute"`` uses kappa in raw units.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from baselines import ConfigError, UnknownNameError
from baselines.models import gather_sites, sample_sites

STRATEGIES = ("bn", "percentile", "distribution")
NORMALIZERS = ("standardize", "percentile")
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_SHORTCUT_WORDS = ("shortcut", "downsample", "skip")
_EPS = 1e-6


# ----------------------------------------------------------------------------- quantiles
def quantile_kth(x: Tensor, q: float, dim: int = -1) -> Tensor:
    """q-quantile along ``dim`` with torch.quantile's linear interpolation, via kthvalue."""
    n = x.shape[dim]
    pos = q * (n - 1)
    lo = int(pos)
    frac = pos - lo
    v_lo = x.kthvalue(lo + 1, dim).values
    if frac == 0.0 or lo + 1 >= n:
        return v_lo
    v_hi = x.kthvalue(lo + 2, dim).values
    return v_lo + frac * (v_hi - v_lo)


def sample_per_channel(x: Tensor, lead: int, m: int) -> Tensor:
    """Values of ``x`` at up to ``m`` random positions, all channels: [C, m'].

    ``x`` is [*lead dims, C, *spatial] (lead = 1 for [N, C, H, W], 2 for [T, N, C, H, W]).
    The same positions are used for every channel; all positions if there are <= m.
    Positions (lead index, pixel) are drawn with replacement by the sampler the student's
    membrane estimate uses (:func:`baselines.models.sample_sites`).
    """
    x = x.detach()
    c = x.shape[lead]
    x4 = x.reshape(1, -1, c, max(1, x[(0,) * (lead + 1)].numel()))  # [1, P, C, S]
    return gather_sites(x4, sample_sites(x4, m))[0].t()  # [C, m']


def sample_flat(x: Tensor, m: int) -> Tensor:
    """Up to ``m`` random elements of ``x`` (all of them if there are <= m): [m']."""
    x = x.detach().reshape(-1)
    if x.numel() <= m:
        return x
    return x[torch.randint(0, x.numel(), (m,), device=x.device)]


def normal_quantile(q: float) -> float:
    """z_q, the standard normal q-quantile (torch.special.ndtri)."""
    return float(torch.special.ndtri(torch.tensor(q, dtype=torch.float64)))


def mixture_quantile(mu: Tensor, sigma: Tensor, q: float, iters: int = 100) -> Tensor:
    """q-quantile t of the equal-weight mixture (1/C) sum_c N(mu_c, sigma_c^2), by bisection."""
    mu, sigma = mu.double(), sigma.double().clamp_min(1e-12)
    lo = (mu - 10 * sigma).min()
    hi = (mu + 10 * sigma).max()
    for _ in range(iters):
        mid = (lo + hi) / 2
        cdf = torch.special.ndtr((mid - mu) / sigma).mean()
        lo, hi = torch.where(cdf < q, mid, lo), torch.where(cdf < q, hi, mid)
    return ((lo + hi) / 2).float()


# ----------------------------------------------------------------------------- BN strategy
def stage_batchnorm(stage: nn.Module) -> nn.Module | None:
    """The last BatchNorm of a stage (module order), preferring BNs off shortcut branches."""
    bns = [(n, m) for n, m in stage.named_modules() if isinstance(m, _BN_TYPES)]
    main = [(n, m) for n, m in bns if not any(w in n.lower() for w in _SHORTCUT_WORDS)]
    pick = main or bns
    return pick[-1][1] if pick else None


def bn_thresholds(bn: nn.Module, q: float, per_channel: bool) -> tuple[Tensor, Tensor]:
    """(tau, scale) from a BN's affine parameters: tau = beta + |gamma| z_q (per channel)
    or the mixture q-quantile (per layer); scale = |gamma| (per channel) or its mean."""
    c = bn.num_features
    dev = bn.running_mean.device if bn.running_mean is not None else torch.device("cpu")
    gamma = bn.weight.detach().float() if bn.weight is not None else torch.ones(c, device=dev)
    beta = bn.bias.detach().float() if bn.bias is not None else torch.zeros(c, device=dev)
    sigma = gamma.abs()
    if per_channel:
        return beta + sigma * normal_quantile(q), sigma
    return mixture_quantile(beta, sigma, q).to(dev), sigma.mean()


# ----------------------------------------------------------------------------- the estimator
@dataclass
class Threshold:
    """Raw-unit threshold of one teacher stage.

    tau, kappa: [C] (per channel) or [] (per layer). target: the real-data tail mass the
    synthetic batch should show (1 - q). valid: [C] or [] bool, which channels count.
    tau_hat: the threshold in normalized units (``distribution`` only; used for the student).
    """

    tau: Tensor
    kappa: Tensor
    target: float
    valid: Tensor
    tau_hat: Tensor | None = None


class TeacherThresholds:
    """Per-stage thresholds for one strategy (see module docstring); keeps running estimates."""

    def __init__(self, strategy: str = "bn", q: float = 0.95, kappa: float = 0.1,
                 per_channel: bool = True, kappa_scale: str = "relative",
                 subsample: int = 4096, momentum: float = 0.1,
                 normalizer: str = "standardize", norm_percentile: float = 0.999,
                 mask_nonpositive: bool = False) -> None:
        if strategy not in STRATEGIES:
            raise UnknownNameError("threshold strategy", strategy, list(STRATEGIES))
        if normalizer not in NORMALIZERS:
            raise UnknownNameError("normalizer", normalizer, list(NORMALIZERS))
        self.strategy, self.q, self.kappa = strategy, float(q), float(kappa)
        self.per_channel, self.relative = per_channel, kappa_scale == "relative"
        self.subsample, self.momentum = int(subsample), float(momentum)
        self.normalizer, self.norm_percentile = normalizer, float(norm_percentile)
        self.mask_nonpositive = mask_nonpositive
        self.fixed: dict[int, tuple[Tensor, Tensor]] = {}  # bn: stage -> (tau, scale)
        self._bn_thr: dict[int, Threshold] = {}  # bn: stage -> its Threshold, built once per device
        self.running: dict[int, dict[str, Tensor]] = {}  # percentile/distribution

    # -- setup -----------------------------------------------------------------------
    def setup(self, teacher: nn.Module, stages: Sequence[int]) -> None:
        """Strategy ``bn``: derive thresholds from the teacher's BN parameters (once)."""
        if self.strategy != "bn":
            return
        for k in stages:
            bn = stage_batchnorm(teacher.stages[k])
            if bn is None:
                raise ConfigError(
                    f"threshold strategy 'bn' needs a BatchNorm in teacher stage {k}, "
                    f"found none; set strategy = \"percentile\" or \"distribution\"."
                )
            self.fixed[k] = bn_thresholds(bn, self.q, self.per_channel)
        self._bn_thr.clear()

    @property
    def ready(self) -> bool:
        return self.strategy != "bn" or bool(self.fixed)

    # -- teacher side -----------------------------------------------------------------
    def _sample(self, x: Tensor, lead: int) -> Tensor:
        """[C, m] per channel or [1, m] per layer (float32)."""
        if self.per_channel:
            return sample_per_channel(x, lead, self.subsample).float()
        return sample_flat(x, self.subsample).float()[None]

    def _normalizer(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """(center, scale) of samples s [C, m] -> [C] each."""
        if self.normalizer == "standardize":
            return s.mean(1), s.std(1, unbiased=False)
        return torch.zeros_like(s[:, 0]), quantile_kth(s, self.norm_percentile, dim=1)

    def _ema(self, stage: int, batch: dict[str, Tensor], update: bool) -> dict[str, Tensor]:
        run = self.running.get(stage)
        if run is None or run["tau"].shape != batch["tau"].shape:
            run = batch if update else None
        elif update:
            m = self.momentum
            run = {k: (1 - m) * run[k].to(v.device) + m * v for k, v in batch.items()}
        if update:
            self.running[stage] = run
        return run if run is not None else batch

    def _shape(self, t: Tensor) -> Tensor:
        return t if self.per_channel else t.reshape(())

    def _bn_threshold(self, stage: int, device: torch.device, target: float) -> Threshold:
        if stage not in self.fixed:
            raise ConfigError(f"no BN thresholds for teacher stage {stage}; call setup() first")
        tau, scale = (t.to(device) for t in self.fixed[stage])
        self.fixed[stage] = (tau, scale)
        kappa = self.kappa * scale if self.relative else torch.full_like(tau, self.kappa)
        valid = tau > 0 if self.mask_nonpositive else torch.ones_like(tau, dtype=torch.bool)
        return Threshold(tau, kappa.clamp_min(_EPS), target, valid)

    def for_teacher(self, stage: int, a: Tensor, update: bool = True) -> Threshold:
        """Threshold for teacher stage ``stage`` with activations ``a`` [N, C, ...].

        ``update``: fold this batch into the running estimate (percentile/distribution).
        """
        target = 1.0 - self.q
        if self.strategy == "bn":
            thr = self._bn_thr.get(stage)
            if thr is None or thr.tau.device != a.device:  # once per stage and device, not per step
                thr = self._bn_thr[stage] = self._bn_threshold(stage, a.device, target)
            return thr
        with torch.no_grad():
            s = self._sample(a, 1)
            if self.strategy == "percentile":
                batch = {"tau": quantile_kth(s, self.q, dim=1), "scale": s.std(1, unbiased=False)}
                run = self._ema(stage, batch, update)
                tau, scale = self._shape(run["tau"]), self._shape(run["scale"])
                kappa = self.kappa * scale if self.relative else torch.full_like(tau, self.kappa)
                valid = tau > 0 if self.mask_nonpositive else torch.ones_like(tau, dtype=torch.bool)
                return Threshold(tau, kappa.clamp_min(_EPS), target, valid)
            center, scale = self._normalizer(s)
            valid = scale > _EPS
            scale = scale.clamp_min(_EPS)
            tau_hat_b = quantile_kth((s - center[:, None]) / scale[:, None], self.q, dim=1)
            tau_hat = self._ema(stage, {"tau": tau_hat_b}, update)["tau"]
            tau = self._shape(center + scale * tau_hat)
            return Threshold(tau, self._shape(self.kappa * scale), target, self._shape(valid),
                             self._shape(tau_hat))

    # -- student side -------------------------------------------------------------------
    def for_student(self, teacher_thr: Threshold, v_pre: Tensor, v_th: float,
                    per_channel: bool | None = None) -> tuple[Tensor | float, Tensor | float]:
        """(tau_u, kappa_u) in membrane units for a student layer's v_pre [T, N, C, ...].

        bn / percentile: the student's own threshold V_th (kappa * V_th if relative).
        distribution: the teacher's normalized threshold tau_hat (its mean over valid
        channels: teacher and student channels do not correspond) mapped into this layer's
        membrane units with the layer's own batch statistics, per student channel when
        ``per_channel`` (default: the thresholds' ``per_channel``), else per layer.
        """
        if self.strategy != "distribution":  # Python floats: no per-step device copy
            k = self.kappa * (abs(v_th) if self.relative else 1.0)
            return float(v_th), max(k, _EPS)
        per_channel = self.per_channel if per_channel is None else per_channel
        with torch.no_grad():
            tau_hat = teacher_thr.tau_hat
            if tau_hat.dim() == 1:
                v = teacher_thr.valid
                tau_hat = (tau_hat * v).sum() / v.sum().clamp_min(1)
            if per_channel:
                s = sample_per_channel(v_pre, 2, self.subsample).float()
            else:
                s = sample_flat(v_pre, self.subsample).float()[None]
            center, scale = self._normalizer(s)
            scale = scale.clamp_min(_EPS)
            tau_u = center + scale * tau_hat
            kappa_u = self.kappa * scale
            if not per_channel:
                tau_u, kappa_u = tau_u.reshape(()), kappa_u.reshape(())
        return tau_u, kappa_u

    # -- persistence -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy,
                "running": {int(k): {n: t.detach().cpu() for n, t in v.items()}
                            for k, v in self.running.items()},
                "fixed": {int(k): [t.detach().cpu() for t in v] for k, v in self.fixed.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy", self.strategy) != self.strategy:
            raise ConfigError(
                f"threshold state was saved with strategy {state.get('strategy')!r}, "
                f"this run uses {self.strategy!r}; resume with the same strategy."
            )
        self.running = {int(k): dict(v) for k, v in state.get("running", {}).items()}
        if state.get("fixed"):
            self.fixed = {int(k): tuple(v) for k, v in state["fixed"].items()}
            self._bn_thr.clear()
