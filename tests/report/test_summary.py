"""Per-type figures of a selection and the compact layer ranges, on hand-checked inputs."""

from __future__ import annotations

from fractions import Fraction

import pytest

from spectrum.scores import ModuleScore, Scores
from spectrum.report.summary import compact_ranges, summarize, summary_record


@pytest.mark.parametrize(
    "indices, expected",
    [
        ([0, 1, 2, 3, 7, 29], "0-3, 7, 29"),
        ([29, 7, 3, 2, 1, 0], "0-3, 7, 29"),
        ([5], "5"),
        ([], ""),
        ([4, 5], "4-5"),
        ([1, 3, 5], "1, 3, 5"),
        ([2, 2, 3, 3, 9, 10, 11, 20], "2-3, 9-11, 20"),
    ],
)
def test_compact_ranges(indices, expected):
    assert compact_ranges(indices) == expected


def scores() -> Scores:
    """Two types over six layers, and an output head outside the layers."""
    values = {
        "mlp.down_proj": [0.9, 0.1, 0.5, 0.7, 0.3, 0.8],
        "self_attn.q_proj": [0.2, 0.6, 0.6, 0.1, 0.4, 0.3],
    }
    entries = {
        f"model.layers.{layer}.{type_name}": ModuleScore(value, type_name)
        for type_name, column in values.items()
        for layer, value in enumerate(column)
    }
    entries["lm_head"] = ModuleScore(2.5, "lm_head")
    return Scores("org/model", entries)


def test_summarize_half():
    down, q, head = summarize(scores(), 50)
    assert (down.type, down.count, down.selected) == ("mlp.down_proj", 6, 3)
    assert (down.min, down.median, down.max) == (0.1, (0.5 + 0.7) / 2, 0.9)
    assert down.selected_modules == ("model.layers.0.mlp.down_proj", "model.layers.5.mlp.down_proj",
                                     "model.layers.3.mlp.down_proj")
    assert down.selected_layers == (0, 3, 5) and down.layer_ranges == "0, 3, 5"
    # Ties keep file order: layers 1 and 2 both score 0.6.
    assert q.selected_modules == ("model.layers.1.self_attn.q_proj", "model.layers.2.self_attn.q_proj",
                                  "model.layers.4.self_attn.q_proj")
    assert q.layer_ranges == "1-2, 4"
    assert (q.min, q.median, q.max) == (0.1, (0.3 + 0.4) / 2, 0.6)
    assert [module for module, _ in q.ranked][3:] == ["model.layers.5.self_attn.q_proj",
                                                      "model.layers.0.self_attn.q_proj",
                                                      "model.layers.3.self_attn.q_proj"]
    assert (head.count, head.selected, head.selected_layers, head.layer_ranges) == (1, 0, (), "")


def test_summarize_types_and_record():
    only = summarize(scores(), 100, types={"mlp.down_proj"})
    assert [s.type for s in only] == ["mlp.down_proj"] and only[0].layer_ranges == "0-5"
    record = summary_record("org/model", only, top_percent=Fraction(100),
                            scanned=False, seconds=0.12345, scores_file="s.json", yaml_file="y.yaml")
    assert record["matrices"] == 6 and record["selected"] == 6 and record["seconds"] == 0.123
    assert record["types"][0]["selected_layers"] == [0, 1, 2, 3, 4, 5]
    assert record["types"][0]["selected_ranges"] == "0-5" and "ranked" not in record["types"][0]


def fused_scores() -> Scores:
    """Per-expert scores of 3-D expert tensors the checkpoint stores fused (no view needed: `fused_tensors`)."""
    entries = {}
    for layer, base in enumerate((0.2, 0.6)):
        for expert in range(4):
            entries[f"model.layers.{layer}.mlp.experts.{expert}.down_proj"] = ModuleScore(base + expert / 100,
                                                                                           f"mlp.experts.{expert}.down_proj")
    for layer, value in enumerate((0.9, 0.1)):
        entries[f"model.layers.{layer}.self_attn.q_proj"] = ModuleScore(value, "self_attn.q_proj")
    return Scores("org/moe", entries, {"fused_tensors": [f"model.layers.{layer}.mlp.experts.down_proj" for layer in (0, 1)]})


def test_moe_summary_ranks_what_the_yaml_trains():
    """The YAML ranks one fused tensor per layer by its experts' mean score; so does the summary `as_yaml`
    (the per-expert summary stays for the report), and the record says how many matrices each stands for."""
    down, q = summarize(fused_scores(), 50, as_yaml=True)
    assert (down.type, down.count, down.selected, down.matrices) == ("mlp.experts.down_proj", 2, 1, 8)
    assert down.selected_modules == ("model.layers.1.mlp.experts.down_proj",) and down.max == pytest.approx(0.615)
    assert q.matrices is None and q.selected_modules == ("model.layers.0.self_attn.q_proj",)
    assert f"- {down.selected_modules[0]}\n" in fused_scores().to_yaml(50)
    record = summary_record("org/moe", [down, q], top_percent=Fraction(50), scanned=False, seconds=0.1,
                            scores_file="s.json", yaml_file="y.yaml")
    assert (record["matrices"], record["selected"], record["scored_matrices"]) == (4, 2, 10)
    assert record["types"][0]["matrices"] == 8 and "matrices" not in record["types"][1]
    assert len(summarize(fused_scores(), 50)) == 5  # per expert, as before


def test_dense_summary_is_the_same_either_way():
    assert summarize(scores(), 50, as_yaml=True) == summarize(scores(), 50)
    record = summary_record("org/model", summarize(scores(), 50, as_yaml=True), top_percent=Fraction(50),
                            scanned=False, seconds=0.1, scores_file="s.json", yaml_file="y.yaml")
    assert "scored_matrices" not in record and all("matrices" not in row for row in record["types"])


def test_the_terminal_summary_of_a_moe_model_shows_fused_rows(tmp_path):
    import json

    from helpers import run_cli
    from helpers import small

    small("mixtral").save_pretrained(tmp_path / "m")
    result = run_cli("--model", str(tmp_path / "m"), "--top-percent", "50", "--device", "cpu", "--output", "o.yaml",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.split()[:4] == ["mlp.experts.gate_up_proj", "(fused)", "2", "1"] for line in lines), result.stderr
    assert not any("block_sparse_moe.experts" in line for line in lines)
    assert any(line.startswith("fused: each row of a fused type is one layer's 3-D expert tensor") and
               "mlp.experts.gate_up_proj: 16 in 2" in line for line in lines)
    assert any(line.startswith("scanned in ") and line.endswith(": 7 of 14 tensors selected (34 matrices scored; "
                                                                "a fused expert tensor counts once)") for line in lines)
    record = json.loads(run_cli("--model", str(tmp_path / "m"), "--top-percent", "50", "--json", "--output", "o.yaml",
                                cwd=tmp_path).stdout)
    assert record["scored_matrices"] == 34 and record["types"][0]["selected_modules"][0].endswith(".mlp.experts.gate_up_proj")


@pytest.mark.parametrize(("top_percent", "number"), [
    (Fraction(25), 25), (Fraction(100), 100), (Fraction(25, 2), 12.5), (Fraction(1, 1000), 0.001),
    (Fraction(123456789, 10**8), 1.23456789),
    (Fraction(1, 3), "0.3333333333333333333333333333"),  # no float has these digits: the string
])
def test_json_top_percent_is_a_number_with_the_exact_digits(top_percent, number):
    import json

    record = summary_record("org/model", summarize(scores(), top_percent), top_percent=top_percent,
                            scanned=False, seconds=0.0, scores_file="s.json", yaml_file="y.yaml")
    assert record["top_percent"] == number and type(record["top_percent"]) is type(number)
    assert json.dumps(record["top_percent"]) == (json.dumps(number))
