"""Tests of the STARS plugin (stars_plugin): relations, RCA, thresholds, TAR, the hooks."""
import math
import warnings

import pytest
import torch

from baselines.errors import ConfigError, UnknownNameError
from baselines.hooks import RegularizerSet, StepContext
from baselines.models import ModelOutput, SpikingLayerState
from baselines.registry import REGULARIZERS
from stars_plugin.relations import RELATIONS, off_diagonal, relation_loss, relation_matrix
from stars_plugin.stars import STARS, RCAOnly, TAROnly
from stars_plugin.tar import seed_tar
from stars_plugin.thresholds import (TeacherThresholds, bn_thresholds, normal_quantile,
                                     quantile_kth, stage_batchnorm)
from tinymodels import TINY_SPEC, TinyANN, tiny_pair

# ----------------------------------------------------------------------------- helpers


def _ctx(phase, teacher_out, student_out, t, s, images=None):
    images = images if images is not None else torch.zeros(teacher_out.logits.shape[0], 1, 8, 8)
    return StepContext(phase=phase, images=images, targets=None, teacher=teacher_out,
                       student=student_out, teacher_model=t, student_model=s, spec=TINY_SPEC)


def _synthesis_ctx(seed=0, n=8, gain=3.0):
    """Frozen tiny pair, images requiring grad, spiking records on (a synthesis step)."""
    t, s = tiny_pair(seed)
    s.eval()
    for p in s.parameters():
        p.requires_grad_(False)
    x = (gain * torch.randn(n, 1, 8, 8)).requires_grad_()
    ctx = _ctx("synthesis", t.forward_features(x), s.forward_features(x, record_spiking=True),
               t, s, x)
    return ctx, x


def _distill_ctx(seed=0, n=8, gain=3.0):
    t, s = tiny_pair(seed)
    s.train()
    x = gain * torch.randn(n, 1, 8, 8)
    with torch.no_grad():
        t_out = t.forward_features(x)
    ctx = _ctx("distill", t_out, s.forward_features(x, record_spiking=True), t, s, x)
    return ctx, s


def _set_bn(t, gamma=1.0, beta=0.0):
    for k in range(t.num_stages):
        bn = stage_batchnorm(t.stages[k])
        with torch.no_grad():
            bn.weight.fill_(gamma)
            bn.bias.fill_(beta)


# ----------------------------------------------------------------------------- relations
@pytest.mark.parametrize("kind", RELATIONS)
def test_relations_scale_invariant(kind):
    f = torch.randn(6, 10)
    assert torch.allclose(relation_matrix(f, kind), relation_matrix(3.7 * f, kind), atol=1e-5)


def test_cosine_relation_is_normalized_gram():
    f = torch.randn(5, 4)
    n = f / f.norm(dim=1, keepdim=True)
    assert torch.allclose(relation_matrix(f, "cosine"), n @ n.t(), atol=1e-6)


def test_off_diagonal():
    m = torch.arange(16.0).view(4, 4)
    ref = m[~torch.eye(4, dtype=torch.bool)].view(4, 3)
    assert torch.equal(off_diagonal(m), ref)


@pytest.mark.parametrize("kind", RELATIONS)
def test_relation_loss_zero_iff_same(kind):
    f = torch.randn(6, 10)
    assert float(relation_loss(f, f.clone(), kind)) == pytest.approx(0.0, abs=1e-6)
    assert float(relation_loss(f, 2.0 * f, kind)) == pytest.approx(0.0, abs=1e-5)
    g = torch.randn(6, 7)  # other width: only the B x B relations are compared
    assert float(relation_loss(f, g, kind)) > 1e-4


def test_unknown_relation_names_known_ones():
    with pytest.raises(UnknownNameError, match="cosine"):
        relation_matrix(torch.randn(3, 2), "cosin")


# ---------------------------------------------------------------------- quantiles / thresholds
@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.95, 0.999, 1.0])
def test_quantile_kth_matches_torch_quantile(q):
    x = torch.randn(7, 101)
    assert torch.allclose(quantile_kth(x, q, dim=1), torch.quantile(x, q, dim=1), atol=1e-6)
    assert torch.allclose(quantile_kth(x.flatten(), q), torch.quantile(x.flatten(), q), atol=1e-6)


@pytest.mark.parametrize("per_channel", [True, False])
def test_percentile_thresholds_track_torch_quantile(per_channel):
    """Running kthvalue-on-subsample estimate within 0.05 std of the exact quantile."""
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.1, 1.5, 3.0, 0.8]).view(1, 8, 1, 1)
    a = torch.randn(64, 8, 32, 32) * scale + torch.linspace(-1, 2, 8).view(1, 8, 1, 1)
    # 8192 of 65536 positions per step (one estimate: sd ~0.07 std); EMA over 80 steps
    th = TeacherThresholds("percentile", q=0.95, per_channel=per_channel, subsample=8192,
                           momentum=0.05, mask_nonpositive=False)
    for _ in range(80):
        est = th.for_teacher(0, a).tau
    if per_channel:
        flat = a.transpose(0, 1).reshape(8, -1)
        exact, std = torch.quantile(flat, 0.95, dim=1), flat.std(dim=1)
    else:
        exact, std = torch.quantile(a.flatten(), 0.95), a.std()
    assert est.shape == exact.shape
    assert ((est - exact).abs() < 0.05 * std).all(), (est, exact)


def test_bn_thresholds_formula_and_tail_mass():
    t = TinyANN()
    bn = stage_batchnorm(t.stages[1])
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(-2.0, 3.0, bn.num_features))  # negative gamma too
        bn.bias.copy_(torch.linspace(-1.0, 1.5, bn.num_features))
    q = 0.95
    tau, scale = bn_thresholds(bn, q, per_channel=True)
    z = float(torch.special.ndtri(torch.tensor(q)))
    assert torch.allclose(tau, bn.bias + bn.weight.abs() * z, atol=1e-5)
    assert torch.allclose(scale, bn.weight.abs())
    # real-data tail mass 1 - q on samples from N(beta, gamma^2)
    y = bn.bias.detach() + bn.weight.detach() * torch.randn(200_000, bn.num_features)
    mass = (y > tau).float().mean(0)
    assert torch.allclose(mass, torch.full_like(mass, 1 - q), atol=0.005)
    # per layer: the mixture quantile leaves 1 - q of all channels' mass above it
    tau_l, _ = bn_thresholds(bn, q, per_channel=False)
    assert tau_l.dim() == 0
    assert float((y > tau_l).float().mean()) == pytest.approx(1 - q, abs=0.003)


def test_normal_quantile():
    assert normal_quantile(0.95) == pytest.approx(1.6448536, abs=1e-6)


def test_bn_stage_skips_shortcut_branch():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3), torch.nn.BatchNorm2d(2))
            self.shortcut = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))

    b = Block()
    assert stage_batchnorm(b) is b.body[1]
    assert stage_batchnorm(torch.nn.Sequential(torch.nn.ReLU())) is None


def test_distribution_strategy_is_scale_invariant():
    """Under 'distribution' (standardize) the teacher tail mass ignores the activation scale."""
    a = torch.randn(16, 4, 4, 4).abs()
    out = []
    for g in (1.0, 10.0):
        th = TeacherThresholds("distribution", q=0.9, per_channel=True, subsample=10**6)
        thr = th.for_teacher(0, g * a)
        from stars_plugin.tar import tail_mass
        out.append(tail_mass(g * a, thr.tau, thr.kappa))
    assert torch.allclose(out[0], out[1], atol=1e-5)


# ----------------------------------------------------------------------------- TAR values
def _tar_case(teacher_value, v_pre_value, gamma=1.0, beta=0.0, **cfg):
    """TAR (bn thresholds tau = beta + |gamma| z_q, kappa 0.1 relative) on constant tensors."""
    t, s = tiny_pair()
    _set_bn(t, gamma, beta)
    n, T = 4, 2
    feats = [torch.full((n, 8, 4, 4), teacher_value), torch.full((n, 16, 2, 2), teacher_value)]
    t_out = ModelOutput(torch.zeros(n, 3), feats, feats[-1].mean((2, 3)))
    spk = [SpikingLayerState(f"stages.{k}.2", k, torch.full((T, n, c, h, h), v_pre_value),
                             torch.zeros(T, n, c, h, h), 1.0)
           for k, (c, h) in enumerate([(8, 4), (16, 2)])]
    s_out = ModelOutput(torch.zeros(n, 3), [f.clone() for f in feats], feats[-1].mean((2, 3)), spk)
    reg = TAROnly({"beta": 0.3, **cfg}, name="tar")
    return reg.terms(_ctx("synthesis", t_out, s_out, t, s))["tar"] / 0.3


def _logit(p):
    return math.log(p / (1 - p))


def test_tar_student_side_zero_when_aligned_and_monotone():
    tau, kappa = normal_quantile(0.95), 0.1
    b = tau - 0.15  # teacher tail mass m = sigmoid(-1.5)
    m = 1 / (1 + math.exp(1.5))
    c = 1.0 + 0.1 * _logit(m)  # sigmoid((c - V_th)/kappa) = m, V_th = 1
    vals = [float(_tar_case(b, c + d, tar_teacher_side=False)) for d in (0, .02, .05, .1, .2, .4)]
    assert vals[0] < 1e-10
    assert all(x < y for x, y in zip(vals, vals[1:])), vals
    below = [float(_tar_case(b, c - d, tar_teacher_side=False)) for d in (0, .05, .1, .2)]
    assert all(x < y for x, y in zip(below, below[1:])), below


def test_tar_teacher_side_zero_at_real_tail_mass_and_monotone():
    tau = normal_quantile(0.95)
    b = tau + 0.1 * _logit(0.05)  # sigmoid((b - tau)/kappa) = 1 - q
    vals = [float(_tar_case(b + d, 0.0, tar_student_side=False)) for d in (0, .05, .1, .3, 1.0)]
    assert vals[0] < 1e-10
    assert all(x < y for x, y in zip(vals, vals[1:])), vals


@pytest.mark.parametrize("error", ["chi2", "bernoulli-kl"])
def test_tar_error_forms_zero_when_aligned(error):
    tau = normal_quantile(0.95)
    b = tau + 0.1 * _logit(0.05)
    assert float(_tar_case(b, 0.0, tar_student_side=False, tar_error=error)) < 1e-8
    assert float(_tar_case(b + 0.2, 0.0, tar_student_side=False, tar_error=error)) > 1e-3
    # student side: the target is the teacher's (tensor) tail mass
    m = 1 / (1 + math.exp(1.5))
    c = 1.0 + 0.1 * _logit(m)
    assert float(_tar_case(tau - 0.15, c, tar_teacher_side=False, tar_error=error)) < 1e-8
    assert float(_tar_case(tau - 0.15, c + 0.1, tar_teacher_side=False, tar_error=error)) > 1e-3


def test_tar_masks_nonpositive_thresholds():
    # beta = -2, gamma = 1: tau = -0.36 <= 0 everywhere -> no valid channel -> no signal
    assert float(_tar_case(5.0, 0.0, beta=-2.0, tar_student_side=False)) == 0.0
    assert float(_tar_case(5.0, 0.0, beta=-2.0, tar_student_side=False,
                           mask_nonpositive=False)) > 0.1


def test_seed_variant_matches_hand_formula():
    ts, ss = torch.randn(6, 5), torch.randn(6, 5)
    hand = -torch.log(torch.sigmoid(ss - torch.quantile(ts.flatten(), 0.95)).mean() + 1e-8)
    assert float(seed_tar(ss, ts, 0.95)) == pytest.approx(float(hand), rel=1e-6)
    t, s = tiny_pair()
    reg = TAROnly({"tar_variant": "seed", "beta": 0.3}, name="tar")
    assert not reg.needs_spiking("synthesis") and reg.needs_student("synthesis")
    ctx = _ctx("synthesis", ModelOutput(ts, [], ts), ModelOutput(ss, [], ss), t, s)
    assert float(reg.terms(ctx)["tar"]) == pytest.approx(0.3 * float(hand), rel=1e-6)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("cfg", [
    {"tar_student_side": False, "alpha": 0.5},
    {"tar_teacher_side": False, "alpha": 0.5},
    {"strategy": "percentile"},
    {"strategy": "distribution", "per_channel": False},
    {"strategy": "distribution", "normalizer": "percentile"},
    {"relation": "rank", "rca_features": "pooled+stages"},
    {"relation": "softmax-kl", "rca_features": "stages"},
    {"relation": "distance"},
])
def test_gradients_reach_pixels_in_synthesis(cfg):
    ctx, x = _synthesis_ctx()
    reg = STARS(cfg, name="stars")
    terms = reg.terms(ctx)
    assert set(terms) == {"rca", "tar"}
    for k, v in terms.items():
        (g,) = torch.autograd.grad(v, x, retain_graph=True)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, k
    assert all(p.grad is None for p in ctx.student_model.parameters())


def test_gradients_reach_student_weights_in_distill():
    ctx, s = _distill_ctx()
    reg = STARS({"rca_phases": ["distill"], "tar_phases": ["distill"]}, name="stars")
    assert reg.needs_spiking("distill") and not reg.needs_spiking("synthesis")
    terms = reg.terms(ctx)
    assert set(terms) == {"rca", "tar"}
    w = s.stages[0][0].weight
    for k, v in terms.items():
        (g,) = torch.autograd.grad(v, w, retain_graph=True)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, k


def test_adversarial_sign_flips_rca_in_synthesis_only():
    ctx, _ = _synthesis_ctx()
    coop = STARS({"beta": 0.3}, name="stars").terms(ctx)["rca"].detach()
    adv = STARS({"rca_sign": "adversarial"}, name="stars").terms(ctx)["rca"].detach()
    assert float(adv) == pytest.approx(-float(coop), rel=1e-6) and float(coop) > 0
    dctx, _ = _distill_ctx()
    d = STARS({"rca_sign": "adversarial", "rca_phases": ["distill"]}, name="stars").terms(dctx)
    assert float(d["rca"].detach()) > 0


# ----------------------------------------------------------------------------- config & models
@pytest.mark.parametrize("bad", [{"alpha": -1.0}, {"q": 1.2}, {"q": 0.0}, {"kappa": 0.0},
                                 {"beta": -0.1}, {"momentum": 0.0},
                                 {"tar_teacher_side": False, "tar_student_side": False},
                                 {"tar_phases": ["distill"], "tar_student_side": False}])
def test_invalid_config_raises(bad):
    with pytest.raises(ConfigError):
        STARS(bad, name="stars")


def test_unknown_option_values_name_the_known_ones():
    with pytest.raises(UnknownNameError, match="percentile"):
        STARS({"strategy": "percentil"}, name="stars")
    with pytest.raises(UnknownNameError, match="alpha"):
        STARS({"alpah": 0.5}, name="stars")
    with pytest.raises(UnknownNameError):
        STARS({"rca_phases": ["synth"]}, name="stars")


def test_out_of_range_values_warn_but_work():
    with pytest.warns(UserWarning, match="alpha"):
        STARS({"alpha": 0.9}, name="stars")
    with pytest.warns(UserWarning, match="q"):
        TAROnly({"q": 0.99}, name="tar")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        STARS({}, name="stars")  # defaults lie inside the recommended ranges


def test_ann_student_with_tar_student_side_is_a_config_error():
    t = TinyANN()
    ann_student = TinyANN()
    regs = RegularizerSet([STARS({}, name="stars")])
    with pytest.raises(ConfigError, match="is an ANN.*tar_student_side = false"):
        regs.setup(t, ann_student, TINY_SPEC)
    # without the student side an ANN student is fine
    no_student_side = STARS({"tar_student_side": False}, name="stars")
    RegularizerSet([no_student_side]).setup(t, ann_student, TINY_SPEC)
    RegularizerSet([RCAOnly({}, name="rca")]).setup(t, ann_student, TINY_SPEC)


def test_teacher_without_bn_and_bn_strategy_is_a_config_error():
    t, s = tiny_pair()
    t.stages[1] = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.ReLU())
    with pytest.raises(ConfigError, match="percentile"):
        STARS({}, name="stars").check_models(t, s)
    STARS({"strategy": "percentile"}, name="stars").check_models(t, s)


def test_phases_and_requests():
    reg = STARS({}, name="stars")
    assert reg.active_phases() == ("synthesis",)
    assert reg.needs_spiking("synthesis") and reg.needs_student("synthesis")
    assert not reg.needs_student("distill")
    teacher_only = TAROnly({"tar_student_side": False}, name="tar")
    assert not teacher_only.needs_student("synthesis")
    off = STARS({"beta": 0.0, "rca_phases": ["distill"]}, name="stars")
    assert off.active_phases() == ("distill",) and not off.needs_spiking("distill")


def test_registry_entry_points():
    assert REGULARIZERS.get("stars") is STARS
    assert REGULARIZERS.get("rca") is RCAOnly
    assert REGULARIZERS.get("tar") is TAROnly
    reg = REGULARIZERS.get("rca")({"alpha": 0.4}, name="rca")
    assert reg.name == "rca" and reg.cfg.alpha == 0.4 and not hasattr(reg.cfg, "beta")


# ----------------------------------------------------------------------------- diagnostics & state
def test_diagnostics_keys_per_matched_stage():
    ctx, _ = _synthesis_ctx()
    for cls, name in ((STARS, "stars"), (RCAOnly, "rca"), (TAROnly, "tar")):
        d = cls({}, name=name).diagnostics(ctx)
        for pair in ("t0_s0", "t1_s1"):
            for key in ("teacher_tail_mass", "student_firing_prob", "tail_gap",
                        "relational_discrepancy", "student_spike_rate", "teacher_threshold"):
                assert isinstance(d[f"{pair}/{key}"], float), (name, pair, key)
            assert d[f"{pair}/tail_gap"] == pytest.approx(
                d[f"{pair}/student_firing_prob"] - d[f"{pair}/teacher_tail_mass"])
        assert "pooled/relational_discrepancy" in d
        assert 0.0 <= d["t1_s1/teacher_tail_mass"] <= 1.0


def test_running_thresholds_state_roundtrip():
    ctx, _ = _synthesis_ctx()
    a = STARS({"strategy": "percentile"}, name="stars")
    a.terms(ctx)
    a.terms(ctx)
    b = STARS({"strategy": "percentile"}, name="stars")
    b.load_state_dict(a.state_dict())
    for k, v in a.thresholds.running.items():
        assert torch.equal(b.thresholds.running[k]["tau"], v["tau"])
    with pytest.raises(ConfigError):
        STARS({"strategy": "bn"}, name="stars").load_state_dict(a.state_dict())


def test_diagnostics_do_not_move_running_estimates():
    ctx, _ = _synthesis_ctx()
    reg = STARS({"strategy": "percentile"}, name="stars")
    reg.terms(ctx)
    before = {k: v["tau"].clone() for k, v in reg.thresholds.running.items()}
    reg.diagnostics(ctx)
    assert all(torch.equal(before[k], reg.thresholds.running[k]["tau"]) for k in before)


def test_missing_spiking_records_is_reported():
    t, s = tiny_pair()
    x = torch.randn(4, 1, 8, 8)
    ctx = _ctx("synthesis", t.forward_features(x), s.forward_features(x), t, s, x)
    with pytest.raises(ConfigError, match="record_spiking"):
        STARS({}, name="stars").terms(ctx)


def test_sampled_firing_probability_is_an_unbiased_estimate_of_the_exact_one():
    """tar_positions estimates p per channel on random sites: its mean over draws matches
    the exact (all-sites) value, one draw is within a few Monte-Carlo standard errors."""
    from stars_plugin.tar import firing_probability
    from benchmarks.zoo import snn
    torch.manual_seed(0)
    model = snn.spiking_small_cnn(1, 10, 16, T=4)
    out = model.forward_features(torch.randn(64, 1, 16, 16) * 3, record_spiking=True)
    rec = out.spiking[0]  # 64 x 16 x 16 = 16384 sites
    exact = firing_probability(rec.v_pre, 1.0, 0.1)
    draws = torch.stack([firing_probability(rec.v_pre_sample(512), 1.0, 0.1).detach()
                         for _ in range(200)])
    se = draws.std(0) / math.sqrt(200)
    assert exact.min() > 0.01  # the check is not vacuous
    assert torch.all((draws.mean(0) - exact.detach()).abs() < 4 * se + 1e-6)
    one = draws[0]
    assert torch.all((one - exact.detach()).abs() < 5 * draws.std(0) + 1e-6)


def test_tar_positions_must_be_nonnegative():
    with pytest.raises(ConfigError, match="tar_positions"):
        STARS({"tar_positions": -1}, name="stars")
