"""Hostile and broken input not covered elsewhere: tensor names no YAML or terminal expects, infinite
weights, a cache folder that is a file, and a disk that fills up while files are written.

Each case runs the real command line (`spectrum.cli.main`, or a real process where the operating
system has to take part) and checks the exit code, a one-line message, and that no broken file is
left: previous good files are unchanged and no temporary file remains.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from helpers import cli_env
from reliability import listing
from spectrum.cache.scores_file import read_scores
from spectrum.selection.topk import literal_entry

NAMES = {
    "long": "w" * 10_000,
    "unicode": "é中😀\u202eabc",  # accents, CJK, an emoji and a right-to-left override
    "newline": "x\n- .*",  # would add an entry that unfreezes everything, if written as it is
    "nul": "a\x00b",
    "surrogate": "SURR00",  # patched below to the JSON escape \ud800: valid JSON, not valid Unicode text
}


def run_main(tmp_path: Path, monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """`spectrum ARGS` in this process (what `python -m spectrum` runs), from tmp_path: (code, stderr lines)."""
    from spectrum.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPECTRUM_DEBUG", raising=False)
    code = main(list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err.splitlines()


def save_odd_names(path: Path) -> list[str]:
    """Two layers of each odd name, plus a module called `0` (an nn.Sequential's first layer); returns
    the module names as the checkpoint holds them."""
    generator = torch.Generator().manual_seed(0)
    tensors = {f"model.layers.{layer}.mlp.{name}.weight": torch.randn(8, 4, generator=generator)
               for name in NAMES.values() for layer in range(2)}
    tensors["0.weight"] = torch.randn(8, 4, generator=generator)
    save_file(tensors, str(path))
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + length].replace(b"SURR00", b"\\ud800")  # same length: offsets stay right
    path.write_bytes(data[:8] + header + data[8 + length :])
    modules = [name[: -len(".weight")] for name in tensors]
    return [module.replace("SURR00", "\ud800") for module in modules]


class TestNames:
    def test_odd_and_very_long_names_round_trip_and_cannot_inject_yaml(self, tmp_path, monkeypatch, capsys):
        model = tmp_path / "model.safetensors"
        modules = save_odd_names(model)
        args = ("--model", str(model), "--name", "odd", "--types", ".", "--top-percent", "100", "--no-embeddings",
                "--no-check", "--quiet")
        code, errors = run_main(tmp_path, monkeypatch, capsys, *args, "--output", "first.yaml")
        assert code == 0 and errors == []

        scores_file = tmp_path / "model_snr_results" / "snr_results_odd.json"
        assert scores_file.read_bytes().isascii(), "names that are not valid Unicode are escaped in the JSON"
        assert sorted(read_scores(str(scores_file), "odd").entries) == sorted(modules)
        entries = yaml.safe_load((tmp_path / "first.yaml").read_text(encoding="utf-8"))["unfrozen_parameters"]
        assert sorted(entries) == sorted(literal_entry(module) for module in modules), \
            "exactly the modules (regex metacharacters escaped for Axolotl): nothing injected, nothing lost"
        assert "\n- .*\n" not in (tmp_path / "first.yaml").read_text(encoding="utf-8")

        # Again from the cache alone: the names come back from the scores file unchanged.
        code, errors = run_main(tmp_path, monkeypatch, capsys, *args, "--output", "second.yaml")
        assert code == 0 and errors == []
        assert (tmp_path / "second.yaml").read_bytes() == (tmp_path / "first.yaml").read_bytes()

    def test_a_model_path_that_is_not_utf8(self, tmp_path, monkeypatch, capsys):
        folder = tmp_path / "m\udcff\udcfeodel"  # bytes 0xff 0xfe in the name, as Python decodes them from argv
        folder.mkdir()
        generator = torch.Generator().manual_seed(0)
        save_file({f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8, 4, generator=generator) for i in range(2)},
                  str(folder / "model.safetensors"))
        code, errors = run_main(tmp_path, monkeypatch, capsys, "--model", str(folder), "--quiet")
        assert code == 0 and errors == []
        (yaml_file,) = [path for path in tmp_path.iterdir() if path.suffix == ".yaml"]
        text = yaml_file.read_text(encoding="utf-8")  # valid UTF-8 although the path is not
        assert yaml.safe_load(text)["unfrozen_parameters"][-1].startswith("model.layers.")
        assert "m\\udcff\\udcfeodel" in text.splitlines()[0]


def test_infinite_weights_are_left_out_by_name(tmp_path, monkeypatch, capsys):
    generator = torch.Generator().manual_seed(0)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(16, 8, generator=generator) for i in range(4)}
    tensors["model.layers.0.mlp.up_proj.weight"][3, 5] = math.inf
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = -math.inf
    save_file(tensors, str(tmp_path / "model.safetensors"))
    code, errors = run_main(tmp_path, monkeypatch, capsys, "--model", str(tmp_path / "model.safetensors"),
                            "--name", "inf", "--quiet")
    assert code == 0
    assert sorted(errors) == [f"warning: model.layers.{i}.mlp.up_proj.weight has NaN or infinite entries; "
                              "left out of the scores" for i in (0, 1)]
    scores = json.loads((tmp_path / "model_snr_results" / "snr_results_inf.json").read_text())
    assert list(scores) == ["model.layers.2.mlp.up_proj", "model.layers.3.mlp.up_proj"]
    assert all(math.isfinite(entry["snr"]) for entry in scores.values())


def test_names_that_look_like_markup_are_printed_as_text(tmp_path):
    """Warnings and the summary name tensors and types: `[/x]` is Rich's closing-tag syntax, `[v2]` a
    style; both are text here. Off a terminal, without COLUMNS, the summary is not folded to 80 columns."""
    import os

    from helpers import cli_env

    tensors = {f"model.layers.{i}.mlp.[/x].experts_with_a_long_type_name[v2].weight": torch.randn(8, 4) for i in range(3)}
    tensors["model.layers.1.mlp.[/x].experts_with_a_long_type_name[v2].weight"][0, 0] = math.nan
    save_file(tensors, str(tmp_path / "m.safetensors"))
    environment = cli_env(dict(os.environ))
    environment.pop("COLUMNS")
    result = subprocess.run([sys.executable, "-m", "spectrum", "--model", "m.safetensors", "--no-check", "--output", "o.yaml"],
                            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == ("warning: model.layers.1.mlp.[/x].experts_with_a_long_type_name[v2].weight has NaN or "
                        "infinite entries; left out of the scores")
    (row,) = [line for line in lines if "experts_with_a_long_type_name" in line and "warning" not in line]
    words = row.split()  # one line: type, count, selected, min, median, max, the selected layer (0 or 2)
    assert words[:3] == ["mlp.[/x].experts_with_a_long_type_name[v2]", "2", "1"] and len(words) == 7 and words[6] in ("0", "2")


def test_a_config_nested_too_deeply_is_no_config(tmp_path, monkeypatch, capsys):
    """A config.json Python's JSON parser cannot descend into (valid JSON all the same): the scan goes on
    without it (no quantization hints, no name check), as for an unreadable config."""
    model = tmp_path / "model"
    model.mkdir()
    save_file({f"model.layers.{i}.mlp.up_proj.weight": torch.randn(16, 8) for i in range(2)}, str(model / "model.safetensors"))
    (model / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    code, errors = run_main(tmp_path, monkeypatch, capsys, "--model", str(model), "--name", "deep", "--quiet",
                            "--device", "cpu")
    assert code == 0 and errors == []
    assert list(json.loads((tmp_path / "model_snr_results" / "snr_results_deep.json").read_text())) == [
        "model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]


def test_a_cache_folder_that_is_a_file(tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    model.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(16, 8)}, str(model / "model.safetensors"))
    (tmp_path / "blocker").write_text("not a folder\n")
    code, errors = run_main(tmp_path, monkeypatch, capsys, "--model", str(model), "--name", "m", "--cache-dir", "blocker")
    assert code == 1
    assert errors == ["spectrum: error: blocker/snr_results_m.lock: cannot create the lock file (Not a directory); "
                      "choose another --cache-dir"]
    assert (tmp_path / "blocker").read_text() == "not a folder\n"
    assert listing(tmp_path) == ["blocker", "model"]


class TestDiskFull:
    """A disk that fills up, for real: the scan runs in a process whose files may not grow past a
    limit (RLIMIT_FSIZE), so that a write past it fails with EFBIG, as it would with ENOSPC."""

    @pytest.fixture
    def good_run(self, tmp_path, monkeypatch, capsys) -> dict[str, bytes]:
        """A model scanned once: its scores, sidecar and YAML, which must survive every failure below."""
        generator = torch.Generator().manual_seed(0)
        tensors = {f"model.layers.{layer}.mlp.{kind}.weight": torch.randn(32, 16, generator=generator)
                   for layer in range(12) for kind in ("up_proj", "down_proj")}
        (tmp_path / "model").mkdir()
        save_file(tensors, str(tmp_path / "model" / "model.safetensors"))
        code, errors = run_main(tmp_path, monkeypatch, capsys, *self.ARGS)
        assert code == 0 and errors == []
        return self.files(tmp_path)

    ARGS = ("--model", "model", "--name", "small", "--quiet", "--device", "cpu")
    SCORES = "model_snr_results/snr_results_small.json"
    YAML = "snr_results_small_unfrozenparameters_50percent.yaml"

    @staticmethod
    def files(directory: Path) -> dict[str, bytes]:
        """Every file but the weights, by path."""
        return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
                if p.is_file() and p.relative_to(directory).parts[0] != "model"}

    @staticmethod
    def run_limited(tmp_path: Path, limit: int, *args: str) -> subprocess.CompletedProcess:
        def limit_file_size() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return subprocess.run([sys.executable, "-m", "spectrum", *args], cwd=tmp_path, env=cli_env(),
                              capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)

    def test_while_writing_the_scores_file(self, tmp_path, good_run, monkeypatch, capsys):
        limit = len(good_run[self.SCORES]) - 1
        result = self.run_limited(tmp_path, limit, *self.ARGS, "--rescan")
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            f"spectrum: error: {self.SCORES}: cannot write (File too large); the previous file, if any, is unchanged"
        ]
        partial = "model_snr_results/snr_results_small.partial.jsonl"
        sidecar = "model_snr_results/snr_results_small.meta.json"
        after = self.files(tmp_path)
        assert after.pop(partial).count(b"\n") == 1 + 24, "every score is saved for the next run"
        digest = json.loads(after.pop(sidecar))["scores_sha256"]  # the sidecar goes first, naming the new scores
        assert digest == hashlib.sha256(good_run[self.SCORES]).hexdigest()  # the same weights: the same scores
        assert after == {path: data for path, data in good_run.items() if path != sidecar}, \
            "the previous scores and YAML are intact; no temporary file"

        code, errors = run_main(tmp_path, monkeypatch, capsys, *self.ARGS, "--rescan")  # space again: it resumes
        assert code == 0 and errors == [f"warning: resuming an interrupted scan: 24 matrices already scored in {partial}"]
        assert self.files(tmp_path)[self.SCORES] == good_run[self.SCORES]
        assert listing(tmp_path / "model_snr_results") == ["snr_results_small.json", "snr_results_small.meta.json"]

    def test_before_anything_can_be_saved(self, tmp_path, good_run):
        result = self.run_limited(tmp_path, 100, *self.ARGS, "--rescan")
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            "spectrum: error: model_snr_results/snr_results_small.partial.jsonl: cannot start a scan here "
            "(File too large); free some space or choose another --cache-dir"
        ]
        assert self.files(tmp_path) == good_run

    def test_while_writing_the_yaml(self, tmp_path, good_run):
        result = self.run_limited(tmp_path, len(good_run[self.YAML]) - 1, *self.ARGS)  # scores reused, YAML rewritten
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [
            f"spectrum: error: {self.YAML}: cannot write (File too large); the previous file, if any, is unchanged"
        ]
        assert self.files(tmp_path) == good_run
