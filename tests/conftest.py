"""Shared test settings: single-threaded torch (CI has 2 cores), deterministic seeds."""
import os
import sys

import pytest
import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))  # for tests/tinymodels.py


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
