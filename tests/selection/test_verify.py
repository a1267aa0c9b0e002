"""`spectrum verify`: Axolotl configs (written in temporary folders) with each way of training something
other than they say, one that is right, and the exit codes 0, 1 and 2. The model is built from its
config.json on the meta device; the Spectrum plugin's scores file is read from the current folder."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest
import transformers as T

from helpers import build_hf_cache, offline_env, run_cli
from spectrum.cli import main

TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32)


def verify(*args: str) -> tuple[int, list[str]]:
    """`spectrum verify ARGS` through the command line's entry point; (exit code, stdout lines)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["verify", *args])
    return code, out.getvalue().splitlines() + err.getvalue().splitlines()


def problems(lines: list[str]) -> list[str]:
    return [line.removeprefix("problem: ") for line in lines if line.startswith("problem: ")]


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """A training folder (the current directory) with model configs only: no weights are needed."""
    monkeypatch.chdir(tmp_path)
    T.LlamaConfig(**dict(TEXT, num_hidden_layers=12), architectures=["LlamaForCausalLM"]).save_pretrained(tmp_path / "llama")
    T.MixtralConfig(**TEXT, num_local_experts=4, num_experts_per_tok=2,
                    architectures=["MixtralForCausalLM"]).save_pretrained(tmp_path / "mixtral")
    return tmp_path


def write(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def scores_file(folder, name: str, entries: dict) -> None:
    (folder / "model_snr_results").mkdir(exist_ok=True)
    (folder / "model_snr_results" / f"snr_results_{name}.json").write_text(json.dumps(entries))


def llama_scores(layers: int = 12) -> dict:
    return {f"model.layers.{layer}.{kind}": {"snr": 0.1 + layer / 100, "type": kind}
            for kind in ("self_attn.q_proj", "mlp.down_proj") for layer in range(layers)}


def test_a_right_config_passes(folder):
    config = write(folder / "ok.yml", "base_model: ./llama\nunfrozen_parameters:\n- ^lm_head.weight$\n"
                   "- model.layers.3.mlp.down_proj\n- model.layers.11.self_attn.q_proj\n")
    code, lines = verify(config)
    assert code == 0, lines
    assert lines == ["trains: 3 of 111 parameter tensors of LlamaForCausalLM, 5,632 of 99,104 parameters (5.7%)",
                     f"{config}: ok"]


def test_unmatched_and_prefix_entries(folder):
    config = write(folder / "c.yml", "base_model: ./llama\nunfrozen_parameters:\n- model.layers.1\n"
                   "- model.layers.3.mlp.nothing\n- model.layers.4.mlp.down_proj\n")
    code, lines = verify(config)
    found = problems(lines)
    assert code == 1 and len(found) == 2, lines
    assert found[0].startswith("unfrozen_parameters entry 'model.layers.1' also unfreezes 'model.layers.10.")
    assert "end it with a dot (a module) or $ (a parameter) to unfreeze model.layers.1 alone" in found[0]
    assert found[1].startswith("unfrozen_parameters: no parameter of the model matches 1 entry "
                               "('model.layers.3.mlp.nothing')")
    assert lines[-1] == f"{config}: 2 problems: it does not train what it says"


def test_the_plugin_reads_scores_keyed_by_the_models_names(folder):
    scores_file(folder, ".-llama", llama_scores())
    config = write(folder / "p.yml", "base_model: ./llama\nplugins:\n- axolotl.integrations.spectrum.SpectrumPlugin\n"
                   "spectrum_top_fraction: 0.25\n")
    code, lines = verify(config)
    assert code == 0, lines  # 3 of 12 per type, plus the two embedding lines
    assert lines[0].startswith("trains: 8 of 111 parameter tensors of LlamaForCausalLM")


@pytest.mark.parametrize("case, expected", [
    ("missing", "the Spectrum plugin's scores file ./model_snr_results/snr_results_org-model.json is missing; Axolotl "
                "then fetches https://raw.githubusercontent.com/cognitivecomputations/spectrum/main/model_snr_results/"
                "snr_results_org-model.json, and when that fails too trains every parameter"),
    ("unreadable", "./model_snr_results/snr_results_org-model.json is unreadable"),
    ("sorted", "./model_snr_results/snr_results_org-model.json is not in the layout Axolotl reads"),
    ("nan", "./model_snr_results/snr_results_org-model.json holds 1 scores that are NaN"),
    ("checkpoint names", "the Spectrum plugin's unfrozen_parameters: no parameter of the model matches 3 entries"),
    ("percent", "spectrum_top_fraction: 25 is outside (0, 1]: it is a fraction, not a percent, and selects every module"),
])
def test_plugin_problems(folder, case, expected):
    model = "./mixtral" if case == "checkpoint names" else "./llama"
    body = f"base_model: {model}\nspectrum_model_name: org/model\nplugins:\n- axolotl.integrations.spectrum.SpectrumPlugin\n"
    body += "spectrum_top_fraction: 25\n" if case == "percent" else ""
    entries = llama_scores()
    if case == "unreadable":
        (folder / "model_snr_results").mkdir()
        (folder / "model_snr_results" / "snr_results_org-model.json").write_text('{"model.layers.0.mlp": {')
    elif case == "sorted":
        scores_file(folder, "org-model", {"mlp.down_proj": {"model.layers.0.mlp.down_proj": 0.5}})
    elif case == "nan":
        (folder / "model_snr_results").mkdir()
        text = json.dumps(entries).replace('"snr": 0.1,', '"snr": NaN,', 1)
        (folder / "model_snr_results" / "snr_results_org-model.json").write_text(text)
    elif case == "checkpoint names":  # what a scan of a Mixtral checkpoint keys its scores by
        scores_file(folder, "org-model", {f"model.layers.{layer}.block_sparse_moe.experts.{e}.w1":
                                          {"snr": 0.1 * layer + e, "type": f"block_sparse_moe.experts.{e}.w1"}
                                          for layer in range(2) for e in range(3)})
    elif case != "missing":
        scores_file(folder, "org-model", entries)
    code, lines = verify(write(folder / "c.yml", body))
    assert code == 1, lines
    assert [problem for problem in problems(lines) if problem.startswith(expected)], lines


def test_use_reentrant_with_frozen_parameters(folder):
    config = write(folder / "c.yml", "base_model: ./llama\nunfrozen_parameters: [model.layers.0.mlp]\n"
                   "gradient_checkpointing_kwargs:\n  use_reentrant: true\n")
    code, lines = verify(config)
    assert code == 1 and problems(lines) == [
        "gradient_checkpointing_kwargs.use_reentrant: true with frozen parameters: no gradient reaches the layers before "
        "the first trainable one (Axolotl refuses it for unfrozen_parameters, but not for the plugin's); set it to false"]


def test_lora_targets_by_peft_rules(folder):
    pytest.importorskip("peft")
    config = write(folder / "c.yml", "base_model: ./mixtral\nadapter: qlora\nlora_target_modules:\n"
                   "- model.layers.0.self_attn.q_proj\n- o_proj\n- q_projx\n- model.layers.1.mlp.gate\n"
                   "lora_target_parameters:\n- model.layers.0.mlp.experts.gate_up_proj\n- experts.w1\n")
    code, lines = verify(config)
    found = problems(lines)
    assert code == 1
    assert "lora_target_modules: no module matches 1 entry ('q_projx'); PEFT matches a module by its full name or a " \
           "dotted suffix of it" in found
    assert [p for p in found if p.startswith("lora_target_modules names 1 module PEFT cannot put a LoRA layer on "
                                             "('model.layers.1.mlp.gate'")]
    assert [p for p in found if p.startswith("lora_target_modules: PEFT's MoE conversion rewrites 'model.layers.1.mlp.gate'")]
    assert "lora_target_parameters: no parameter matches 1 entry ('experts.w1')" in found
    assert lines[-2] == "trains: adapters on 4 modules and 1 parameter of MixtralForCausalLM"


def test_spectrum_lora_yaml_verifies(folder, tmp_path):
    """What `spectrum --lora` writes for a Mixtral checkpoint passes verify, and an adapter beside
    unfrozen_parameters is a problem."""
    pytest.importorskip("peft")
    import torch

    torch.manual_seed(0)
    T.MixtralForCausalLM(T.MixtralConfig(**TEXT, num_local_experts=4, num_experts_per_tok=2)).save_pretrained(
        tmp_path / "weights")
    made = run_cli("--model", str(tmp_path / "weights"), "--top-percent", "50", "--lora", "--output", "lora.yaml",
                   "--quiet", "--device", "cpu", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    code, lines = verify("--model", str(tmp_path / "weights"), str(tmp_path / "lora.yaml"))
    assert code == 0, lines  # bare LoRA YAML: no adapter key, only targets, nothing unfrozen
    config = write(folder / "c.yml", f"base_model: {tmp_path / 'weights'}\nadapter: lora\n"
                   + (tmp_path / "lora.yaml").read_text() + "unfrozen_parameters: [model.layers.0]\n")
    code, lines = verify(config)
    assert code == 1 and len(problems(lines)) == 1
    assert problems(lines)[0].startswith("adapter: lora with unfrozen_parameters: Axolotl applies them to the PEFT model")


@pytest.mark.parametrize("text, message", [
    (None, "cannot read it (No such file or directory)"),
    ("a: [b", "not a YAML file"),
    ("- a list\n", "not an Axolotl config"),
    ("learning_rate: 1\n", "no base_model: to check against"),
])
def test_usage_errors_exit_2(folder, text, message):
    path = folder / "c.yml"
    if text is not None:
        path.write_text(text)
    code, lines = verify(str(path))
    assert code == 2 and lines == [f"spectrum: error: {path}: {message}" + (
        " (give --model MODEL for a bare YAML)" if "base_model" in message else "")] or message in lines[0], lines


def test_a_model_that_cannot_be_resolved_exits_1(folder):
    config = write(folder / "c.yml", "base_model: nobody/not-cached\n")
    code, lines = verify(config)
    assert code == 1 and lines == ["spectrum: error: nobody/not-cached: config.json is not in the Hugging Face cache; "
                                   "fetch it first (huggingface-cli download nobody/not-cached config.json) and run "
                                   "verify again"]


def test_the_command_line_with_a_hub_id_from_the_offline_cache(folder, tmp_path, tiny_llama_dir):
    """A real `python -m spectrum verify` process: a Hub id resolved in the offline HF cache (exit 0), a
    problem (exit 1), a usage error (exit 2)."""
    cache = build_hf_cache(tmp_path / "hf", "org/tiny-llama", tiny_llama_dir)
    env = offline_env(cache)
    good = write(folder / "good.yml", "base_model: org/tiny-llama\nunfrozen_parameters: [model.layers.2.mlp.up_proj]\n")
    result = run_cli("verify", good, cwd=folder, env=env)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout.splitlines()[-1] == f"{good}: ok"
    bad = write(folder / "bad.yml", "base_model: org/tiny-llama\nunfrozen_parameters: [model.layers.9.mlp]\n")
    result = run_cli("verify", bad, cwd=folder, env=env)
    assert result.returncode == 1 and "no parameter of the model matches 1 entry ('model.layers.9.mlp')" in result.stdout
    result = run_cli("verify", str(folder / "absent.yml"), cwd=folder, env=env)
    assert result.returncode == 2 and result.stderr.startswith("spectrum: error: ") and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert os.listdir(folder / "llama")  # nothing was written beside the configs


def test_a_fused_expert_entry_owns_its_bias(folder):
    """GPT-OSS stores `mlp.experts.gate_up_proj` beside `mlp.experts.gate_up_proj_bias`: the entry spectrum's
    YAML writes for the fused tensor trains its bias as a module's entry trains `.bias`, which is not a
    prefix problem; a module name that reaches another module still is."""
    T.GptOssConfig(**TEXT, num_local_experts=4, num_experts_per_tok=2, head_dim=8,
                   architectures=["GptOssForCausalLM"]).save_pretrained(folder / "gpt-oss")
    config = write(folder / "g.yml", "base_model: ./gpt-oss\nunfrozen_parameters:\n- model.layers.0.mlp.experts.gate_up_proj\n")
    code, lines = verify(config)
    assert code == 0, lines
    assert lines[0].startswith("trains: 2 of ")  # the fused tensor and its bias
