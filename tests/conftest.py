"""Shared fixtures: the real all-MiniLM-L6-v2 weights and small sharded checkpoints written by
transformers. The helpers the tests import (the runner for the real command line, the offline Hugging
Face cache, ...) are in helpers.py."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import REPO_ROOT, minilm_model_dir, save_tiny_llama

sys.path.insert(0, str(REPO_ROOT))  # test this checkout, whatever else is installed
# Trainer views built by the tests (and the CLI subprocesses they start) go to a folder of this
# session's, never to the user's ~/.cache/spectrum.
os.environ["SPECTRUM_CACHE"] = tempfile.mkdtemp(prefix="spectrum-test-cache-")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_model_dir()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A sharded bf16 Llama checkpoint with `model.safetensors.index.json`."""
    directory = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    assert (directory / "model.safetensors.index.json").is_file()
    return directory


@pytest.fixture(scope="session")
def tiny_llama_tied_dir(tmp_path_factory) -> Path:
    """The same architecture with tied embeddings (no lm_head tensor), in one file."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-tied"), max_shard_size="50MB", tie=True)
