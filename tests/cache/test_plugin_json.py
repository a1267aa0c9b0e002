"""The scores file Axolotl's Spectrum plugin reads trains what our YAML does, on dense, MoE and
vision-language checkpoints, and spectrum keeps its per-checkpoint-tensor scores beside it.

The plugin (Axolotl 0.21.0, `axolotl/integrations/spectrum`) is restated here, not imported: it groups
the keys of `model_snr_results/snr_results_<slug>.json` by `type`, sorts each group by `snr`
(descending, stable), keeps `int(len * spectrum_top_fraction)` of each, and uses the keys, after
`^lm_head.weight$` and `^model.embed_tokens.weight$`, as `unfrozen_parameters` entries.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from statistics import fmean

import pytest
import torch

import spectrum
from helpers import run_cli
from spectrum.cache.scores_file import scores_path, scores_to_json, tensors_path
from spectrum.selection.topk import yaml_entries
from spectrum.selection.model_view import unmatched_entries
from spectrum.workflow import checked_yaml
from helpers import small

PLUGIN_EMBEDDING_LINES = ["^lm_head.weight$", "^model.embed_tokens.weight$"]
FAMILIES = ("llama", "mixtral", "qwen2_moe", "gpt_oss", "qwen2_vl", "llava", "gemma3")
# Fractions where int(n * f) equals our exact floor(n * K / 100) for every count here (see the README).
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
LAYERS = 4


def plugin_entries(data: dict, fraction: float) -> list[str]:
    """Axolotl's Spectrum plugin's `unfrozen_parameters` from a scores file's JSON (restated)."""
    by_type: dict[str, list[tuple[str, float]]] = {}
    for key, info in data.items():
        by_type.setdefault(info["type"], []).append((key, info["snr"]))
    entries = list(PLUGIN_EMBEDDING_LINES)
    for members in by_type.values():
        ranked = sorted(members, key=lambda member: member[1], reverse=True)
        entries += [key for key, _ in ranked[: int(len(members) * fraction)]]
    return entries


def trainable(family: str, entries: list[str]) -> tuple[str, ...]:
    """What Axolotl's rule unfreezes of the model transformers builds (`spectrum.freeze`, on the meta device)."""
    with torch.device("meta"):
        model = small(family, layers=LAYERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spectrum.freeze(model, entries).names


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Each family saved with save_pretrained and scanned by the command line with the default name check."""
    work = tmp_path_factory.mktemp("plugin")
    folders = {}
    for family in FAMILIES:
        folder = work / family
        small(family, layers=LAYERS).save_pretrained(folder)
        result = run_cli("--model", str(folder), "--top-percent", "50", "--device", "cpu", "--quiet",
                         "--output", str(work / f"{family}.yaml"), cwd=work)
        assert result.returncode == 0, result.stderr
        folders[family] = folder
    return work, folders


@pytest.mark.parametrize("family", FAMILIES)
def test_the_plugin_trains_what_the_yaml_trains(scanned, family):
    work, folders = scanned
    cache_file = Path(scores_path(str(work / "model_snr_results"), str(folders[family])))
    data = json.loads(cache_file.read_text())
    scores = spectrum.load_scores(str(folders[family]), cache_dir=str(work / "model_snr_results"))
    for fraction in FRACTIONS:
        ours = yaml_entries(checked_yaml(scores, fraction * 100, model=str(folders[family]), embeddings=False))
        theirs = plugin_entries(data, fraction)[len(PLUGIN_EMBEDDING_LINES):]
        assert trainable(family, theirs) == trainable(family, ours), (family, fraction)
        assert trainable(family, ours)  # every family keeps some module at these fractions
    with torch.device("meta"):
        parameters = [name for name, _ in small(family, layers=LAYERS).named_parameters()]
    assert unmatched_entries(list(data), parameters) == []  # every key is a module of the model
    if family in ("qwen2_vl", "llava", "gemma3"):  # Axolotl's hard-coded embedding line matches nothing there
        assert "^model.embed_tokens.weight$" in unmatched_entries(PLUGIN_EMBEDDING_LINES, parameters)


def test_dense_scores_files_stay_as_they_were(scanned):
    """Where the trainer's names are the checkpoint's, the scores file is byte for byte the checkpoint's
    scores, with no second file and no `plugin_names` in the sidecar."""
    work, folders = scanned
    cache_file = scores_path(str(work / "model_snr_results"), str(folders["llama"]))
    scores = spectrum.load_scores(str(folders["llama"]), cache_dir=str(work / "model_snr_results"))
    assert Path(cache_file).read_text() == scores_to_json(scores.entries)
    assert not Path(tensors_path(cache_file)).exists() and "plugin_names" not in scores.meta


def test_moe_keys_are_the_fused_parameters_with_the_mean_of_their_experts(scanned):
    work, folders = scanned
    cache_file = scores_path(str(work / "model_snr_results"), str(folders["mixtral"]))
    data = json.loads(Path(cache_file).read_text())
    tensors = json.loads(Path(tensors_path(cache_file)).read_text())  # spectrum's own, per expert matrix
    experts = [tensors[f"model.layers.2.block_sparse_moe.experts.{e}.{w}"]["snr"] for e in range(4) for w in ("w1", "w3")]
    assert data["model.layers.2.mlp.experts.gate_up_proj"] == {"snr": fmean(experts), "type": "mlp.experts.gate_up_proj"}
    assert not [key for key in data if "block_sparse_moe.experts" in key]
    meta = json.loads(Path(cache_file[: -len(".json")] + ".meta.json").read_text())
    assert meta["plugin_names"] == "trainer"
    scores = spectrum.load_scores(str(folders["mixtral"]), cache_dir=str(work / "model_snr_results"))
    assert scores.entries["model.layers.2.block_sparse_moe.experts.3.w1"].type == "block_sparse_moe.experts.3.w1"
    vlm = json.loads(Path(scores_path(str(work / "model_snr_results"), str(folders["llava"]))).read_text())
    assert "model.language_model.layers.0.mlp.down_proj" in vlm and not [k for k in vlm if k.startswith("language_model.")]


def test_the_plugin_file_follows_the_view_across_runs(tmp_path):
    """--no-check writes the checkpoint's names; a later run with the check rewrites the plugin's file
    from the cache (reading no weights), keeping those scores in .tensors.json; --no-check leaves it;
    a sidecar whose .tensors.json is gone is scanned again; an older scores file without a sidecar is read."""
    folder = tmp_path / "mixtral"
    small("mixtral").save_pretrained(folder)
    cache_file = Path(scores_path(str(tmp_path / "model_snr_results"), str(folder)))
    tensors = Path(tensors_path(str(cache_file)))

    def cli(*args: str):
        result = run_cli("--model", str(folder), "--device", "cpu", "--output", "o.yaml", "--json", *args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout), result.stderr

    record, _ = cli("--no-check")
    checkpoint_text = cache_file.read_text()
    assert "block_sparse_moe.experts.0.w1" in checkpoint_text and not tensors.exists()
    record, _ = cli()
    assert not record["scanned"]
    assert tensors.read_text() == checkpoint_text and "mlp.experts.gate_up_proj" in cache_file.read_text()
    plugin_text = cache_file.read_text()
    record, _ = cli("--no-check")
    assert not record["scanned"] and cache_file.read_text() == plugin_text
    assert spectrum.load_scores(str(cache_file)).entries == spectrum.load_scores(str(tensors)).entries

    tensors.unlink()  # the sidecar says the scores are there: without them nothing is trusted
    record, stderr = cli()
    assert record["scanned"] and "scanning again" in stderr
    assert tensors.read_text() == checkpoint_text and cache_file.read_text() == plugin_text

    cache_file.write_text(checkpoint_text)  # a rewrite cut short (or another tool): the scores still stand
    record, _ = cli()
    assert not record["scanned"] and cache_file.read_text() == plugin_text

    for path in cache_file.parent.iterdir():  # a file made elsewhere, in the sorted layout, no sidecar
        path.unlink()
    by_type: dict[str, dict[str, float]] = {}
    for module, info in json.loads(checkpoint_text).items():
        by_type.setdefault(info["type"], {})[module] = info["snr"]
    cache_file.write_text(json.dumps(by_type))
    record, _ = cli()
    assert not record["scanned"] and cache_file.read_text() == plugin_text
    assert json.loads(tensors.read_text()) == json.loads(checkpoint_text)


def test_shipped_scans_still_load():
    from helpers import REPO_ROOT

    for name, count in (("sentence-transformers/all-MiniLM-L6-v2", 36), ("HuggingFaceTB/SmolLM2-135M-Instruct", 210)):
        scores = spectrum.load_scores(name, cache_dir=str(REPO_ROOT / "model_snr_results"))
        assert len(scores.entries) == count and "sidecar_mismatch" not in scores.meta
