"""spectrum.freeze on real torch / transformers models built from a config; counts checked by hand.

The tiny Llama (vocab 96, hidden 48, intermediate 80, 3 layers, 4 heads, 2 KV heads) has per layer:
q_proj, o_proj 48x48 = 2304; k_proj, v_proj 24x48 = 1152; gate_proj, up_proj, down_proj 3840; two
norms of 48. Embeddings and lm_head are 96x48 = 4608 each; the final norm 48.
Per layer: 2*2304 + 2*1152 + 3*3840 + 2*48 = 18528. Untied total: 3*18528 + 2*4608 + 48 = 64848.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import spectrum
from spectrum.cache.scores_file import write_scores
from spectrum.scores import ModuleScore, Scores

TYPES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LAYER = 18528
UNTIED_TOTAL = 64848


def tiny_llama(tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


def trainable(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def layer2_best() -> Scores:
    """Scores where layer 2 is the best of every type, then layer 0, then layer 1."""
    entries = {}
    for type_name in TYPES:
        for layer, value in ((0, 0.5), (1, 0.25), (2, 0.75)):
            entries[f"model.layers.{layer}.{type_name}"] = ModuleScore(value, type_name)
    return Scores("org/tiny", entries, meta={"embeddings": {"input": "model.embed_tokens.weight",
                                                            "output": "lm_head.weight"}})


class TestPatterns:
    def test_list_counts_and_unmatched_warning(self):
        model = tiny_llama()
        with pytest.warns(UserWarning, match=r"1 of 3 entries matched no parameter of LlamaForCausalLM \(nothing\.here\)"):
            result = spectrum.freeze(model, ["model.layers.1.mlp", "lm_head.weight$", "nothing.here"])
        assert trainable(model) == {
            "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
            "model.layers.1.mlp.down_proj.weight", "lm_head.weight",
        }
        assert result.names == ("model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
                                "model.layers.1.mlp.down_proj.weight", "lm_head.weight")
        assert (result.tensors, result.total_tensors) == (4, 30)
        assert (result.parameters, result.total_parameters) == (3 * 3840 + 4608, UNTIED_TOTAL)
        assert result.unmatched == ("nothing.here",)
        assert str(result) == "4 of 30 parameter tensors trainable, 16,128 of 64,848 parameters (24.9%)"

    def test_freezing_again_replaces_the_previous_choice(self):
        model = tiny_llama()
        spectrum.freeze(model, ["model.layers.0"])
        result = spectrum.freeze(model, ["^model.norm.weight$"])
        assert trainable(model) == {"model.norm.weight"} and result.parameters == 48

    def test_axolotl_dot_rule(self):
        # "a.b" means a literal dot: it does not match "axb"; ".+" stays a regular expression.
        model = nn.ModuleDict({"axb": nn.Linear(2, 3), "a": nn.ModuleDict({"b": nn.Linear(4, 5, bias=False)})})
        assert spectrum.freeze(model, ["a.b"]).names == ("a.b.weight",)
        assert spectrum.freeze(model, ["a.+weight"]).names == ("axb.weight", "a.b.weight")
        with pytest.warns(UserWarning):
            assert spectrum.freeze(model, ["b.weight"]).names == ()  # re.match anchors at the start
        assert trainable(model) == set()

    def test_yaml_text_file_and_dict(self, tmp_path):
        text = "# spectrum\nunfrozen_parameters:\n- ^lm_head.weight$\n# mlp.up_proj layers\n- model.layers.2.mlp.up_proj\n"
        path = tmp_path / "unfrozen.yaml"
        path.write_text(text)
        expected = ("model.layers.2.mlp.up_proj.weight", "lm_head.weight")
        for selection in (text, path, str(path), {"unfrozen_parameters": ["^lm_head.weight$", "model.layers.2.mlp.up_proj"]}):
            model = tiny_llama()
            result = spectrum.freeze(model, selection)
            assert result.names == expected and result.parameters == 3840 + 4608

    def test_bad_selections(self, tmp_path):
        model = tiny_llama()
        with pytest.raises(ValueError, match="top_percent"):
            spectrum.freeze(model, layer2_best())
        with pytest.raises(ValueError, match="top_percent applies to scores only"):
            spectrum.freeze(model, ["lm_head"], top_percent=25)
        for ranged in ("model.embed_tokens.weight[:32000]", "^model.embed_tokens.weight$[5]", "lm_head.weight[]"):
            with pytest.raises(ValueError, match="row ranges"):
                spectrum.freeze(model, [ranged])
        assert spectrum.freeze(model, ["model.layers.0.mlp.w\\[1\\]"]).unmatched  # an escaped name: a regex, no range
        with pytest.raises(ValueError, match="unfrozen_parameters"):
            spectrum.freeze(model, "just: a mapping\n")


class TestScores:
    def test_top_third_with_embeddings(self):
        model = tiny_llama()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every entry must match
            result = spectrum.freeze(model, layer2_best(), top_percent=34)  # floor(3 * 0.34) = 1 per type
        layer2 = {f"model.layers.2.{t}.weight" for t in TYPES}
        assert trainable(model) == layer2 | {"model.embed_tokens.weight", "lm_head.weight"}
        assert result.tensors == 9
        assert result.parameters == (2 * 2304 + 2 * 1152 + 3 * 3840) + 2 * 4608  # 27648

    def test_without_embeddings_and_two_thirds(self):
        model = tiny_llama()
        result = spectrum.freeze(model, layer2_best(), top_percent=67, embeddings=False)  # 2 per type
        assert trainable(model) == {f"model.layers.{layer}.{t}.weight" for layer in (0, 2) for t in TYPES}
        assert result.parameters == 2 * (LAYER - 2 * 48)

    def test_tied_model_has_no_separate_head(self):
        model = tiny_llama(tie=True)
        result = spectrum.freeze(model, layer2_best(), top_percent=34)
        assert result.total_parameters == UNTIED_TOTAL - 4608 and result.total_tensors == 29
        assert "model.embed_tokens.weight" in result.names and result.tensors == 8
        assert result.unmatched == ()

    def test_from_a_scores_file_and_the_cache(self, tmp_path, monkeypatch):
        scores_file = tmp_path / "snr_results_org-tiny.json"
        write_scores(str(scores_file), layer2_best())
        assert json.loads(scores_file.read_text())["model.layers.2.mlp.up_proj"] == {"snr": 0.75, "type": "mlp.up_proj"}
        expected = tiny_llama()
        spectrum.freeze(expected, layer2_best(), top_percent=34)
        model = tiny_llama()
        spectrum.freeze(model, str(scores_file), top_percent=34)
        assert trainable(model) == trainable(expected)
        monkeypatch.chdir(tmp_path)
        (tmp_path / "model_snr_results").mkdir()
        scores_file.rename(tmp_path / "model_snr_results" / scores_file.name)
        model = tiny_llama()
        spectrum.freeze(model, "org/tiny", top_percent=34)  # resolved with the cache's slug rule
        assert trainable(model) == trainable(expected)
        assert spectrum.load_scores("org/tiny").entries == layer2_best().entries


def test_scores_of_a_mixtral_checkpoint_freeze_the_fused_experts_transformers_builds(tmp_path):
    """The checkpoint stores one matrix per expert; transformers 5 fuses them into 3-D parameters. freeze()
    restates the scores under the model's names and unfreezes whole fused tensors, ranked by their mean."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                           num_local_experts=4, num_experts_per_tok=2)
    MixtralForCausalLM(config).save_pretrained(tmp_path / "mixtral")
    scores = spectrum.scan(str(tmp_path / "mixtral"), device="cpu", threads=1)
    assert "model.layers.0.block_sparse_moe.experts.3.w1" in scores.entries  # per expert, as stored

    model = MixtralForCausalLM(config)
    unfrozen = spectrum.freeze(model, scores, top_percent=50)
    names = trainable(model)
    # 1 of 2 layers per type: q, k, v, o, the router, the fused gate_up and down; plus both embeddings.
    assert len(names) == 9 and unfrozen.unmatched == (), sorted(names)
    fused = {name for name in names if name.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    assert len(fused) == 2 and all(model.get_parameter(name).dim() == 3 for name in fused)
    means = {layer: sum(scores.entries[f"model.layers.{layer}.block_sparse_moe.experts.{e}.{w}"].snr
                        for e in range(4) for w in ("w1", "w3")) / 8 for layer in (0, 1)}
    best = max(means, key=means.get)
    assert f"model.layers.{best}.mlp.experts.gate_up_proj" in names
