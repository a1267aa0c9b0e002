"""What reaches the terminal and the exit code when names, signals, streams and numbers are hostile:
control characters in names, Ctrl-C from the first instant, foreign warnings under --quiet, a closed
or full stdout, a non-UTF-8 stdout, a NUL in --models-from, memory running out, and types whose
every matrix was left out."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import cli_env, save_tiny_llama

HOSTILE = {
    "title": "\x1b]0;pwned\x07",  # OSC 0: retitles the window
    "clipboard": "\x1b]52;c;aGVsbG8=\x07",  # OSC 52: writes the clipboard
    "clear": "\x1b[2J",  # CSI: clears the screen
    "bidi": "\u202e",  # right-to-left override: reorders what follows
}
RAW = ("\x1b", "\x07", "\u202e")


def spectrum(*args: str, cwd: Path, env: dict | None = None, **run) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spectrum", *args], cwd=cwd, env=cli_env(env),
                          capture_output=True, timeout=180, **run)


def save_layers(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    return path


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory) -> Path:
    """Layer types whose names carry terminal escapes; one matrix of NaN, so that a warning names it."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for label, sequence in HOSTILE.items():
        for layer in range(4):
            tensors[f"model.layers.{layer}.mlp.{label}{sequence}_proj.weight"] = torch.randn(32, 16, generator=generator)
    tensors["model.layers.0.mlp.title\x1b]0;pwned\x07_proj.weight"][:] = float("nan")
    return save_layers(tmp_path_factory.mktemp("hostile") / "model", tensors)


def assert_no_raw_controls(result: subprocess.CompletedProcess) -> None:
    for stream in (result.stdout, result.stderr):
        text = stream.decode("utf-8", "replace")
        assert not any(control in text for control in RAW), text


def test_escape_sequences_in_names_are_printed_escaped(hostile_model, tmp_path):
    result = spectrum("--model", str(hostile_model), "--no-check", "--cache-dir", "c", "--output", "out.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_no_raw_controls(result)
    stderr = result.stderr.decode()
    assert "warning: model.layers.0.mlp.title\\x1b]0;pwned\\x07_proj.weight has NaN" in stderr
    assert "mlp.clipboard\\x1b]52;c;aGVsbG8=\\x07_proj" in stderr  # the summary's type column
    assert "mlp.bidi\\u202e_proj" in stderr
    # the cached run, the listing and JSON lines print the same names, escaped
    for args in (("--output", "out.yaml"), ("--list-types",), ("--json", "--output", "out.yaml")):
        again = spectrum("--model", str(hostile_model), "--no-check", "--cache-dir", "c", *args, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert_no_raw_controls(again)
    assert b"mlp.clear\\x1b[2J_proj" in spectrum("--model", str(hostile_model), "--list-types", cwd=tmp_path).stdout


def test_an_error_naming_a_hostile_path_prints_it_escaped(tmp_path):
    result = spectrum("--model", "gone\x1b]0;pwned\x07/", "--no-check", cwd=tmp_path)
    assert result.returncode == 1
    assert_no_raw_controls(result)
    assert result.stderr.decode().startswith("spectrum: error: gone\\x1b]0;pwned\\x07/: no such file or folder")


def test_several_models_status_lines_escape_names(tmp_path, hostile_model):
    listing = tmp_path / "models.txt"
    listing.write_text(f"{hostile_model}\nmissing\x1b[2J/\n", encoding="utf-8")
    result = spectrum("--models-from", str(listing), "--no-check", "--cache-dir", "c", cwd=tmp_path)
    assert result.returncode == 1
    assert_no_raw_controls(result)
    assert "failed  missing\\x1b[2J/" in result.stderr.decode()


# --- Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_at_any_moment_from_the_start_exits_130_without_a_traceback(tmp_path, hostile_model):
    """SIGINT at moments from the instant our entry module is loaded (`-X importtime` says when: before
    that, the interpreter's own start-up is Python's) through the imports, the argument parsing, the
    scan and the end of the run: 130 (or 0 for a run already done), never a traceback."""
    outcomes = []
    for delay in (0.0, 0.005, 0.01, 0.02, 0.04, 0.07, 0.1, 0.2, 0.3, 0.5, 0.8):
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "spectrum", "--model", str(hostile_model), "--no-check",
             "--rescan", "--cache-dir", "c", "--output", "out.yaml"],
            cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        seen = []
        for line in process.stderr:  # import lines, as each import ends
            seen.append(line)
            if line.rstrip().endswith(b"| spectrum._entry"):
                break
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=120)
        stderr = b"".join(seen) + rest
        outcomes.append((delay, process.returncode))
        assert b"Traceback" not in stderr, (delay, stderr.decode()[-2000:])
        assert process.returncode in (0, 130), (delay, process.returncode, stderr.decode()[-2000:])
    assert any(code == 130 for _, code in outcomes), outcomes  # the signals did land, not all after the run


def test_the_package_import_loads_nothing_heavy():
    """What makes Ctrl-C during start-up ours to catch: `import spectrum` runs no import of rich,
    NumPy, torch or transformers; `spectrum.freeze` stays the function once its module is loaded."""
    probe = ("import sys, spectrum; heavy = [m for m in ('rich', 'numpy', 'torch', 'transformers', 'yaml') "
             "if m in sys.modules]; import spectrum.cli; print(heavy, callable(spectrum.freeze), "
             "spectrum.freeze.__name__, spectrum.Scores.__name__)")
    result = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] True freeze Scores"


# --- Foreign noise under --quiet, and what overflowed -------------------------------------------


def test_quiet_hides_transformers_log_lines_while_the_view_is_built(tmp_path):
    model = save_tiny_llama(tmp_path / "llama")
    config = json.loads((model / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "linear", "factor": 2.0, "unknown_key": 1}  # transformers logs about it
    (model / "config.json").write_text(json.dumps(config))
    env = dict(os.environ, SPECTRUM_CACHE=str(tmp_path / "views"))
    result = spectrum("--model", str(model), "--check", "--quiet", "--cache-dir", "c", "--output", "out.yaml",
                      cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""


def test_subnormal_weights_say_that_the_score_overflows_and_numpy_says_nothing(tmp_path):
    generator = torch.Generator().manual_seed(1)
    tiny = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(32, 16, generator=generator, dtype=torch.float64) * 1e-310
            for i in range(3)}
    tiny.update({f"model.layers.{i}.mlp.down_proj.weight": torch.randn(16, 32, generator=generator) for i in range(3)})
    tiny["model.layers.0.mlp.down_proj.weight"][2, 3] = float("inf")
    tiny["model.layers.1.mlp.down_proj.weight"][:] = 3.4e38  # float32's largest: squares leave float32, not float64
    model = save_layers(tmp_path / "tiny", tiny)
    result = spectrum("--model", str(model), "--no-check", "--quiet", "--cache-dir", "c", "--output", "out.yaml",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().splitlines()
    assert all(line.startswith("warning: ") for line in lines), lines  # no RuntimeWarning, no source line
    for layer in range(3):
        assert (f"warning: model.layers.{layer}.mlp.up_proj.weight has a score beyond float64's range (its singular "
                "values are so small that dividing by the largest overflows); left out of the scores") in lines
    assert "warning: model.layers.0.mlp.down_proj.weight has NaN or infinite entries; left out of the scores" in lines
    assert len(lines) == 4


def test_float64_weights_near_1e306_are_scored_and_numpy_says_nothing(tmp_path):
    """Singular values near float64's largest, whose sums overflow: no RuntimeWarning with a source line
    (even under --quiet), no warning of ours that blames tiny values, and each matrix has its score, the
    same matrix's score unscaled times 2^-1018 (the score scales as 1 / S[0]; 2^1018 is exact)."""
    import numpy as np

    from reference import reference_score

    generator = torch.Generator().manual_seed(4)
    plain = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(32, 16, generator=generator, dtype=torch.float64)
             for i in range(3)}
    model = save_layers(tmp_path / "huge", {name: matrix * 2.0**1018 for name, matrix in plain.items()})
    for flags in ((), ("--method", "svd")):
        result = spectrum("--model", str(model), "--no-check", "--quiet", "--cache-dir", "c", "--output", "out.yaml",
                          "--name", "huge", "--rescan", *flags, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (0, b"")
        scores = json.loads((tmp_path / "c" / "snr_results_huge.json").read_text())
        for name, matrix in plain.items():
            expected = reference_score(matrix.numpy()) * 2.0**-1018
            assert np.isfinite(expected) and scores[name.removesuffix(".weight")]["snr"] == pytest.approx(expected, rel=1e-9)


# --- Streams ----------------------------------------------------------------------------------------


def _full_device(folder: Path) -> Path:
    """A node of /dev/full's kind in a temp folder: every write fails with ENOSPC (never the real /dev)."""
    node = folder / "full"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    return node


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_to_a_full_device_fail(tmp_path, flag):
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    with open(_full_device(tmp_path), "wb") as full:
        result = subprocess.run([sys.executable, "-m", "spectrum", flag], env=cli_env(), stdout=full,
                                stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == ["spectrum: error: cannot write to standard output (No space left on device)"]


@pytest.mark.parametrize("data_flags", [("--output", "-"), ("--json", "--output", "out.yaml"), ("--list-types",)])
def test_a_closed_stdout_is_one_line_when_data_is_asked_for(tmp_path, hostile_model, data_flags):
    result = subprocess.run(
        [sys.executable, "-m", "spectrum", "--model", str(hostile_model), "--no-check", "--cache-dir", "c", *data_flags],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
        preexec_fn=lambda: os.close(1),  # `>&-`: the process starts with no stdout at all
    )
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == "spectrum: error: cannot write to standard output (it is closed)"
    assert not (tmp_path / "c").exists() or data_flags[0] != "--output"  # refused before any work


def test_a_closed_stdout_does_not_matter_when_nothing_is_written_to_it(tmp_path, hostile_model):
    result = subprocess.run(
        [sys.executable, "-m", "spectrum", "--model", str(hostile_model), "--no-check", "--cache-dir", "c",
         "--output", "out.yaml", "--quiet"],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
        preexec_fn=lambda: os.close(1),
    )
    assert result.returncode == 0, result.stderr


def test_an_ascii_stdout_gets_utf8_data_and_escaped_messages(tmp_path):
    generator = torch.Generator().manual_seed(2)
    model = save_layers(tmp_path / "modèle", {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(32, 16, generator=generator)
                                               for i in range(4)})
    result = spectrum("--model", str(model), "--no-check", "--cache-dir", "c", "--output", "-", cwd=tmp_path,
                      env=dict(os.environ, PYTHONIOENCODING="ascii"))
    assert result.returncode == 0, result.stderr
    assert f"model {model}".encode("utf-8") in result.stdout  # the YAML's header names the path as it is
    assert "modèle".encode("utf-8") not in result.stderr and b"mod\\xe8le" in result.stderr


def test_a_nul_byte_in_models_from_is_a_usage_error(tmp_path):
    listing = tmp_path / "models.txt"
    listing.write_bytes(b"org/one\nab\x00c\n")
    result = spectrum("--models-from", str(listing), "--no-check", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"spectrum: error: --models-from {listing}: line 2 holds a NUL byte, which no model path or Hub id can; "
        "fix the file (is it a text file?)"
    ]


def test_running_out_of_memory_is_one_line(tmp_path, hostile_model, monkeypatch):
    """The allocation that fails is simulated (a real one needs a machine-sized model); what is tested is
    the line and the exit code, which an empty MemoryError message once made `unexpected MemoryError: `."""
    import spectrum.scoring.svd_numpy
    from spectrum.cli import main

    def exhausted(*_args, **_kwargs):
        raise MemoryError()

    monkeypatch.setattr(spectrum.scoring.svd_numpy, "values_from_gram", exhausted)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["--model", str(hostile_model), "--no-check", "--quiet", "--cache-dir", str(tmp_path / "c"),
                     "--output", str(tmp_path / "out.yaml"), "--device", "cpu", "--threads", "1"])
    assert code == 1
    assert stderr.getvalue().splitlines()[-1] == (
        "spectrum: error: out of memory; close other programs, or scan with --threads 1 (one matrix in memory at a time)"
    )
    assert not (tmp_path / "out.yaml").exists()


# --- Types whose every matrix was left out ------------------------------------------------------------


def test_a_type_of_nan_matrices_is_answered_from_the_cache(tmp_path):
    generator = torch.Generator().manual_seed(3)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(32, 16, generator=generator) for i in range(4)}
    tensors.update({f"model.layers.{i}.mlp.down_proj.weight": torch.full((16, 32), float("nan")) for i in range(4)})
    model = save_layers(tmp_path / "nan", tensors)
    args = ("--model", "nan", "--no-check", "--cache-dir", "c", "--output", "out.yaml", "--json")
    first = spectrum(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["scanned"] is True
    assert first.stderr.decode().count("has NaN or infinite entries") == 4
    meta = json.loads((tmp_path / "c" / "snr_results_nan.meta.json").read_text())
    assert meta["left_out"] == {f"model.layers.{i}.mlp.down_proj": {"type": "mlp.down_proj", "reason": "nan_or_inf_entries"}
                                for i in range(4)}
    second = spectrum(*args, cwd=tmp_path)
    assert json.loads(second.stdout)["scanned"] is False  # no weights read again
    assert second.stderr.decode().splitlines() == [
        "warning: c/snr_results_nan.json: 4 matrices have no score (NaN or infinite entries), as their scan said; "
        "--rescan lists them again"
    ]
    only_nan = spectrum("--model", "nan", "--no-check", "--cache-dir", "c", "--types", "down_proj", cwd=tmp_path)
    assert only_nan.returncode == 1
    assert only_nan.stderr.decode().splitlines()[-1].startswith(
        "spectrum: error: every matrix of the requested types was left out when scanned")


def test_a_sidecar_listing_types_the_checkpoint_lacks_says_rescan(tmp_path):
    generator = torch.Generator().manual_seed(4)
    model = save_layers(tmp_path / "m", {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(32, 16, generator=generator)
                                         for i in range(4)})
    args = ("--model", "m", "--no-check", "--cache-dir", "c", "--output", "out.yaml", "--quiet")
    assert spectrum(*args, cwd=tmp_path).returncode == 0
    sidecar = tmp_path / "c" / "snr_results_m.meta.json"
    meta = json.loads(sidecar.read_text())
    meta["checkpoint_types"]["mlp.gate_proj"] = {"count": 4, "layered": True, "shapes": [[32, 16]]}  # edited by hand
    sidecar.write_text(json.dumps(meta))
    result = spectrum(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == (
        "spectrum: error: c/snr_results_m.json: its sidecar lists module types this checkpoint does not hold "
        "(was it edited?); rerun with --rescan to scan the model afresh"
    )
    assert spectrum(*args, "--rescan", cwd=tmp_path).returncode == 0
