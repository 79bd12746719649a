"""Tail-Aware Regularization (TAR), STARS (arXiv 2605.27409).

Soft exceedance e(x; tau) = sigmoid((x - tau) / kappa); its mean is a differentiable tail
probability. With teacher thresholds (tau_l, kappa_l) from :mod:`stars_plugin.thresholds`
and matched stage pairs (l, s):

``aligned`` (default)
  - teacher (synthesis) side: the synthetic batch's teacher tail mass
    m_l = mean e(a_l; tau_l) (per channel [C] when thresholds are per channel) should
    equal the real-data tail mass 1 - q:  L_T = mean_l mean_c (m_l,c - (1 - q))^2
    (per layer: (mean_c m_l,c - (1 - q))^2). Only meaningful in synthesis (in
    distillation the teacher's output has no gradient path).
  - student side: the student's soft firing probability
    p_s = mean_{t, n, space} sigmoid((u_s[t] - V_th) / kappa_s) (pre-reset membrane u,
    per channel; estimated on ``positions`` random (n, pixel) sites when > 0) should equal the teacher's tail mass at the matched stage:
    L_S = mean_s (p_s,c - m_l,c)^2 averaged over channels when the widths match
    (``granularity = "auto"``), else (mean_c p_s,c - mean_c m_l,c)^2. (Equal widths do not
    imply corresponding channels; ``granularity = "stage"`` always compares stage means.)
    Student layers of stage s: the last neuron layer of ``stages.s`` (``layers = "last"``)
    or the mean over all its neuron layers (``"all"``).
  L_TAR = L_T + L_S (the enabled sides). ``error`` replaces the squared error by a
  variance-normalized one (``chi2``) or a Bernoulli KL (see :func:`tail_error`).
``seed``
  The seed's literal form on logits, -log(mean sigmoid(z_S - Q_q(z_T)) + 1e-8), with the
  teacher-logit quantile Q_q over the whole [N, K] tensor by kthvalue (no thresholds, no
  membranes; the seed's undefined ``compute_tail_weights`` is left out).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from baselines import UnknownNameError
from baselines.models import ModelOutput, SpikingLayerState

from .thresholds import TeacherThresholds, Threshold, quantile_kth

VARIANTS = ("aligned", "seed")
GRANULARITIES = ("auto", "stage")
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


def stage_layers(spiking: list[SpikingLayerState], stage: int, which: str = "last"
                 ) -> list[SpikingLayerState]:
    """Neuron layers of student stage ``stage`` (inside ``stages.<stage>``, else by .stage)."""
    inside = [r for r in spiking if r.name.startswith(f"stages.{stage}.")]
    recs = inside or [r for r in spiking if r.stage == stage]
    if not recs:
        return []
    return recs[-1:] if which == "last" else recs


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
                 granularity: str = "auto", error: str = "squared",
                 positions: int = 0) -> None:
        if error not in ERRORS:
            raise UnknownNameError("TAR error", error, list(ERRORS))
        self.thr, self.error, self.positions = thresholds, error, positions
        self.teacher_side, self.student_side = teacher_side, student_side
        self.layers, self.granularity = layers, granularity

    def __call__(self, teacher: ModelOutput, student: ModelOutput | None,
                 pairs: list[tuple[int, int]], *, teacher_side: bool | None = None,
                 student_side: bool | None = None, update: bool = True,
                 detach_teacher: bool = False, stats: bool = False) -> TARResult:
        t_on = self.teacher_side if teacher_side is None else teacher_side
        s_on = self.student_side if student_side is None else student_side
        spiking = student.spiking if student is not None else None
        t_losses, s_losses, out = [], [], TARResult()
        for ti, si in pairs:
            a = teacher.features[ti]
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
                for r in stage_layers(spiking, si, self.layers):
                    p, loss = self._student_layer(r, thr, m_t, m_t_mean)
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

    def _student_layer(self, r: SpikingLayerState, thr: Threshold, m_t: Tensor,
                       m_t_mean: Tensor) -> tuple[Tensor, Tensor]:
        """(soft firing probability [C_S], squared error to the teacher's tail mass).

        With ``positions > 0`` the membrane is recomputed at that many random (sample,
        pixel) sites only (:meth:`SpikingLayerState.v_pre_sample`): p is then an unbiased
        Monte-Carlo estimate of the batch's firing probability, at a fraction of the cost.
        """
        v = r.v_pre_sample(self.positions) if self.positions > 0 else r.v_pre
        per_channel = (self.granularity == "auto" and v.dim() >= 3
                       and v.shape[2] == m_t.shape[0] and m_t.shape[0] > 1)
        tau_u, kappa_u = self.thr.for_student(thr, v, r.v_threshold, per_channel)
        p = firing_probability(v, tau_u, kappa_u)
        if per_channel:
            valid = thr.valid if thr.valid.dim() == 1 else thr.valid.expand_as(m_t)
            return p, masked_mean(tail_error(p, m_t, self.error), valid)
        return p, tail_error(p.mean(), m_t_mean, self.error)
