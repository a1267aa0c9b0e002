"""Hub ids resolved offline from a real Hugging Face cache folder, through the real command line.

huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported, so every Hub run is a
subprocess with `offline_env(cache_root)`; nothing here can reach the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import COMMIT, build_hf_cache, load_json, offline_env, run_cli

MINILM_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_llama_dir, minilm_dir) -> Path:
    """An HF cache holding org/tiny-llama (sharded, with an index) and org/minilm (one model.safetensors)."""
    root = tmp_path_factory.mktemp("hf-cache")
    build_hf_cache(root, "org/tiny-llama", tiny_llama_dir)
    single = tmp_path_factory.mktemp("minilm-files")
    for name in ("model.safetensors", "config.json"):
        shutil.copy(minilm_dir / name, single / name)
    build_hf_cache(root, "org/minilm", single, commit=MINILM_COMMIT)
    return root


def ordered(path: Path) -> list:
    """A JSON file's content with its key order (nested objects as lists of pairs)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle, object_pairs_hook=list)


def files_under(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_one_line_error(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spectrum: error: ")
    assert result.stdout == ""
    return lines[0]


def scan_both(tmp_path: Path, cache: Path, repo_id: str, local: Path) -> tuple[Path, Path]:
    """Scan the Hub id and the local folder with the same flags, in the same working folder."""
    env = offline_env(cache)
    hub = run_cli("--model", repo_id, "--quiet", cwd=tmp_path, env=env)
    assert hub.returncode == 0, hub.stderr
    assert hub.stderr == "" and hub.stdout == ""
    folder = run_cli("--model", str(local), "--quiet", cwd=tmp_path, env=env)
    assert folder.returncode == 0, folder.stderr
    results = tmp_path / "model_snr_results"
    hub_file = results / f"snr_results_{repo_id.replace('/', '-')}.json"
    local_file = results / f"snr_results_{str(local).replace('/', '-').replace('_', '-')}.json"
    assert hub_file.is_file() and local_file.is_file()
    assert (tmp_path / f"{hub_file.stem}_unfrozenparameters_50percent.yaml").is_file()
    return hub_file, local_file


def test_sharded_hub_repo_scans_like_the_local_folder(tmp_path, hub_cache, tiny_llama_dir):
    cache_before = files_under(hub_cache)
    hub_file, local_file = scan_both(tmp_path, hub_cache, "org/tiny-llama", tiny_llama_dir)

    assert ordered(hub_file) == ordered(local_file)  # same modules, same scores, same order
    scores = load_json(hub_file)
    assert len(scores) == 21 and all(set(entry) == {"snr", "type"} for entry in scores.values())

    index = load_json(tiny_llama_dir / "model.safetensors.index.json")
    shard_names = sorted(set(index["weight_map"].values()))
    meta = load_json(hub_file.with_name(hub_file.stem + ".meta.json"))
    assert meta["model"] == "org/tiny-llama"
    assert meta["source"]["kind"] == "hub"
    assert meta["source"]["location"] == "org/tiny-llama"
    assert meta["source"]["revision"] == COMMIT
    assert meta["source"]["shards"] == [
        {"name": name, "size": (tiny_llama_dir / name).stat().st_size} for name in shard_names
    ]
    local_meta = load_json(local_file.with_name(local_file.stem + ".meta.json"))
    assert local_meta["source"]["kind"] == "local" and local_meta["source"]["revision"] is None
    assert [shard["name"] for shard in local_meta["source"]["shards"]] == shard_names
    assert meta["checkpoint_types"] == local_meta["checkpoint_types"]
    assert meta["bytes_read"] == local_meta["bytes_read"]

    assert files_under(hub_cache) == cache_before  # read only, never written to


def test_single_file_hub_repo_scans_like_the_local_folder(tmp_path, hub_cache, minilm_dir):
    hub_file, local_file = scan_both(tmp_path, hub_cache, "org/minilm", minilm_dir)

    assert ordered(hub_file) == ordered(local_file)
    assert len(load_json(hub_file)) == 36

    meta = load_json(hub_file.with_name(hub_file.stem + ".meta.json"))
    assert meta["source"]["kind"] == "hub"
    assert meta["source"]["location"] == "org/minilm"
    assert meta["source"]["revision"] == MINILM_COMMIT
    assert meta["source"]["shards"] == [
        {"name": "model.safetensors", "size": (minilm_dir / "model.safetensors").stat().st_size}
    ]


def test_hub_id_not_in_the_cache_while_offline(tmp_path, hub_cache):
    result = run_cli("--model", "org/not-downloaded", "--top-percent", "25", cwd=tmp_path, env=offline_env(hub_cache))
    line = assert_one_line_error(result, 1)
    assert "org/not-downloaded" in line
    assert "offline" in line and "cache" in line
    assert list(tmp_path.iterdir()) == []  # no scores file, no sidecar, no YAML


def test_a_shard_not_cached_while_offline(tmp_path, tiny_llama_dir):
    cache = build_hf_cache(tmp_path / "hf", "org/tiny", tiny_llama_dir)
    snapshot = cache / "models--org--tiny" / "snapshots" / COMMIT
    missing = sorted(path.name for path in snapshot.glob("*.safetensors"))[1]
    (snapshot / missing).unlink()
    work = tmp_path / "work"
    work.mkdir()
    line = assert_one_line_error(run_cli("--model", "org/tiny", "--quiet", cwd=work, env=offline_env(cache)), 1)
    assert line == f"spectrum: error: org/tiny: shard {missing} named by its index could not be fetched (offline and not cached)"
    assert list(work.iterdir()) == []


def test_revision_with_a_local_path(tmp_path, hub_cache, tiny_llama_dir):
    result = run_cli(
        "--model", str(tiny_llama_dir), "--revision", COMMIT, "--quiet", cwd=tmp_path, env=offline_env(hub_cache)
    )
    line = assert_one_line_error(result, 2)
    assert "--revision" in line and str(tiny_llama_dir) in line
    assert list(tmp_path.iterdir()) == []
