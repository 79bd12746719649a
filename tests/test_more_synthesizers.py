"""DAFL, ZSKT, DFAD, DFQ and NAYER on tiny models: what each optimizes, that the adversarial
term needs a distinct student, determinism, resume, STARS on top, registration."""
import copy
import sys

import pytest
import torch
from tinymodels import TINY_SPEC, TinyANN, tiny_pair

from baselines.errors import ConfigError
from baselines.hooks import RegularizerSet, StepContext, count_hooks
from baselines.registry import REGULARIZERS, SYNTHESIZERS
from baselines.synthesizers.base import SynthesisSetup
from baselines.synthesizers.dafl import DAFL
from baselines.synthesizers.dfad import DFAD
from baselines.synthesizers.dfq import DFQ
from baselines.synthesizers.nayer import NAYER
from baselines.synthesizers.zskt import ZSKT

CLASSES = {"dafl": DAFL, "zskt": ZSKT, "dfad": DFAD, "dfq": DFQ, "nayer": NAYER}
NAMES = list(CLASSES)
GENERATIVE = ["dafl", "zskt", "dfad", "dfq"]
ADVERSARIAL = ["zskt", "dfad", "dfq", "nayer"]
TINY = {
    "dafl": dict(batch_size=6, iterations=2, nz=8, ngf=4),
    "zskt": dict(batch_size=6, iterations=2, nz=8, ngf=4),
    "dfad": dict(batch_size=6, iterations=2, nz=8, ngf=4),
    "dfq": dict(batch_size=6, iterations=2, nz=8, ngf=4),
    "nayer": dict(batch_size=7, g_steps=2, ngf=4, le_emb_size=8, embedding_dim=5, warmup=0, g_life=2),
}
TERMS = {"dafl": {"oh", "act", "ie"}, "zskt": {"adv"}, "dfad": {"adv"},
         "dfq": {"bn", "oh", "adv", "balance"}, "nayer": {"bn", "oh", "adv"}}


def _agree_with_teacher(student, teacher):
    """Bias the untrained student towards the teacher's decision on grey images, so NAYER's
    masked KL (which counts only samples where both argmaxes agree) has samples to act on."""
    with torch.no_grad():
        c = int(teacher(torch.zeros(1, *TINY_SPEC.shape)).argmax(1))
        student.fc.bias[c] += 3.0
    return student


def build(name, student="snn", regs=(), seed=0, **over):
    t, s = tiny_pair()
    torch.manual_seed(seed)
    if student == "ann":
        s = TinyANN()
    elif student == "teacher":
        s = t
    if student != "teacher":
        _agree_with_teacher(s, t)
    setup = SynthesisSetup(t, s, TINY_SPEC, regularizers=RegularizerSet(list(regs)))
    return CLASSES[name](setup, {**TINY[name], **over})


def spy_total_loss(monkeypatch, syn, on_terms):
    """Call ``on_terms(terms)`` at every synthesis step, before the total is formed."""
    module = sys.modules[type(syn).synthesize.__module__]
    real = module.total_loss

    def spy(terms, where, step):
        on_terms(terms)
        return real(terms, where, step)

    monkeypatch.setattr(module, "total_loss", spy)


# -- what is optimized ----------------------------------------------------------------------------
@pytest.mark.parametrize("student", ["ann", "snn"])
@pytest.mark.parametrize("name", NAMES)
def test_every_enabled_term_has_a_gradient_to_the_generator(name, student, monkeypatch):
    syn = build(name, student)
    grads = {}

    def on_terms(terms):
        if grads:
            return
        leaves = syn.optimized_tensors()
        assert leaves, "optimized_tensors() is empty during synthesis"
        for k, v in terms.items():
            gs = torch.autograd.grad(v, leaves, retain_graph=True, allow_unused=True)
            grads[k] = sum(0.0 if g is None else float(g.abs().sum()) for g in gs)

    spy_total_loss(monkeypatch, syn, on_terms)
    syn.synthesize()
    assert set(grads) == TERMS[name]
    for term, g in grads.items():
        assert g > 0, f"{name}: term {term!r} has no gradient to the generator"


@pytest.mark.parametrize("name", NAMES)
def test_generator_parameters_change(name):
    syn = build(name)
    gen = syn.generator.body if name == "nayer" else syn.generator
    before = [p.detach().clone() for p in gen.parameters()]
    syn.synthesize()
    assert any(not torch.equal(p, b) for p, b in zip(gen.parameters(), before))


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_term_is_nonzero_against_a_distinct_student(name, monkeypatch):
    values = {}
    for student in ("snn", "ann"):
        syn = build(name, student)
        vals = values.setdefault(student, [])
        spy_total_loss(monkeypatch, syn, lambda terms, vals=vals: vals.append(float(terms["adv"].detach())))
        syn.synthesize()
        monkeypatch.undo()
        assert vals and any(abs(v) > 1e-6 for v in vals), f"{name}: adv is 0 against the {student} student"
        assert all(v <= 0 for v in vals)  # the generator *maximizes* the discrepancy


@pytest.mark.parametrize("name", ["zskt", "dfad", "dfq"])
def test_student_equal_to_teacher_is_refused(name):
    """The reference harness built these with student = teacher: their adversarial term was 0."""
    with pytest.raises(ConfigError, match="student is the teacher"):
        build(name, "teacher")
    if name == "dfq":  # without the adversarial term the student plays no part
        build(name, "teacher", adv=0.0)


def test_nayer_adversarial_term_vanishes_when_student_is_teacher(monkeypatch):
    syn = build("nayer", "teacher")
    vals = []
    spy_total_loss(monkeypatch, syn, lambda terms: vals.append(float(terms["adv"].detach())))
    syn.synthesize()
    assert vals and all(abs(v) < 1e-6 for v in vals)


def test_dafl_never_runs_the_student():
    res = build("dafl").synthesize()
    assert "student_forward" not in res.timing and res.timing["teacher_forward"] > 0


def test_nayer_adversarial_term_waits_for_warmup():
    syn = build("nayer", warmup=2)
    assert "adv" not in syn.synthesize().losses
    syn.set_epoch(2)
    res = syn.synthesize()
    assert "adv" in res.losses and res.timing["student_forward"] > 0


# -- results, pool, KD batches -----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_result_pool_and_hooks(name):
    syn = build(name)
    before = (count_hooks(syn.teacher), count_hooks(syn.student))
    b = TINY[name]["batch_size"]
    for i in (1, 2):
        res = syn.synthesize()
        assert res.images.shape == (b, *TINY_SPEC.shape)
        assert 0 <= float(res.images.min()) and float(res.images.max()) <= 1
        assert res.targets.shape == (b,) and 0 <= int(res.targets.min()) and int(res.targets.max()) < 3
        assert len(syn.pool) == b * i
        assert set(res.losses) == TERMS[name] and res.timing["backward"] > 0
    assert (count_hooks(syn.teacher), count_hooks(syn.student)) == before
    x, y = syn.sample(5)
    assert x.shape == (5, *TINY_SPEC.shape) and y.shape == (5,)


@pytest.mark.parametrize("name", GENERATIVE)
def test_kd_batches_come_from_the_current_generator_or_the_pool(name):
    syn = build(name)
    syn.synthesize()
    torch.manual_seed(3)
    x1, y1 = syn.sample(4)
    torch.manual_seed(3)
    with torch.no_grad():
        expected = TINY_SPEC.normalize(syn.generator(torch.randn(4, syn.cfg.nz)))
    assert torch.allclose(x1, expected, atol=1e-6) and bool((y1 == -1).all())
    assert not torch.equal(syn.sample(4)[0], x1)  # a fresh draw every time
    pooled = build(name, kd_source="pool")
    res = pooled.synthesize()
    xp, yp = pooled.sample(50)
    assert set(yp.tolist()) <= set(res.targets.tolist())  # labels of pooled images


@pytest.mark.parametrize("name", GENERATIVE)
def test_pool_is_bounded(name):
    syn = build(name, pool_size=12)
    for _ in range(4):
        syn.synthesize()
    assert len(syn.pool) == 12


def test_nayer_targets_balanced_and_noisy_layers_redrawn_each_batch():
    syn = build("nayer", batch_size=8)  # 3 classes: 0 1 2 0 1 2 + 2 random
    t = syn.balanced_targets()
    assert t[:6].tolist() == [0, 1, 2, 0, 1, 2] and len(t) == 8
    assert len(syn.generator.noisy) == 3
    syn.synthesize()
    after_first = [p.detach().clone() for p in syn.generator.noisy.parameters()]
    body_after_first = [p.detach().clone() for p in syn.generator.body.parameters()]
    syn.generator.reset_noisy_layers()
    redrawn = [p.detach().clone() for p in syn.generator.noisy.parameters()]
    assert not torch.equal(after_first[0], redrawn[0])
    assert float(redrawn[1].abs().sum()) == 0.0  # bias 0
    assert 0.5 < float(redrawn[0].std()) < 1.5  # N(0, 1) weights
    syn.synthesize()  # the body persists and keeps learning
    assert any(not torch.equal(p, b) for p, b in zip(syn.generator.body.parameters(), body_after_first))


def test_nayer_generator_rebuilt_every_g_life_epochs():
    syn = build("nayer", g_life=2)
    syn.synthesize()
    first = syn.generator
    syn.set_epoch(1)
    syn.synthesize()
    assert syn.generator is first
    syn.set_epoch(2)
    syn.synthesize()
    assert syn.generator is not first
    rebuilt = syn.generator
    syn.synthesize()  # second call in the same epoch: no second rebuild
    assert syn.generator is rebuilt


def test_nayer_embeddings_random_learnable_and_file(tmp_path):
    syn = build("nayer")
    assert not any(p is syn.generator.embeddings for p in syn.generator.parameters())
    learn = build("nayer", embedding="learnable")
    before = learn.generator.embeddings.detach().clone()
    learn.synthesize()
    assert not torch.equal(learn.generator.embeddings.detach(), before)
    emb = torch.randn(3, 6)
    path = tmp_path / "emb.pt"
    torch.save(emb, path)
    f = build("nayer", embedding="file", embedding_file=str(path))
    assert torch.equal(f.embeddings, emb)
    f.synthesize()
    torch.save(torch.randn(4, 6), tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"\[3, d\]"):
        build("nayer", embedding="file", embedding_file=str(tmp_path / "bad.pt"))
    with pytest.raises(ConfigError, match="does not exist"):
        build("nayer", embedding="file", embedding_file=str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="embedding_file"):
        build("nayer", embedding="file")


def test_nayer_precomputed_embeddings_npy_and_bad_files(tmp_path, capsys):
    """Embeddings made elsewhere (e.g. CLIP / BERT text features) as .npy; wrong shapes,
    non-finite values and a missing file are one-line ``error:``s before any compute."""
    import numpy as np

    from benchmarks.cli import main

    emb = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "clip.npy", emb)
    syn = build("nayer", embedding="file", embedding_file=str(tmp_path / "clip.npy"))
    assert torch.equal(syn.embeddings, torch.from_numpy(emb)) and syn.generator.norm.num_features == 4
    syn.synthesize()
    for name, bad in {"flat.npy": np.zeros(3), "cube.npy": np.zeros((3, 4, 1)),
                      "nan.npy": np.full((3, 4), np.nan)}.items():
        np.save(tmp_path / name, bad)
        with pytest.raises(ConfigError, match="NaN" if name == "nan.npy" else r"expected a \[3, d\]"):
            build("nayer", embedding="file", embedding_file=str(tmp_path / name))
    argv = ["distill", "--out", str(tmp_path / "run"), "--synthesizer", "nayer", "--set", "nayer.embedding=file",
            "--set", f"nayer.embedding_file={tmp_path / 'missing.pt'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err


# -- ZSKT's attention transfer (student side) -----------------------------------------------------------
def test_zskt_attaches_attention_transfer_to_the_kd_step_only():
    syn = build("zskt")
    caller_regs = syn.setup.regularizers
    assert len(caller_regs) == 0 and [r.name for r in syn.regularizers] == ["zskt"]
    assert not syn.regularizers.needs_student("synthesis")
    syn.synthesize()
    x, _ = syn.sample(6)
    s = syn.student.train()
    with torch.no_grad():
        t_out = syn.teacher.forward_features(x)
    s_out = s.forward_features(x)
    ctx = StepContext("distill", x, None, t_out, s_out, syn.teacher, s, TINY_SPEC)
    terms = syn.regularizers.terms(ctx)
    assert set(terms) == {"zskt/at"} and float(terms["zskt/at"].detach()) > 0
    grads = torch.autograd.grad(terms["zskt/at"], [p for p in s.parameters() if p.requires_grad],
                                allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert len(build("zskt", at=0.0).regularizers) == 0


# -- determinism and resume --------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_images(name):
    runs = []
    for seed in (0, 0, 1):
        syn = build(name, seed=seed)
        runs.append([syn.synthesize().images for _ in range(2)])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_the_same_next_batch(name):
    a = build(name)
    a.synthesize()
    a.set_epoch(1)
    a.synthesize()
    state = copy.deepcopy(a.state_dict())
    torch.manual_seed(5)
    ra = a.synthesize()
    sa = a.sample(4)[0]
    b = build(name, seed=9)
    b.load_state_dict(state)
    torch.manual_seed(5)
    rb = b.synthesize()
    sb = b.sample(4)[0]
    assert torch.equal(ra.images, rb.images) and ra.losses == rb.losses
    assert torch.equal(sa, sb)
    assert len(b.pool) == len(a.pool) and b.step == a.step and b.epoch == a.epoch
    c = build(name)  # not restored: differs, so the state really matters
    c.set_epoch(1)
    torch.manual_seed(5)
    assert not torch.equal(c.synthesize().images, ra.images)


# -- STARS on top, unchanged -------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_stars_attaches_on_a_spiking_student(name):
    t, s = tiny_pair()
    torch.manual_seed(0)
    _agree_with_teacher(s, t)
    stars = REGULARIZERS.get("stars")({}, name="stars")
    regs = RegularizerSet([stars])
    regs.setup(t, s, TINY_SPEC)
    syn = CLASSES[name](SynthesisSetup(t, s, TINY_SPEC, regularizers=regs), TINY[name])
    res = syn.synthesize()
    star_terms = {k for k in res.losses if k.startswith("stars/")}
    assert star_terms, f"{name}: no STARS term in {sorted(res.losses)}"
    assert TERMS[name] <= set(res.losses)
    assert res.timing["student_forward"] > 0  # STARS needs the student even for DAFL


# -- configuration and registration ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_config_errors(name):
    weight = {"dafl": "oh", "zskt": "adv", "dfad": "adv", "dfq": "bn", "nayer": "oh"}[name]
    with pytest.raises(ConfigError, match=rf"{name}\.{weight} = -1"):
        build(name, **{weight: -1.0})
    zero = {"dafl": dict(oh=0.0, act=0.0, ie=0.0), "zskt": dict(adv=0.0), "dfad": dict(adv=0.0),
            "dfq": dict(bn=0.0, oh=0.0, adv=0.0, balance=0.0), "nayer": dict(bn=0.0, oh=0.0, adv=0.0)}[name]
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        build(name, **zero)
    with pytest.raises(ConfigError, match="batch_size"):
        build(name, batch_size=1)


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_listed(name, capsys):
    from benchmarks.cli import main

    assert SYNTHESIZERS.get(name) is CLASSES[name]
    assert main(["list", "synthesizers"]) == 0
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines()]
    assert any(ln.startswith(name + " ") for ln in lines), f"{name} missing from `dfkd list synthesizers`"


def test_paper_defaults():
    d = DAFL.Config()
    assert (d.oh, d.act, d.ie) == (1.0, 0.1, 5.0)
    z = ZSKT.Config()
    assert (z.adv, z.at, z.nz, z.batch_size, z.iterations) == (1.0, 250.0, 100, 128, 1)
    assert DFAD.Config().adv == 1.0 and DFAD.Config().lr_g == 1e-3
    q = DFQ.Config()
    assert (q.bn, q.oh, q.adv, q.balance) == (1.0, 1.0, 1.0, 20.0)
    n = NAYER.Config()
    assert (n.bn, n.oh, n.adv, n.lr_g, n.g_steps, n.warmup, n.g_life, n.le_emb_size) == \
        (10.0, 0.5, 1.33, 4e-3, 30, 20, 10, 1000)
    assert n.embedding == "random"
