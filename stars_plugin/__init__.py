"""STARS plugin: Relational Consistency Alignment (RCA) and Tail-Aware Regularization (TAR)
as regularizer hooks that wrap any synthesizer (arXiv 2605.27409).

Loaded through the ``stars_dfkd.regularizers`` entry points ``stars``, ``rca``, ``tar`` and ``stars-seedtar``
(nothing imports this package by name). Depends only on torch and the public API of
``baselines``.
"""
from .relations import RELATIONS, relation_loss, relation_matrix
from .stars import RCAOnly, STARS, STARSSeedTAR, TAROnly
from .taps import TeacherTaps, student_tap_layer
from .thresholds import STRATEGIES, TeacherThresholds

__all__ = ["STARS", "RCAOnly", "TAROnly", "STARSSeedTAR", "relation_matrix", "relation_loss", "RELATIONS",
           "TeacherThresholds", "STRATEGIES", "TeacherTaps", "student_tap_layer"]
