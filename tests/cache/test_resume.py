"""Interrupted scans resume, and cached scores are reused only while they still describe the weights.

Real processes and real signals: a scan is killed with SIGKILL, or interrupted with SIGINT, in the
middle of its work; the rerun computes only what is missing and writes the very bytes an
uninterrupted scan writes.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import COMMIT, build_hf_cache, load_json, run_cli
from reliability import SLOW_MATRICES, listing, score_lines, start_cli, wait_for_scores
from reliability import reference_bytes, slow_model  # noqa: F401 (fixtures)
from spectrum.cache.scores_file import scores_path
from spectrum.cache.journal import PartialScan, partial_path
from spectrum.cache.lookup import load_scores
from spectrum.errors import CacheError
from spectrum.sources import open_source
from spectrum.scores import ModuleScore
from spectrum.scoring.snr import DEFAULT_THRESHOLD
from spectrum.cache.staleness import stale_reason as stale_reason_of
from spectrum.provenance import Provenance
from spectrum.workflow import load_or_scan


def stale_reason(meta: dict, model: str, revision: str | None = None) -> str | None:
    """`stale_reason` of a sidecar given as its JSON object."""
    return stale_reason_of(Provenance.from_json_dict(meta), model, revision)

SCAN = ("--name", "slow", "--threads", "1", "--device", "cpu", "--quiet")


def save_small(path: Path, layers: int = 3, seed: int = 0, rows: int = 16) -> Path:
    generator = torch.Generator().manual_seed(seed)
    save_file({f"model.layers.{i}.mlp.up_proj.weight": torch.randn(rows, 8, generator=generator) for i in range(layers)},
              str(path))
    return path


def new_journal(cache: Path) -> PartialScan:
    """The journal `load_or_scan` keeps for the model `scan_small` scans."""
    return PartialScan(partial_path(scores_path(str(cache), "small")), context={"threshold": DEFAULT_THRESHOLD})


def scan_small(model: Path, cache: Path, **options):
    return load_or_scan(str(model), cache_dir=str(cache), name="small", device="cpu", threads=1, **options)


def start_slow_scan(slow_model: Path, cwd: Path):
    """A CLI scan of the slow checkpoint, started and left running once 3 scores are saved:
    (its model_snr_results folder, its partial file, the process)."""
    results = cwd / "model_snr_results"
    partial = results / "snr_results_slow.partial.jsonl"
    process = start_cli("--model", str(slow_model), *SCAN, cwd=cwd)
    wait_for_scores(partial, 3, process)
    return results, partial, process


class TestInterrupted:
    def test_kill_9_mid_scan_then_the_rerun_resumes(self, slow_model, reference_bytes, tmp_path):
        results, partial, process = start_slow_scan(slow_model, tmp_path)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        assert process.returncode == -signal.SIGKILL
        saved = score_lines(partial)
        assert 3 <= saved < SLOW_MATRICES, "killed mid-scan"
        # No scores file: Axolotl's plugin finds nothing rather than a part. The dead process's lock stays.
        assert listing(results) == ["snr_results_slow.lock", "snr_results_slow.partial.jsonl"]

        rerun = run_cli("--model", str(slow_model), *SCAN, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        assert f"resuming an interrupted scan: {saved} matrices already scored" in rerun.stderr
        assert "waiting" not in rerun.stderr, "a dead process's lock does not hold anyone up"
        assert (results / "snr_results_slow.json").read_bytes() == reference_bytes
        assert load_json(results / "snr_results_slow.meta.json")["resumed"] == saved
        assert listing(results) == ["snr_results_slow.json", "snr_results_slow.meta.json"]

    def test_ctrl_c_exits_130_saying_what_is_saved(self, slow_model, reference_bytes, tmp_path):
        results, partial, process = start_slow_scan(slow_model, tmp_path)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate()
        assert process.returncode == 130, stderr
        saved = score_lines(partial)
        assert stderr.splitlines() == [
            f"spectrum: interrupted; the scores of {saved} of {SLOW_MATRICES} matrices are saved in "
            "model_snr_results/snr_results_slow.partial.jsonl; run the same command again to resume"
        ]
        assert listing(results) == ["snr_results_slow.partial.jsonl"], "lock released, no scores file"

        outcome = load_or_scan(str(slow_model), cache_dir=str(results), name="slow", threads=1, device="cpu")
        assert outcome.scanned and outcome.scores.meta["resumed"] == saved
        assert (results / "snr_results_slow.json").read_bytes() == reference_bytes
        assert listing(results) == ["snr_results_slow.json", "snr_results_slow.meta.json"]


class TestPartialFile:
    def test_a_line_cut_short_by_a_crash_is_dropped(self, tmp_path):
        model = save_small(tmp_path / "model.safetensors", layers=4)
        reference = scan_small(model, tmp_path / "reference")
        cache = tmp_path / "cache"
        cache.mkdir()
        journal = new_journal(cache)
        journal.begin(open_source(str(model)).describe(), "gram")
        for module, score in list(reference.scores.entries.items())[:2]:
            journal.record(module, score)
        journal.close()
        with open(journal.path, "ab") as handle:
            handle.write(b'["model.layers.3.mlp.up_proj", 0.12')  # a crash in the middle of a line

        outcome = scan_small(model, cache)
        assert outcome.scores.meta["resumed"] == 2
        assert Path(outcome.cache_file).read_bytes() == Path(reference.cache_file).read_bytes()
        assert listing(cache) == ["snr_results_small.json", "snr_results_small.meta.json"]

    def test_a_header_cut_before_its_newline_keeps_what_comes_after(self, tmp_path):
        """A crash between the header's JSON and its newline: the next scan resumes it (no score yet),
        and the scores it records are read back by the one after."""
        model = save_small(tmp_path / "model.safetensors", layers=4)
        description = open_source(str(model)).describe()
        cache = tmp_path / "cache"
        cache.mkdir()
        journal = new_journal(cache)
        journal.begin(description, "gram")
        journal.close()
        header = Path(journal.path).read_bytes()
        Path(journal.path).write_bytes(header.rstrip(b"\n"))
        again = new_journal(cache)
        assert again.begin(description, "gram") == {}
        again.record("model.layers.0.mlp.up_proj", ModuleScore(0.5, "mlp.up_proj"))
        again.close()
        assert Path(journal.path).read_bytes().startswith(header)
        assert new_journal(cache).begin(description, "gram") == {"model.layers.0.mlp.up_proj": ModuleScore(0.5, "mlp.up_proj")}

    def test_a_partial_of_other_weights_is_reported_and_not_resumed(self, tmp_path, caplog):
        model = save_small(tmp_path / "model.safetensors", layers=3)
        cache = tmp_path / "cache"
        cache.mkdir()
        journal = new_journal(cache)
        journal.begin(open_source(str(model)).describe(), "gram")
        for layer in range(3):
            journal.record(f"model.layers.{layer}.mlp.up_proj", ModuleScore(123.0, "mlp.up_proj"))
        journal.close()
        save_small(model, layers=3, rows=24)  # the checkpoint changed since (another size)

        with caplog.at_level(logging.WARNING, logger="spectrum"):
            outcome = scan_small(model, cache)
        assert "was made from other weights or settings (different shards); starting over" in caplog.text
        assert "resumed" not in outcome.scores.meta
        assert all(score.snr != 123.0 for score in outcome.scores.entries.values())

    @pytest.mark.parametrize("header", [b'{"spectrum_partial": 1, "fingerprint": {"version": "0.0.1"}}\n',
                                        b"\x00\xff garbage\n", b""])
    def test_a_partial_from_another_version_or_garbage_is_started_over(self, tmp_path, header):
        model = save_small(tmp_path / "model.safetensors")
        reference = scan_small(model, tmp_path / "reference")
        cache = tmp_path / "cache"
        cache.mkdir()
        Path(partial_path(scores_path(str(cache), "small"))).write_bytes(header + b'["model.layers.0.mlp.up_proj", 9.5, "mlp.up_proj"]\n')
        outcome = scan_small(model, cache)
        assert Path(outcome.cache_file).read_bytes() == Path(reference.cache_file).read_bytes()
        assert listing(cache) == ["snr_results_small.json", "snr_results_small.meta.json"]

    def test_a_complete_partial_is_still_not_a_scores_file(self, tmp_path):
        """Axolotl reads only `snr_results_<slug>.json`; a partial holding every score is finished by
        writing that file (no weight is read), never used in its place."""
        model = save_small(tmp_path / "model.safetensors")
        reference = scan_small(model, tmp_path / "reference")
        cache = tmp_path / "cache"
        cache.mkdir()
        journal = new_journal(cache)
        journal.begin(open_source(str(model)).describe(), "gram")
        for module, score in reference.scores.entries.items():
            journal.record(module, score)
        journal.close()
        with pytest.raises(CacheError, match="no cached scores"):
            load_scores("small", cache_dir=str(cache))

        outcome = scan_small(model, cache)
        assert outcome.scanned and outcome.scores.meta["resumed"] == 3 and outcome.scores.meta["bytes_read"] == 0
        assert Path(outcome.cache_file).read_bytes() == Path(reference.cache_file).read_bytes()


class TestValidity:
    def two_shards(self, folder: Path) -> Path:
        folder.mkdir()
        save_small(folder / "model-00001-of-00002.safetensors", layers=2, seed=1)
        generator = torch.Generator().manual_seed(2)
        save_file({"model.layers.2.mlp.up_proj.weight": torch.randn(16, 8, generator=generator)},
                  str(folder / "model-00002-of-00002.safetensors"))
        return folder

    def test_a_shard_that_changed_size_is_reported_and_rescanned(self, tmp_path, caplog):
        model = self.two_shards(tmp_path / "model")
        first = scan_small(model, tmp_path / "cache")
        before = (model / "model-00002-of-00002.safetensors").stat().st_size
        generator = torch.Generator().manual_seed(3)
        save_file({f"model.layers.{i}.mlp.up_proj.weight": torch.randn(16, 8, generator=generator) for i in (2, 3)},
                  str(model / "model-00002-of-00002.safetensors"))
        after = (model / "model-00002-of-00002.safetensors").stat().st_size

        with caplog.at_level(logging.WARNING, logger="spectrum"):
            second = scan_small(model, tmp_path / "cache")
        assert caplog.messages == [
            f"{first.cache_file}: cached scores are out of date (model-00002-of-00002.safetensors was {before} bytes "
            f"when scanned and is {after} bytes now); scanning again"
        ]
        assert second.scanned and len(second.scores.entries) == 4
        caplog.clear()
        third = scan_small(model, tmp_path / "cache")
        assert not third.scanned and caplog.messages == []

    def test_added_or_removed_shards_are_reported(self, tmp_path, caplog):
        model = self.two_shards(tmp_path / "model")
        scan_small(model, tmp_path / "cache")
        (model / "model-00002-of-00002.safetensors").rename(model / "model-00003-of-00003.safetensors")
        with caplog.at_level(logging.WARNING, logger="spectrum"):
            assert scan_small(model, tmp_path / "cache").scanned
        assert ("the weight files changed: model-00002-of-00002.safetensors gone, "
                "model-00003-of-00003.safetensors new") in caplog.text

    def test_same_shards_rewritten_in_place_are_reused(self, tmp_path, caplog):
        model = self.two_shards(tmp_path / "model")
        scan_small(model, tmp_path / "cache")
        shutil.copy(model / "model-00001-of-00002.safetensors", tmp_path / "copy")
        shutil.copy(tmp_path / "copy", model / "model-00001-of-00002.safetensors")  # new mtime, same bytes
        with caplog.at_level(logging.WARNING, logger="spectrum"):
            assert not scan_small(model, tmp_path / "cache").scanned
        assert caplog.messages == []

    def test_weights_retrained_in_place_are_reported_and_rescanned(self, tmp_path, caplog):
        """Same tensor names and shapes, so the same size: the sampled digest tells the new weights apart."""
        model = self.two_shards(tmp_path / "model")
        first = scan_small(model, tmp_path / "cache")
        shard = model / "model-00002-of-00002.safetensors"
        before = shard.stat().st_size
        generator = torch.Generator().manual_seed(99)
        save_file({"model.layers.2.mlp.up_proj.weight": torch.randn(16, 8, generator=generator)}, str(shard))
        assert shard.stat().st_size == before
        with caplog.at_level(logging.WARNING, logger="spectrum"):
            second = scan_small(model, tmp_path / "cache")
        assert caplog.messages == [
            f"{first.cache_file}: cached scores are out of date (model-00002-of-00002.safetensors was rewritten "
            "since it was scanned (same size, other content)); scanning again"
        ]
        assert second.scanned
        changed = "model.layers.2.mlp.up_proj"
        assert second.scores.entries[changed].snr != first.scores.entries[changed].snr
        assert not scan_small(model, tmp_path / "cache").scanned

    def test_a_hub_entry_at_another_commit_is_reported_and_rescanned(self, tmp_path, monkeypatch, caplog,
                                                                     tiny_llama_dir):
        from huggingface_hub import constants

        hub = build_hf_cache(tmp_path / "hf", "org/tiny-llama", tiny_llama_dir)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        cache = tmp_path / "cache"
        first = load_or_scan("org/tiny-llama", cache_dir=str(cache), device="cpu", threads=1)
        assert first.scores.meta["source"]["revision"] == COMMIT

        newer = "89abcdef0123456789abcdef0123456789abcdef"
        repo = hub / "models--org--tiny-llama"
        shutil.copytree(repo / "snapshots" / COMMIT, repo / "snapshots" / newer)
        (repo / "refs" / "main").write_text(newer)
        with caplog.at_level(logging.WARNING, logger="spectrum"):
            second = load_or_scan("org/tiny-llama", cache_dir=str(cache), device="cpu", threads=1)
        assert caplog.messages == [
            f"{first.cache_file}: cached scores are out of date (they are for commit {COMMIT[:12]}, and main is now "
            f"commit {newer[:12]} in the Hugging Face cache); scanning again"
        ]
        assert second.scanned and second.scores.meta["source"]["revision"] == newer
        assert not load_or_scan("org/tiny-llama", cache_dir=str(cache), device="cpu", threads=1).scanned

    def test_scores_their_sidecar_does_not_describe_are_rescanned(self, tmp_path, caplog, tiny_llama_dir):
        cache = str(tmp_path / "cache")
        first = load_or_scan(str(tiny_llama_dir), cache_dir=cache, device="cpu", threads=1)
        with open(first.cache_file, encoding="utf-8") as handle:
            other = json.load(handle)
        other[next(iter(other))]["snr"] = 0.123  # other scores, as a cut-short rescan leaves them
        with open(first.cache_file, "w", encoding="utf-8") as handle:
            json.dump(other, handle, indent=4)
        with caplog.at_level(logging.WARNING, logger="spectrum"):
            second = load_or_scan(str(tiny_llama_dir), cache_dir=cache, device="cpu", threads=1)
        assert caplog.messages == [f"{first.cache_file}: cached scores are out of date (their sidecar describes other "
                                   "scores (a write was cut short)); scanning again"]
        assert second.scanned and second.scores.entries == first.scores.entries

    def test_a_revision_the_hf_cache_cannot_resolve_must_be_the_one_scanned(self, tmp_path, monkeypatch, caplog,
                                                                             tiny_llama_dir):
        """Scores of `main` do not answer `--revision v2.0` when the HF cache has no ref for it: they are
        reported and the scan runs (offline here, so it fails: nothing is claimed for v2.0). Scores
        made for v2.0 answer v2.0 again; a short hash of the scanned commit is that commit."""
        from huggingface_hub import constants

        from spectrum.errors import SourceError

        hub = build_hf_cache(tmp_path / "hf", "org/tiny-llama", tiny_llama_dir)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        cache = str(tmp_path / "cache")
        first = load_or_scan("org/tiny-llama", cache_dir=cache, device="cpu", threads=1)
        assert "requested_revision" not in first.scores.meta["source"]
        assert not load_or_scan("org/tiny-llama", revision=COMMIT[:7], cache_dir=cache, device="cpu", threads=1).scanned
        with caplog.at_level(logging.WARNING, logger="spectrum"), pytest.raises(SourceError):
            load_or_scan("org/tiny-llama", revision="v2.0", cache_dir=cache, device="cpu", threads=1)
        assert caplog.messages == [
            f"{first.cache_file}: cached scores are out of date (they are for main (commit {COMMIT[:12]}), and "
            "--revision v2.0 is not known to the Hugging Face cache); scanning again"
        ]

        (hub / "models--org--tiny-llama" / "refs" / "v2.0").write_text(COMMIT)  # now the cache knows v2.0
        tagged = load_or_scan("org/tiny-llama", revision="v2.0", cache_dir=cache, device="cpu", threads=1, rescan=True)
        assert tagged.scores.meta["source"]["requested_revision"] == "v2.0"
        (hub / "models--org--tiny-llama" / "refs" / "v2.0").unlink()  # and forgets it again
        assert not load_or_scan("org/tiny-llama", revision="v2.0", cache_dir=cache, device="cpu", threads=1).scanned
        meta = {"source": {"kind": "hub", "revision": COMMIT, "requested_revision": "v2.0"}}
        assert stale_reason(meta, "org/not-cached", "v2.0") is None
        assert "they are for v2.0" in stale_reason(meta, "org/not-cached", "v3.0")
        assert "they are for main" in stale_reason({"source": {"kind": "hub", "revision": COMMIT}}, "org/not-cached", "dev")

    def test_another_hub_repo_with_the_same_slug_is_not_answered(self):
        meta = {"source": {"kind": "hub", "location": "org/tiny-model", "revision": COMMIT}}
        assert stale_reason(meta, "org/tiny_model") == ("they are for org/tiny-model, another repository whose "
                                                        "name gives the same file name")
        assert stale_reason(meta, "Org/Tiny-Model") is None  # Hub ids ignore case
        local = {"source": {"kind": "local", "location": "/copies/tiny", "shards": []}}
        assert stale_reason(local, "org/tiny-model") is None  # a local copy scanned under --name org/tiny-model

    def test_a_sidecar_edited_into_odd_shapes_means_a_rescan(self, tiny_llama_dir):
        shards = sorted(path.name for path in tiny_llama_dir.glob("*.safetensors"))
        odd = {"source": {"kind": "local", "shards": [{"name": [shards[0]], "size": 1}, "x", None]
                          + [{"name": name} for name in shards[1:]]}}
        assert stale_reason(odd, str(tiny_llama_dir)) == f"the weight files changed: {shards[0]} new"

    def test_what_cannot_be_checked_is_trusted(self, tmp_path):
        meta = {"source": {"kind": "local", "shards": [{"name": "model.safetensors", "size": 1}]}}
        assert stale_reason({}, str(tmp_path)) is None  # made elsewhere: no provenance
        assert stale_reason(meta, str(tmp_path / "gone")) is None  # weights deleted since
        assert stale_reason({"source": {"kind": "hub", "revision": COMMIT}}, "org/not-cached") is None
        assert stale_reason({"source": {"kind": "hub", "revision": COMMIT}}, "org/x", COMMIT) is None
        assert "is now commit" in stale_reason({"source": {"kind": "hub", "revision": COMMIT}}, "org/x", "f" * 40)
