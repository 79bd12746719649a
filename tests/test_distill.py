"""The KD loop: loss math, NaN handling, held-out split, determinism, regularizer terms."""
from dataclasses import dataclass

import pytest
import torch

from baselines.distill import DistillConfig, distill, evaluate, kd_loss
from baselines.errors import ConfigError, NonFiniteLossError
from baselines.hooks import Regularizer, RegularizerSet
from baselines.synthesizers.base import SynthesisSetup
from baselines.synthesizers.transfer import GaussianNoise, RealData
from tinymodels import TINY_SPEC, TinyANN, TinySNN, tiny_pair


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def _cfg(**kw):
    base = dict(epochs=2, kd_steps=3, batch_size=8, eval_batch_size=32)
    base.update(kw)
    return DistillConfig(**base)


def test_kd_loss_matches_hand_computation_and_vanishes_on_equal_logits():
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    tau = 4.0
    p = torch.softmax(t / tau, 1)
    hand = (p * (p.log() - torch.log_softmax(s / tau, 1))).sum(1).mean() * tau ** 2
    assert torch.allclose(kd_loss(s, t, tau), hand, atol=1e-6)
    assert kd_loss(t, t, tau).abs() < 1e-6


def test_distill_trains_student_and_records_history():
    teacher, student = tiny_pair()
    before = [p.clone() for p in student.parameters()]
    synth = GaussianNoise(SynthesisSetup(teacher, student, TINY_SPEC), {"batch_size": 16})
    res = distill(synth, _data(), _cfg())
    assert res.images_synthesized == 32 and len(synth.pool) == 32
    assert len(res.history) == 2 and "test_acc" in res.history[-1]
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert 0.0 <= res.student_acc <= 100.0


def test_same_seed_same_numbers_on_cpu():
    def run():
        torch.manual_seed(1)
        teacher, student = tiny_pair(seed=1)
        synth = GaussianNoise(SynthesisSetup(teacher, student, TINY_SPEC), {"batch_size": 16})
        res = distill(synth, _data(), _cfg())
        return res.history, [p.detach().clone() for p in student.parameters()]

    (h1, p1), (h2, p2) = run(), run()
    assert [r["kd_loss"] for r in h1] == [r["kd_loss"] for r in h2]
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


class NaNReg(Regularizer):
    name = "nanreg"
    phases = ("distill",)

    @dataclass
    class Config:
        weight: float = 1.0

    def terms(self, ctx):
        return {"boom": ctx.student.logits.sum() * float("nan")}


def test_nan_term_stops_the_run_naming_the_term():
    teacher, student = tiny_pair()
    synth = GaussianNoise(SynthesisSetup(teacher, student, TINY_SPEC, RegularizerSet([NaNReg()])),
                          {"batch_size": 8})
    with pytest.raises(NonFiniteLossError, match="nanreg/boom"):
        distill(synth, _data(), _cfg())


class PullLogits(Regularizer):
    """Distill-phase term pushing the student's first logit up (to see it act)."""
    name = "pull"
    phases = ("distill",)

    @dataclass
    class Config:
        weight: float = 10.0

    def terms(self, ctx):
        return {"pull": -self.cfg.weight * ctx.student.logits[:, 0].mean()}

    def diagnostics(self, ctx):
        return {"logit0": float(ctx.student.logits[:, 0].mean())}


def test_distill_phase_regularizer_acts_and_reports_diagnostics():
    x = _data()
    outs = []
    for regs in ([], [PullLogits()]):
        torch.manual_seed(0)
        teacher, student = tiny_pair()
        synth = GaussianNoise(SynthesisSetup(teacher, student, TINY_SPEC, RegularizerSet(regs)),
                              {"batch_size": 16})
        res = distill(synth, x, _cfg(kd_steps=5))
        xs = TINY_SPEC.normalize(x[0].float() / 255)
        student.eval()
        outs.append((student(xs)[:, 0].mean().item(), res.diagnostics))
    assert outs[1][0] > outs[0][0] + 0.1
    assert set(outs[1][1]) == {"start", "end"} and "logit0" in outs[1][1]["end"]["pull"]


def test_heldout_images_never_enter_the_pool_and_give_agreement():
    teacher, student = tiny_pair()
    synth = GaussianNoise(SynthesisSetup(teacher, student, TINY_SPEC), {"batch_size": 8})
    res = distill(synth, _data(), _cfg(epochs=1, heldout_images=12))
    # 2 batches of 8 were needed for 12 held-out images: 4 remain + 8 from epoch 0
    assert len(synth.pool) == 12 and res.images_synthesized == 12
    assert res.agreement is not None and 0 <= res.agreement <= 100


def test_real_transfer_set_serves_the_training_images_and_beats_nothing_to_learn():
    teacher, student = TinyANN(), TinySNN()
    x, y = _data(40)
    synth = RealData(SynthesisSetup(teacher, student, TINY_SPEC, real=(x, y)), {})
    synth.synthesize()
    px, py = synth.pool.tensors()
    assert torch.equal(px.sort(0).values, x.sort(0).values) and len(py) == 40
    with pytest.raises(ConfigError, match="training images"):
        RealData(SynthesisSetup(teacher, student, TINY_SPEC), {})


def test_evaluate_is_accuracy_in_percent():
    teacher = TinyANN()
    x, _ = _data(32)
    pred = teacher.eval()(TINY_SPEC.normalize(x.float() / 255)).argmax(1)
    assert evaluate(teacher, x, pred, TINY_SPEC) == 100.0
    assert evaluate(teacher, x, (pred + 1) % 3, TINY_SPEC) == 0.0


def test_bad_distill_config_is_rejected():
    from baselines.config import build
    with pytest.raises(ConfigError, match=r"distill\.lr = -0\.1"):
        build(DistillConfig, {"lr": -0.1}, "distill")
    with pytest.raises(ConfigError, match="kd_step"):
        build(DistillConfig, {"kd_step": 3}, "distill")


def test_membrane_potentials_are_computed_only_for_layers_that_are_read():
    from tinymodels import TinySNN
    s = TinySNN()
    out = s.forward_features(torch.randn(4, 1, 8, 8), record_spiking=True)
    assert len(out.spiking) == 3 and not any(st.computed for st in out.spiking)
    v = out.spiking[-1].v_pre
    assert out.spiking[-1].computed and not out.spiking[0].computed
    assert torch.equal((v >= out.spiking[-1].v_threshold).float(), out.spiking[-1].spikes)
