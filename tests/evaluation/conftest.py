"""Fixtures for the evaluation tests (the tiny dataset and model files are in tests/conftest.py, shared with
the inference tests)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch


@contextmanager
def _single_thread():
    # The models here are tiny: one thread is as fast, and on a loaded shared machine two threads that wait on
    # each other were measured 5x slower (77 s vs 14 s for the fixture's training).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def single_thread_torch():
    with _single_thread():
        yield
