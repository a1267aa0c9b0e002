"""Every failure of the real command line: one line on stderr starting `spectrum: error:`, exit code 2
for usage and 1 at run time, no traceback (unless --debug), and no file created or replaced."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import cli_env, load_json, offline_env, run_cli
from spectrum.cache.scores_file import scores_path

GOOD_SCORES = {
    "model.layers.0.mlp.down_proj": {"snr": 1.25, "type": "mlp.down_proj"},
    "model.layers.1.mlp.down_proj": {"snr": 0.5, "type": "mlp.down_proj"},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Offline, with an empty HF cache: a name that looks like a Hub id never reaches the network."""
    return offline_env(tmp_path_factory.mktemp("empty-hf-cache"))


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `directory`: content and modification time."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def assert_one_line_error(result, code: int, *fragments: str) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spectrum: error: ")
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert result.stdout == ""
    return lines[0]


def run_and_expect(tmp_path: Path, env: dict, code: int, args: list[str], *fragments: str) -> str:
    """Run the CLI in tmp_path; the error must be one line and tmp_path must be left exactly as it was."""
    before = snapshot(tmp_path)
    line = assert_one_line_error(run_cli(*args, cwd=tmp_path, env=env), code, *fragments)
    assert snapshot(tmp_path) == before
    return line


def write_good_scores(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(GOOD_SCORES, indent=4) + "\n")


def broken_copy(tiny_llama_dir: Path, destination: Path) -> tuple[Path, str]:
    """A copy of the sharded checkpoint with its last shard cut short by 100 bytes."""
    shutil.copytree(tiny_llama_dir, destination)
    shard = sorted(p.name for p in destination.glob("*.safetensors"))[-1]
    with open(destination / shard, "r+b") as handle:
        handle.truncate((destination / shard).stat().st_size - 100)
    return destination, shard


# ---------------------------------------------------------------------------------------------
# run-time errors (exit 1)


def test_missing_path(tmp_path, env):
    missing = tmp_path / "no-such-model"
    run_and_expect(tmp_path, env, 1, ["--model", str(missing)], str(missing), "no such file or folder")


def test_folder_without_weights(tmp_path, env):
    model = tmp_path / "bin-only"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "pytorch_model.bin").write_bytes(b"\0" * 64)
    run_and_expect(tmp_path, env, 1, ["--model", str(model)], str(model), "safetensors", "pytorch_model.bin")


def test_truncated_shard_leaves_other_scores_untouched(tmp_path, env, tiny_llama_dir):
    model, shard = broken_copy(tiny_llama_dir, tmp_path / "broken")
    write_good_scores(tmp_path / "model_snr_results" / "snr_results_org-other-model.json")
    run_and_expect(tmp_path, env, 1, ["--model", str(model), "--top-percent", "30"], shard, "truncated")
    assert load_json(tmp_path / "model_snr_results" / "snr_results_org-other-model.json") == GOOD_SCORES
    assert sorted(p.name for p in (tmp_path / "model_snr_results").iterdir()) == ["snr_results_org-other-model.json"]


def test_truncated_shard_with_rescan_keeps_the_cached_scores(tmp_path, env, tiny_llama_dir):
    model, shard = broken_copy(tiny_llama_dir, tmp_path / "broken")
    write_good_scores(tmp_path / scores_path("model_snr_results", str(model)))
    run_and_expect(tmp_path, env, 1, ["--model", str(model), "--rescan"], shard, "truncated", "download it again")


@pytest.mark.parametrize("content", ["", "  \n\t \n", "{}", "not json"])
def test_unreadable_cache_file(tmp_path, env, minilm_dir, content):
    cache_file = tmp_path / scores_path("model_snr_results", str(minilm_dir))
    cache_file.parent.mkdir()
    cache_file.write_text(content)
    run_and_expect(tmp_path, env, 1, ["--model", str(minilm_dir)], cache_file.name, "delete", "--rescan")
    assert cache_file.read_text() == content


def test_rescan_replaces_an_unreadable_cache_file(tmp_path, env, minilm_dir):
    cache_file = tmp_path / scores_path("model_snr_results", str(minilm_dir))
    cache_file.parent.mkdir()
    cache_file.write_text("not json")
    result = run_cli("--model", str(minilm_dir), "--rescan", "--quiet", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    scores = load_json(cache_file)
    assert len(scores) == 36
    assert all(set(entry) == {"snr", "type"} and entry["snr"] > 0 for entry in scores.values())
    meta = load_json(cache_file.with_name(cache_file.stem + ".meta.json"))
    assert meta["source"]["kind"] == "local"
    yaml_file = tmp_path / f"{cache_file.stem}_unfrozenparameters_50percent.yaml"
    assert yaml_file.read_text().count("\n- ") == 1 + 36 // 2  # the embedding line and half of each type
    assert not list(tmp_path.rglob("*.tmp"))


def test_unwritable_output_location(tmp_path, env, tiny_llama_dir):
    blocker = tmp_path / "somefile"
    blocker.write_text("a regular file, not a folder\n")
    result = run_cli("--model", str(tiny_llama_dir), "--output", "somefile/x.yaml", "--quiet", cwd=tmp_path, env=env)
    # Checked before any work: a usage error, nothing scanned, nothing written.
    assert_one_line_error(result, 2, "somefile/x.yaml", "not an existing folder")
    assert blocker.read_text() == "a regular file, not a folder\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["somefile"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_output_folder(tmp_path, env, tiny_llama_dir):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run_cli("--model", str(tiny_llama_dir), "--output", "locked/x.yaml", "--quiet", cwd=tmp_path, env=env)
        assert_one_line_error(result, 2, "locked/x.yaml", "not writable")
        assert list(locked.iterdir()) == [] and not (tmp_path / "model_snr_results").exists()
    finally:
        locked.chmod(0o755)


def test_debug_shows_the_traceback(tmp_path, env):
    missing = tmp_path / "no-such-model"
    before = snapshot(tmp_path)
    result = run_cli("--model", str(missing), "--debug", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "SourceError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("spectrum: error: ")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# usage errors (exit 2)


BAD_PERCENTS = ["0", "-5", "101", "abc", "nan", "inf"]


@pytest.mark.parametrize("value", ["0", "nan"])
def test_bad_top_percent(tmp_path, env, minilm_dir, value):
    run_and_expect(tmp_path, env, 2, ["--model", str(minilm_dir), "--top-percent", value], "--top-percent", value)


@pytest.mark.parametrize("value", BAD_PERCENTS)
def test_bad_top_percent_through_main(tmp_path, monkeypatch, capsys, minilm_dir, value):
    """The same check for every bad value through `spectrum.cli.main` in this process (what
    `python -m spectrum` runs), to keep the number of subprocesses down."""
    from spectrum.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPECTRUM_DEBUG", raising=False)
    code = main(["--model", str(minilm_dir), "--top-percent", value])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.splitlines() == [
        f"spectrum: error: --top-percent must be a number greater than 0 and at most 100, not {value!r}"
    ]
    assert list(tmp_path.iterdir()) == []


def test_unknown_flag(tmp_path, env, minilm_dir):
    run_and_expect(tmp_path, env, 2, ["--model", str(minilm_dir), "--frobnicate"], "--frobnicate", "spectrum --help")


def test_missing_model(tmp_path, env):
    run_and_expect(tmp_path, env, 2, ["--top-percent", "10"], "--model")


def test_bad_types_regex(tmp_path, env, minilm_dir):
    run_and_expect(tmp_path, env, 2, ["--model", str(minilm_dir), "--types", "mlp", "("], "--types", "'('",
                   "regular expression")


def test_zero_threads(tmp_path, env, minilm_dir):
    run_and_expect(tmp_path, env, 2, ["--model", str(minilm_dir), "--threads", "0"], "--threads", "at least 1")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--device", "bogus"], "--device 'bogus' is not a device"),
    (["--device", "cuda:x"], "--device 'cuda:x' is not a device"),
    (["--revision", "main"], "--revision applies to Hub ids"),
])
def test_flags_are_checked_before_any_work_even_with_cached_scores(tmp_path, env, tiny_llama_dir, args, fragment):
    """A usage error is exit 2 and nothing done, whether the scores are cached or not, and with several
    models before the first one runs."""
    first = run_cli("--model", str(tiny_llama_dir), "--quiet", "--no-check", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    run_and_expect(tmp_path, env, 2, ["--model", str(tiny_llama_dir), *args], fragment)
    if "--revision" not in args:
        run_and_expect(tmp_path, env, 2, ["--model", str(tiny_llama_dir), "--model", str(tiny_llama_dir), "--json", *args],
                       fragment)


def test_types_matching_nothing_fail_alike_with_cached_scores(tmp_path, env, tiny_llama_dir):
    message = "no weight matrix matches the requested types; run with --list-types to see the checkpoint's types"
    fresh = run_and_expect(tmp_path, env, 1, ["--model", str(tiny_llama_dir), "--types", "nomatch", "--no-check"], message)
    assert run_cli("--model", str(tiny_llama_dir), "--quiet", "--no-check", cwd=tmp_path, env=env).returncode == 0
    cached = run_and_expect(tmp_path, env, 1, ["--model", str(tiny_llama_dir), "--types", "nomatch", "--no-check"], message)
    assert fresh == cached


@pytest.mark.parametrize("output", ["a-folder", "no-such-folder/"])
def test_output_naming_a_folder_is_a_usage_error(tmp_path, env, tiny_llama_dir, output):
    (tmp_path / "a-folder").mkdir()
    run_and_expect(tmp_path, env, 2, ["--model", str(tiny_llama_dir), "--output", output], f"--output {output} is a folder")
    assert not (tmp_path / "no-such-folder").exists()


def test_models_from_with_a_bom_and_from_a_closed_stdin(tmp_path, env, tiny_llama_dir):
    listing = tmp_path / "models.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + f"{tiny_llama_dir}\n".encode())  # as Windows editors save UTF-8
    result = run_cli("--models-from", str(listing), "--no-check", "--quiet", "--output", "-", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    import subprocess
    import sys

    closed = subprocess.run([sys.executable, "-m", "spectrum", "--models-from", "-"], cwd=tmp_path, env=cli_env(env),
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, close_fds=True,
                            preexec_fn=lambda: __import__("os").close(0))
    assert_one_line_error(closed, 2, "--models-from -: cannot read it (standard input is closed)")


def test_interactive_with_models_piped_in_goes_on_with_the_flags(tmp_path, env, tiny_llama_dir):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "spectrum", "--models-from", "-", "--interactive", "--no-check",
                             "--output", "-", "--quiet"], cwd=tmp_path, env=cli_env(env), input=f"{tiny_llama_dir}\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "warning: --interactive needs a terminal on stdin; going on with the flags\n"
    assert "- model.layers." in result.stdout


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    from spectrum.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_shows_the_subcommand_and_formats_the_description(capsys):
    from spectrum.cli import build_parser

    text = build_parser().format_help()
    assert text.startswith("usage: spectrum --model MODEL [options]\n       spectrum report MODEL [options]\n"
                           "       spectrum verify CONFIG.yml | --model MODEL FILE.yaml\n\n")
    assert "%%" not in text and "top K% per module type" in text
    assert "local folder, .safetensors, .gguf or .bin file, or Hub id org/name" in " ".join(text.split())


def test_a_stray_word_without_model_suggests_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_main(capsys, ["smol"]) == (
        2, "", "spectrum: error: unrecognized arguments: smol; did you mean --model smol? (see spectrum --help)\n")
    # Two stray words, or one beside --model, is not a model name forgotten: the plain message.
    assert run_main(capsys, ["smol", "x"]) == (2, "", "spectrum: error: unrecognized arguments: smol x (see spectrum --help)\n")
    assert run_main(capsys, ["--model", "a", "smol"]) == (
        2, "", "spectrum: error: unrecognized arguments: smol (see spectrum --help)\n")
    assert list(tmp_path.iterdir()) == []


def test_report_usage_errors_point_to_report_help(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_main(capsys, ["report"]) == (
        2, "", "spectrum: error: the following arguments are required: MODEL (see spectrum report --help)\n")
    assert run_main(capsys, ["report", "org/x", "--frob"]) == (
        2, "", "spectrum: error: unrecognized arguments: --frob (see spectrum report --help)\n")
