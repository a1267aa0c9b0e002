"""Shell-loop ergonomics through the real command line: several models per run, --json, --quiet,
--output - with several models, --threshold, --interactive (on a real pseudo-terminal), and their usage errors."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO_ROOT, load_json, run_cli
from spectrum.report.summary import compact_ranges


def expected_types(scores_json: dict, percent: int) -> list[dict]:
    """Per-type figures derived independently from a scores file."""
    by_type: dict[str, list[tuple[str, float]]] = {}
    for module, value in scores_json.items():
        by_type.setdefault(value["type"], []).append((module, value["snr"]))
    result = []
    for type_name, members in by_type.items():
        ranked = sorted(members, key=lambda member: -member[1])[: len(members) * percent // 100]
        values = sorted(score for _, score in members)
        middle = len(values) // 2
        median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
        layers = sorted({int(module.split(".")[2]) for module, _ in ranked})
        result.append({"type": type_name, "count": len(members), "selected": len(ranked), "min": values[0],
                       "median": median, "max": values[-1], "selected_layers": layers,
                       "selected_modules": [module for module, _ in ranked], "selected_ranges": compact_ranges(layers)})
    return result


def test_several_models_json_and_a_failure(tiny_llama_dir, tmp_path):
    models = tmp_path / "models.txt"
    missing = tmp_path / "no-such-model"
    models.write_text(f"# models to scan\n{tiny_llama_dir}\n\n{missing}\n")
    result = run_cli("--model", str(tiny_llama_dir), "--models-from", str(models), "--top-percent", "67",
                     "--threshold", "gavish-donoho", "--json", "--no-check", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # one failed, the others finished

    first, second, third = (json.loads(line) for line in result.stdout.splitlines())
    assert first["ok"] and second["ok"] and not third["ok"]
    assert third["model"] == str(missing) and "no such file or folder" in third["error"]
    assert first["scanned"] is True and second["scanned"] is False  # the same model again: cached
    assert first["threshold"] == "gavish-donoho" and first["top_percent"] == 67
    scores_file = Path(first["scores_file"])
    scores = load_json(tmp_path / scores_file)
    assert load_json(tmp_path / scores_file.with_suffix(".meta.json"))["threshold"] == "gavish-donoho"
    assert first["types"] == expected_types(scores, 67)
    assert first["matrices"] == 21 and first["selected"] == 14
    assert (tmp_path / first["yaml_file"]).is_file()

    status = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert status[0].startswith(f"[1/3] ok      {tiny_llama_dir}: scanned, 14 of 21 matrices selected -> ")
    assert status[1].startswith(f"[2/3] ok      {tiny_llama_dir}: cached, 14 of 21 matrices selected -> ")
    assert status[2] == f"[3/3] failed  {missing}: no such file or folder; pass a model folder, a .safetensors, " \
        ".gguf or .bin file, or a Hub id org/name"
    assert result.stderr.splitlines()[-1] == f"2 of 3 models done; failed: {missing}"


def test_a_bug_with_one_model_fails_that_model_only(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    """The last line of defence, per model: an exception no code path expects (here raised on purpose
    for the first model, as no known input raises one) is that model's failure line and JSON record;
    the next model is still scanned and the run ends with its summary and exit code 1."""
    from spectrum import cli

    real = cli.run_model

    def failing_first(args, model, *rest, **options):
        if options.get("first"):
            raise RuntimeError("a bug")
        return real(args, model, *rest, **options)

    monkeypatch.setattr(cli, "run_model", failing_first)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPECTRUM_DEBUG", raising=False)
    code = cli.main(["--model", str(tmp_path / "first"), "--model", str(tiny_llama_dir), "--json", "--no-check",
                     "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    first, second = (json.loads(line) for line in captured.out.splitlines())
    assert first == {"model": str(tmp_path / "first"), "ok": False,
                     "error": "unexpected RuntimeError: a bug (rerun with --debug and report it)"}
    assert second["ok"] and second["scanned"]
    assert captured.err.splitlines()[-1] == f"1 of 2 models done; failed: {tmp_path / 'first'}"


def test_several_models_to_stdout_quietly(minilm_dir, tiny_llama_dir, tmp_path):
    # stdin is not a terminal: --interactive says so once and the flags apply.
    result = subprocess.run(
        [sys.executable, "-m", "spectrum", "--model", str(minilm_dir), "--model", str(tiny_llama_dir), "--quiet",
         "--output", "-", "--top-percent", "34", "--interactive", "--no-check"],
        cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "warning: --interactive needs a terminal on stdin; going on with the flags\n"
    documents = list(yaml.safe_load_all(result.stdout))
    assert [len(doc["unfrozen_parameters"]) for doc in documents] == [1 + 6 * 2, 2 + 7 * 1]
    assert result.stdout.count("\n---\n") == 1
    assert documents[1]["unfrozen_parameters"][:2] == ["^lm_head.weight$", "^model.embed_tokens.weight$"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_snr_results"]  # no YAML file written


def test_interactive_checklist_on_a_terminal(tiny_llama_dir, tmp_path):
    # Types, sorted: 1 lm_head, 2 mlp.down_proj, 3 mlp.gate_proj, 4 mlp.up_proj, 5 model.embed_tokens,
    # 6-9 self_attn.*; the layered ones start checked. "none", then "1 2", then "9-99" (rejected), then Enter.
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "spectrum", "--model", str(tiny_llama_dir), "--interactive", "--output", "-",
         "--top-percent", "100", "--no-embeddings", "--no-check"],
        cwd=tmp_path, env=_env(), stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    os.close(follower)
    try:
        os.write(leader, b"none\n1 2\n9-99\n\n")
        stdout, stderr = process.communicate(timeout=300)
    finally:
        os.close(leader)  # the echo of the answers (a few bytes) is never read
    assert process.returncode == 0, stderr
    lines = stdout.splitlines()
    assert lines[1:5] == ["unfrozen_parameters:", "# lm_head layers", "- lm_head", "# mlp.down_proj layers"]
    assert sorted(lines[5:]) == [f"- model.layers.{layer}.mlp.down_proj" for layer in range(3)]  # best first
    assert "  [x]   2  mlp.down_proj" in stderr and "  [ ]   1  lm_head" in stderr
    assert "'9-99' is outside 1-9" in stderr
    scores = load_json(tmp_path / "model_snr_results" / f"snr_results_{str(tiny_llama_dir).replace('/', '-').replace('_', '-')}.json")
    assert sorted({entry["type"] for entry in scores.values()}) == ["lm_head", "mlp.down_proj"]


def test_interactive_on_a_checkpoint_without_matrices(tmp_path):
    from safetensors.torch import save_file
    import torch

    save_file({"model.norm.weight": torch.ones(4)}, str(tmp_path / "m.safetensors"))
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "spectrum", "--model", "m.safetensors", "--interactive"],
                               cwd=tmp_path, env=_env(), stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    os.close(follower)
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        os.close(leader)
    assert process.returncode == 1 and stdout == ""
    assert stderr == "spectrum: error: m.safetensors holds no weight matrix to score; run with --list-types to see what it holds\n"


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--model", "a", "--json", "--output", "-"], ["--json", "--output -", "stdout"]),
        (["--model", "a", "--model", "b", "--name", "x"], ["--name applies to one model"]),
        (["--model", "a", "--model", "b", "--output", "x.yaml"], ["--output PATH with several models"]),
        (["--models-from", "missing.txt"], ["--models-from missing.txt: cannot read it"]),
        (["--top-percent", "10"], ["--model"]),
        (["--model", "a", "--threshold", "median"], ["--threshold", "gavish-donoho"]),
        (["report", "org/x", "--html", "a.html", "--no-html"], ["--html and --no-html"]),
        (["report", "org/x", "--png", "no/such/dir/x.png"], ["--png no/such/dir/x.png", "does not exist"]),
    ],
)
def test_usage_errors(tmp_path, monkeypatch, capsys, args, fragments):
    from spectrum.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("spectrum: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


def test_models_from_an_empty_list(tmp_path, monkeypatch, capsys):
    from spectrum.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_text("# nothing yet\n\n")
    assert main(["--models-from", "list.txt"]) == 2
    assert "--models-from list.txt: no model in it" in capsys.readouterr().err


def test_json_is_standard_with_infinite_scores(tmp_path):
    """A cached file with Infinity scores (accepted on read, as published scans have them): the --json
    line is standard JSON, the infinite figures null."""
    cache = tmp_path / "model_snr_results"
    cache.mkdir()
    scores = {f"model.layers.{i}.input_layernorm": {"snr": float("inf") if i else 0.5, "type": "input_layernorm"}
              for i in range(3)}
    (cache / "snr_results_org-m.json").write_text(json.dumps(scores))
    from helpers import offline_env

    result = run_cli("--model", "org/m", "--json", "--top-percent", "34", cwd=tmp_path, env=offline_env(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr

    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")

    (record,) = [json.loads(line, parse_constant=refuse) for line in result.stdout.splitlines()]
    (row,) = record["types"]
    assert row["max"] is None and row["min"] == 0.5 and row["median"] is None


def test_a_closed_stdout_stops_the_run_quietly(tiny_llama_dir, tmp_path):
    """`spectrum ... --json | head -1` with several models: once the reader is gone, the run stops with
    141 (128 + SIGPIPE, as a shell reports it), without an error line per remaining model."""
    first = run_cli("--model", str(tiny_llama_dir), "--no-check", "--quiet", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    process = subprocess.Popen([sys.executable, "-m", "spectrum", *["--model", str(tiny_llama_dir)] * 3, "--no-check",
                                "--json"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr
    assert "error" not in stderr and "failed" not in stderr, stderr
