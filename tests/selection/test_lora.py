"""LoRA / QLoRA targets from a selection, put on real models by the real PEFT: the adapters land on
exactly the selected modules and fused parameters (dense Llama, Mixtral and Qwen2-MoE with fused 3-D
experts, and Qwen3-MoE, whose dense-layer MLP names PEFT's MoE conversion would rewrite); the
`--lora` YAML and the one-line regexes of `--format regex`."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
import transformers as T
import yaml

import spectrum
from helpers import run_cli
from spectrum.selection.freeze import trainer_view
from spectrum.selection.lora import module_regex, parameter_regex
from spectrum.scores import Scores
from spectrum.scoring.checkpoint import scan
from spectrum.selection.model_view import axolotl_pattern

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer, ParamWrapper  # noqa: E402

TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=32)


def build(family: str):
    torch.manual_seed(0)
    if family == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(**dict(TEXT, num_hidden_layers=4)))
    if family == "mixtral":
        return T.MixtralForCausalLM(T.MixtralConfig(**TEXT, num_local_experts=4, num_experts_per_tok=2))
    if family == "qwen2_moe":
        return T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(**TEXT, moe_intermediate_size=24, shared_expert_intermediate_size=40,
                                                      num_experts=4, num_experts_per_tok=2))
    if family == "qwen3_moe":  # layer 0 dense (mlp.gate_proj, ...: names PEFT's MoE conversion rewrites), layer 1 MoE
        return T.Qwen3MoeForCausalLM(T.Qwen3MoeConfig(**dict(TEXT, num_hidden_layers=4), moe_intermediate_size=24,
                                                      num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0, 2],
                                                      head_dim=8))
    raise ValueError(family)


# How each family's checkpoint names become the model's, written out by hand: (pattern, fused target).
# A fused target groups every expert's matrix into one parameter, ranked by the mean score.
FUSED = {
    "llama": [],
    "mixtral": [(r"block_sparse_moe\.experts\.\d+\.w[13]$", "mlp.experts.gate_up_proj"),
                (r"block_sparse_moe\.experts\.\d+\.w2$", "mlp.experts.down_proj")],
    "qwen2_moe": [(r"mlp\.experts\.\d+\.(gate|up)_proj$", "mlp.experts.gate_up_proj"),
                  (r"mlp\.experts\.\d+\.down_proj$", "mlp.experts.down_proj")],
}
FUSED["qwen3_moe"] = FUSED["qwen2_moe"]


def expected_selection(scores, family: str, percent: int) -> set[str]:
    """The top `percent`% per type, restated as the parameters the adapters should change: computed here
    from the checkpoint's scores without spectrum's selection code."""
    rows: dict[str, tuple[list[float], str]] = {}
    for module, score in scores.entries.items():
        target, type_name = module.replace("block_sparse_moe.gate", "mlp.gate"), score.type
        for pattern, fused in FUSED[family]:
            if re.search(pattern, module):
                layer = re.match(r"model\.layers\.(\d+)\.", module).group(1)
                target, type_name = f"model.layers.{layer}.{fused}", fused
        values, _ = rows.setdefault(target, ([], type_name))
        values.append(score.snr)
    by_type: dict[str, list[tuple[str, float]]] = {}
    for target, (values, type_name) in rows.items():
        by_type.setdefault(type_name, []).append((target, sum(values) / len(values)))
    chosen = set()
    for members in by_type.values():
        ranked = sorted(members, key=lambda member: -member[1])
        chosen |= {target for target, _ in ranked[: math.floor(len(members) * percent / 100)]}
    return chosen


def adapted(peft_model) -> set[str]:
    """What the adapters change, read off the PEFT model: each LoRA layer's module (as `<module>`) and
    each wrapped parameter (as `<module>.<parameter>`, a `.weight` dropped), under the base model's names."""
    found = set()
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = re.sub(r"\.base_layer", "", name.removeprefix("base_model.model."))
        if isinstance(module, ParamWrapper):
            found.add(f"{base}.{module.parameter_name}".removesuffix(".weight"))
        else:
            found.add(base)
    return found


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """family -> (model, scores of its saved checkpoint, checkpoint folder)."""
    made = {}
    for family in ("llama", "mixtral", "qwen2_moe", "qwen3_moe"):
        folder = tmp_path_factory.mktemp(family)
        model = build(family)
        model.save_pretrained(folder)
        made[family] = (model, scan(str(folder), device="cpu", threads=1), folder)
    return made


@pytest.mark.parametrize("family", ["llama", "mixtral", "qwen2_moe", "qwen3_moe"])
def test_adapters_land_on_exactly_the_selection(scanned, family):
    model, scores, _ = scanned[family]
    targets = spectrum.lora_targets(scores, 50, model=model)
    expected = expected_selection(scores, family, 50)
    assert expected  # something is selected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(build(family), LoraConfig(r=4, **targets))
    assert adapted(peft_model) == expected
    trainable = [name for name, parameter in peft_model.named_parameters() if parameter.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)
    # Full names from the root: each list entry is one module or parameter of the model.
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters())
    assert all(name in modules for name in targets["target_modules"])
    assert all(name in parameters for name in targets["target_parameters"])
    if family != "llama":
        assert any(".experts." in name and parameters[name].dim() == 3 for name in targets["target_parameters"])


def test_names_peft_would_rewrite_go_through_target_parameters(scanned):
    """Qwen3-MoE's dense layers have `mlp.gate_proj`, `mlp.up_proj` and `mlp.down_proj` linears; as
    target_modules entries, PEFT's MoE conversion turns them into the fused experts of every MoE layer
    (checked here with PEFT itself). They are targeted through their weights instead."""
    model, scores, _ = scanned["qwen3_moe"]
    targets = spectrum.lora_targets(scores, 50, model=model)
    dense = [name for name in targets["target_parameters"] if re.search(r"layers\.[02]\.mlp\.\w+_proj\.weight$", name)]
    assert dense and not [name for name in targets["target_modules"] if re.search(r"layers\.[02]\.mlp\.", name)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = get_peft_model(build("qwen3_moe"), LoraConfig(r=4, target_modules=[n.removesuffix(".weight") for n in dense]))
    assert not {name for name in adapted(naive) if ".layers.0." in name or ".layers.2." in name}  # the trap


def test_without_a_model_the_checkpoint_config_gives_the_same_targets(scanned):
    for family in ("llama", "mixtral"):
        model, scores, folder = scanned[family]
        by_path = Scores(str(folder), scores.entries, scores.meta)
        assert spectrum.lora_targets(by_path, 50) == spectrum.lora_targets(scores, 50, model=model)


def test_embeddings_and_entry_lists(scanned):
    model, scores, _ = scanned["llama"]
    targets = spectrum.lora_targets(scores, 50, model=model, embeddings=True)
    assert targets["modules_to_save"] == ["model.embed_tokens", "lm_head"]
    # An unfrozen_parameters list (or YAML) gives the modules its entries unfreeze on the model.
    listed = spectrum.lora_targets(["model.layers.1.mlp", "^lm_head.weight$"], model=model)
    assert listed == {"target_modules": ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj",
                                         "model.layers.1.mlp.down_proj", "lm_head"], "target_parameters": []}
    with pytest.raises(ValueError, match="needs model="):
        spectrum.lora_targets(["model.layers.1.mlp"])
    with pytest.raises(ValueError, match="holds no module"):
        spectrum.lora_targets(scores, 1, model=model)


def test_parameter_regex_means_the_selection_under_search_match_and_fullmatch(scanned):
    model, scores, _ = scanned["mixtral"]
    entries = spectrum.freeze(model, scores, top_percent=50)
    names = [name for name, _ in model.named_parameters()]
    selected_modules = scores.select(50, view=trainer_view(model, scores))
    regex = parameter_regex(["lm_head.weight", "model.embed_tokens.weight"] + selected_modules)
    for method in ("search", "match", "fullmatch"):
        assert {name for name in names if getattr(re, method)(regex, name)} == set(entries.names), method


def test_module_regex_is_peft_string_target_modules(scanned):
    model, scores, _ = scanned["llama"]
    targets = spectrum.lora_targets(scores, 50, model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(build("llama"), LoraConfig(r=4, target_modules=module_regex(targets["target_modules"])))
    assert adapted(peft_model) == set(targets["target_modules"])


def test_cli_lora_yaml_and_regex(scanned, tmp_path):
    model, scores, folder = scanned["mixtral"]
    result = run_cli("--model", str(folder), "--top-percent", "50", "--lora", "--quiet", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (written,) = tmp_path.glob("snr_results_*_lora_50percent.yaml")
    assert not list(tmp_path.glob("*unfrozenparameters*"))  # --lora replaces the unfrozen_parameters YAML
    text = written.read_text()
    parsed = yaml.safe_load(text)
    assert "unfrozen_parameters" not in parsed
    assert parsed == {"lora_target_modules": spectrum.lora_targets(scores, 50, model=model)["target_modules"],
                      "lora_target_parameters": spectrum.lora_targets(scores, 50, model=model)["target_parameters"]}
    assert "# To also train the embeddings and the head whole: lora_modules_to_save: [model.embed_tokens, lm_head]" in text
    assert "arXiv 2406.06623" in text and "lora_dropout: 0" in text
    # A single regex cannot carry target_parameters: refused with one line, nothing written.
    refused = run_cli("--model", str(folder), "--top-percent", "50", "--lora", "--format", "regex", "--output",
                      str(tmp_path / "x.regex"), cwd=tmp_path)
    assert refused.returncode == 1 and not (tmp_path / "x.regex").exists()
    assert refused.stderr.splitlines()[-1].startswith("spectrum: error: 3 selected targets are parameters, not layers")
    # --format regex of the unfrozen selection: one line, what Axolotl's YAML unfreezes.
    plain = run_cli("--model", str(folder), "--top-percent", "50", "--format", "regex", "--output", "-", "--quiet",
                    cwd=tmp_path)
    assert plain.returncode == 0 and plain.stdout.count("\n") == 1
    names = [name for name, _ in model.named_parameters()]
    unfrozen = spectrum.freeze(model, scores, top_percent=50)
    assert {name for name in names if re.search(plain.stdout.strip(), name)} == set(unfrozen.names)


def test_cli_lora_regex_on_a_dense_model(scanned, tmp_path):
    model, scores, folder = scanned["llama"]
    result = run_cli("--model", str(folder), "--top-percent", "50", "--lora", "--format", "regex", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (written,) = tmp_path.glob("snr_results_*_lora_50percent.regex")
    regex = written.read_text().strip()
    assert regex == module_regex(spectrum.lora_targets(scores, 50, model=model)["target_modules"])
    modules = [name for name, _ in model.named_modules()]
    assert [name for name in modules if re.fullmatch(regex, name)] == [
        name for name in modules if name in spectrum.lora_targets(scores, 50, model=model)["target_modules"]]


def test_axolotl_rule_agrees_with_the_lora_yaml_modules(scanned):
    """The LoRA targets are the modules the unfrozen_parameters YAML unfreezes (for a dense model)."""
    model, scores, _ = scanned["llama"]
    targets = spectrum.lora_targets(scores, 50, model=model)
    unfrozen = spectrum.freeze(model, scores, top_percent=50, embeddings=False)
    assert {name.rpartition(".")[0] for name in unfrozen.names} == set(targets["target_modules"])
    assert all(axolotl_pattern(name).match(name + ".weight") for name in targets["target_modules"])
