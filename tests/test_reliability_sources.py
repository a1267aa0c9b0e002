"""Reliability of reading the weights (issue 12): `--threads` spellings and its cap, weights that
change or shrink while they are scanned, FP8 weights without their scales."""

from __future__ import annotations

import pytest

from conftest import load_json, run_cli


@pytest.mark.parametrize("value", ["1e23", "1_000", " 8", "+8", "８", "2.0", "0x10"])
def test_threads_must_be_plain_digits(tmp_path, tiny_llama_dir, value):
    result = run_cli("--model", str(tiny_llama_dir), "--threads", value, "--no-check", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"spectrum: error: argument --threads: must be a whole number of "
                                          f"at least 1, not {value!r} (see spectrum --help)"]
    assert list(tmp_path.iterdir()) == []


def test_threads_beyond_four_per_core_are_capped_with_one_warning(tmp_path, tiny_llama_dir):
    from spectrum.scanner import cpu_count

    cores = cpu_count()
    result = run_cli("--model", str(tiny_llama_dir), "--name", "t", "--threads", "1000", "--no-check", "--quiet",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: --threads 1000 is more than 4 workers per core; using {4 * cores} ({cores} cores)"]
    assert load_json(tmp_path / "model_snr_results" / "snr_results_t.meta.json")["workers"] == 4 * cores
