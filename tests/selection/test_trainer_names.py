"""YAML entries name what the trainer builds: MoE (per-expert and fused), a vision-language model,
GPT-2, T5, checked against the model built on the meta device from its config."""

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import save_file

from helpers import run_cli, small
from reference import reference_score
from spectrum.errors import SpectrumError
from spectrum.scoring.checkpoint import scan
from spectrum.selection.topk import yaml_entries
from spectrum.selection.model_view import axolotl_pattern, build_view, cached_view, unmatched_entries
from spectrum.workflow import ScanOptions, checked_yaml, model_config


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folders = {}
    for family in ("mixtral", "qwen2_moe", "llava", "gpt2", "t5"):
        folder = tmp_path_factory.mktemp(family)
        small(family).save_pretrained(folder, max_shard_size="30KB")
        folders[family] = folder
    return folders


def unfrozen(parameters: list[str], entries: list[str]) -> set[str]:
    """Parameters Axolotl unfreezes: re.match of each entry with its dots made literal (written independently)."""
    patterns = [re.compile(entry.replace(".", r"\.")) for entry in entries]
    return {name for name in parameters if any(pattern.match(name) for pattern in patterns)}


def meta_parameters(family: str) -> list[str]:
    with torch.device("meta"):
        return [name for name, _ in small(family).named_parameters()]


# family -> parameters unfrozen at 50% of 2 layers (1 layer per type), counted by hand:
EXPECTED = {
    # embeddings 2; fused gate_up 1, fused down 1, router 1; q, k, v, o 4
    "mixtral": 9,
    # embeddings 2; fused gate_up 1, fused down 1, router 1; shared expert gate/up/down 3, shared-expert gate 1;
    # q, k, v with biases 6, o 1
    "qwen2_moe": 16,
    # embeddings 2 (lm_head, language model embed_tokens); language q, k, v, o, gate, up, down 7;
    # vision q, k, v, out_proj, fc1, fc2 with biases 12
    "llava": 21,
    # wte only (lm_head is tied, not a parameter of its own); c_attn, c_proj, c_fc, mlp.c_proj with biases 8
    "gpt2": 9,
    # shared; encoder q, k, v, o, wi, wo 6 + relative_attention_bias of block 0 (1 of 1 -> 0 kept at 50%);
    # decoder self q, k, v, o 4 + cross q, k, v, o 4 + wi, wo 2
    "t5": 17,
}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_yaml_unfreezes_exactly_what_is_expected(checkpoints, family):
    scores = scan(str(checkpoints[family]), device="cpu", threads=1)
    text = checked_yaml(scores, 50, model=str(checkpoints[family]), check=True)  # the check must run
    entries = yaml_entries(text)
    parameters = meta_parameters(family)
    assert unmatched_entries(entries, parameters) == []
    assert len(unfrozen(parameters, entries)) == EXPECTED[family], text


def test_moe_experts_fused_by_transformers(checkpoints):
    scores = scan(str(checkpoints["mixtral"]), device="cpu", threads=1)
    # Scored per expert under the checkpoint's names, typed per expert as the reference does.
    assert scores.entries["model.layers.0.block_sparse_moe.experts.3.w1"].type == "block_sparse_moe.experts.3.w1"
    assert sum(1 for module in scores.entries if ".experts." in module) == 2 * 4 * 3
    text = checked_yaml(scores, 50, model=str(checkpoints["mixtral"]))
    assert ("# mlp.experts.gate_up_proj layers (fused: each ranked by the mean score of its 8 source matrices, "
            "as the trainer can only unfreeze the fused tensor whole)\n") in text
    # The fused parameter kept is the layer whose experts' mean score is higher.
    means = {layer: sum(scores.entries[f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}"].snr
                        for e in range(4) for w in ("w1", "w3")) / 8 for layer in (0, 1)}
    best = max(means, key=means.get)
    assert f"- model.layers.{best}.mlp.experts.gate_up_proj\n" in text
    assert f"- model.layers.{1 - best}.mlp.experts.gate_up_proj\n" not in text


def test_group_experts_ranks_one_projection_together(checkpoints):
    scores = scan(str(checkpoints["mixtral"]), device="cpu", threads=1)
    text = checked_yaml(scores, 50, model=str(checkpoints["mixtral"]), check=False, group_experts=True)
    block = text.split("# block_sparse_moe.experts.w1 layers\n")[1].split("#")[0]
    chosen = [line[2:] for line in block.splitlines()]
    ranked = sorted((m for m in scores.entries if m.endswith(".w1")), key=lambda m: -scores.entries[m].snr)
    assert chosen == ranked[:4]  # 2 layers x 4 experts, top half


def test_two_stacks_are_ranked_apart(checkpoints):
    scores = scan(str(checkpoints["t5"]), device="cpu", threads=1)
    types = set(scores.types())
    assert "encoder.block.layer.0.SelfAttention.q" in types and "decoder.block.layer.0.SelfAttention.q" in types
    llava = scan(str(checkpoints["llava"]), device="cpu", threads=1)
    assert {"language_model.model.layers.self_attn.q_proj", "vision_tower.encoder.layers.self_attn.q_proj"} <= set(llava.types())
    text = checked_yaml(llava, 50, model=str(checkpoints["llava"]))
    assert "- ^lm_head.weight$\n- ^model.language_model.embed_tokens.weight$\n" in text
    assert re.search(r"^- model\.language_model\.layers\.[01]\.self_attn\.q_proj$", text, re.M)


def test_single_stack_keeps_reference_types(tiny_llama_dir):
    assert "self_attn.q_proj" in scan(str(tiny_llama_dir), device="cpu").types()


def test_fused_3d_expert_tensors_are_scored_per_expert(tmp_path):
    model = small("mixtral")
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))  # the model's own fused names, (experts, out, in)
    model.config.save_pretrained(tmp_path)
    scores = scan(str(tmp_path), device="cpu", threads=1)
    fused = state["model.layers.1.mlp.experts.gate_up_proj"]  # (4, 96, 32)
    for expert in range(4):
        entry = scores.entries[f"model.layers.1.mlp.experts.{expert}.gate_up_proj"]
        assert entry.type == f"mlp.experts.{expert}.gate_up_proj"
        assert entry.snr == pytest.approx(reference_score(fused[expert].double().numpy()), rel=1e-9)
    text = checked_yaml(scores, 50, model=str(tmp_path))
    assert "(fused: each ranked by the mean score of its 4 source matrices, as" in text
    assert len(unfrozen(meta_parameters("mixtral"), yaml_entries(text))) == 9
    # Without the check (no view of the model), the YAML still names the stored fused tensors, which
    # exist, ranked the same way: not per-expert names that exist nowhere.
    assert scores.meta["fused_tensors"] == [f"model.layers.{layer}.mlp.experts.{kind}" for layer in range(2)
                                            for kind in ("down_proj", "gate_up_proj")]
    unchecked = checked_yaml(scores, 50, model=str(tmp_path), check=False, embeddings=False)
    expert_entries = [entry for entry in yaml_entries(unchecked) if ".experts." in entry]
    assert expert_entries and unmatched_entries(expert_entries, list(state)) == []
    assert [e for e in yaml_entries(unchecked) if "experts" in e] == [e for e in yaml_entries(text) if "experts" in e]


def test_axolotl_rule():
    assert axolotl_pattern("model.layers.1.mlp").match("model.layers.1.mlp.down_proj.weight")
    assert not axolotl_pattern("model.layers.1.mlp").match("model.layers.1xmlp")
    assert axolotl_pattern("model.layers.1.+mlp").match("model.layers.1.self_attn.mlp")  # ".+" stays a wildcard


def test_entries_matching_nothing_are_an_error(tmp_path, tiny_llama_dir):
    from safetensors import safe_open

    tensors = {}
    for shard in sorted(tiny_llama_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    tensors["model.layers.0.mlp.mystery_proj.weight"] = tensors.pop("model.layers.0.mlp.up_proj.weight")
    tensors["model.layers.1.mlp.mystery_proj.weight"] = tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    scores = scan(str(tmp_path), device="cpu")
    with pytest.raises(SpectrumError, match="match no parameter of LlamaForCausalLM"):
        checked_yaml(scores, 50, model=str(tmp_path))
    assert "mystery_proj" in checked_yaml(scores, 50, model=str(tmp_path), check=False)
    result = run_cli("--model", str(tmp_path), "--output", "-", cwd=tmp_path)
    assert result.returncode == 1 and "mystery_proj" in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    forced = run_cli("--model", str(tmp_path), "--no-check", "--output", "-", "--quiet", cwd=tmp_path)
    assert forced.returncode == 0 and "mystery_proj" in forced.stdout


def test_check_without_a_config(tmp_path, minilm_dir):
    single = tmp_path / "weights.safetensors"
    single.write_bytes((minilm_dir / "model.safetensors").read_bytes())
    assert run_cli("--model", str(single), "--quiet", "--output", "-", cwd=tmp_path).returncode == 0  # auto: skipped
    forced = run_cli("--model", str(single), "--check", "--output", "-", cwd=tmp_path)
    assert forced.returncode == 1 and forced.stderr == (
        f"spectrum: error: --check cannot check the names: no config.json beside the weights of {single} (nor in "
        "the Hugging Face cache) (pass --no-check to write the names as stored)\n")


@pytest.mark.parametrize(("version", "problem"), [
    ("5.0.0", None), ("5.0.0rc1", None), ("6.1", None), ("unknown", None),
    ("4.57.1", 'transformers 4.57.1 is installed and the name check needs 5 or newer: pip install -U "transformers>=5"'),
    ("4.40.0.dev0", "transformers 4.40.0.dev0 is installed and the name check needs 5 or newer: "
                    'pip install -U "transformers>=5"'),
    (None, 'transformers is not installed; the name check needs transformers 5 or newer: pip install -U "transformers>=5"'),
])
def test_the_name_check_version_rule(version, problem):
    from spectrum.selection.model_view import name_check_version_problem

    assert name_check_version_problem(version) == problem


def test_view_maps_checkpoint_names(checkpoints):
    names = json.loads((checkpoints["llava"] / "model.safetensors.index.json").read_text())["weight_map"]
    view = build_view(str(checkpoints["llava"] / "config.json"), list(names))
    assert view.architecture == "LlavaForConditionalGeneration"
    assert view.parameter_of("language_model.model.layers.0.mlp.down_proj.weight") == "model.language_model.layers.0.mlp.down_proj.weight"
    assert view.parameter_of("language_model.lm_head.weight") == "lm_head.weight"


def test_views_are_cached_by_transformers_config_and_names(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRUM_CACHE", str(tmp_path / "cache"))
    config = checkpoints["mixtral"] / "config.json"
    names = list(json.loads((checkpoints["mixtral"] / "model.safetensors.index.json").read_text())["weight_map"])
    built = build_view(str(config), names)
    assert cached_view(str(config), names) == built  # built, then written
    files = list((tmp_path / "cache" / "views").glob("*/*.json"))  # views/<config>/<names>.json
    assert len(files) == 1
    assert cached_view(str(config), names) == built  # read back: same parameters, renames and fused set
    assert built.fused and built.renamed  # the fused MoE experts survive the round trip

    files[0].write_text('{"format": 2, "view": {"architecture": "X"}}')  # damaged: rebuilt and rewritten
    assert cached_view(str(config), names) == built
    assert json.loads(files[0].read_text())["view"]["architecture"] == "MixtralForCausalLM"

    assert cached_view(str(config), names[:-1]) is not None  # other names: another entry
    assert len(list((tmp_path / "cache" / "views").glob("*/*.json"))) == 2


def test_the_config_digest_leaves_out_names_dates_and_dtype_only():
    from spectrum.selection.model_view import CONFIG_KEYS_IGNORED, config_digest

    base = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
            "vocab_size": 128, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "eos_token_id": 2}
    digest = config_digest(json.dumps(base).encode())
    tuned = dict(reversed(list(base.items())), _name_or_path="me/sft", torch_dtype="float32", eos_token_id=[2, 9],
                 transformers_version="5.0.0", use_cache=False, pad_token_id=0, dtype="float16")
    assert config_digest(json.dumps(tuned, indent=4).encode()) == digest
    assert set(tuned) - set(base) <= CONFIG_KEYS_IGNORED
    for key, value in (("num_hidden_layers", 3), ("vocab_size", 130), ("tie_word_embeddings", True),
                       ("architectures", ["LlamaModel"]), ("rope_scaling", {"type": "linear", "factor": 2.0})):
        assert config_digest(json.dumps(dict(base, **{key: value})).encode()) != digest, key
    assert config_digest(b"not json") == hashlib.sha256(b"not json").hexdigest()
    assert config_digest(b"[1, 2]") == hashlib.sha256(b"[1, 2]").hexdigest()


def test_a_model_transformers_cannot_build_is_remembered_too(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRUM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "no-such-architecture", "architectures": ["NoSuchModel"]}')
    assert cached_view(str(folder / "config.json"), ["a.weight"]) is None
    (entry,) = (tmp_path / "cache" / "views").glob("*/*.json")
    assert json.loads(entry.read_text()) == {"format": 2, "view": None}
    assert cached_view(str(folder / "config.json"), ["a.weight"]) is None


def test_the_model_built_during_the_scan_gives_the_same_view(checkpoints, tmp_path, monkeypatch):
    """`start_model_build` builds the model in a thread (while a scan computes); its view equals the one
    built in place, torch's default dtype is left alone, and a config with a cached view builds nothing."""
    import torch

    from spectrum.selection.model_view import ModelBuild, start_model_build

    def start(model, check=None):  # what a run does: find the config, then build
        config = model_config(ScanOptions(model, check=check))
        return start_model_build(config) if config else None

    monkeypatch.setenv("SPECTRUM_CACHE", str(tmp_path / "cache"))
    folder = checkpoints["mixtral"]
    names = list(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])
    assert start(str(folder), check=False) is None
    assert start(str(tmp_path), check=None) is None  # no config.json: nothing to build
    build = start(str(folder))
    assert isinstance(build, ModelBuild) and build.config_path == str(folder / "config.json")
    assert torch.get_default_dtype() == torch.float32
    view = cached_view(build.config_path, names, build=build)
    assert torch.get_default_dtype() == torch.float32
    assert view == build_view(build.config_path, names) and view.fused
    assert start(str(folder)) is None  # its view is cached now: no transformers needed


def test_an_unbuildable_model_built_in_the_background_gives_no_view(tmp_path, monkeypatch):
    from spectrum.selection.model_view import ModelBuild

    monkeypatch.setenv("SPECTRUM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture", "architectures": ["NoSuchModel"]}')
    build = ModelBuild(str(tmp_path / "config.json"))
    assert cached_view(build.config_path, ["a.weight"], build=build) is None
    assert build.result() is None


def load_json_scores(working: Path, model: Path) -> dict:
    """The per-checkpoint-tensor scores: the `.tensors.json` when the scores file is in the trainer's names."""
    (scores_file,) = [p for p in (working / "model_snr_results").glob("snr_results_*.json")
                      if not p.name.endswith((".meta.json", ".tensors.json"))]
    tensors = scores_file.with_name(scores_file.name[: -len(".json")] + ".tensors.json")
    return json.loads((tensors if tensors.is_file() else scores_file).read_text())


def test_tensors_transformers_drops_on_load_are_left_out_of_the_yaml(tmp_path, monkeypatch):
    """DeepSeek-V3 checkpoints hold a multi-token-prediction layer 61 that transformers drops on load
    (`_keys_to_ignore_on_load_unexpected`). Here its copy of layer 1 scores higher than layer 1 itself,
    so it would take every MoE layer's place and then fail the check; it is named in a warning and
    left out, and the run succeeds."""
    from safetensors.torch import load_file

    monkeypatch.setenv("SPECTRUM_CACHE", str(tmp_path / "views"))
    torch.manual_seed(0)
    config = T.DeepseekV3Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
        first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
        n_group=1, topk_group=1, architectures=["DeepseekV3ForCausalLM"])
    folder = tmp_path / "deepseek"
    T.DeepseekV3ForCausalLM(config).save_pretrained(folder)
    state = load_file(str(folder / "model.safetensors"))
    for name in [name for name in state if name.startswith("model.layers.1.")]:
        state[name.replace("model.layers.1.", "model.layers.61.")] = state[name] / 4  # same SNR ratio, a quarter of S[0]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    result = run_cli("--model", str(folder), "--top-percent", "50", "--output", "-", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warning = result.stderr.splitlines()[0]
    assert warning.startswith("warning: 21 scored matrices are checkpoint tensors DeepseekV3ForCausalLM drops on load "
                              "(model.layers.61.")
    assert "layers.61" not in result.stdout and "- model.layers.1." in result.stdout
    # The summary counts what the YAML chose from: the dropped layer is not in it either.
    summary = run_cli("--model", str(folder), "--top-percent", "50", "--json", "--output", "x.yaml", cwd=tmp_path)
    record = json.loads(summary.stdout)
    assert summary.returncode == 0 and record["scored_matrices"] == len(load_json_scores(tmp_path, folder)) - 21
    assert not [m for row in record["types"] for m in row["selected_modules"] if ".61." in m]


def test_the_embedding_lines_name_the_language_models_embeddings():
    """InstructBLIP has a Q-Former with word embeddings of its own: the input-embedding line names
    what the model's get_input_embeddings() returns, the language model's; the head is its lm_head."""
    vision = T.InstructBlipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                                        image_size=32, patch_size=8)
    qformer = T.InstructBlipQFormerConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                          intermediate_size=48, encoder_hidden_size=32)
    text = T.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=False)
    with torch.device("meta"):
        model = T.InstructBlipForConditionalGeneration(T.InstructBlipConfig(
            vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(), num_query_tokens=4))
    from spectrum.scores import Scores
    from spectrum.selection.model_view import view_of_model

    view = view_of_model(model, [])
    patterns = Scores("x", {}).embedding_patterns(view)
    assert view.embeddings == ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")
    assert patterns == ["^language_model.lm_head.weight$", "^language_model.model.embed_tokens.weight$"]
    assert any(name.startswith("qformer.embeddings.word_embeddings") for name in view.parameters)  # the decoy
    with torch.device("meta"):
        tied = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                                num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    assert view_of_model(tied, []).embeddings == ("model.embed_tokens.weight", None)  # a tied head: no line of its own


def test_a_tensor_transformers_splits_unfreezes_every_part(tmp_path, monkeypatch):
    """Dinov2 with SwiGLU stores one `mlp.weights_in` matrix, which transformers 5 splits into
    `mlp.gate_proj` and `mlp.up_proj`: a selected weights_in names both, so both train."""
    import spectrum

    monkeypatch.setenv("SPECTRUM_CACHE", str(tmp_path / "views"))
    torch.manual_seed(0)
    config = T.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, image_size=32,
                            patch_size=8, use_swiglu_ffn=True, architectures=["Dinov2Model"])
    model = T.Dinov2Model(config)
    model.save_pretrained(tmp_path / "dino")
    scores = scan(str(tmp_path / "dino"), device="cpu", threads=1)
    best = max(range(2), key=lambda layer: scores.entries[f"encoder.layer.{layer}.mlp.weights_in"].snr)
    text = checked_yaml(scores, 50, model=str(tmp_path / "dino"), embeddings=False)
    section = text.split("# mlp.weights_in layers\n")[1].split("#")[0]
    assert section == f"- encoder.layer.{best}.mlp.gate_proj\n- encoder.layer.{best}.mlp.up_proj\n"
    unfrozen_names = spectrum.freeze(model, scores, top_percent=50, embeddings=False).names
    assert {f"encoder.layer.{best}.mlp.{kind}.{part}" for kind in ("gate_proj", "up_proj")
            for part in ("weight", "bias")} <= set(unfrozen_names)
    assert not [name for name in unfrozen_names if f"encoder.layer.{1 - best}.mlp.gate_proj" in name]


def test_a_tensor_converted_one_to_one_is_a_rename_not_a_fusion():
    """ERNIE-4.5-VL's router `mlp.gate.weight` is transposed into `mlp.text_moe.gate.weight`: one tensor,
    one parameter, another layout. The YAML names the parameter's module under the checkpoint's type,
    with no "fused" note."""
    from spectrum.scores import ModuleScore, Scores
    from spectrum.selection.model_view import view_of_model

    text = T.Ernie4_5_VLMoeTextConfig(vocab_size=64, hidden_size=256, intermediate_size=48, moe_intermediate_size=[16, 16],
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, moe_num_experts=2,
                                      moe_k=1, moe_layer_start_index=1)
    config = T.Ernie4_5_VLMoeConfig(text_config=text.to_dict(), vision_config=dict(
        depth=1, hidden_size=32, intermediate_size=48, num_heads=4, patch_size=2, spatial_merge_size=2))
    with torch.device("meta"):
        model = T.Ernie4_5_VLMoeForConditionalGeneration(config)
    view = view_of_model(model, ["model.layers.1.mlp.gate.weight"])
    assert view.renamed == {"model.layers.1.mlp.gate.weight": "model.language_model.layers.1.mlp.text_moe.gate.weight"}
    assert view.fused == set()
    yaml = Scores("x", {"model.layers.1.mlp.gate": ModuleScore(0.5, "mlp.gate")}).to_yaml(100, view=view, embeddings=False)
    assert yaml.splitlines()[-2:] == ["# mlp.gate layers", "- model.language_model.layers.1.mlp.text_moe.gate"]
