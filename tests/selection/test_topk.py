"""Selection per type (floor, ties, decimals, order) and the exact YAML text."""

from fractions import Fraction

import pytest

from spectrum._version import __version__
from spectrum.errors import UsageError
from spectrum.scores import ModuleScore, Scores
from spectrum.selection.topk import format_percent, keep_count, parse_top_percent, select_by_type


def test_parse_top_percent():
    assert parse_top_percent("25") == 25
    assert parse_top_percent("12.5") == Fraction(25, 2)
    assert parse_top_percent("100") == 100
    for bad in ["0", "-5", "101", "abc", "nan", "inf", "", "1e999"]:
        with pytest.raises(UsageError, match="--top-percent"):
            parse_top_percent(bad)


def test_format_percent():
    assert format_percent(Fraction(25)) == "25"
    long = "99.99999999999999999999999999999"  # 31 digits: every one is kept, the name never says 100
    assert format_percent(parse_top_percent(long)) == long
    assert format_percent(parse_top_percent("1e-30")) == "0." + "0" * 29 + "1"
    assert format_percent(Fraction(1, 3)) == "0.3333333333333333333333333333"  # from the Python API
    assert format_percent(parse_top_percent("12.50")) == "12.5"
    assert format_percent(parse_top_percent("0.1")) == "0.1"


@pytest.mark.parametrize(
    "total,percent,expected",
    [(32, "25", 8), (30, "25", 7), (7, "50", 3), (1, "50", 0), (1, "100", 1), (3, "33.4", 1), (3, "66.7", 2), (1000, "14.3", 143)],
)
def test_keep_count_floors(total, percent, expected):
    assert keep_count(total, parse_top_percent(percent)) == expected


def test_select_orders_and_breaks_ties_by_file_order():
    entries = [
        ("l.0.q", 0.5, "q"),
        ("l.1.q", 0.9, "q"),
        ("l.2.q", 0.5, "q"),
        ("l.3.q", 0.7, "q"),
        ("l.0.k", 0.1, "k"),
        ("l.1.k", 0.3, "k"),
    ]
    assert select_by_type(entries, Fraction(75)) == {"q": ["l.1.q", "l.3.q", "l.0.q"], "k": ["l.1.k"]}
    assert select_by_type(entries, Fraction(50), {"k"}) == {"k": ["l.1.k"]}


def test_select_matches_reference_on_infinity_and_foreign_types():
    # Older reference scans scored norms as Infinity; every type present is selected from.
    entries = [("l.0.norm", float("inf"), "norm"), ("l.1.norm", float("inf"), "norm"), ("l.0.q", 0.2, "q"), ("l.1.q", 0.4, "q")]
    assert select_by_type(entries, Fraction(50)) == {"norm": ["l.0.norm"], "q": ["l.1.q"]}


def sample_scores(meta=None) -> Scores:
    entries = {
        "model.layers.0.mlp.down_proj": ModuleScore(0.1, "mlp.down_proj"),
        "model.layers.1.mlp.down_proj": ModuleScore(0.4, "mlp.down_proj"),
        "model.layers.2.mlp.down_proj": ModuleScore(0.3, "mlp.down_proj"),
        "model.layers.3.mlp.down_proj": ModuleScore(0.2, "mlp.down_proj"),
        "model.layers.0.self_attn.q_proj": ModuleScore(0.9, "self_attn.q_proj"),
        "model.layers.1.self_attn.q_proj": ModuleScore(0.8, "self_attn.q_proj"),
    }
    return Scores(model="org/model", entries=entries, meta=meta or {})


def test_yaml_exact_text_with_only_a_cache():
    expected = (
        f"# spectrum {__version__}: top 50% of modules per type by SNR, model org/model\n"
        "unfrozen_parameters:\n"
        "- ^lm_head.weight$\n"
        "- ^model.embed_tokens.weight$\n"
        "# mlp.down_proj layers\n"
        "- model.layers.1.mlp.down_proj\n"
        "- model.layers.2.mlp.down_proj\n"
        "# self_attn.q_proj layers\n"
        "- model.layers.0.self_attn.q_proj\n"
    )
    assert sample_scores().to_yaml(50) == expected


def test_yaml_uses_recorded_embedding_names_and_can_leave_them_out():
    tied = sample_scores({"embeddings": {"input": "model.embed_tokens.weight", "output": None}})
    text = tied.to_yaml("25")
    assert "- ^model.embed_tokens.weight$\n" in text and "lm_head" not in text
    assert "# self_attn.q_proj layers\n" in text and "self_attn.q_proj\n-" not in text
    assert "^" not in sample_scores().to_yaml(50, embeddings=False)


def test_scores_select_and_types():
    scores = sample_scores()
    assert scores.types() == ["mlp.down_proj", "self_attn.q_proj"]
    assert scores.select(50) == ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj", "model.layers.0.self_attn.q_proj"]
    assert scores.select(100, types={"self_attn.q_proj"}) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def test_regex_metacharacters_in_names_are_escaped_for_axolotl():
    """Axolotl compiles every entry as a regex (after escaping dots): a stored name with `|` would
    unfreeze everything, one with `[1]` nothing. Each entry matches its own module and no other."""
    from spectrum.selection.topk import literal_entry, yaml_entries
    from spectrum.selection.model_view import axolotl_pattern

    names = ["model.layers.0.mlp.c|", "model.layers.0.mlp.w[1]", "model.layers.0.mlp.(a)+b", "model.layers.0.mlp.x$",
             "model.layers.0.mlp.up_proj"]
    scores = Scores("m", {name: ModuleScore(1.0, name.split(".", 3)[3]) for name in names},
                    meta={"embeddings": {"input": "emb|ed.weight", "output": None}})
    entries = yaml_entries(scores.to_yaml(100))
    assert entries[0] == "^emb\\|ed.weight$" and entries[1:] == [literal_entry(name) for name in names]
    assert entries[-1] == "model.layers.0.mlp.up_proj"  # ordinary names are written as they are
    parameters = [name + ".weight" for name in names] + ["emb|ed.weight", "model.embed_tokens.weight", "lm_head.weight"]
    for entry, own in zip(entries, ["emb|ed.weight"] + [name + ".weight" for name in names]):
        assert [p for p in parameters if axolotl_pattern(entry).match(p)] == [own], entry
