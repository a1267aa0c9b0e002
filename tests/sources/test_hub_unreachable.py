"""A cached run for a Hub id on a machine that cannot reach the Hub answers from the caches in
seconds, with one warning, instead of waiting out huggingface_hub's retries (24 s for a refused
connection, minutes for a Hub that never answers)."""

from __future__ import annotations

import shutil
import socket
import time

import pytest

from helpers import build_hf_cache, offline_env, run_cli


@pytest.mark.parametrize("hub", ["refuses", "never answers"])
def test_a_cached_hub_run_without_network_answers_quickly_with_one_warning(hub, tiny_llama_dir, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    for item in tiny_llama_dir.iterdir():
        if item.name != "config.json":  # a Hub scan fetches the index and shards; the config only for the check
            shutil.copy(item, weights / item.name)
    hf_cache = build_hf_cache(tmp_path / "hf", "org/tiny", weights)
    scanned = run_cli("--model", "org/tiny", "--quiet", cwd=tmp_path, env=offline_env(hf_cache))
    assert scanned.returncode == 0, scanned.stderr

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if hub == "refuses":
        listener.close()  # nothing listens on the port
    else:
        listener.listen(16)  # the kernel completes connections; nothing ever reads or answers
    try:
        env = offline_env(hf_cache)
        del env["HF_HUB_OFFLINE"]
        env.update({"HF_ENDPOINT": f"http://127.0.0.1:{port}", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
        started = time.monotonic()
        cached = run_cli("--model", "org/tiny", "--quiet", cwd=tmp_path, env=env)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert cached.returncode == 0, cached.stderr
    assert elapsed < 15, elapsed
    assert cached.stderr.splitlines() == [line for line in cached.stderr.splitlines() if line.startswith("warning:")]
    (line,) = cached.stderr.splitlines()
    assert line.startswith("warning: the Hugging Face Hub cannot be reached (") and line.endswith(
        "); org/tiny's config.json is not in the local cache, so names are not checked "
        "(set HF_HUB_OFFLINE=1 to skip this attempt)"), line
    assert (tmp_path / "snr_results_org-tiny_unfrozenparameters_50percent.yaml").is_file()
