"""Reliability of reading the weights (issue 12): `--threads` spellings and its cap, weights that
change or shrink while they are scanned, FP8 weights without their scales."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import load_json, run_cli
from reliability import listing, start_cli, wait_for_scores


@pytest.mark.parametrize("value", ["1e23", "1_000", " 8", "+8", "８", "2.0", "0x10"])
def test_threads_must_be_plain_digits(tmp_path, tiny_llama_dir, value):
    result = run_cli("--model", str(tiny_llama_dir), "--threads", value, "--no-check", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"spectrum: error: argument --threads: must be a whole number of "
                                          f"at least 1, not {value!r} (see spectrum --help)"]
    assert list(tmp_path.iterdir()) == []


def test_threads_beyond_four_per_core_are_capped_with_one_warning(tmp_path, tiny_llama_dir):
    from spectrum.scoring.checkpoint import cpu_count

    cores = cpu_count()
    result = run_cli("--model", str(tiny_llama_dir), "--name", "t", "--threads", "1000", "--no-check", "--quiet",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: --threads 1000 is more than 4 workers per core; using {4 * cores} ({cores} cores)"]
    assert load_json(tmp_path / "model_snr_results" / "snr_results_t.meta.json")["workers"] == 4 * cores


def _truncate_mid_scan(model: Path, work: Path) -> subprocess.CompletedProcess:
    """Scan `model` in a real `python -m spectrum` and cut the file to half its size once 3 scores
    are saved; the finished process."""
    process = start_cli("--model", str(model), "--name", "m", "--threads", "1", "--no-check", "--quiet",
                        cwd=work)
    try:
        wait_for_scores(work / "model_snr_results" / "snr_results_m.partial.jsonl", 3, process)
        os.truncate(model, model.stat().st_size // 2)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_gguf_cut_short_mid_scan_is_one_line_not_a_sigbus(tmp_path):
    """The real SmolLM2 Q4_1 GGUF, copied, then truncated while it is scanned: its tensors are read with
    `readinto`, not through the memory map, so a short file is an error (it was SIGBUS, exit -7)."""
    from helpers import smollm2_gguf

    model = tmp_path / "smollm2.gguf"
    shutil.copy(smollm2_gguf(), model)
    result = _truncate_mid_scan(model, tmp_path)
    assert result.returncode == 1, result.stderr
    assert re.fullmatch(rf"spectrum: error: {re.escape(str(model))}: file ended inside tensor blk\.\d+\.\w+\.weight "
                        r"\(truncated\); the file is damaged or incomplete, download it again\n", result.stderr)
    assert not (tmp_path / "model_snr_results" / "snr_results_m.json").exists()


def test_bin_cut_short_mid_scan_is_one_line_not_a_sigbus(tmp_path):
    """A memory-mapped `pytorch_model.bin` truncated while it is scanned: the size is checked before each
    tensor is copied out of the map (it was SIGBUS, exit -7)."""
    generator = torch.Generator().manual_seed(0)
    model = tmp_path / "pytorch_model.bin"
    torch.save({f"model.layers.{layer}.mlp.{kind}.weight": torch.randn(512, 1024, generator=generator)
                for layer in range(20) for kind in ("up_proj", "down_proj")}, model)
    size = model.stat().st_size
    result = _truncate_mid_scan(model, tmp_path)
    assert result.returncode == 1, result.stderr
    assert re.fullmatch(rf"spectrum: error: {re.escape(str(model))}: file shrank from {size} to {size // 2} bytes "
                        r"while it was scanned, before tensor model\.layers\.\d+\.mlp\.\w+\.weight was read "
                        r"\(truncated\); the file is damaged or incomplete, download it again\n", result.stderr)
    assert not (tmp_path / "model_snr_results" / "snr_results_m.json").exists()


def _weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"model.layers.{layer}.mlp.up_proj.weight": torch.randn(32, 16, generator=generator) for layer in range(12)}


@pytest.mark.parametrize("how", ["replaced", "rewritten in place", "rewritten in place, mtime restored"])
def test_weights_changed_during_a_scan_are_never_cached(tmp_path, how):
    """The file is changed after 3 scores (same header, other values): the scan fails with one line,
    neither scores nor a partial scan are kept, and the next run scans the new weights."""
    from safetensors.torch import save_file

    from spectrum.errors import WeightsChangedError
    from spectrum.workflow import load_or_scan

    model = tmp_path / "m"
    model.mkdir()
    weights = model / "model.safetensors"
    save_file(_weights(0), str(weights))
    save_file(_weights(1), str(tmp_path / "new.safetensors"))
    new_bytes = (tmp_path / "new.safetensors").read_bytes()
    assert len(new_bytes) == weights.stat().st_size and new_bytes != weights.read_bytes()
    (tmp_path / "fresh").mkdir()
    shutil.copy(tmp_path / "new.safetensors", tmp_path / "fresh" / "model.safetensors")
    expected = load_or_scan(str(tmp_path / "fresh"), cache_dir=str(tmp_path / "expected"), device="cpu", threads=1)
    cache = tmp_path / "cache"

    def change(done: int, total: int, nbytes: int) -> None:
        if done >= 3 and not getattr(change, "done", False):
            change.done = True
            if how == "replaced":
                os.replace(tmp_path / "new.safetensors", weights)
                return
            status = weights.stat()
            with open(weights, "r+b") as handle:
                handle.write(new_bytes)
            if how.endswith("mtime restored"):
                os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns))

    with pytest.raises(WeightsChangedError) as caught:
        load_or_scan(str(model), cache_dir=str(cache), device="cpu", threads=1, on_progress=change)
    what = {"replaced": "another file was put in its place", "rewritten in place": "it was written to",
            "rewritten in place, mtime restored": "same size, other content"}[how]
    assert str(caught.value) == (f"{weights} changed while it was scanned ({what}); no scores were kept, run again "
                                 "once the file is complete")
    assert listing(cache) == []  # no scores, sidecar, partial scan or lock

    again = load_or_scan(str(model), cache_dir=str(cache), device="cpu", threads=1)
    assert again.scanned and again.scores.entries == expected.scores.entries
    assert Path(again.cache_file).read_bytes() == Path(expected.cache_file).read_bytes()
    assert not load_or_scan(str(model), cache_dir=str(cache), device="cpu", threads=1).scanned


def test_weights_changed_during_a_cli_scan_is_one_line(tmp_path):
    """The same through `python -m spectrum`: the file is rewritten while a scan reads it (after 3
    scores are saved); exit 1, one line, nothing cached."""
    from reliability import save_slow_checkpoint

    model = save_slow_checkpoint(tmp_path / "model.safetensors")
    data = bytearray(model.read_bytes())
    data[-1024:] = bytes(1024)  # other values in the last tensor, same header and size
    process = start_cli("--model", str(model), "--name", "m", "--threads", "1", "--no-check", "--quiet", cwd=tmp_path)
    try:
        wait_for_scores(tmp_path / "model_snr_results" / "snr_results_m.partial.jsonl", 3, process)
        with open(model, "r+b") as handle:
            handle.write(data)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert (process.returncode, stdout) == (1, ""), stderr
    assert stderr == (f"spectrum: error: {model} changed while it was scanned (it was written to); no scores were "
                      "kept, run again once the file is complete\n")
    assert listing(tmp_path / "model_snr_results") == []
