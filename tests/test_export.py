"""dfkd export: a tiny NIR-expressible student read back with the nir package and run in a
second simulator (snnTorch) gives the SpikingJelly student's spikes and logits; ONNX
(checked with onnxruntime) and TorchScript exports give the same logits; the CLI rebuilds
the student from a run directory and says what is missing or impossible."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from baselines.errors import CheckpointError
from benchmarks.cli import main as dfkd
from benchmarks.export import ExportError, student_to_nir, to_onnx, to_torchscript
from benchmarks.zoo import ann, snn

T, SIZE = 4, 16


def _lively(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms that make every layer fire (a fresh student
    is nearly silent on random inputs, which would make the comparison vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1.5 + 0.3 * torch.randn(c, generator=g))
                m.bias.copy_(0.5 + 0.5 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(m, nn.Linear):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def _images(n=3, c=1, seed=1):
    return 2 * torch.randn(n, c, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _neurons(model):
    from spikingjelly.activation_based.neuron import BaseNode

    return [m for m in model.modules() if isinstance(m, BaseNode)]


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_nir_graph_runs_in_snntorch_with_the_same_spikes_and_logits(tmp_path, neuron):
    """Tolerance: spikes equal at every neuron and step (BN folding changes the float rounding
    of the currents, so a spike exactly at threshold could flip: at most 0.1% allowed), logits
    within 1e-4."""
    nir = pytest.importorskip("nir")
    pytest.importorskip("snntorch")
    from snntorch import Leaky
    from snntorch.import_nir import import_from_nir

    torch.manual_seed(0)
    student = _lively(snn.spiking_small_cnn_avg(1, 4, SIZE, T=T, neuron=neuron, width=8))
    x = _images()
    sj_spikes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sj_spikes.append(o.detach())) for m in _neurons(student)]
    with torch.no_grad():
        want = student(x)
    for h in hooks:
        h.remove()

    nir.write(tmp_path / "student.nir", student_to_nir(student, 1, SIZE))
    graph = nir.read(tmp_path / "student.nir")
    kinds = sorted({type(n).__name__ for n in graph.nodes.values()})
    assert kinds == ["AvgPool2d", "Conv2d", "Input", "LIF", "Output"]
    assert graph.metadata["T"] == T and graph.metadata["dt"] == pytest.approx(1e-4)

    net = import_from_nir(graph)
    leaky = [m for m in net.modules() if isinstance(m, Leaky)]
    assert len(leaky) == len(sj_spikes) == 4
    steps = {id(m): [] for m in leaky}
    for m in leaky:
        m.register_forward_hook(lambda m, i, o: steps[id(m)].append((o[0] if isinstance(o, tuple) else o).detach()))
    outs = []
    with torch.no_grad():
        for _ in range(T):  # direct encoding: the same image at every step
            out = net(x)
            outs.append(out[0] if isinstance(out, tuple) else out)
    got = torch.stack(outs).mean(0).flatten(1)

    total = flips = 0
    for m, ref in zip(leaky, sj_spikes):
        mine = torch.stack(steps[id(m)])
        assert mine.shape == ref.shape
        flips += int((mine != ref).sum())
        total += ref.numel()
    assert flips <= 1e-3 * total, f"{flips} of {total} spikes differ"
    rates = [float(s.mean()) for s in sj_spikes]
    assert all(0.01 < r < 0.99 for r in rates), rates  # every layer really fires
    assert want.std() > 1e-2
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_nir_refuses_max_pool_soft_reset_and_ann():
    with pytest.raises(ExportError, match="no max-pooling node.*spiking_smallcnn_avg"):
        student_to_nir(snn.spiking_small_cnn(1, 4, SIZE, width=8), 1, SIZE)
    with pytest.raises(ExportError, match="soft reset"):
        student_to_nir(snn.spiking_small_cnn_avg(1, 4, SIZE, width=8, v_reset=None), 1, SIZE)
    with pytest.raises(ExportError, match="needs a spiking student"):
        student_to_nir(ann.small_cnn(1, 4, SIZE), 1, SIZE)


def test_onnx_of_an_ann_teacher_matches_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    teacher = _lively(ann.small_cnn(1, 4, SIZE, width=8))
    to_onnx(teacher, tmp_path / "t.onnx", _images(2))
    sess = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    x = _images(5, seed=3)  # another batch size than the export's: the batch axis is dynamic
    got = sess.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = teacher(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_onnx_of_a_spiking_student_matches_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    student = _lively(snn.spiking_small_cnn(1, 4, SIZE, T=3, width=8))
    to_onnx(student, tmp_path / "s.onnx", _images(2))
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    x = _images(3, seed=4)
    with torch.no_grad():
        want = student(x).numpy()
    assert want.std() > 1e-2
    np.testing.assert_allclose(sess.run(None, {"images": x.numpy()})[0], want, atol=1e-5)


def test_torchscript_student_loads_back_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    student = _lively(snn.spiking_small_cnn_avg(1, 4, SIZE, T=T, width=8))
    to_torchscript(student, tmp_path / "s.pt", _images(2))
    loaded = torch.jit.load(str(tmp_path / "s.pt"))
    x = _images(3, seed=5)
    with torch.no_grad():
        want, got = student(x), loaded(x)
    assert want.std() > 1e-2
    assert torch.allclose(got, want, atol=1e-6)


# ------------------------------------------------------------------ the CLI on a run directory
def _fake_run(tmp_path, student_name="spiking_smallcnn_avg", save=True):
    """A run directory as `dfkd distill --set run.save_student=true` leaves it (result.json
    with the resolved config, student.pt)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.manual_seed(0)
    student = _lively(snn.spiking_small_cnn_avg(1, 4, SIZE, T=T) if student_name.endswith("avg")
                      else snn.spiking_small_cnn(1, 4, SIZE, T=T))
    row = {"dataset": "toy", "student": student_name, "teacher": "smallcnn",
           "config": {"run": {"dataset": "toy", "student": student_name, "T": T, "neuron": "lif",
                              "surrogate": "atan", "teacher": "smallcnn", "save_student": save}}}
    (run_dir / "result.json").write_text(json.dumps(row))
    if save:
        torch.save(student.state_dict(), run_dir / "student.pt")
    return run_dir, student


def test_cli_exports_a_run_and_the_files_load(tmp_path, capsys):
    nir = pytest.importorskip("nir")
    run_dir, student = _fake_run(tmp_path)
    assert dfkd(["export", str(run_dir), "--format", "nir"]) == 0
    assert "wrote" in capsys.readouterr().out
    g = nir.read(run_dir / "student.nir")
    assert g.nodes["input"].input_type["input"].tolist() == [1, SIZE, SIZE]  # toy: 1x16x16
    assert dfkd(["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "s.ts")]) == 0
    x = _images(2)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(tmp_path / "s.ts"))(x), student(x), atol=1e-6)


def test_cli_errors_name_the_fix(tmp_path, capsys):
    run_dir, _ = _fake_run(tmp_path, save=False)
    assert dfkd(["export", str(run_dir), "--format", "torchscript"]) == 2
    assert "run.save_student=true" in capsys.readouterr().err
    assert dfkd(["export", str(tmp_path / "nowhere"), "--format", "onnx"]) == 2
    assert "result.json does not exist" in capsys.readouterr().err
    other = tmp_path / "max"
    other.mkdir()
    run2, _ = _fake_run(other, student_name="spiking_smallcnn")
    assert dfkd(["export", str(run2), "--format", "nir"]) == 2
    assert "no max-pooling node" in capsys.readouterr().err


def test_cli_version_and_help_texts(capsys):
    with pytest.raises(SystemExit) as ei:
        dfkd(["--version"])
    assert ei.value.code == 0 and capsys.readouterr().out.startswith("dfkd ")
    with pytest.raises(SystemExit):
        dfkd(["compare", "--help"])
    out = capsys.readouterr().out
    assert "95%" in out and "95%%" not in out
    with pytest.raises(SystemExit):
        dfkd(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    from pathlib import Path

    import benchmarks

    for p in (Path(benchmarks.__file__).parent / "presets").glob("*.toml"):
        assert p.stem in out
