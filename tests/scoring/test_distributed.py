"""Sharing a scan across ranks, and a real two-process torchrun on CPU (gloo)."""

import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, cli_env, load_json
from spectrum.scoring.distributed import World, _balanced, share


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


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun_env(**variables: str) -> dict[str, str]:
    """This environment with torchrun's variables for rank 0 of 2 on loopback (and none of torchrun's own)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("TORCHELASTIC_RUN_ID", "SPECTRUM_DISTRIBUTED", "SPECTRUM_DISTRIBUTED_TIMEOUT")}
    env.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env.update(variables)
    return env


def test_inherited_torchrun_variables_are_ignored_with_one_warning(tiny_llama_dir, tmp_path):
    """WORLD_SIZE=2 RANK=0 MASTER_* from a training job that runs spectrum, without torchrun: one process,
    one warning, exit 0 (it used to wait for a rank 1 that never comes)."""
    result = subprocess.run([sys.executable, "-m", "spectrum", "--model", str(tiny_llama_dir), "--name", "t",
                             "--no-check", "--quiet"], cwd=tmp_path, env=cli_env(_torchrun_env()),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "WORLD_SIZE=2 is set, but this process was not started by torchrun" in lines[0]
    assert "SPECTRUM_DISTRIBUTED=1" in lines[0]
    meta = load_json(tmp_path / "model_snr_results" / "snr_results_t.meta.json")
    assert meta["world_size"] == 1 and len(load_json(tmp_path / "model_snr_results" / "snr_results_t.json")) == 21


def test_joining_peers_that_never_come_times_out_with_one_line(tiny_llama_dir, tmp_path):
    """Opted in (SPECTRUM_DISTRIBUTED=1) but rank 1 never starts: one line after the join timeout, exit 1."""
    env = _torchrun_env(SPECTRUM_DISTRIBUTED="1", SPECTRUM_DISTRIBUTED_TIMEOUT="3")
    result = subprocess.run([sys.executable, "-m", "spectrum", "--model", str(tiny_llama_dir), "--no-check", "--quiet"],
                            cwd=tmp_path, env=cli_env(env), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("spectrum:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spectrum: error: rank 0 of 2 could not join the other processes at 127.0.0.1:")
    assert "within 3 s" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "model_snr_results" / "snr_results_t.json").exists()


@pytest.mark.parametrize("variables, message", [
    ({"WORLD_SIZE": "abc"}, "spectrum: error: WORLD_SIZE='abc' is not a whole number; start the processes with torchrun"),
    ({"RANK": ""}, "spectrum: error: RANK is not set, but WORLD_SIZE is 2; start the processes with torchrun"),
    ({"RANK": "2"}, "spectrum: error: RANK=2 is not below WORLD_SIZE=2"),
    ({"SPECTRUM_DISTRIBUTED_TIMEOUT": "soon"}, "spectrum: error: SPECTRUM_DISTRIBUTED_TIMEOUT='soon' is not a number"),
])
def test_broken_torchrun_variables_under_torchrun_are_one_line(tiny_llama_dir, tmp_path, variables, message):
    """Under torchrun (TORCHELASTIC_RUN_ID set), unusable variables are a usage error naming the variable."""
    env = _torchrun_env(TORCHELASTIC_RUN_ID="test", **variables)
    result = subprocess.run([sys.executable, "-m", "spectrum", "--model", str(tiny_llama_dir), "--no-check", "--quiet"],
                            cwd=tmp_path, env=cli_env(env), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


def test_world_from_env_needs_torchrun_or_an_opt_in(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "SPECTRUM_DISTRIBUTED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert World.from_env() == World()
    monkeypatch.setenv("SPECTRUM_DISTRIBUTED", "1")
    assert World.from_env() == World(3, 4, 1)
    monkeypatch.delenv("SPECTRUM_DISTRIBUTED")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert World.from_env() == World(3, 4, 1)
