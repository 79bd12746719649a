"""The diagnostic probes' measurements (benchmarks/rca_hardness.py)."""
import contextlib

import torch
import torch.nn.functional as F

from benchmarks.rca_hardness import batch_hardness
from tinymodels import TinyANN


def test_batch_hardness_is_the_kd_loss_the_student_would_get():
    """kd_loss = tau^2 KL(p_T || p_S) with the teacher in eval mode and the student on batch
    statistics (as the KD step queries it): zero for the teacher itself, and the forward
    (not the reverse) KL otherwise."""
    torch.manual_seed(0)
    t, s = TinyANN().eval(), TinyANN()
    x = torch.randn(16, 1, 8, 8)
    h = batch_hardness(t, s, x, tau=4.0)
    with torch.no_grad():
        lt, ls = t(x), s.train()(x)
    p_t, p_s = F.softmax(lt / 4, 1), F.softmax(ls / 4, 1)
    forward = float(16 * (p_t * (p_t.log() - p_s.log())).sum(1).mean())
    reverse = float(16 * (p_s * (p_s.log() - p_t.log())).sum(1).mean())
    assert abs(h["kd_loss"] - forward) < 1e-5 and abs(forward - reverse) > 1e-4
    assert h["agreement"] == float((lt.argmax(1) == ls.argmax(1)).float().mean())
    same = TinyANN()
    same.load_state_dict(s.state_dict())
    h0 = batch_hardness(same.train(), s, x, tau=4.0)
    assert h0["kd_loss"] < 1e-6 and h0["agreement"] == 1.0 and h0["L_rca"] < 1e-6


def test_speed_script_builds_the_student_it_is_told_and_reports_where_the_time_went(tmp_path, monkeypatch):
    """`python -m benchmarks.speed --student-arg bn_weight=2.0`: the preset's student argument
    reaches the student (its BatchNorm scales start at 2), and each synthesizer's row carries
    the median seconds per call of every timed part, bare and with the regularizer, whose
    grad probe includes the regularizer's re-measures."""
    import json

    import benchmarks.speed as speed
    from baselines.registry import STUDENTS

    built = []
    real_get = STUDENTS.get

    def spy_get(name):
        cls = real_get(name)

        def build(*a, **kw):
            built.append(cls(*a, **kw))
            return built[-1]
        return build

    monkeypatch.setattr(STUDENTS, "get", spy_get)
    out = tmp_path / "speed.json"
    assert speed.main(["--synthesizers", "deepinversion", "--steps", "3", "--repeats", "1", "--batch-size", "4",
                       "--image-size", "16", "--student-arg", "bn_weight=2.0", "--json", str(out)]) == 0
    bns = [m for m in built[0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(torch.all(m.weight == 2.0) for m in bns)
    row = json.loads(out.read_text())[0]
    parts = row["parts_s_per_call"]
    assert {"teacher_forward", "student_forward", "backward", "grad_probe"} <= set(parts["bare"])
    assert "regularizers" in parts["with"] and "regularizers" not in parts["bare"]
    assert parts["with"]["grad_probe"] > 0 and parts["bare"]["grad_probe"] > 0  # no timed comparison in tests


def test_rng_shift_draws_once_after_the_first_call_and_restores_the_class():
    """benchmarks.rng_shift's patch: exactly one extra global draw right after the run's
    first synthesize() call, and the synthesizer class unpatched afterwards."""
    from baselines.hooks import RegularizerSet
    from baselines.registry import SYNTHESIZERS
    from baselines.synthesizers.base import SynthesisSetup
    from benchmarks.rng_shift import one_extra_draw_after_first_synthesis
    from tinymodels import TINY_SPEC, tiny_pair

    cls = SYNTHESIZERS.get("noise")
    real = cls.synthesize

    def states(patched):
        torch.manual_seed(0)
        t, s = tiny_pair()
        syn = cls(SynthesisSetup(t, s, TINY_SPEC, RegularizerSet()), {"batch_size": 4})
        with one_extra_draw_after_first_synthesis("noise") if patched else contextlib.nullcontext():
            syn.synthesize()
        return torch.get_rng_state()

    base_first, first = states(False), states(True)
    assert not torch.equal(first, base_first)  # shifted right after the first call
    torch.set_rng_state(base_first)
    torch.rand(())
    assert torch.equal(torch.get_rng_state(), first)  # by exactly one draw
    assert cls.synthesize is real


def test_paired_diagnostics_pairs_by_seed_and_correlates_the_changes(tmp_path):
    """benchmarks.paired_diagnostics: rows pair by seed (a seed without its partner is left
    out), the loss changes are relative (mean over the synthesis batches, own terms only) and
    r is Pearson's over the pairs."""
    import numpy as np

    from benchmarks import paired_diagnostics as pdg
    from benchmarks.store import write_row
    from test_leaderboard import row

    oh_wo, oh_w, acc_wo, acc_w = [0.2, 0.3, 0.1, 0.4], [0.25, 0.3, 0.2, 0.3], [50, 55, 60, 52], [49, 56, 55, 53]
    for seed in range(4):
        for regs, oh, acc in (([], oh_wo, acc_wo), (["stars"], oh_w, acc_w)):
            batches = [{"losses": {"bn": 2.0, "oh": oh[seed] * f, "stars/rca": 9.0}} for f in (0.5, 1.5)]
            r = row("cmi", regs, seed, float(acc[seed]), synth_batches=batches,
                    history=[{"kd_loss": 1.0}, {"kd_loss": 0.5 + 0.1 * seed * len(regs)}])
            write_row(tmp_path / "rows", r["job_id"], r)
    lone = row("cmi", ["stars"], 7, 40.0)
    write_row(tmp_path / "rows", lone["job_id"], lone)
    pairs = pdg.paired_table(list(pdg.read_rows(tmp_path).values()), "stars")
    assert list(pairs["seed"]) == [0, 1, 2, 3]
    assert list(pairs["acc difference"]) == [w - o for w, o in zip(acc_w, acc_wo)]
    rel = [w / o - 1 for w, o in zip(oh_w, oh_wo)]
    assert np.allclose(pairs["oh change"], rel) and np.allclose(pairs["bn change"], 0.0)
    assert "stars/rca change" not in pairs.columns  # regularizer terms are not the synthesizer's own
    r = pdg.correlation_table(pairs).set_index("synthesizer").loc["cmi", "r(acc diff, oh change)"]
    assert float(r) == round(float(np.corrcoef(pairs["acc difference"], rel)[0, 1]), 2)
    assert "no seed has both" in pdg.report(tmp_path, "rca")
