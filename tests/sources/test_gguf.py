"""GGUF files: the real SmolLM2-135M-Instruct Q4_1 GGUF against transformers' own GGUF loader and
meta-device model, and small GGUFs written with the gguf package's GGUFWriter for the other
families, every quantization type, and the failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from helpers import run_cli, smollm2_gguf
from spectrum.errors import SourceError, UnsupportedFormatError
from spectrum.scoring.checkpoint import scan
from spectrum.sources import open_source

gguf = pytest.importorskip("gguf")
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from spectrum.sources.gguf import ARCHITECTURES, GGUFSource, unpermute_rows

LAYERS = 30


def llama_cpp_permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`, copied: HF row order -> GGUF row order."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_gguf()


@pytest.fixture(scope="module")
def reader(smollm2):
    return gguf.GGUFReader(str(smollm2))


@pytest.fixture(scope="module")
def meta_model(reader):
    """LlamaForCausalLM on the meta device, its LlamaConfig built from the GGUF metadata."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def field(key):
        return reader.get_field(f"llama.{key}").contents()

    config = LlamaConfig(
        vocab_size=field("vocab_size"),
        hidden_size=field("embedding_length"),
        intermediate_size=field("feed_forward_length"),
        num_hidden_layers=field("block_count"),
        num_attention_heads=field("attention.head_count"),
        num_key_value_heads=field("attention.head_count_kv"),
        tie_word_embeddings="output.weight" not in {tensor.name for tensor in reader.tensors},
    )
    with torch.device("meta"):
        return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def reference(reader, meta_model) -> dict[str, torch.Tensor]:
    """The same weights in float32 without spectrum's code: each parameter of the meta model found in the
    GGUF by the gguf package's own name map, dequantized by gguf.quants, q/k rows restored by
    transformers' GGUF tensor processor."""
    from gguf.constants import MODEL_ARCH
    from gguf.tensor_mapping import get_tensor_name_map
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    config = meta_model.config
    name_map = get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    processor = LlamaTensorProcessor(config={"num_attention_heads": config.num_attention_heads,
                                             "num_key_value_heads": config.num_key_value_heads})
    stored = {tensor.name: tensor for tensor in reader.tensors}
    weights = {}
    for name, _ in meta_model.named_parameters():
        gguf_name = name_map.get_name(name.removesuffix(".weight")) + ".weight"
        tensor = stored[gguf_name]
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        array = processor.process(weights=array, name=gguf_name).weights
        weights[name] = torch.from_numpy(np.ascontiguousarray(array))
    return weights


@pytest.fixture(scope="module")
def smollm2_tensors(smollm2) -> tuple[GGUFSource, dict[str, torch.Tensor]]:
    source = open_source(str(smollm2))
    (shard,) = source.shard_order()
    return source, {info.name: tensor for info, tensor in source.read(shard, source.tensors())}


class TestRealSmolLM2:
    def test_names_and_shapes_are_the_transformers_models(self, smollm2_tensors, meta_model):
        source, _ = smollm2_tensors
        assert meta_model.config.num_hidden_layers == LAYERS and meta_model.config.tie_word_embeddings
        ours = {info.name: info.shape for info in source.tensors()}
        assert ours == {name: tuple(p.shape) for name, p in meta_model.named_parameters()}
        assert ours["model.layers.0.self_attn.q_proj.weight"] == (576, 576)
        assert ours["model.layers.29.self_attn.k_proj.weight"] == (192, 576)
        assert ours["model.layers.7.mlp.gate_proj.weight"] == (1536, 576)
        assert ours["model.layers.7.mlp.down_proj.weight"] == (576, 1536)
        assert ours["model.embed_tokens.weight"] == (49152, 576)
        assert "lm_head.weight" not in ours  # tied: the GGUF has no `output` tensor
        assert {info.dtype for info in source.tensors()} == {"F32"}
        assert source.describe().stored_types == {"F32": 61, "Q4_1": 210, "Q8_0": 1}

    def test_rows_are_unpermuted(self, reader, smollm2_tensors):
        _, ours = smollm2_tensors
        raw = {tensor.name: tensor for tensor in reader.tensors}
        for layer in (0, 17, LAYERS - 1):
            for gguf_name, hf_name, n_head in (("attn_q", "q_proj", 9), ("attn_k", "k_proj", 3)):
                stored = raw[f"blk.{layer}.{gguf_name}.weight"]
                as_stored = torch.from_numpy(gguf.quants.dequantize(stored.data, stored.tensor_type))
                mine = ours[f"model.layers.{layer}.self_attn.{hf_name}.weight"]
                assert not torch.equal(mine, as_stored)  # the permutation is real
                assert torch.equal(llama_cpp_permute(mine, n_head), as_stored)
                assert torch.equal(unpermute_rows(as_stored, n_head), mine)

    def test_every_tensor_equals_the_independent_reading(self, smollm2_tensors, reference):
        _, ours = smollm2_tensors
        assert sorted(ours) == sorted(reference)
        for name, tensor in ours.items():
            assert tensor.dtype == torch.float32 and torch.equal(tensor, reference[name]), name

    def test_scores_equal_those_of_float32_safetensors(self, smollm2, tmp_path, reference):
        """A folder holding the one GGUF, scanned, against the same weights dequantized and saved as F32."""
        gguf_folder, safetensors_folder = tmp_path / "gguf", tmp_path / "dequantized"
        gguf_folder.mkdir()
        safetensors_folder.mkdir()
        (gguf_folder / smollm2.name).symlink_to(smollm2)
        save_file(reference, str(safetensors_folder / "model.safetensors"))
        from_gguf = scan(str(gguf_folder), device="cpu")
        from_safetensors = scan(str(safetensors_folder), device="cpu")
        assert len(from_gguf.entries) == 7 * LAYERS
        assert list(from_gguf.entries) == list(from_safetensors.entries)
        for module, score in from_gguf.entries.items():
            # GGUF weights reach the Gram route as torch tensors, safetensors as NumPy arrays: the
            # same float32 values, the same arithmetic, up to OpenBLAS's last bits
            assert score.type == from_safetensors.entries[module].type, module
            assert score.snr == pytest.approx(from_safetensors.entries[module].snr, rel=1e-12), module
        assert from_gguf.meta["source"]["kind"] == "gguf"
        assert from_gguf.meta["source"]["stored_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
        assert from_gguf.meta["dtypes"] == from_safetensors.meta["dtypes"] == ["F32"]
        assert from_gguf.meta["embeddings"] == {"input": "model.embed_tokens.weight", "output": None}

    def test_check_builds_the_model_from_the_gguf_metadata(self, smollm2, tmp_path, meta_model):
        """No config.json beside a GGUF: `--check` reads the config from the GGUF itself (transformers' GGUF
        support) and every YAML entry matches a parameter of the model it builds."""
        from spectrum.selection.topk import yaml_entries
        from spectrum.selection.model_view import unmatched_entries

        result = run_cli("--model", str(smollm2), "--check", "--top-percent", "25", "--output", "-", "--quiet",
                         cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        entries = yaml_entries(result.stdout)
        assert entries[0] == "^model.embed_tokens.weight$" and len(entries) == 1 + 7 * (LAYERS * 25 // 100)
        parameters = [name for name, _ in meta_model.named_parameters()]
        assert unmatched_entries(entries, parameters) == []


# ---------------------------------------------------------------------------------------------
# GGUFs written with GGUFWriter


def write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray | tuple[np.ndarray, GGMLQuantizationType]],
               *, heads: int = 4, kv_heads: int = 2) -> Path:
    """A GGUF with `general.architecture` = arch, head counts, and the given tensors (torch dimension order)."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    for name, value in tensors.items():
        if isinstance(value, tuple):
            data, qtype = value
            writer.add_tensor(name, data, raw_dtype=qtype)
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_matrix(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def dense_layer(hidden: int = 32, heads: int = 4, kv_heads: int = 2, head_dim: int = 8, inter: int = 48) -> dict:
    """One decoder layer's llama.cpp tensors, HF orientation (out, in)."""
    return {
        "blk.0.attn_q.weight": random_matrix(heads * head_dim, hidden, 1),
        "blk.0.attn_k.weight": random_matrix(kv_heads * head_dim, hidden, 2),
        "blk.0.attn_v.weight": random_matrix(kv_heads * head_dim, hidden, 3),
        "blk.0.attn_output.weight": random_matrix(hidden, heads * head_dim, 4),
        "blk.0.ffn_gate.weight": random_matrix(inter, hidden, 5),
        "blk.0.ffn_up.weight": random_matrix(inter, hidden, 6),
        "blk.0.ffn_down.weight": random_matrix(hidden, inter, 7),
        "blk.0.attn_norm.weight": np.full(hidden, 0.5, dtype=np.float32),
    }


def read_all(path: Path) -> dict[str, torch.Tensor]:
    source = open_source(str(path))
    try:
        return {info.name: tensor for info, tensor in source.read(source.shard_order()[0], source.tensors())}
    finally:
        source.close()


def meta_parameters(config) -> dict[str, tuple[int, ...]]:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


class TestFamilies:
    def test_qwen3_names_and_rows_as_stored(self, tmp_path):
        from transformers import Qwen3Config

        layer = dense_layer()
        layer |= {"blk.0.attn_q_norm.weight": np.ones(8, np.float32),
                  "blk.0.attn_k_norm.weight": np.ones(8, np.float32),
                  "blk.0.ffn_norm.weight": np.ones(32, np.float32)}
        tensors = {"token_embd.weight": random_matrix(64, 32, 8), "output.weight": random_matrix(64, 32, 9),
                   "output_norm.weight": np.ones(32, np.float32), **layer}
        read = read_all(write_gguf(tmp_path / "qwen3.gguf", "qwen3", tensors))
        config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
        assert {name: tuple(t.shape) for name, t in read.items()} == meta_parameters(config)
        # Qwen's converter does not permute: every tensor comes back exactly as written.
        for gguf_name, hf_name in (("blk.0.attn_q", "model.layers.0.self_attn.q_proj"),
                                   ("blk.0.attn_k", "model.layers.0.self_attn.k_proj"), ("output", "lm_head")):
            assert torch.equal(read[hf_name + ".weight"], torch.from_numpy(tensors[gguf_name + ".weight"]))

    def test_llama_rows_are_unpermuted_with_each_head_count(self, tmp_path):
        layer = dense_layer()
        hf_q, hf_k = torch.from_numpy(layer["blk.0.attn_q.weight"]), torch.from_numpy(layer["blk.0.attn_k.weight"])
        layer["blk.0.attn_q.weight"] = llama_cpp_permute(hf_q, 4).numpy()  # as the converter writes them
        layer["blk.0.attn_k.weight"] = llama_cpp_permute(hf_k, 2).numpy()
        read = read_all(write_gguf(tmp_path / "llama.gguf", "llama", {"token_embd.weight": random_matrix(64, 32, 8),
                                                                      **layer}))
        assert torch.equal(read["model.layers.0.self_attn.q_proj.weight"], hf_q)
        assert torch.equal(read["model.layers.0.self_attn.k_proj.weight"], hf_k)
        v_proj = torch.from_numpy(layer["blk.0.attn_v.weight"])
        assert torch.equal(read["model.layers.0.self_attn.v_proj.weight"], v_proj)

    def test_gemma2_sandwich_norms_and_norm_offset(self, tmp_path):
        from transformers import Gemma2Config

        layer = dense_layer(hidden=32, heads=4, kv_heads=2, head_dim=8)
        for norm in ("ffn_norm", "post_attention_norm", "post_ffw_norm"):
            layer[f"blk.0.{norm}.weight"] = np.full(32, 1.5, dtype=np.float32)  # converter: w + 1
        tensors = {"token_embd.weight": random_matrix(64, 32, 8), "output_norm.weight": np.full(32, 1.25, np.float32),
                   **layer}
        read = read_all(write_gguf(tmp_path / "gemma2.gguf", "gemma2", tensors))
        config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        assert {name: tuple(t.shape) for name, t in read.items()} == meta_parameters(config)
        assert torch.equal(read["model.layers.0.pre_feedforward_layernorm.weight"], torch.full((32,), 0.5))
        assert torch.equal(read["model.norm.weight"], torch.full((32,), 0.25))
        down_proj = torch.from_numpy(layer["blk.0.ffn_down.weight"])
        assert torch.equal(read["model.layers.0.mlp.down_proj.weight"], down_proj)

    @pytest.mark.parametrize("arch", ["qwen2", "gemma", "gemma3", "mistral3"])
    def test_the_other_families_give_the_transformers_models_names_and_shapes(self, tmp_path, arch):
        """Each family's llama.cpp tensors, as its converter writes them, read back under the names and shapes
        of the model transformers builds from the matching config."""
        import transformers as T

        text = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8)
        layer = dense_layer()
        hf_q = torch.from_numpy(layer["blk.0.attn_q.weight"])
        tensors = {"token_embd.weight": random_matrix(64, 32, 8), "output_norm.weight": np.full(32, 1.25, np.float32)}
        if arch == "qwen2":  # q/k/v biases, tied embeddings
            config = T.Qwen2Config(**text, tie_word_embeddings=True)
            layer |= {f"blk.0.attn_{x}.bias": np.zeros(rows, np.float32) for x, rows in (("q", 32), ("k", 16), ("v", 16))}
            layer["blk.0.ffn_norm.weight"] = np.ones(32, np.float32)
        elif arch == "gemma":
            config = T.GemmaConfig(**text)
            layer["blk.0.ffn_norm.weight"] = np.full(32, 1.5, np.float32)
        elif arch == "gemma3":  # sandwich norms and q/k norms
            config = T.Gemma3TextConfig(**text)
            layer |= {f"blk.0.{norm}.weight": np.full(32, 1.5, np.float32)
                      for norm in ("ffn_norm", "post_attention_norm", "post_ffw_norm")}
            layer |= {"blk.0.attn_q_norm.weight": np.ones(8, np.float32), "blk.0.attn_k_norm.weight": np.ones(8, np.float32)}
        else:  # mistral3: llama-style q/k row permutation, untied head
            config = T.MistralConfig(**text, tie_word_embeddings=False)
            layer["blk.0.ffn_norm.weight"] = np.ones(32, np.float32)
            layer["blk.0.attn_q.weight"] = llama_cpp_permute(hf_q, 4).numpy()
            layer["blk.0.attn_k.weight"] = llama_cpp_permute(torch.from_numpy(layer["blk.0.attn_k.weight"]), 2).numpy()
            tensors["output.weight"] = random_matrix(64, 32, 9)
        read = read_all(write_gguf(tmp_path / f"{arch}.gguf", arch, {**tensors, **layer}))
        assert {name: tuple(t.shape) for name, t in read.items()} == meta_parameters(config)
        assert torch.equal(read["model.layers.0.self_attn.q_proj.weight"], hf_q)  # unpermuted where permuted
        if arch.startswith("gemma"):  # the converter stored norms as w + 1
            assert torch.equal(read["model.norm.weight"], torch.full((32,), 0.25))

    def test_every_family_in_the_table(self):
        assert {"llama", "mistral3", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"} <= set(ARCHITECTURES)
        assert [arch for arch, family in ARCHITECTURES.items() if family.permuted_qk] == ["llama", "mistral3"]


def dequantizable_types() -> list[GGMLQuantizationType]:
    from spectrum.sources.gguf import _PLAIN, _can_dequantize

    return [qtype for qtype in GGMLQuantizationType if qtype not in _PLAIN and _can_dequantize(qtype)]


def test_every_quantization_type_is_dequantized_like_the_gguf_package(tmp_path):
    """Random blocks of every type gguf.quants implements: read back equal to its own dequantize."""
    types = dequantizable_types()
    assert {"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", "IQ2_XXS", "BF16"} <= {qtype.name for qtype in types}
    rng = np.random.default_rng(0)
    tensors, expected = {}, {}
    for layer, qtype in enumerate(types):
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        rows, cols = 3, max(256, block_size)
        raw = rng.integers(0, 256, size=(rows, cols // block_size * type_size), dtype=np.uint8)
        if qtype == GGMLQuantizationType.BF16:
            raw = gguf.quants.quantize(random_matrix(rows, cols, layer), qtype)
        tensors[f"blk.{layer}.ffn_up.weight"] = (raw, qtype)
        expected[f"model.layers.{layer}.mlp.up_proj.weight"] = gguf.quants.dequantize(raw, qtype)
    read = read_all(write_gguf(tmp_path / "all-types.gguf", "qwen2", tensors))
    assert sorted(read) == sorted(expected)
    for name, array in expected.items():
        assert read[name].dtype == torch.float32 and read[name].shape == array.shape
        assert np.array_equal(read[name].numpy(), array, equal_nan=True), name


class TestFailures:
    def test_type_the_gguf_package_cannot_dequantize(self, tmp_path):
        raw = np.zeros((2, GGML_QUANT_SIZES[GGMLQuantizationType.Q8_K][1]), dtype=np.uint8)
        path = write_gguf(tmp_path / "q8k.gguf", "llama", {"blk.0.ffn_up.weight": (raw, GGMLQuantizationType.Q8_K)})
        with pytest.raises(UnsupportedFormatError, match=r"tensor blk\.0\.ffn_up\.weight is stored as Q8_K"):
            open_source(str(path))

    def test_type_id_unknown_to_the_gguf_package(self, tmp_path):
        path = write_gguf(tmp_path / "odd.gguf", "llama", {"blk.0.ffn_up.weight": random_matrix(4, 32, 0)})
        data = bytearray(path.read_bytes())
        name = b"blk.0.ffn_up.weight"
        at = data.index(name) + len(name) + 4 + 2 * 8  # after the name: n_dims (u32), two dims (u64), then the type
        data[at:at + 4] = (200).to_bytes(4, "little")
        path.write_bytes(bytes(data))
        with pytest.raises(UnsupportedFormatError, match="does not know"):
            open_source(str(path))

    def test_unsupported_architecture(self, tmp_path):
        path = write_gguf(tmp_path / "phi.gguf", "phi3", {"token_embd.weight": random_matrix(8, 4, 0)})
        with pytest.raises(UnsupportedFormatError, match=r"architecture 'phi3'.*supported: gemma, gemma2"):
            open_source(str(path))

    def test_tensors_without_a_mapping(self, tmp_path):
        experts = np.zeros((4, 8, 16), dtype=np.float32)
        path = write_gguf(tmp_path / "moe.gguf", "llama", {"blk.0.ffn_up_exps.weight": experts})
        with pytest.raises(UnsupportedFormatError, match=r"blk\.0\.ffn_up_exps\.weight.*mixture-of-experts"):
            open_source(str(path))

    def test_not_a_gguf_file(self, tmp_path):
        path = tmp_path / "fake.gguf"
        path.write_bytes(b"not a gguf at all, just bytes" * 4)
        from spectrum.errors import CorruptCheckpointError

        with pytest.raises(CorruptCheckpointError, match="not a readable GGUF"):
            open_source(str(path))

    def test_folder_with_several_ggufs(self, tmp_path):
        for name in ("a.gguf", "b.gguf"):
            write_gguf(tmp_path / name, "llama", {"token_embd.weight": random_matrix(8, 4, 0)})
        with pytest.raises(SourceError, match=r"holds 2 \.gguf files \(a\.gguf, b\.gguf\)"):
            open_source(str(tmp_path))

    def test_command_line_error_is_one_line(self, tmp_path):
        path = write_gguf(tmp_path / "phi.gguf", "phi3", {"token_embd.weight": random_matrix(8, 4, 0)})
        result = run_cli("--model", str(path), cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "phi3" in lines[0] and "Traceback" not in result.stderr
