"""Helpers for the reliability tests: a checkpoint slow enough to interrupt (and its fixtures), real
`spectrum` processes, and a look at a partial scan on disk."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import cli_env
from spectrum.workflow import load_or_scan

SLOW_MATRICES = 40


def save_slow_checkpoint(path: Path) -> Path:
    """40 float32 matrices of 512x1024 (80 MB) in one file: about 2 s of work for one CPU worker,
    long enough to interrupt a scan reliably mid-way."""
    generator = torch.Generator().manual_seed(0)
    tensors = {
        f"model.layers.{layer}.mlp.{kind}.weight": torch.randn(512, 1024, generator=generator)
        for layer in range(SLOW_MATRICES // 2)
        for kind in ("up_proj", "down_proj")
    }
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    return save_slow_checkpoint(tmp_path_factory.mktemp("slow") / "model.safetensors")


@pytest.fixture(scope="module")
def reference_bytes(slow_model, tmp_path_factory) -> bytes:
    """The scores file of an uninterrupted scan."""
    cache = tmp_path_factory.mktemp("reference")
    outcome = load_or_scan(str(slow_model), cache_dir=str(cache), name="slow", threads=1, device="cpu")
    return Path(outcome.cache_file).read_bytes()


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """Start `python -m spectrum ARGS` without waiting for it."""
    return subprocess.Popen([sys.executable, "-m", "spectrum", *args], cwd=cwd, env=cli_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def score_lines(partial: Path) -> int:
    """Complete score lines in a partial scan file (its first line is the header)."""
    try:
        return max(partial.read_bytes().count(b"\n") - 1, 0)
    except FileNotFoundError:
        return 0


def wait_for_scores(partial: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Poll until `partial` holds at least `count` scores; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while score_lines(partial) < count:
        if process.poll() is not None:
            raise AssertionError(f"the scan ended (code {process.returncode}) before {count} scores were saved: "
                                 f"{process.stderr.read() if process.stderr else ''}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {count} scores in {partial} after {timeout} s")
        time.sleep(0.002)


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir()) if directory.is_dir() else []
