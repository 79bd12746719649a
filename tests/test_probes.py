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
