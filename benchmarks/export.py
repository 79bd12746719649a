"""Export a distilled student (or a run's teacher) for other tools: NIR, ONNX, TorchScript.

- **NIR** (Neuromorphic Intermediate Representation, ``pip install 'stars-dfkd[export]'``):
  a graph of ``Conv2d`` (BatchNorm folded in: w' = w * g / sqrt(var + eps),
  b' = beta - mean * g / sqrt(var + eps)), ``LIF`` / ``IF``, ``AvgPool2d`` nodes. The
  global average pool + linear classifier becomes ``AvgPool2d`` over the last feature map
  and a 1x1 ``Conv2d``, so the graph's output is [N, classes, 1, 1] per time step; the
  logits are its mean over the T steps (direct encoding: feed the same image at every step).
  SpikingJelly's discrete LIF (decay_input=True, hard reset to V_reset)
  ``H = V + (X - (V - V_reset)) / tau`` is NIR's ``tau_s dv/dt = (v_leak - v) + r I`` under
  forward Euler with step ``dt``: ``tau_s = tau * dt``, ``r = 1`` (``r = tau`` without
  decay_input), ``v_leak = v_reset = V_reset``, ``v_threshold = V_th``. ``dt`` (default 1e-4 s,
  the step snnTorch's NIR import assumes) is stored in the graph's metadata. Max-pooling
  has no NIR node: students with max-pool are refused (use ``spiking_smallcnn_avg``), and so
  are residual blocks, soft reset (NIR resets to a potential) and ANN students.
- **ONNX**: ``torch.onnx.export(dynamo=True)`` (through ``torch.export``; dynamic batch),
  teachers and students alike. A SpikingJelly student exports on CPU with its T steps
  unrolled (the older TorchScript-based exporter fails on its ``sj_lif`` custom op); the
  graph gives the student's time-averaged logits (checked with onnxruntime in the tests).
- **TorchScript**: ``torch.jit.trace`` of the model in eval mode (spiking students too:
  their T-step loop is unrolled for the traced batch's time steps).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from baselines.errors import CheckpointError, ConfigError

FORMATS = ("nir", "onnx", "torchscript")
SUFFIX = {"nir": ".nir", "onnx": ".onnx", "torchscript": ".pt"}
DEFAULT_DT = 1e-4

#: image size of the built-in datasets (the models pool globally; exports need one size)
IMAGE_SIZES = {"fashion-mnist": 32, "cifar10": 32, "cifar100": 32, "tiny-imagenet": 64, "toy": 16}


class ExportError(ConfigError):
    """The model cannot be written in the requested format (the message says why)."""


# ------------------------------------------------------------------------------ NIR
def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray]:
    w = conv.weight.detach().double()
    b = (conv.bias.detach().double() if conv.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64))
    if bn is not None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * scale.view(-1, 1, 1, 1)
        b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
    return w.float().numpy(), b.float().numpy()


def _flat_layers(student: nn.Module) -> list[nn.Module]:
    """The student's layers in execution order (stem, then each stage), containers opened."""
    from spikingjelly.activation_based import layer

    out: list[nn.Module] = []

    def walk(m: nn.Module, where: str) -> None:
        if isinstance(m, (nn.Sequential, layer.SeqToANNContainer)):
            for c in m.children():
                walk(c, where)
        else:
            out.append(m)

    walk(student.stem, "stem")
    for stage in student.stages:
        walk(stage, "stage")
    return out


def _neuron_node(m: nn.Module, shape: tuple[int, ...], dt: float):
    import nir
    from spikingjelly.activation_based import neuron as sj

    v_reset = getattr(m, "v_reset", None)
    if v_reset is None:
        raise ExportError("NIR export: a neuron with soft reset (v_reset=None) has no NIR equivalent "
                          "(NIR neurons reset to a potential); train with the default hard reset.")
    full = lambda v: np.full(shape, float(v), dtype=np.float32)  # noqa: E731
    if isinstance(m, sj.IFNode):
        return nir.IF(r=full(1.0), v_threshold=full(m.v_threshold), v_reset=full(v_reset))
    if isinstance(m, sj.ParametricLIFNode):
        tau = 1.0 / float(torch.sigmoid(m.w.detach()))
    elif isinstance(m, sj.LIFNode):
        tau = float(m.tau)
    else:
        raise ExportError(f"NIR export: neuron type {type(m).__name__} is not supported (LIF, PLIF, IF are).")
    r = 1.0 if getattr(m, "decay_input", True) else tau
    return nir.LIF(tau=full(tau * dt), r=full(r), v_leak=full(v_reset), v_threshold=full(m.v_threshold),
                   v_reset=full(v_reset))


def student_to_nir(student: nn.Module, in_channels: int, image_size: int, dt: float = DEFAULT_DT):
    """A ``nir.NIRGraph`` of a sequential spiking student (see the module docstring)."""
    import nir
    from spikingjelly.activation_based import neuron as sj

    if not getattr(student, "is_spiking", False):
        raise ExportError("NIR export needs a spiking student; export an ANN with --format onnx or torchscript.")
    student = student.eval()
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array([in_channels, image_size, image_size])})}
    edges: list[tuple[str, str]] = []
    prev, c, h, w = "input", in_channels, image_size, image_size
    layers = _flat_layers(student)
    i = 0
    while i < len(layers):
        m = layers[i]
        name = f"{len(nodes) - 1}_"
        if isinstance(m, nn.Conv2d):
            bn = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d) else None
            wt, b = _fold_bn(m, bn)
            nodes[name + "conv"] = nir.Conv2d(input_shape=(h, w), weight=wt, stride=m.stride, padding=m.padding,
                                              dilation=m.dilation, groups=m.groups, bias=b)
            kh, kw = m.kernel_size
            h = (h + 2 * m.padding[0] - m.dilation[0] * (kh - 1) - 1) // m.stride[0] + 1
            w = (w + 2 * m.padding[1] - m.dilation[1] * (kw - 1) - 1) // m.stride[1] + 1
            c = m.out_channels
            key = name + "conv"
            i += 2 if bn is not None else 1
        elif isinstance(m, (sj.BaseNode,)):
            key = name + "lif"
            nodes[key] = _neuron_node(m, (c, h, w), dt)
            i += 1
        elif isinstance(m, nn.AvgPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            s = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
            p = m.padding if isinstance(m.padding, tuple) else (m.padding,) * 2
            if m.ceil_mode or not m.count_include_pad and any(p):
                raise ExportError("NIR export: average pooling must use floor mode.")
            key = name + "avgpool"
            nodes[key] = nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))
            h, w = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
            i += 1
        elif isinstance(m, nn.MaxPool2d):
            raise ExportError("NIR has no max-pooling node; this student max-pools. Distill into "
                              "--student spiking_smallcnn_avg (average pooling) to export it to NIR.")
        else:
            raise ExportError(f"NIR export supports sequential conv-BN-neuron-pool students "
                              f"(spiking_smallcnn_avg); {type(m).__name__} (e.g. a residual block) is "
                              "not written by this exporter.")
        edges.append((prev, key))
        prev = key
    # classifier: global average pool + linear == AvgPool2d(h, w) + 1x1 conv
    fc = student.fc
    lin = fc if isinstance(fc, nn.Linear) else next((x for x in fc.modules() if isinstance(x, nn.Linear)), None)
    if lin is None:
        raise ExportError(f"NIR export: classifier {type(fc).__name__} is not a linear layer.")
    nodes["gap"] = nir.AvgPool2d(kernel_size=np.array([h, w]), stride=np.array([h, w]), padding=np.array([0, 0]))
    edges.append((prev, "gap"))
    wt = lin.weight.detach().float().numpy()[:, :, None, None]
    b = (lin.bias.detach().float().numpy() if lin.bias is not None
         else np.zeros(wt.shape[0], dtype=np.float32))
    nodes["fc"] = nir.Conv2d(input_shape=(1, 1), weight=wt, stride=1, padding=0, dilation=1, groups=1, bias=b)
    edges.append(("gap", "fc"))
    nodes["output"] = nir.Output(output_type={"output": np.array([wt.shape[0], 1, 1])})
    edges.append(("fc", "output"))
    meta = {"producer": "stars-dfkd", "dt": dt, "T": int(student.T), "encoding": "direct",
            "readout": "mean over T of the output"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)


# ------------------------------------------------------------------------------ ONNX / TorchScript
def to_onnx(model: nn.Module, path: str | os.PathLike, example: Tensor) -> str:
    """Write ``model`` as ONNX with dynamic batch (``torch.onnx.export(dynamo=True)``, i.e.
    through ``torch.export``). Spiking students work on CPU: torch.export traces the
    neurons' T-step recurrence of the CPU reference op, unrolled for the student's T."""
    model = model.eval().cpu()
    try:
        with torch.no_grad():
            torch.onnx.export(model, (example.cpu(),), str(path), input_names=["images"],
                              output_names=["logits"], dynamo=True, verbose=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    except Exception as exc:  # noqa: BLE001 - say what failed, as a user error
        kind = "SpikingJelly student" if getattr(model, "is_spiking", False) else "model"
        raise ExportError(f"ONNX export of this {kind} failed ({type(exc).__name__}: "
                          f"{(str(exc).strip().splitlines() or [''])[0]}); use --format torchscript"
                          + (" or --format nir" if getattr(model, "is_spiking", False) else "") + ".") from exc
    return str(path)


def to_torchscript(model: nn.Module, path: str | os.PathLike, example: Tensor) -> str:
    """``torch.jit.trace`` of ``model`` in eval mode, saved to ``path``."""
    model = model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, (example,), check_trace=False)
    traced.save(str(path))
    return str(path)


# ------------------------------------------------------------------------------ run directories
def _model_shape(state: dict[str, Tensor]) -> tuple[int, int]:
    convs = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 4]
    lins = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not convs or not lins:
        raise CheckpointError("the checkpoint has no convolution or no linear layer; is it a model state_dict?")
    return int(convs[0].shape[1]), int(lins[-1].shape[0])


def load_run_model(run_dir: str | os.PathLike, which: str = "student", checkpoint: str | None = None,
                   image_size: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a run's student (or teacher) from ``RUN_DIR/result.json`` and its weights.

    Student weights: ``checkpoint``, else ``RUN_DIR/student.pt`` (written by default,
    ``run.save_student``), else the row's ``student_checkpoint``. The shape (channels,
    image size, classes) comes from the row's ``data_shape`` (older rows: the weights and
    the dataset's name). Teacher weights: ``checkpoint``, else the path the run
    recorded (``teacher_checkpoint``). Returns (model in eval mode, info with name, T,
    in_channels, num_classes, image_size, checkpoint).
    """
    from baselines.registry import STUDENTS, TEACHERS

    run_dir = Path(run_dir)
    res = run_dir / "result.json"
    if not res.is_file():
        raise ConfigError(f"{res} does not exist: pass the output directory of `dfkd distill --out DIR`.")
    row = json.loads(res.read_text())
    run = (row.get("config") or {}).get("run") or {}
    if which == "student":
        ckpt = Path(checkpoint) if checkpoint else run_dir / "student.pt"
        if not checkpoint and not ckpt.is_file() and row.get("student_checkpoint"):
            ckpt = Path(row["student_checkpoint"])  # the path the run recorded
        if not ckpt.is_file():
            raise CheckpointError(
                f"{ckpt} does not exist: this run did not save its student. Re-run it with "
                "`--set run.save_student=true` (or pass the weights with --checkpoint FILE).")
    elif which == "teacher":
        ckpt = Path(checkpoint or row.get("teacher_checkpoint") or "")
        if not str(ckpt) or not ckpt.is_file():
            raise CheckpointError(f"the run's teacher checkpoint {str(ckpt) or '(none recorded)'} does not "
                                  "exist here; pass it with --checkpoint FILE.")
    else:
        raise ConfigError(f"--model must be 'student' or 'teacher', got {which!r}.")
    if ckpt.stat().st_size == 0:
        raise CheckpointError(f"cannot read {ckpt}: the file is empty (0 bytes).")
    from .teachers import extract_state_dict

    state = extract_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True), str(ckpt))
    shape = row.get("data_shape") or {}  # recorded by runs since student_checkpoint was added
    if shape:
        cin, ncls = int(shape["channels"]), int(shape["num_classes"])
    else:  # older rows: read from the weights and the dataset's name
        cin, ncls = _model_shape(state)
    size = int(image_size or shape.get("image_size")
               or IMAGE_SIZES.get(str(row.get("dataset") or run.get("dataset")), 32))
    if which == "student":
        name = run.get("student") or row.get("student")
        model = STUDENTS.get(name)(in_channels=cin, num_classes=ncls, image_size=size,
                                   T=int(run.get("T", 4)), neuron=run.get("neuron", "lif"),
                                   surrogate=run.get("surrogate", "atan"), **(run.get("student_args") or {}))
    else:
        from .teachers import parse_teacher_spec

        name = parse_teacher_spec(run.get("teacher") or row.get("teacher"))[0]
        model = TEACHERS.get(name)(in_channels=cin, num_classes=ncls, image_size=size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.endswith("num_batches_tracked")] + list(unexpected)
    if bad:
        raise CheckpointError(f"{ckpt} does not fit {which} {name!r}: {', '.join(bad[:6])}"
                              + (" ..." if len(bad) > 6 else ""))
    info = {"name": name, "which": which, "T": getattr(model, "T", None), "in_channels": cin,
            "num_classes": ncls, "image_size": size, "checkpoint": str(ckpt)}
    return model.eval(), info


def export_run(run_dir: str | os.PathLike, fmt: str, out: str | None = None, which: str = "student",
               checkpoint: str | None = None, image_size: int | None = None, dt: float = DEFAULT_DT
               ) -> tuple[str, dict[str, Any]]:
    """Write the run's model in format ``fmt``; returns (path written, info)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    model, info = load_run_model(run_dir, which, checkpoint, image_size)
    path = out or str(Path(run_dir) / f"{which}{SUFFIX[fmt]}")
    if fmt == "torchscript" and Path(path).resolve() == (Path(run_dir) / "student.pt").resolve():
        path = str(Path(run_dir) / f"{which}.torchscript.pt")  # never overwrite the weights
    size, cin = info["image_size"], info["in_channels"]
    example = torch.zeros(2, cin, size, size)
    if fmt == "nir":
        try:
            import nir
        except ImportError as exc:
            raise ExportError("NIR export needs the nir package: pip install 'stars-dfkd[export]'.") from exc
        nir.write(path, student_to_nir(model, cin, size, dt))
    elif fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError as exc:
            raise ExportError("ONNX export needs the onnx package: pip install 'stars-dfkd[export]'.") from exc
        to_onnx(model, path, example)
    else:
        to_torchscript(model, path, example)
    return path, info


__all__ = ["FORMATS", "ExportError", "student_to_nir", "to_onnx", "to_torchscript", "load_run_model",
           "export_run", "DEFAULT_DT"]
