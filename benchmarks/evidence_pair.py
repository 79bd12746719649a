"""The `evidence` preset's teacher and spiking student, built outside a bench job.

For the diagnostic probes (`benchmarks.rca_paths`, `benchmarks.stars_share_drift`) that
query the pair the evidence run distills: the small CNN teacher loaded from a checkpoint
(eval mode) and a fresh `spiking_smallcnn` with the preset's T and `run.student_args`, on
Fashion-MNIST at its native 28x28.
"""
from __future__ import annotations

import torch
from torch import nn

from baselines.registry import STUDENTS, TEACHERS

from .data.fashion_mnist import spec as fashion_spec
from .preset import Preset, load_preset


def evidence_preset() -> Preset:
    return load_preset("evidence")


def evidence_spec():
    """fashion-mnist-28: 1 x 28 x 28, 10 classes, no padding."""
    return fashion_spec(pad=0)


def evidence_teacher(teacher_ckpt: str, spec=None) -> nn.Module:
    """The small CNN teacher from `teacher_ckpt`, in eval mode."""
    spec = spec or evidence_spec()
    teacher = TEACHERS.get("smallcnn")(spec.channels, spec.num_classes, spec.image_size)
    teacher.load_state_dict(torch.load(teacher_ckpt, map_location="cpu"))
    return teacher.eval()


def evidence_student(preset: Preset | None = None, spec=None) -> nn.Module:
    """A freshly initialized spiking student as the preset builds it (seed it beforehand)."""
    preset = preset or evidence_preset()
    spec = spec or evidence_spec()
    return STUDENTS.get("spiking_smallcnn")(in_channels=spec.channels, num_classes=spec.num_classes,
                                            image_size=spec.image_size, T=int(preset.bench["T"]),
                                            **preset.data["run"].get("student_args", {}))
