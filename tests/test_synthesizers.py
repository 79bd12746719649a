"""DeepInversion, CMI and Fast-DFKD on tiny models: what each optimizes, what it keeps,
what it leaves behind (hooks, state), and how it fails."""
import copy
import sys
from dataclasses import dataclass

import pytest
import torch
from tinymodels import TINY_SPEC, TinyANN, TinySNN, tiny_pair

from baselines.errors import ConfigError, NonFiniteLossError, UnknownNameError
from baselines.hooks import Regularizer, RegularizerSet, count_hooks
from baselines.losses import BNStatLoss
from baselines.spec import DataSpec
from baselines.synthesizers.base import SynthesisSetup
from baselines.synthesizers.cmi import CMI
from baselines.synthesizers.deepinversion import DeepInversion
from baselines.synthesizers.fast import FastMeta, FastNoMeta

CLASSES = {"deepinversion": DeepInversion, "cmi": CMI, "fast": FastMeta, "fast-nometa": FastNoMeta}
NAMES = list(CLASSES)
TINY = {
    "deepinversion": dict(batch_size=6, iterations=4),
    "cmi": dict(batch_size=6, iterations=3, nz=8, ngf=4, head_dim=8, bank_size=15, n_neg=10),
    "fast": dict(batch_size=6, nz=8, ngf=4, preset="fast-2", warmup=0),
    "fast-nometa": dict(batch_size=6, nz=8, ngf=4, preset="fast-2", warmup=0),
}
TERMS = {"deepinversion": {"bn", "oh", "adv", "tv", "l2"}, "cmi": {"bn", "oh", "adv", "cr"},
         "fast": {"bn", "oh", "adv"}, "fast-nometa": {"bn", "oh", "adv"}}


def _agree_with_teacher(student, teacher):
    """Bias the untrained student towards the teacher's decision on grey images, so the masked
    KL (which only counts samples where both argmaxes agree) has samples to act on."""
    with torch.no_grad():
        c = int(teacher(torch.zeros(1, *TINY_SPEC.shape)).argmax(1))
        student.fc.bias[c] += 3.0
    return student


def build(name, student="snn", regs=(), spec=TINY_SPEC, seed=0, **over):
    t, s = tiny_pair()  # seeds 0 itself
    torch.manual_seed(seed)
    if student == "ann":
        s = TinyANN()
    elif student == "teacher":  # the reference scripts' bug
        s = t
    if student != "teacher":
        _agree_with_teacher(s, t)
    setup = SynthesisSetup(t, s, spec, regularizers=RegularizerSet(list(regs)))
    return CLASSES[name](setup, {**TINY[name], **over})


def spy_total_loss(monkeypatch, syn, on_terms):
    """Call ``on_terms(terms)`` at every inner step (before the total is formed)."""
    module = sys.modules[type(syn).__module__]
    real = module.total_loss

    def spy(terms, where, step):
        on_terms(terms)
        return real(terms, where, step)

    monkeypatch.setattr(module, "total_loss", spy)


class Brighten(Regularizer):
    """Test regularizer: -weight * mean pixel (pushes images brighter)."""

    name = "bright"
    phases = ("synthesis",)

    @dataclass
    class Config:
        weight: float = 100.0

    def needs_student(self, phase):
        return False

    def terms(self, ctx):
        return {"mean": -self.cfg.weight * ctx.images.mean()}


class Ramp(Regularizer):
    """Test regularizer: a constant slope * inner_step (makes the total loss rise or fall);
    records the images it sees."""

    name = "ramp"
    phases = ("synthesis",)

    @dataclass
    class Config:
        slope: float = 1e3

    def __init__(self, cfg=None, name=None, **params):
        super().__init__(cfg, name=name, **params)
        self.seen = []

    def needs_student(self, phase):
        return False

    def terms(self, ctx):
        self.seen.append(ctx.images.detach().clone())
        return {"step": torch.tensor(self.cfg.slope * ctx.inner_step)}


class NaNReg(Regularizer):
    name = "nanreg"
    phases = ("synthesis",)

    @dataclass
    class Config:
        pass

    def terms(self, ctx):
        return {"bad": ctx.images.sum() * float("nan")}


# -- what is optimized -------------------------------------------------------------------------
@pytest.mark.parametrize("student", ["ann", "snn"])
@pytest.mark.parametrize("name", NAMES)
def test_every_enabled_term_has_a_gradient(name, student, monkeypatch):
    over = dict(tv=1e-3, l2=1e-3) if name == "deepinversion" else {}
    syn = build(name, student, **over)
    grads = {}

    def on_terms(terms):
        if grads:
            return
        leaves = syn.optimized_tensors()
        for k, v in terms.items():
            gs = torch.autograd.grad(v, leaves, retain_graph=True, allow_unused=True)
            grads[k] = [0.0 if g is None else float(g.abs().sum()) for g in gs]

    spy_total_loss(monkeypatch, syn, on_terms)
    syn.synthesize()
    assert set(grads) == TERMS[name]
    for term, g in grads.items():
        if name == "deepinversion":
            assert g[0] > 0, f"{term}: no gradient to the pixels"
        else:
            assert sum(g[:-1]) > 0, f"{term}: no gradient to the generator"
            assert g[-1] > 0, f"{term}: no gradient to z"


@pytest.mark.parametrize("name", NAMES)
def test_adversarial_term_needs_a_distinct_student(name, monkeypatch):
    """The adversarial term vanishes when the student is the teacher (the reference harness's
    DAFL/ZSKT/DFAD/DFQ branch); against a distinct student, SNN or ANN, it is nonzero."""
    values = {}
    for student in ("teacher", "snn", "ann"):
        syn = build(name, student)
        vals = values.setdefault(student, [])
        spy_total_loss(monkeypatch, syn, lambda terms, vals=vals: vals.append(float(terms["adv"].detach())))
        syn.synthesize()
        monkeypatch.undo()
    assert all(abs(v) < 1e-6 for v in values["teacher"])
    assert any(abs(v) > 1e-6 for v in values["snn"])
    assert any(abs(v) > 1e-6 for v in values["ann"])


def test_bn_loss_falls_over_deepinversion_steps(monkeypatch):
    hist = []
    real = BNStatLoss.loss

    def recording(self):
        v = real(self)
        hist.append(float(v.detach()))
        return v

    monkeypatch.setattr(BNStatLoss, "loss", recording)
    syn = build("deepinversion", iterations=40, oh=0.0, adv=0.0)
    res = syn.synthesize()
    assert len(hist) == 40
    assert sum(hist[-5:]) / 5 < 0.9 * hist[0]
    assert res.losses["bn"] == pytest.approx(10 * min(hist), rel=1e-5)  # kept = best step


def test_student_runs_only_when_needed():
    res = build("deepinversion", adv=0.0).synthesize()
    assert "student_forward" not in res.timing and "teacher_forward" in res.timing
    res = build("deepinversion").synthesize()
    assert res.timing["student_forward"] > 0


def test_fast_adversarial_term_waits_for_warmup():
    syn = build("fast", warmup=2)
    res = syn.synthesize()
    assert "adv" not in res.losses and "student_forward" not in res.timing
    syn.set_epoch(2)
    res = syn.synthesize()
    assert "adv" in res.losses and res.timing["student_forward"] > 0


# -- what is kept ------------------------------------------------------------------------------
@pytest.mark.parametrize("slope,kept", [(1e3, 0), (-1e3, -1)])
def test_deepinversion_keeps_the_lowest_loss_batch(slope, kept):
    ramp = Ramp({"slope": slope}, name="ramp")
    syn = build("deepinversion", regs=[ramp], iterations=5, jitter=0.0, flip=False)
    res = syn.synthesize()
    assert len(ramp.seen) == 5
    best = TINY_SPEC.denormalize(ramp.seen[kept]).clamp(0, 1)
    other = TINY_SPEC.denormalize(ramp.seen[-1 - kept]).clamp(0, 1)
    assert torch.allclose(res.images, best, atol=1e-6)
    assert not torch.allclose(res.images, other, atol=1e-3)
    assert res.losses["ramp/step"] == pytest.approx(slope * (kept % 5))


def test_deepinversion_clamps_pixels_to_the_valid_range():
    ramp = Ramp({"slope": 0.0}, name="ramp")
    build("deepinversion", regs=[ramp], iterations=4, jitter=0.0, flip=False).synthesize()
    lo, hi = TINY_SPEC.pixel_bounds(ramp.seen[0])
    assert bool(((ramp.seen[0] < lo) | (ramp.seen[0] > hi)).any())  # randn start: some outside
    for x in ramp.seen[1:]:
        assert bool(((x >= lo - 1e-6) & (x <= hi + 1e-6)).all())


@pytest.mark.parametrize("name", NAMES)
def test_result_and_pool(name):
    syn = build(name)
    for i in (1, 2):
        res = syn.synthesize()
        assert res.images.shape == (6, *TINY_SPEC.shape)
        assert float(res.images.min()) >= 0 and float(res.images.max()) <= 1
        assert res.targets.shape == (6,) and int(res.targets.max()) < TINY_SPEC.num_classes
        assert len(syn.pool) == 6 * i
        assert res.seconds > 0 and res.timing["backward"] > 0 and "other" in res.timing
        assert set(res.losses) == TERMS[name] - {"tv", "l2"}


@pytest.mark.parametrize("name", NAMES)
def test_regularizer_terms_are_logged_and_act(name):
    over = {"fast": dict(steps=4), "fast-nometa": dict(steps=4), "cmi": dict(lr=0.02, iterations=5)}.get(name, {})
    plain = build(name, **over).synthesize()
    res = build(name, regs=[Brighten()], **over).synthesize()
    assert "bright/mean" in res.losses
    assert not torch.allclose(plain.images, res.images)
    assert float(res.images.mean()) > float(plain.images.mean())


# -- hygiene -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_no_hooks_left_behind(name):
    syn = build(name)
    t, s = syn.teacher, syn.student
    before = (count_hooks(t), count_hooks(s))
    syn.synthesize()
    assert (count_hooks(t), count_hooks(s)) == before


@pytest.mark.parametrize("name", NAMES)
def test_nan_regularizer_stops_the_run_naming_the_term(name):
    syn = build(name, regs=[NaNReg()])
    t, s = syn.teacher, syn.student
    s.train()
    before = (count_hooks(t), count_hooks(s))
    with pytest.raises(NonFiniteLossError, match="nanreg/bad"):
        syn.synthesize()
    assert (count_hooks(t), count_hooks(s)) == before
    assert s.training and all(p.requires_grad for p in s.parameters())  # eval_frozen restored


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_images(name):
    runs = []
    for seed in (0, 0, 1):
        syn = build(name, seed=seed)
        runs.append([syn.synthesize().images for _ in range(2)])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("name", ["cmi", "fast", "fast-nometa"])
def test_resume_continues_exactly(name):
    a = build(name)
    a.synthesize()
    state = copy.deepcopy(a.state_dict())
    torch.manual_seed(5)
    ra = a.synthesize()
    b = build(name)
    b.load_state_dict(state)
    torch.manual_seed(5)
    rb = b.synthesize()
    assert torch.equal(ra.images, rb.images) and ra.losses == rb.losses
    assert len(b.pool) == len(a.pool) and b.step == a.step
    c = build(name)  # not restored: differs (so the state really matters)
    torch.manual_seed(5)
    assert not torch.equal(c.synthesize().images, ra.images)


# -- CMI memory bank ----------------------------------------------------------------------------
def test_cmi_bank_negatives_come_from_past_batches_and_size_is_capped():
    syn = build("cmi", bank_size=15, n_neg=10)
    draws = []
    real = syn.bank.sample

    def spy(k, device="cpu"):
        out = real(k, device)
        draws.append((syn.bank.contents(), out.clone()))
        return out

    syn.bank.sample = spy
    syn.synthesize()
    assert len(draws) == 3 and all(d[1].shape[0] == 0 for d in draws)  # first batch: no past
    assert len(syn.bank) == 6
    after_first = syn.bank.contents()
    draws.clear()
    syn.synthesize()
    assert len(draws) == 3
    for bank_rows, neg in draws:
        assert torch.equal(bank_rows, after_first)  # the current batch never enters mid-call
        assert neg.shape[0] == 6
        assert all((bank_rows == r).all(1).any() for r in neg)
    assert len(syn.bank) == 12
    syn.synthesize()
    assert len(syn.bank) == 15  # capped at bank_size
    assert syn.bank.sample(100).shape == (15, 2 * syn.feature_dim)


# -- Fast meta-learning -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["fomaml", "reptile"])
def test_fast_meta_generator_changes_only_in_the_meta_step(method, monkeypatch):
    syn = build("fast", meta_method=method, steps=3)
    meta_params = list(syn.generator.parameters())
    before = [p.detach().clone() for p in meta_params]
    clone_grad_sums = [torch.zeros_like(p) for p in meta_params]
    real_acc = syn._accumulate_meta_grad

    def acc(clone):
        for s, q in zip(clone_grad_sums, clone.parameters()):
            s.add_(q.grad)
        real_acc(clone)

    monkeypatch.setattr(syn, "_accumulate_meta_grad", acc)
    checks = []
    real_step = syn.meta_opt.step

    def step(*a, **k):
        unchanged = all(torch.equal(p, b) for p, b in zip(meta_params, before))
        if method == "fomaml":
            grad_ok = all(torch.allclose(p.grad, s, atol=1e-7) for p, s in zip(meta_params, clone_grad_sums))
        else:
            grad_ok = sum(float(p.grad.abs().sum()) for p in meta_params) > 0
        checks.append((unchanged, grad_ok))
        return real_step(*a, **k)

    monkeypatch.setattr(syn.meta_opt, "step", step)
    syn.synthesize()
    assert checks == [(True, True)]  # one meta step per call, inner steps did not leak
    assert any(not torch.equal(p, b) for p, b in zip(meta_params, before))
    if method == "fomaml":
        assert float(sum(s.abs().sum() for s in clone_grad_sums)) > 0


def test_fast_nometa_updates_its_generator_in_place_and_keeps_a_bn_ema():
    syn = build("fast-nometa")
    assert syn.meta_opt is None
    before = [p.detach().clone() for p in syn.generator.parameters()]
    assert syn.bn_loss.ema is None
    syn.synthesize()
    assert any(not torch.equal(p, b) for p, b in zip(syn.generator.parameters(), before))
    assert syn.bn_loss.ema is not None and "bn_loss" in syn.extra_state()


def test_fast_presets_and_overrides():
    assert build("fast", preset="fast-5").k == 5
    syn = build("fast", preset="fast-10")
    assert (syn.k, syn.lr_g, syn.lr_z) == (10, 2e-3, 0.01)
    assert syn.meta_opt.param_groups[0]["lr"] == pytest.approx(2e-3 * 10)
    syn = build("fast", preset="fast-2", steps=3, lr_g=1e-3)
    assert (syn.k, syn.lr_g, syn.lr_z) == (3, 1e-3, 0.015)
    syn = build("fast-nometa", preset=None, steps=1, lr_g=1e-3, lr_z=1e-2)
    assert (syn.k, syn.lr_g, syn.lr_z) == (1, 1e-3, 1e-2)


# -- configuration errors (before any compute) ---------------------------------------------------
def _count_forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda m, i: calls.append(1))
    return calls


@pytest.mark.parametrize("name", NAMES)
def test_negative_weight_is_rejected(name):
    with pytest.raises(ConfigError, match=r"\.oh = -1"):
        build(name, oh=-1.0)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_key_names_the_closest(name):
    with pytest.raises(UnknownNameError, match="Did you mean 'bn'"):
        build(name, bnn=1.0)


@pytest.mark.parametrize("name", ["cmi", "fast", "fast-nometa"])
def test_generator_image_size_checked_before_compute(name):
    spec = DataSpec("odd", channels=1, image_size=6, num_classes=3, mean=(0.5,), std=(0.25,))
    torch.manual_seed(0)
    t, s = tiny_pair()
    calls = _count_forwards(t)
    with pytest.raises(ConfigError, match="multiple of 4"):
        CLASSES[name](SynthesisSetup(t, s, spec), TINY[name])
    assert calls == []


def test_other_config_errors():
    with pytest.raises(ConfigError):
        build("deepinversion", iterations=0)
    with pytest.raises(ConfigError):
        build("cmi", tau=0.0)
    with pytest.raises(ConfigError, match="preset"):
        build("fast", preset=None)
    with pytest.raises(ConfigError):
        build("fast", preset="fast-3")
    with pytest.raises(ConfigError):
        build("fast", lr_z=-0.1)
    with pytest.raises(ConfigError, match="batch_size"):
        build("cmi", batch_size=1)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_synthesis_follows_the_fp32_trajectory(monkeypatch, name):
    """``run.precision = "bf16"`` wraps the whole synthesize() call, optimizer steps included, in
    one autocast context: the inner optimization must still move what the networks see, step by
    step as in fp32 (BN term within 0.2% at every inner step; bf16 rounding alone is ~1e-4).
    With autocast's weight-cast cache on, a generator's and a latent's bf16 copies were frozen
    at their first cast (CMI 0.5%, Fast 1.7% off by the second step; a CMI job distilled 16%)."""
    from baselines.precision import autocast

    traj = {}
    for prec in ("fp32", "bf16"):
        syn = build(name, **({"iterations": 8} if name in ("deepinversion", "cmi") else {}))
        vals: list[float] = []
        with monkeypatch.context() as m:
            spy_total_loss(m, syn, lambda terms, vals=vals: vals.append(float(terms["bn"].detach())))
            torch.manual_seed(1)
            with autocast(prec, "cpu", "synthesis"):
                syn.synthesize()
        traj[prec] = vals
    assert len(traj["fp32"]) >= 2 and len(traj["bf16"]) == len(traj["fp32"])
    assert traj["bf16"] == pytest.approx(traj["fp32"], rel=2e-3)
