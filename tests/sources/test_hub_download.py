"""The Hub path online, against a real HTTP server on localhost speaking the Hub's resolve protocol."""

import shutil

import pytest

from helpers import COMMIT, load_json, run_cli
from fake_hub import FakeHub, online_env


@pytest.fixture()
def hub(tmp_path, tiny_llama_dir):
    root = tmp_path / "hub"
    shutil.copytree(tiny_llama_dir, root / "org" / "tiny")
    (root / "org" / "gated").mkdir(parents=True)
    (root / "org" / "gated" / ".gated").write_text("")
    with FakeHub(root, COMMIT) as server:
        yield server


SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]


def shard_blobs(cache):
    snapshot = cache / "models--org--tiny" / "snapshots" / COMMIT
    return sorted(path.name for path in snapshot.iterdir() if path.name.endswith(".safetensors"))


def test_download_scan_and_keep(hub, tmp_path, tiny_llama_dir):
    cache = tmp_path / "cache"
    local = run_cli("--model", str(tiny_llama_dir), "--name", "org/tiny", "--cache-dir", "local", "--quiet", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    result = run_cli("--model", "org/tiny", "--quiet", cwd=tmp_path, env=online_env(cache, hub.endpoint))
    assert result.returncode == 0, result.stderr
    assert load_json(tmp_path / "model_snr_results" / "snr_results_org-tiny.json") == load_json(
        tmp_path / "local" / "snr_results_org-tiny.json"
    )
    # Every shard is fetched whole exactly once, in order, and only after all headers were read remotely;
    # config.json comes once the headers are read: the model for the name check is built from it while
    # the shards are scanned.
    assert hub.full_downloads() == ["model.safetensors.index.json", "config.json", *SHARDS]
    first_download = next(i for i, (method, path, wanted) in enumerate(hub.log) if path == SHARDS[0] and not wanted)
    header_reads = [i for i, (method, path, wanted) in enumerate(hub.log) if wanted == "bytes=0-100000"]
    assert len(header_reads) == 4 and max(header_reads) < first_download
    assert shard_blobs(cache) == SHARDS
    meta = load_json(tmp_path / "model_snr_results" / "snr_results_org-tiny.meta.json")
    assert meta["source"]["kind"] == "hub" and meta["source"]["revision"] == COMMIT
    assert [shard["name"] for shard in meta["source"]["shards"]] == SHARDS
    assert all(shard["size"] > 0 for shard in meta["source"]["shards"])

    # A rescan with --no-keep-shards never deletes shards that were cached before it started.
    hub.log.clear()
    again = run_cli("--model", "org/tiny", "--rescan", "--no-keep-shards", "--quiet", cwd=tmp_path,
                    env=online_env(cache, hub.endpoint))
    assert again.returncode == 0, again.stderr
    assert not [path for path in hub.full_downloads() if path.endswith(".safetensors")]
    assert shard_blobs(cache) == SHARDS


def test_no_keep_shards_deletes_what_it_downloaded(hub, tmp_path):
    cache = tmp_path / "cache"
    result = run_cli("--model", "org/tiny", "--no-keep-shards", "--quiet", cwd=tmp_path, env=online_env(cache, hub.endpoint))
    assert result.returncode == 0, result.stderr
    assert len(load_json(tmp_path / "model_snr_results" / "snr_results_org-tiny.json")) == 21
    assert shard_blobs(cache) == []
    snapshot = cache / "models--org--tiny" / "snapshots" / COMMIT
    assert sorted(path.name for path in snapshot.iterdir()) == ["config.json", "model.safetensors.index.json"]
    assert len(list((cache / "models--org--tiny" / "blobs").iterdir())) == 2, "only the index and config are left"


def test_a_failed_scan_leaves_no_shard_of_its_own_with_no_keep_shards(hub, tmp_path):
    """The third shard is cut short on the Hub (its header, read remotely, is fine): the scan fails
    there, and the shards it downloaded are gone all the same, the one it failed on included."""
    shard = hub.root / "org" / "tiny" / SHARDS[2]
    shard.write_bytes(shard.read_bytes()[:-64])
    cache = tmp_path / "cache"
    result = run_cli("--model", "org/tiny", "--no-keep-shards", "--quiet", cwd=tmp_path, env=online_env(cache, hub.endpoint))
    assert result.returncode == 1 and "truncated" in result.stderr, result.stderr
    assert SHARDS[2] in hub.full_downloads()
    assert shard_blobs(cache) == []
    assert len(list((cache / "models--org--tiny" / "blobs").iterdir())) == 2, "only the index and config are left"


def test_no_keep_shards_keeps_contents_another_snapshot_shares(tmp_path, tiny_llama_dir):
    """`main` moved to a commit whose shards are unchanged: the cache links the blobs the user
    already has into the new snapshot instead of fetching them, so they are not the scan's to delete."""
    root = tmp_path / "hub"
    shutil.copytree(tiny_llama_dir, root / "org" / "tiny")
    cache = tmp_path / "cache"
    old, new = "a" * 40, "b" * 40
    with FakeHub(root, old) as server:
        kept = run_cli("--model", "org/tiny", "--quiet", "--cache-dir", "first", cwd=tmp_path, env=online_env(cache, server.endpoint))
        assert kept.returncode == 0, kept.stderr
    with FakeHub(root, new) as server:
        again = run_cli("--model", "org/tiny", "--quiet", "--no-keep-shards", "--cache-dir", "second", cwd=tmp_path,
                        env=online_env(cache, server.endpoint))
        assert again.returncode == 0, again.stderr
        assert not [path for path in server.full_downloads() if path.endswith(".safetensors")]
    old_snapshot = cache / "models--org--tiny" / "snapshots" / old
    assert all((old_snapshot / shard).is_file() for shard in SHARDS), "the earlier snapshot's shards still resolve"
    assert load_json(tmp_path / "second" / "snr_results_org-tiny.json") == load_json(tmp_path / "first" / "snr_results_org-tiny.json")


def test_a_shard_missing_or_broken_on_the_hub_is_one_line(tmp_path, tiny_llama_dir):
    """Headers of shards not yet cached are read remotely: a shard the index names but the repository
    lacks, and one whose header is not a safetensors header, fail like their local counterparts."""
    import struct

    root = tmp_path / "hub"
    for repo in ("missing", "corrupt"):
        shutil.copytree(tiny_llama_dir, root / "org" / repo)
    (root / "org" / "missing" / SHARDS[1]).unlink()
    broken = root / "org" / "corrupt" / SHARDS[1]
    broken.write_bytes(struct.pack("<Q", 10**6) + broken.read_bytes()[8:])  # a length beyond the file
    with FakeHub(root, COMMIT) as server:
        for repo, expected in (("missing", f"org/missing: shard {SHARDS[1]} named by its index could not be fetched "
                                           "(missing from the repository)"),
                               ("corrupt", f"org/corrupt/{SHARDS[1]}: its header, read remotely, is not a safetensors header")):
            result = run_cli("--model", f"org/{repo}", "--quiet", cwd=tmp_path, env=online_env(tmp_path / f"cache-{repo}", server.endpoint))
            assert result.returncode == 1
            assert result.stderr.startswith(f"spectrum: error: {expected}"), result.stderr
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "model_snr_results").exists()


def test_unknown_and_gated_repos(hub, tmp_path):
    env = online_env(tmp_path / "cache", hub.endpoint)
    unknown = run_cli("--model", "org/nothing", cwd=tmp_path, env=env)
    gated = run_cli("--model", "org/gated", cwd=tmp_path, env=env)
    for result, words in ((unknown, "no such model on the Hub"), (gated, "is gated")):
        assert result.returncode == 1
        assert result.stderr.startswith("spectrum: error:") and words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "model_snr_results").exists()
