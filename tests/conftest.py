"""Shared fixtures. Tests never download anything: models have random weights, data is synthetic or bundled."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """One thread (the CI machine has two cores shared by pytest and torch) and a fixed seed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
