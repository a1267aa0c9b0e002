"""Learning rates by SNR rank (experimental): `spectrum.param_groups` and `--lr-groups` (Axolotl's `lr_groups:`)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import yaml

import spectrum
from helpers import run_cli, save_tiny_llama
from spectrum.errors import SpectrumError, UsageError
from spectrum.selection.lr_groups import axolotl_lr_groups, lr_factor, lr_groups_text
from spectrum.scores import ModuleScore, Scores


def tiny_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder))


def test_the_factor_is_linear_in_rank_from_boost_to_one():
    assert [lr_factor(rank, 5, 2.0) for rank in range(5)] == [2, Fraction(7, 4), Fraction(3, 2), Fraction(5, 4), 1]
    assert lr_factor(0, 1, 3.0) == 3 and lr_factor(2, 3, 1.0) == 1


def test_param_groups_boost_the_best_of_each_type(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny", dtype="float32")
    model = tiny_model(folder)
    scores = spectrum.scan_model(model, threads=1, progress=False)
    groups = spectrum.param_groups(model, scores, 1e-3, top_percent=67, boost=3.0)  # 2 of 3 layers per type
    by_parameter = {id(p): group["lr"] for group in groups for p in group["params"]}
    assert sum(len(group["params"]) for group in groups) == len(by_parameter)  # each parameter once
    assert [group["lr"] for group in groups] == pytest.approx([3e-3, 1e-3])
    names = {id(p): name for name, p in model.named_parameters()}
    for type_name in scores.types():
        ranked = sorted((m for m, s in scores.entries.items() if s.type == type_name),
                        key=lambda m: scores.entries[m].snr, reverse=True)
        best, second, last = (model.get_parameter(m + ".weight") for m in ranked)
        assert by_parameter[id(best)] == pytest.approx(3e-3) and by_parameter[id(second)] == pytest.approx(1e-3)
        assert id(last) not in by_parameter  # not selected: in no group
    trained = {names[key] for key in by_parameter}
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= trained
    assert trained == set(spectrum.freeze(model, scores, top_percent=67).names)  # the same selection
    optimizer = torch.optim.AdamW(groups)
    assert optimizer.param_groups[0]["name"] == "spectrum x3"


def axolotl_lr(lr_groups: list[dict], parameter_name: str, base: float) -> float:
    """The learning rate Axolotl 0.21's `create_optimizer_grouped_parameters` gives a weight (decayed) parameter:
    the first group whose module is a substring of its name, else the base rate."""
    lookup = {module: group for group in lr_groups for module in group["modules"]}
    hits = [module for module in lookup if module in parameter_name]
    return lookup[hits[0]]["lr"] if hits else base


def test_cli_writes_lr_groups_that_axolotls_substring_rule_reads_as_ranked(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny", dtype="float32")
    result = run_cli("--model", str(folder), "--name", "org/tiny", "--top-percent", "67", "--lr-groups", "2e-5",
                     "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "snr_results_org-tiny_lrgroups_67percent.yaml").read_text()
    assert "experimental" in text.splitlines()[0]
    groups = yaml.safe_load(text)["lr_groups"]
    assert [set(group) for group in groups] == [{"name", "modules", "lr"}] * 2
    assert [group["lr"] for group in groups] == pytest.approx([4e-5, 2e-5])
    scores = spectrum.load_scores("org/tiny", cache_dir=str(tmp_path / "model_snr_results"))
    model = tiny_model(folder)
    boosted = set()
    for name, _ in model.named_parameters():
        if not name.endswith("proj.weight"):
            assert axolotl_lr(groups, name, 2e-5) == 2e-5, name
            continue
        module = name[: -len(".weight")]
        ranked = sorted((m for m, s in scores.entries.items() if s.type == scores.entries[module].type),
                        key=lambda m: scores.entries[m].snr, reverse=True)
        expected = {0: 4e-5, 1: 2e-5}.get(ranked.index(module), 2e-5)
        assert axolotl_lr(groups, name, 2e-5) == pytest.approx(expected), name
        boosted |= {name} if expected == 4e-5 else set()
    assert len(boosted) == 7  # one per type
    bad = run_cli("--model", str(folder), "--lr-groups", "0", "--quiet", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "learning rate" in bad.stderr


def test_an_entry_that_is_a_substring_of_another_module_is_refused():
    scores = Scores("two-stacks", {
        "model.layers.0.q": ModuleScore(2.0, "q"),
        "vision.model.layers.0.q": ModuleScore(1.0, "q"),
    })
    with pytest.raises(SpectrumError, match="substring of vision.model.layers.0.q.weight"):
        axolotl_lr_groups(scores, 50, 1e-5)
    fine = Scores("prefixes", {"model.layers.1.mlp.up": ModuleScore(2.0, "mlp.up"),
                               "model.layers.11.mlp.up": ModuleScore(1.0, "mlp.up")})
    assert axolotl_lr_groups(fine, 50, 1e-5)[0].modules == ("model.layers.1.mlp.up.",)


def test_bad_rates_say_one_line():
    scores = Scores("m", {"model.layers.0.q": ModuleScore(1.0, "q")})
    for lr, boost in ((-1.0, 2.0), (float("nan"), 2.0), (1e-5, 0.5)):
        with pytest.raises(UsageError) as caught:
            lr_groups_text(scores, 50, lr, boost=boost)
        assert "\n" not in str(caught.value)


def test_a_model_name_with_a_line_break_stays_in_its_comment():
    scores = Scores("org/x\nlr_groups: []", {f"model.layers.{i}.mlp.up_proj": ModuleScore(float(i), "mlp.up_proj")
                                               for i in range(3)})
    text = lr_groups_text(scores, 100, 1e-5)
    assert "model org/x\\nlr_groups: []" in text.splitlines()[0]
    groups = yaml.safe_load(text)["lr_groups"]
    assert [group["modules"] for group in groups] == [["model.layers.2.mlp.up_proj."], ["model.layers.1.mlp.up_proj."],
                                                      ["model.layers.0.mlp.up_proj."]]
