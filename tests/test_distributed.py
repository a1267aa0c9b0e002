"""Sharing a scan across ranks, and a real two-process torchrun on CPU (gloo)."""

import os
import subprocess
import sys

from conftest import REPO_ROOT, load_json
from spectrum.distributed import World, _balanced, share


def test_balanced_assignment_is_greedy_largest_first():
    # 5 -> rank 0 (5), 4 -> rank 1 (4), 3 -> rank 1 (7), 2 -> rank 0 (7), 1 -> rank 0 (tie: lowest rank; 8)
    assert _balanced([5, 1, 4, 2, 3], 2) == [0, 0, 1, 0, 1]


def test_share_by_shards_and_by_matrices():
    matrices = [("a", 10), ("a", 10), ("b", 5), ("c", 4)]
    shard_of, size_of = (lambda m: m[0]), (lambda m: m[1])
    parts = [share(World(rank, 2), matrices, shard_of, size_of) for rank in range(2)]
    assert parts == [[("a", 10), ("a", 10)], [("b", 5), ("c", 4)]]  # three shards for two ranks: whole shards
    single = [("s", 8), ("s", 6), ("s", 4), ("s", 3)]
    parts = [share(World(rank, 3), single, shard_of, size_of) for rank in range(3)]
    assert parts == [[("s", 8)], [("s", 6)], [("s", 4), ("s", 3)]]  # one shard, three ranks: by matrices
    assert share(World(), matrices, shard_of, size_of) == matrices


def test_torchrun_two_processes_match_one(tiny_llama_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), NO_COLOR="1")
    args = ["-m", "spectrum", "--model", str(tiny_llama_dir), "--name", "t", "--threads", "1", "--quiet"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    single = subprocess.run([sys.executable, *args], cwd=tmp_path / "one", env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    double = subprocess.run([*launcher, *args], cwd=tmp_path / "two", env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr
    one = (tmp_path / "one" / "model_snr_results" / "snr_results_t.json").read_bytes()
    two = (tmp_path / "two" / "model_snr_results" / "snr_results_t.json").read_bytes()
    assert one == two
    meta = load_json(tmp_path / "two" / "model_snr_results" / "snr_results_t.meta.json")
    assert meta["world_size"] == 2 and len(meta["matrices_per_rank"]) == 2
    assert sum(meta["matrices_per_rank"]) == 21 and min(meta["matrices_per_rank"]) > 0
    assert sorted(os.listdir(tmp_path / "two")) == ["model_snr_results", "snr_results_t_unfrozenparameters_50percent.yaml"]
