"""An entry unfreezes its own module only: a name that is a prefix of another parameter's name at a
non-dot boundary (`mlp.up` / `mlp.up_proj`) is anchored (`selection.topk.entry_for`), in the YAML, the plugin's
scores file and `spectrum.freeze`; `--check` names an entry that unfreezes another module's parameters."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

import spectrum
from helpers import run_cli
from spectrum.scores import ModuleScore, Scores
from spectrum.selection.topk import entry_for, yaml_entries
from spectrum.selection.model_view import overreaching_entries


def axolotl_unfreezes(entry: str, names: list[str]) -> list[str]:
    """Axolotl 0.21's LayerNamePattern, restated: every `.` not followed by `+` made literal, then re.match."""
    pattern = re.compile(re.sub(r"\.(?!\+)", "\\.", entry))
    return [name for name in names if pattern.match(name)]


UP = ["model.layers.2.mlp.up.weight", "model.layers.2.mlp.up.bias", "model.layers.2.mlp.up_proj.weight",
      "model.layers.2.mlp.up_proj.bias"]


def test_a_prefix_name_ends_in_a_dot_and_matches_its_module_only():
    entry = entry_for("model.layers.2.mlp.up", UP)
    assert entry == "model.layers.2.mlp.up."
    assert axolotl_unfreezes(entry, UP) == ["model.layers.2.mlp.up.weight", "model.layers.2.mlp.up.bias"]
    assert axolotl_unfreezes("model.layers.2.mlp.up", UP) == UP  # what the plain name did
    # A backslash-escaped dot would match nothing: Axolotl escapes the dot once more after the backslash.
    assert axolotl_unfreezes("model.layers.2.mlp.up\\.", UP) == []


@pytest.mark.parametrize("name, names, expected", [
    ("model.layers.2.mlp.up_proj", UP, "model.layers.2.mlp.up_proj"),  # ordinary names stay as they are
    ("model.layers.1", ["model.layers.1.w", "model.layers.10.w"], "model.layers.1."),
    ("m.experts.gate_up_proj", ["m.experts.gate_up_proj", "m.experts.gate_up_proj_bias"], "m.experts.gate_up_proj"),
    ("m.experts.gate_up_proj", ["m.experts.gate_up_proj", "m.experts.gate_up_proj_scale"], "m.experts.gate_up_proj$"),
    ("a.b[1]", ["a.b[1].weight", "a.b[1]x.weight"], "a.b\\[1\\]."),
    ("not.there", UP, "not.there"),
])
def test_entry_for(name, names, expected):
    assert entry_for(name, names) == expected
    own = [other for other in names if other == name or other.startswith(name + ".") or other == name + "_bias"]
    if own:
        assert axolotl_unfreezes(expected, names) == own


def test_check_names_entries_that_unfreeze_other_modules():
    assert overreaching_entries(["model.layers.2.mlp.up"], UP) == {
        "model.layers.2.mlp.up": ["model.layers.2.mlp.up_proj.bias", "model.layers.2.mlp.up_proj.weight"]}
    anchored = ["model.layers.2.mlp.up.", "model.layers.2.mlp.up_proj", "^model.layers.2.mlp.up.weight$",
                "layers.2[0-9]+.mlp", "model.layers.2.mlp.up$"]  # real regular expressions are not judged
    assert overreaching_entries(anchored, UP) == {}
    fused = ["m.experts.gate_up_proj", "m.experts.gate_up_proj_bias"]  # GPT-OSS: the fused bias is the tensor's own
    assert overreaching_entries(["m.experts.gate_up_proj"], fused) == {}


def test_without_a_view_the_checkpoints_names_decide(tmp_path):
    """--no-check: a checkpoint holding both `mlp.up` and `mlp.up_proj` gets `mlp.up.` entries, and each
    entry unfreezes only its own module's tensors under Axolotl's rule."""
    torch.manual_seed(0)
    tensors = {}
    for layer in range(4):
        tensors[f"model.layers.{layer}.mlp.up.weight"] = torch.randn(24, 16)
        tensors[f"model.layers.{layer}.mlp.up.bias"] = torch.randn(24)
        tensors[f"model.layers.{layer}.mlp.up_proj.weight"] = torch.randn(24, 16)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    result = run_cli("--model", str(tmp_path), "--no-check", "--top-percent", "50", "--output", "-", "--quiet",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    entries = [entry for entry in yaml_entries(result.stdout) if not entry.startswith("^")]
    ups = [entry for entry in entries if ".mlp.up." in entry or entry.endswith(".mlp.up.")]
    assert len(ups) == 2 and all(entry.endswith(".mlp.up.") for entry in ups)
    assert len([entry for entry in entries if entry.endswith(".mlp.up_proj")]) == 2
    for entry in entries:
        module = entry.rstrip(".")
        assert axolotl_unfreezes(entry, list(tensors)) == [name for name in tensors if name.startswith(module + ".")]


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(8, 8)
        self.up_proj = torch.nn.Linear(8, 8)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(Block() for _ in range(2))


def test_freeze_unfreezes_only_the_selected_module():
    scores = Scores("x", {
        "layers.0.up": ModuleScore(0.9, "up"), "layers.1.up": ModuleScore(0.1, "up"),
        "layers.0.up_proj": ModuleScore(0.1, "up_proj"), "layers.1.up_proj": ModuleScore(0.9, "up_proj"),
    })
    result = spectrum.freeze(Net(), scores, top_percent=50, embeddings=False)
    assert result.names == ("layers.0.up.weight", "layers.0.up.bias", "layers.1.up_proj.weight", "layers.1.up_proj.bias")
    assert result.patterns == ("layers.0.up.", "layers.1.up_proj")
