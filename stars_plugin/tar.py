"""Tail-Aware Regularization (TAR), STARS (arXiv 2605.27409).

Soft exceedance e(x; tau) = sigmoid((x - tau) / kappa); its mean is a differentiable tail
probability. With teacher thresholds (tau_l, kappa_l) from :mod:`stars_plugin.thresholds`
and matched stage pairs (l, s):

``aligned`` (default)
  Measuring points (:mod:`stars_plugin.taps`): teacher stage l is read at the output a_l
  of its last BatchNorm, the point the ``bn`` thresholds describe; student stage s at the
  pre-reset membrane u_s of the neuron layer that the student's stage BN feeds
  (``student_layers = "last"``; ``"all"``: the mean over every neuron layer of the stage,
  which are not all at the corresponding point).
  - teacher (synthesis) side: the synthetic batch's teacher tail mass
    m_l = mean e(a_l; tau_l) (per channel [C] when thresholds are per channel) should
    equal the real-data tail mass 1 - q:  L_T = mean_l mean_c (m_l,c - (1 - q))^2
    (per layer: (mean_c m_l,c - (1 - q))^2). Only meaningful in synthesis (in
    distillation the teacher's output has no gradient path).
  - student side: the student's soft firing probability
    p_s,c = mean_{t, n, space} sigmoid((u_s[t] - V_th) / kappa_s) should match the
    teacher's tail mass m_l, which is a *detached* target: the student side never moves
    the teacher's activations (that is the teacher side's job). Teacher channel c and
    student channel c are not the same feature, so channels are never paired:
    ``granularity = "stage"`` (default) compares stage means,
    (mean_c p_s,c - mean_c m_l,c)^2; ``"sorted"`` compares the sorted per-channel values
    (the two distributions of per-channel rates) at K = min(C_T, C_S) quantile levels,
    mean_k (P_s(k) - M_l(k))^2, by linear interpolation between order statistics.
    Estimation: with ``positions > 0`` p is estimated on that many random (sample,
    pixel) sites drawn with replacement; the estimate p_hat is unbiased but its square
    is not (E (p_hat - m)^2 = (p - m)^2 + Var p_hat). So the sites are split into two
    independent halves and the squared error is replaced by the product
    (p_hat1 - m)(p_hat2 - m), whose expectation (and that of its gradient) is exactly the
    all-sites value; ``chi2`` divides the same product by m (1 - m). For ``sorted`` the
    channel ranking is taken from the pooled estimate, so the product is unbiased given
    that ranking (the ranking's own noise is a second-order bias). ``bernoulli-kl`` has no
    unbiased product form: its sampled estimate is biased upward by ~Var p_hat / (2 p (1 - p)).
    Without sampling (positions = 0, or a layer with fewer sites) the error is exact.
  L_TAR = L_T + L_S (the enabled sides). ``error`` replaces the squared error by a
  variance-normalized one (``chi2``) or a Bernoulli KL (see :func:`tail_error`).
``seed``
  The seed's literal form on logits, -log(mean sigmoid(z_S - Q_q(z_T)) + 1e-8), with the
  teacher-logit quantile Q_q over the whole [N, K] tensor by kthvalue (no thresholds, no
  membranes; the seed's undefined ``compute_tail_weights`` is left out). Kept exactly as
  written, to be measured next to the aligned form.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from baselines import UnknownNameError
from baselines.models import ModelOutput, SpikingLayerState

from .thresholds import TeacherThresholds, Threshold, quantile_kth

VARIANTS = ("aligned", "seed")
GRANULARITIES = ("stage", "sorted")
STUDENT_LAYERS = ("last", "all")
ERRORS = ("squared", "chi2", "bernoulli-kl")


# ----------------------------------------------------------------------------- primitives
def _bcast(t: Tensor | float, x: Tensor, channel_dim: int) -> Tensor | float:
    """Reshape a [C] tensor to broadcast against x at ``channel_dim`` (scalars unchanged)."""
    if isinstance(t, (int, float)):
        return float(t)
    t = t.to(device=x.device, dtype=x.dtype)
    if t.dim() == 0:
        return t
    return t.reshape([-1] + [1] * (x.dim() - channel_dim - 1))


def soft_exceedance(x: Tensor, tau: Tensor | float, kappa: Tensor | float,
                    channel_dim: int = 1) -> Tensor:
    """e(x; tau) = sigmoid((x - tau) / kappa), tau/kappa scalars or per channel."""
    return torch.sigmoid((x - _bcast(tau, x, channel_dim)) / _bcast(kappa, x, channel_dim))


def channel_mean(x: Tensor, channel_dim: int) -> Tensor:
    """Mean over every dim but ``channel_dim`` (float32 accumulation): [C]."""
    if x.dim() <= channel_dim:
        return x.float().mean().reshape(1)
    dims = [d for d in range(x.dim()) if d != channel_dim]
    return x.mean(dim=dims, dtype=torch.float32)


def tail_mass(a: Tensor, tau: Tensor, kappa: Tensor) -> Tensor:
    """Teacher tail mass per channel of stage activations a [N, C, ...]: [C]."""
    return channel_mean(soft_exceedance(a, tau, kappa, 1), 1)


def firing_probability(v_pre: Tensor, tau: Tensor, kappa: Tensor) -> Tensor:
    """Soft firing probability per channel of a membrane record [T, N, C, ...]: [C]."""
    return channel_mean(soft_exceedance(v_pre, tau, kappa, 2), 2)


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of x over entries where ``valid`` (scalar or same shape); 0 if none is valid."""
    w = valid.to(device=x.device, dtype=x.dtype).expand_as(x)
    return (x * w).sum() / w.sum().clamp_min(1.0)


def tail_error(p: Tensor, target: Tensor | float, kind: str = "squared") -> Tensor:
    """Elementwise discrepancy between probabilities p and their targets.

    ``squared``: (p - t)^2 (the default form). ``chi2``: (p - t)^2 / (t (1 - t)), the
    squared error in units of a Bernoulli variance (t detached), so that a 5% target does
    not make the term 400x smaller than a 50% one. ``bernoulli-kl``: KL(Bern(t) || Bern(p)).
    """
    t = target  # a float target stays a Python scalar (no host-to-device copy per step)
    if kind == "squared":
        return (p - t) ** 2
    if kind == "chi2":
        if isinstance(t, float):
            tt = min(max(t, 1e-4), 1 - 1e-4)
        else:
            tt = t.detach().clamp(1e-4, 1 - 1e-4)
        return (p - t) ** 2 / (tt * (1 - tt))
    if kind == "bernoulli-kl":
        pc = p.clamp(1e-6, 1 - 1e-6)
        tc = torch.full_like(p, t) if isinstance(t, float) else t
        tc = tc.clamp(1e-6, 1 - 1e-6)
        return tc * (tc.log() - pc.log()) + (1 - tc) * ((1 - tc).log() - (1 - pc).log())
    raise UnknownNameError("TAR error", kind, list(ERRORS))


def seed_tar(student_logits: Tensor, teacher_logits: Tensor, q: float = 0.95) -> Tensor:
    """The seed's TAR: -log(mean sigmoid(z_S - quantile_q(z_T)) + 1e-8)."""
    thr = quantile_kth(teacher_logits.float().flatten(), q)
    return -torch.log(torch.sigmoid(student_logits.float() - thr).mean() + 1e-8)


def stage_layers(spiking: list[SpikingLayerState], stage: int, which: str = "last",
                 tap: str | None = None) -> list[SpikingLayerState]:
    """Neuron layers of student stage ``stage``: ``last`` -> the layer named ``tap`` (the one
    the stage BN feeds, :func:`stars_plugin.taps.student_tap_layer`) when recorded, else the
    stage's last neuron layer; ``all`` -> every neuron layer of the stage."""
    inside = [r for r in spiking if r.name.startswith(f"stages.{stage}.")]
    recs = inside or [r for r in spiking if r.stage == stage]
    if not recs:
        return []
    if which != "last":
        return recs
    named = [r for r in recs if tap is not None and r.name == tap]
    return named[-1:] or recs[-1:]


def sorted_levels(x: Tensor, k: int) -> Tensor:
    """x [n] (already sorted ascending) at k quantile levels (i + 0.5) / k, i < k, by linear
    interpolation between order statistics: [k] (x itself when n == k). Differentiable."""
    n = x.shape[0]
    if n == k:
        return x
    pos = ((torch.arange(k, device=x.device, dtype=torch.float32) + 0.5) * (n / k) - 0.5)
    pos = pos.clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.float()).to(x.dtype)
    return x[lo] * (1 - w) + x[hi] * w


def product_error(p1: Tensor, p2: Tensor, target: Tensor | float, kind: str) -> Tensor:
    """Unbiased estimate of the squared (or chi2) error from two independent estimates
    p1, p2 of the same probability: (p1 - t)(p2 - t) [/ t (1 - t)] (may be negative)."""
    e = (p1 - target) * (p2 - target)
    if kind == "chi2":
        if isinstance(target, float):
            tt = min(max(target, 1e-4), 1 - 1e-4)
        else:
            tt = target.detach().clamp(1e-4, 1 - 1e-4)
        e = e / (tt * (1 - tt))
    return e


def _n_sites(r: SpikingLayerState) -> int:
    s = r.spikes
    return s.shape[1] * (s[0, 0, 0].numel() if s.dim() > 3 else 1)


# ----------------------------------------------------------------------------- the term
@dataclass
class TARResult:
    """Losses (tensors) and per-pair statistics (floats) of one TAR evaluation."""

    teacher_loss: Tensor | None = None
    student_loss: Tensor | None = None
    stats: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def total(self) -> Tensor | None:
        parts = [x for x in (self.teacher_loss, self.student_loss) if x is not None]
        return sum(parts[1:], parts[0]) if parts else None


class TailAware:
    """The aligned TAR over matched stage pairs (see module docstring)."""

    def __init__(self, thresholds: TeacherThresholds, teacher_side: bool = True,
                 student_side: bool = True, layers: str = "last",
                 granularity: str = "stage", error: str = "squared",
                 positions: int = 0) -> None:
        if error not in ERRORS:
            raise UnknownNameError("TAR error", error, list(ERRORS))
        if granularity not in GRANULARITIES:
            raise UnknownNameError("TAR granularity", granularity, list(GRANULARITIES))
        self.thr, self.error, self.positions = thresholds, error, positions
        self.teacher_side, self.student_side = teacher_side, student_side
        self.layers, self.granularity = layers, granularity

    def __call__(self, acts: dict[int, Tensor], student: ModelOutput | None,
                 pairs: list[tuple[int, int]], *, teacher_side: bool | None = None,
                 student_side: bool | None = None, update: bool = True,
                 detach_teacher: bool = False, stats: bool = False,
                 taps: dict[int, str | None] | None = None) -> TARResult:
        """``acts``: teacher stage -> activations at its measuring point (the stage-BN
        output, :class:`stars_plugin.taps.TeacherTaps`); ``taps``: student stage -> name of
        the neuron layer fed by its stage BN."""
        t_on = self.teacher_side if teacher_side is None else teacher_side
        s_on = self.student_side if student_side is None else student_side
        spiking = student.spiking if student is not None else None
        taps = taps or {}
        t_losses, s_losses, out = [], [], TARResult()
        for ti, si in pairs:
            a = acts[ti]
            if detach_teacher:
                a = a.detach()
            thr = self.thr.for_teacher(ti, a, update=update)
            m_t = tail_mass(a, thr.tau, thr.kappa)  # [C_T]
            m_t_mean = masked_mean(m_t, thr.valid)
            if t_on:
                if thr.tau.dim() == 1:
                    t_losses.append(masked_mean(tail_error(m_t, thr.target, self.error),
                                                thr.valid))
                else:
                    t_losses.append(tail_error(m_t_mean, thr.target, self.error)
                                    * thr.valid.float())
            rec: dict[str, float] = {}
            if stats:  # floats sync the device: only when asked (diagnostics)
                rec["teacher_tail_mass"] = float(m_t_mean.detach())
                rec["teacher_threshold"] = float(masked_mean(thr.tau.float(), thr.valid).detach())
            if spiking is not None and (s_on or stats):
                per_layer, probs, rates = [], [], []
                target = self._target(m_t.detach(), thr)
                for r in stage_layers(spiking, si, self.layers, taps.get(si)):
                    p, loss = self._student_layer(r, thr, target)
                    per_layer.append(loss)
                    if stats:
                        probs.append(float(p.detach().mean()))
                        rates.append(float(r.spikes.detach().float().mean()))
                if per_layer and s_on:
                    s_losses.append(sum(per_layer[1:], per_layer[0]) / len(per_layer))
                if probs:
                    rec["student_firing_prob"] = sum(probs) / len(probs)
                    rec["student_spike_rate"] = sum(rates) / len(rates)
                    rec["tail_gap"] = rec["student_firing_prob"] - rec["teacher_tail_mass"]
            if stats:
                out.stats[f"t{ti}_s{si}"] = rec
        if t_losses:
            out.teacher_loss = sum(t_losses[1:], t_losses[0]) / len(t_losses)
        if s_losses:
            out.student_loss = sum(s_losses[1:], s_losses[0]) / len(s_losses)
        return out

    def _target(self, m_t: Tensor, thr: Threshold) -> Tensor | None:
        """The student side's (detached) target: the stage mean (``stage``) or the sorted
        valid per-channel tail masses (``sorted``; None when no channel is valid)."""
        valid = thr.valid if thr.valid.dim() == 1 else thr.valid.expand_as(m_t)
        if self.granularity == "stage":
            return masked_mean(m_t, valid)
        if not bool(valid.all()):
            m_t = m_t[valid]
            if m_t.numel() == 0:
                return None
        return m_t.sort().values

    def _student_layer(self, r: SpikingLayerState, thr: Threshold,
                       target: Tensor | None) -> tuple[Tensor, Tensor]:
        """(soft firing probability [C_S], its error to the teacher's detached tail mass).

        With ``positions > 0`` the membrane is recomputed at that many random (sample,
        pixel) sites only (:meth:`SpikingLayerState.v_pre_sample`): p is then an unbiased
        Monte-Carlo estimate of the batch's firing probability, at a fraction of the cost,
        and the error is the unbiased two-half product (module docstring).
        """
        sampled = 0 < self.positions < _n_sites(r)
        v = r.v_pre_sample(self.positions) if self.positions > 0 else r.v_pre
        tau_u, kappa_u = self.thr.for_student(thr, v, r.v_threshold)
        halves = None
        if sampled and self.error in ("squared", "chi2") and v.shape[1] >= 2:
            h = v.shape[1] // 2  # sites are i.i.d. draws: the two halves are independent
            halves = (firing_probability(v[:, :h], tau_u, kappa_u),
                      firing_probability(v[:, h:2 * h], tau_u, kappa_u))
            p = (halves[0] + halves[1]) / 2
        else:
            p = firing_probability(v, tau_u, kappa_u)
        if target is None:  # no valid teacher channel: no signal
            return p, 0.0 * p.sum()
        if self.granularity == "stage":
            if halves is not None:
                return p, product_error(halves[0].mean(), halves[1].mean(), target, self.error)
            return p, tail_error(p.mean(), target, self.error)
        k = min(target.shape[0], p.shape[0])
        m_k = sorted_levels(target, k)
        if halves is not None:
            order = ((halves[0] + halves[1]) / 2).detach().argsort()
            q1 = sorted_levels(halves[0][order], k)
            q2 = sorted_levels(halves[1][order], k)
            return p, product_error(q1, q2, m_k, self.error).mean()
        return p, tail_error(sorted_levels(p.sort().values, k), m_k, self.error).mean()
