"""The command line end to end, as a subprocess, the way users run it."""

import json
import shutil

import pytest

from helpers import load_json, run_cli
from spectrum._version import __version__


def expected_yaml(scores_json: dict, percent: int, model: str, embeddings: list[str]) -> str:
    """The YAML a user should get, derived independently from the scores file."""
    by_type: dict[str, list[tuple[str, float]]] = {}
    for module, value in scores_json.items():
        by_type.setdefault(value["type"], []).append((module, value["snr"]))
    lines = [f"# spectrum {__version__}: top {percent}% of modules per type by SNR, model {model}", "unfrozen_parameters:"]
    lines += [f"- {pattern}" for pattern in embeddings]
    for type_name, members in by_type.items():
        lines.append(f"# {type_name} layers")
        ranked = sorted(members, key=lambda member: -member[1])
        lines += [f"- {module}" for module, _ in ranked[: len(members) * percent // 100]]
    return "\n".join(lines) + "\n"


def test_scan_then_reuse_without_weights(tiny_llama_dir, tmp_path):
    model = tmp_path / "weights"
    shutil.copytree(tiny_llama_dir, model)
    work = tmp_path / "work"
    work.mkdir()

    first = run_cli("--model", str(model), "--name", "org/tiny_llama", "--top-percent", "67", cwd=work)
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    scores_file = work / "model_snr_results" / "snr_results_org-tiny-llama.json"
    scores = load_json(scores_file)
    assert len(scores) == 21 and all(set(v) == {"snr", "type"} for v in scores.values())
    meta = load_json(work / "model_snr_results" / "snr_results_org-tiny-llama.meta.json")
    assert meta["version"] == __version__ and meta["source"]["kind"] == "local" and meta["name"] == "org/tiny_llama"
    # The name stands for the model in the sidecar and the YAML header; only source.location keeps the path.
    assert meta["model"] == "org/tiny_llama" and str(model) in meta["source"]["location"]
    assert str(model) not in json.dumps({key: value for key, value in meta.items() if key != "source"})
    yaml_file = work / "snr_results_org-tiny-llama_unfrozenparameters_67percent.yaml"
    embeddings = ["^lm_head.weight$", "^model.embed_tokens.weight$"]
    assert yaml_file.read_text() == expected_yaml(scores, 67, "org/tiny_llama", embeddings)
    for text in ("mlp.down_proj", "matrices", "selected", str(scores_file.name), yaml_file.name):
        assert text in first.stderr
    # Each type's row: count, selected, min / median / max, selected layers (computed here independently).
    rows = {line.split()[0]: line.split() for line in first.stderr.splitlines() if line.strip()}
    for type_name in {value["type"] for value in scores.values()}:
        members = sorted(((v["snr"], int(k.split(".")[2])) for k, v in scores.items() if v["type"] == type_name),
                         key=lambda member: -member[0])
        values = sorted(snr for snr, _ in members)
        kept = len(members) * 67 // 100
        layers = sorted(layer for _, layer in members[:kept])
        runs: list[list[int]] = []
        for layer in layers:  # consecutive layers collapse into a-b
            if runs and layer == runs[-1][-1] + 1:
                runs[-1].append(layer)
            else:
                runs.append([layer])
        ranges = ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)
        assert rows[type_name] == [type_name, "3", str(kept), f"{values[0]:.4g}", f"{values[1]:.4g}",
                                   f"{values[2]:.4g}", *ranges.split()], first.stderr

    shutil.rmtree(model)  # the second run must not need the weights at all
    second = run_cli("--model-name", str(model), "--name", "org/tiny_llama", "--top-percent", "34", "--output", "-", cwd=work)
    assert second.returncode == 0, second.stderr
    assert second.stdout == expected_yaml(scores, 34, "org/tiny_llama", embeddings)
    assert "cached scores reused" in second.stderr
    assert load_json(scores_file) == scores


def test_default_outputs_and_types(minilm_dir, tmp_path):
    result = run_cli("--model", str(minilm_dir), "--name", "sentence-transformers/all-MiniLM-L6-v2", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    scores = load_json(tmp_path / "model_snr_results" / "snr_results_sentence-transformers-all-MiniLM-L6-v2.json")
    yaml_text = (tmp_path / "snr_results_sentence-transformers-all-MiniLM-L6-v2_unfrozenparameters_50percent.yaml").read_text()
    assert yaml_text == expected_yaml(scores, 50, "sentence-transformers/all-MiniLM-L6-v2", ["^embeddings.word_embeddings.weight$"])
    assert {v["type"] for v in scores.values()} == {
        "attention.output.dense", "attention.self.key", "attention.self.query",
        "attention.self.value", "intermediate.dense", "output.dense",
    }


def test_list_types_reads_headers_only(tiny_llama_dir, tmp_path):
    result = run_cli("--model", str(tiny_llama_dir), "--list-types", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["mlp.down_proj"] == ["mlp.down_proj", "3", "48x80", "yes"]
    assert rows["self_attn.k_proj"] == ["self_attn.k_proj", "3", "24x48", "yes"]
    assert rows["lm_head"] == ["lm_head", "1", "96x48", "no"]
    assert rows["model.embed_tokens"][-1] == "no"
    assert list(tmp_path.iterdir()) == []


def test_types_extend_the_cache_and_narrow_the_selection(tiny_llama_dir, tmp_path):
    assert run_cli("--model", str(tiny_llama_dir), "--name", "t", "--quiet", cwd=tmp_path).returncode == 0
    result = run_cli("--model", str(tiny_llama_dir), "--name", "t", "--types", "^lm_head$", "--top-percent", "100",
                     "--no-embeddings", "--output", "-", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["unfrozen_parameters:", "# lm_head layers", "- lm_head"]
    scores = load_json(tmp_path / "model_snr_results" / "snr_results_t.json")
    assert len(scores) == 22 and scores["lm_head"]["type"] == "lm_head"


def test_foreign_sorted_cache_is_used_as_the_reference_would(tmp_path):
    # A published scan in the "sorted" layout, with norms scored Infinity by an older reference.
    cache = tmp_path / "model_snr_results"
    cache.mkdir()
    sorted_layout = {
        "input_layernorm": {"model.layers.0.input_layernorm": float("inf"), "model.layers.1.input_layernorm": float("inf")},
        "mlp.up_proj": {"model.layers.1.mlp.up_proj": 0.4, "model.layers.0.mlp.up_proj": 0.2},
    }
    (cache / "snr_results_org-published.json").write_text(json.dumps(sorted_layout))
    result = run_cli("--model", "org/published", "--top-percent", "50", "--output", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        "unfrozen_parameters:",
        "- ^lm_head.weight$",
        "- ^model.embed_tokens.weight$",
        "# input_layernorm layers",
        "- model.layers.0.input_layernorm",
        "# mlp.up_proj layers",
        "- model.layers.1.mlp.up_proj",
    ]


# Runs the command line in this interpreter, then reports which heavy packages it imported.
_IMPORTS_PROBE = """
import json, sys
from spectrum.cli import main
code = main(sys.argv[1:])
heavy = sorted(name for name in ("torch", "transformers", "numpy") if name in sys.modules)
print(json.dumps({"code": code, "imported": heavy}), file=sys.stderr)
"""


def test_a_cpu_scan_of_safetensors_imports_no_torch(tiny_llama_dir, tmp_path, monkeypatch):
    """A first scan (no cached scores) of bf16 safetensors on CPU without the name check reads and
    scores in NumPy alone: neither torch nor transformers is imported, and the scores are the
    torch route's."""
    import os
    import subprocess
    import sys

    from helpers import cli_env

    environment = cli_env(dict(os.environ, SPECTRUM_CACHE=str(tmp_path / "views")))
    run = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE, "--model", str(tiny_llama_dir), "--device", "cpu",
                          "--no-check", "--top-percent", "50", "--cache-dir", "scores"],
                         cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert json.loads(run.stderr.strip().splitlines()[-1]) == {"code": 0, "imported": ["numpy"]}, run.stderr
    from spectrum.scoring.checkpoint import scan

    (scores_file,) = (tmp_path / "scores").glob("snr_results_*[!a].json")
    written = json.loads(scores_file.read_text())
    from spectrum.sources.safetensors import ShardedSafetensors

    monkeypatch.setattr(ShardedSafetensors, "reads_arrays", False)  # the real torch route
    torch_route = scan(str(tiny_llama_dir), device="cpu")
    assert {module: entry["snr"] for module, entry in written.items()} == pytest.approx(
        {module: score.snr for module, score in torch_route.entries.items()}, rel=1e-12)


def test_types_an_earlier_run_added_to_the_cache_stay_out_of_a_default_selection(tiny_llama_dir, tmp_path):
    """`--types embed_tokens` adds that type to the cached scores; a later run without --types selects
    the default types again (the same YAML as on a fresh cache), not every type the cache holds."""
    def yaml_of(cache: str, *args: str) -> str:
        result = run_cli("--model", str(tiny_llama_dir), "--cache-dir", cache, "--no-check", "--quiet",
                         "--output", "o.yaml", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return (tmp_path / "o.yaml").read_text()

    fresh = yaml_of("fresh", "--top-percent", "100", "--no-embeddings")
    yaml_of("shared")
    assert "- model.embed_tokens" in yaml_of("shared", "--types", "embed_tokens", "--no-embeddings", "--top-percent", "100")
    assert yaml_of("shared", "--top-percent", "100", "--no-embeddings") == fresh
    assert "- model.embed_tokens" not in fresh


def test_a_fine_tune_of_a_model_scanned_before_needs_no_transformers(tiny_llama_dir, tmp_path):
    """The name check's view is keyed by the config less its names, dates and dtype: the first scan
    of a fine-tune whose config differs from its base's only there imports neither torch nor
    transformers, on CPU, and still checks its names."""
    import os
    import shutil
    import subprocess
    import sys

    from helpers import cli_env

    environment = cli_env(dict(os.environ, SPECTRUM_CACHE=str(tmp_path / "views")))
    base = run_cli("--model", str(tiny_llama_dir), "--device", "cpu", "--top-percent", "50", cwd=tmp_path, env=environment)
    assert base.returncode == 0, base.stderr
    tuned = shutil.copytree(tiny_llama_dir, tmp_path / "tuned")
    config = json.loads((tuned / "config.json").read_text())
    config.update({"_name_or_path": "someone/tiny-llama-sft", "torch_dtype": "float16", "eos_token_id": 7,
                   "transformers_version": "0.0.1"})
    (tuned / "config.json").write_text(json.dumps(dict(reversed(list(config.items()))), indent=1))
    run = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE, "--model", str(tuned), "--device", "cpu",
                          "--top-percent", "50", "--output", "-"],
                         cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert json.loads(run.stderr.strip().splitlines()[-1]) == {"code": 0, "imported": ["numpy"]}, run.stderr
    assert "- model.layers." in run.stdout
    assert len(list((tmp_path / "views" / "views").glob("*/*.json"))) == 1  # the base's view served both

    config["num_hidden_layers"] = 1  # another model: another view, built
    (tuned / "config.json").write_text(json.dumps(config))
    other = run_cli("--model", str(tuned), "--device", "cpu", "--rescan", "--top-percent", "50", "--quiet",
                    cwd=tmp_path, env=environment)
    assert len(list((tmp_path / "views" / "views").glob("*/*.json"))) == 2, other.stderr


def test_cached_run_imports_neither_torch_nor_transformers(tiny_llama_dir, tmp_path):
    """The cached path (scores, name check, YAML, summary) is pure Python: it answers in about a second.
    The name check still runs there, from the cached view of the model."""
    import os
    import subprocess
    import sys

    from helpers import cli_env

    work = tmp_path / "work"
    work.mkdir()
    environment = cli_env(dict(os.environ, SPECTRUM_CACHE=str(tmp_path / "views")))
    first = run_cli("--model", str(tiny_llama_dir), "--top-percent", "50", cwd=work, env=environment)
    assert first.returncode == 0, first.stderr
    (view_file,) = (tmp_path / "views" / "views").glob("*/*.json")

    def probe(*args: str) -> tuple[dict, subprocess.CompletedProcess]:
        run = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE, "--model", str(tiny_llama_dir), *args],
                             cwd=work, env=environment, capture_output=True, text=True, timeout=120)
        return json.loads(run.stderr.strip().splitlines()[-1]), run

    for args in (["--top-percent", "34"], ["--top-percent", "34", "--output", "-"], ["--list-types"]):
        report, run = probe(*args)
        assert report == {"code": 0, "imported": []}, run.stderr
        if "--output" in args:
            assert run.stdout.startswith("# spectrum ") and "- model.layers." in run.stdout

    # A view that lacks the model's down_proj parameters: the cached run checks against it and refuses.
    view = json.loads(view_file.read_text())
    view["view"]["parameters"] = {name: shape for name, shape in view["view"]["parameters"].items()
                                  if "down_proj" not in name}
    view_file.write_text(json.dumps(view))
    report, run = probe("--top-percent", "34", "--output", "-")
    assert report == {"code": 1, "imported": []}, run.stderr
    assert "YAML entries match no parameter of LlamaForCausalLM" in run.stderr and run.stdout == ""


def test_a_scan_of_a_local_path_says_once_how_to_name_it_after_the_hub_id(tiny_llama_dir, tmp_path):
    first, second = tmp_path / "smol", tmp_path / "other"
    shutil.copytree(tiny_llama_dir, first)
    shutil.copytree(tiny_llama_dir, second)
    work = tmp_path / "work"
    work.mkdir()
    hint = ("is named after the local path {}; for a copy of a Hub model, --name ORG/NAME names it after the Hub id, "
            "which Axolotl's Spectrum plugin looks for (README: Axolotl)")
    result = run_cli("--model", "../smol", "--model", str(second), "--no-check", cwd=work)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: snr_results_..-smol.json " + hint.format("../smol")]  # once a run
    for args in (["--model", "../smol"],  # cached: no new file, nothing to say
                 ["--model", "../smol/", "--rescan", "--quiet"],  # --quiet
                 ["--model", "../smol", "--name", "org/smol"]):  # named
        result = run_cli(*args, "--no-check", cwd=work)
        assert result.returncode == 0 and "warning:" not in result.stderr, result.stderr
