"""Shared pytest fixtures: an offline tokenizer and tiny random models (see tests/tiny_models.py)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from tests.tiny_models import make_tiny_llama, make_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level ChatML tokenizer of tests/tiny_models.py, built once per session.

    Tests must not modify it (build a private one with ``make_tiny_tokenizer()`` instead).
    """
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_llama() -> PreTrainedModel:
    """A fresh tiny random Llama (4 layers, hidden size 64, eval mode, seed 0) for each test."""
    return make_tiny_llama()


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny-model tests run faster on one thread (thread start-up dominates); slow tests keep them all."""
    import torch

    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
