"""The diagnostic probes' measurements (benchmarks/rca_hardness.py)."""
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
    assert parts["with"]["grad_probe"] > parts["bare"]["grad_probe"] > 0
