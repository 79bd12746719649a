"""Synthesizers: the contract (base.py) and the built-in methods, one file each."""
from .base import SynthesisResult, SynthesisSetup, Synthesizer

__all__ = ["SynthesisResult", "SynthesisSetup", "Synthesizer"]
