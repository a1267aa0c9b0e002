"""A selection of nothing is an error naming the smallest K (Axolotl reads an empty
`unfrozen_parameters` as "train everything"), types that keep nothing are a warning, and
`spectrum.freeze` says when it leaves nothing (or only the embeddings) trainable."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import pytest
import torch

import spectrum
from helpers import run_cli
from spectrum.scores import ModuleScore, Scores
from spectrum.selection.topk import keep_count, smallest_percent_keeping_one


@pytest.mark.parametrize("count", [1, 2, 3, 7, 30, 64, 96, 3000])
def test_the_smallest_percent_keeps_one_and_a_hundredth_less_keeps_none(count):
    percent = smallest_percent_keeping_one(count)
    assert keep_count(count, percent) >= 1
    assert percent * 100 == math.ceil(percent * 100)  # two decimals at most
    assert percent == 100 or keep_count(count, percent - Fraction(1, 100)) == 0


def test_nothing_selected_is_an_error_and_writes_no_yaml(tiny_llama_dir, tmp_path):
    result = run_cli("--model", str(tiny_llama_dir), "--top-percent", "1", "--no-embeddings", "--no-check",
                     "--quiet", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == ["spectrum: error: top 1% selects no module (every type holds 3): the "
                                          "smallest --top-percent that keeps one of every type is 33.34; no YAML written"]
    assert not list(tmp_path.glob("*.yaml"))
    mixed = run_cli("--model", str(tiny_llama_dir), "--types", "mlp", "embed_tokens", "--top-percent", "1",
                    "--no-check", "--output", "o.yaml", cwd=tmp_path)
    assert mixed.returncode == 1 and not (tmp_path / "o.yaml").exists()
    assert mixed.stderr.splitlines() == [
        "spectrum: error: top 1% selects no module (types hold 1 to 3): the smallest --top-percent that keeps one of "
        "every type is 100 (model.embed_tokens holds 1), one module in total 33.34; no YAML written"]


def test_types_that_keep_nothing_are_named_in_a_warning(tiny_llama_dir, tmp_path):
    result = run_cli("--model", str(tiny_llama_dir), "--types", "mlp", "embed_tokens", "--top-percent", "50",
                     "--output", "o.yaml", "--quiet", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr.splitlines() == ["warning: top 50% keeps no module of 1 type (model.embed_tokens); "
                                          "--top-percent 100 keeps one of every type"]
    assert "- model.layers." in (tmp_path / "o.yaml").read_text()


def test_freeze_warns_when_scores_select_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    scores = Scores("x", {"0": ModuleScore(0.5, "linear"), "1": ModuleScore(0.2, "linear")})
    with pytest.warns(UserWarning) as caught:
        result = spectrum.freeze(model, scores, top_percent=10, embeddings=False)
    messages = [str(warning.message) for warning in caught]
    assert any("top 10% selects no module of any type, so nothing stays trainable; top_percent=50 keeps one of every "
               "type" in message for message in messages), messages
    assert any(message.startswith("no parameter of Sequential stays trainable") for message in messages), messages
    assert result.tensors == 0 and not any(p.requires_grad for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a selection that keeps something says nothing
        assert spectrum.freeze(model, scores, top_percent=50, embeddings=False).names == ("0.weight", "0.bias")
