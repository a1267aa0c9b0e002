"""Module names and types: the reference's rule, applied exactly."""

import pytest

from spectrum.naming import (
    is_input_embedding,
    is_layer_module,
    is_output_head,
    layer_index,
    module_name,
    module_type,
    natural_key,
    slug,
)


@pytest.mark.parametrize(
    "module,expected",
    [
        ("model.layers.12.mlp.down_proj", "mlp.down_proj"),
        ("model.layers.0.self_attn.q_proj", "self_attn.q_proj"),
        ("model.layers.3.block_sparse_moe.experts.7.w1", "block_sparse_moe.experts.7.w1"),
        ("encoder.layer.0.attention.output.dense", "attention.output.dense"),
        ("encoder.layer.0.output.dense", "output.dense"),
        ("transformer.h.5.attn.c_attn", "attn.c_attn"),
        ("lm_head", "lm_head"),
        ("model.embed_tokens", "model.embed_tokens"),
        ("pooler.dense", "pooler.dense"),
    ],
)
def test_module_type(module, expected):
    assert module_type(module) == expected


def test_bert_output_types_are_not_merged():
    # The reference's substring match would file the first under "output.dense" too.
    assert module_type("encoder.layer.0.attention.output.dense") != module_type("encoder.layer.0.output.dense")


def test_module_name():
    assert module_name("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj"
    assert module_name("model.layers.0.mlp.up_proj.bias") is None
    assert module_name("embeddings.position_ids") is None


def test_layer_helpers():
    assert layer_index("model.layers.12.mlp.down_proj") == 12
    assert layer_index("lm_head") is None
    assert is_layer_module("model.layers.1.self_attn.o_proj")
    assert not is_layer_module("model.embed_tokens")
    assert sorted(["l.10.a", "l.2.a", "l.1.a"], key=natural_key) == ["l.1.a", "l.2.a", "l.10.a"]


def test_embedding_names():
    assert is_input_embedding("model.embed_tokens")
    assert is_input_embedding("embeddings.word_embeddings")
    assert is_input_embedding("transformer.wte")
    assert not is_input_embedding("embeddings.position_embeddings")
    assert is_output_head("lm_head")
    assert not is_output_head("model.layers.0.mlp.down_proj")


@pytest.mark.parametrize(
    "model,expected",
    [
        ("meta-llama/Meta-Llama-3-8B", "meta-llama-Meta-Llama-3-8B"),
        ("Qwen/Qwen2_5-0.5B", "Qwen-Qwen2-5-0.5B"),
        ("./models/my_model", ".-models-my-model"),
    ],
)
def test_slug_matches_axolotl(model, expected):
    assert slug(model) == expected
