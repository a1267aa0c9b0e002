"""`spectrum report`: the heatmap PNG and the self-contained HTML page, from the cache alone.

The scores are written by hand, so every cell colour, mark and table row is known in advance.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from helpers import run_cli
from spectrum.cache.scores_file import write_scores
from spectrum.report.heatmap import heatmap_grid, heatmap_size
from spectrum.scores import ModuleScore, Scores
from spectrum.report.summary import summarize

VALUES = {  # type -> score of layers 0..3
    "mlp.down_proj": [1.0, 4.0, 3.0, 2.0],  # top half: layers 1, 2
    "self_attn.q_proj": [5.0, 1.5, 2.5, 1.2],  # layers 0, 2
    "self_attn.v_proj": [2.2, 2.2, 1.1, 4.5],  # layers 3, then 0 (the tie keeps file order)
}
SELECTED = {"mlp.down_proj": [1, 2], "self_attn.q_proj": [0, 2], "self_attn.v_proj": [3, 0]}
NOTE = "hand-written scores for the report tests"
VIRIDIS_LOW, VIRIDIS_HIGH = (68, 1, 84), (253, 231, 37)  # viridis(0.0) and viridis(1.0), 8-bit


def hand_scores() -> Scores:
    entries = {
        f"model.layers.{layer}.{type_name}": ModuleScore(value, type_name)
        for type_name, column in VALUES.items()
        for layer, value in enumerate(column)
    }
    entries["lm_head"] = ModuleScore(3.0, "lm_head")
    meta = {"name": "org/report-model", "model": "/gone/report-model", "version": "0.1.0", "note": NOTE,
            "threshold": "marchenko-pastur", "method": "gram", "device": "cpu",
            "source": {"kind": "local", "location": "/gone/report-model", "revision": None,
                       "shards": [{"name": "model.safetensors", "size": 1234567}]}}
    return Scores("org/report-model", entries, meta)


@pytest.fixture()
def cache(tmp_path) -> Path:
    """A working folder whose model_snr_results/ holds the hand-written scores (and no weights anywhere)."""
    write_scores(str(tmp_path / "model_snr_results" / "snr_results_org-report-model.json"), hand_scores())
    return tmp_path


def test_heatmap_size():
    llama = ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj",
             "self_attn.q_proj", "self_attn.v_proj"]
    # 90 + 40 per type + 130 wide; 60 + 24 per layer + 30 + 6 per character of the longest type high.
    assert heatmap_size(3, llama) == (500, 320)  # 60 + 72 + 30 + 96 = 258 < 320
    assert heatmap_size(30, llama) == (500, 906)
    assert heatmap_size(6, ["attention.output.dense"] * 6) == (480, 366)
    assert heatmap_size(4, list(VALUES)) == (480, 320)
    assert heatmap_size(4, list(VALUES), minimum=False) == (340, 282)


def test_heatmap_grid():
    grid = heatmap_grid(summarize(hand_scores(), 50))
    assert grid.types == tuple(VALUES) and grid.layers == (0, 1, 2, 3)  # lm_head is outside the layers
    assert grid.values == tuple(tuple(VALUES[t][layer] for t in VALUES) for layer in range(4))
    assert grid.selected == tuple(tuple(layer in SELECTED[t] for t in VALUES) for layer in range(4))


def pixel(image, column: int, layer: int, dx: int, dy: int) -> tuple[int, int, int]:
    """RGB at an offset from the centre of a cell (both minimum sizes apply: the grid is centred)."""
    left = 90 + (480 - 340) // 2
    top = 60 + (320 - 282) // 2
    return image.getpixel((left + 40 * column + 20 + dx, top + 24 * layer + 12 + dy))[:3]


def close(rgb, expected, tolerance=3) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, expected))


def test_report_from_the_cache_alone(cache):
    from PIL import Image

    result = run_cli("report", "org/report-model", "--top-percent", "50", cwd=cache)
    assert result.returncode == 0, result.stderr
    png_file = cache / "snr_results_org-report-model_50percent.png"
    html_file = cache / "snr_results_org-report-model_50percent.html"
    # (the last lines: a first matplotlib import may log that it builds its font cache)
    assert result.stderr.splitlines()[-2:] == [f"heatmap: {png_file.name}", f"report:  {html_file.name}"]

    image = Image.open(png_file)
    image.load()
    assert image.format == "PNG" and image.size == (480, 320)
    rgb = image.convert("RGB")
    assert len(np.unique(np.asarray(rgb).reshape(-1, 3), axis=0)) > 50  # not blank
    # Colour = score on a linear viridis scale from the smallest (1.0) to the largest (5.0) score.
    assert close(pixel(rgb, 1, 0, 12, 6), VIRIDIS_HIGH)  # self_attn.q_proj layer 0 = 5.0
    assert close(pixel(rgb, 0, 0, 12, 6), VIRIDIS_LOW)  # mlp.down_proj layer 0 = 1.0
    # A white dot at the centre of every selected cell, none elsewhere.
    for column, type_name in enumerate(VALUES):
        for layer in range(4):
            centre = pixel(rgb, column, layer, 0, 0)
            assert close(centre, (255, 255, 255), 10) == (layer in SELECTED[type_name]), (type_name, layer, centre)

    page = html_file.read_text(encoding="utf-8")
    assert f"data:image/png;base64,{base64.b64encode(png_file.read_bytes()).decode()}" in page
    assert not re.search(r"(src|href)=\"(?!data:)", page), "the page must not load anything"
    assert "default-src 'none'" in page
    for text in ("<h1>Spectrum scan of <span class=\"mono\">org/report-model</span></h1>", NOTE, "marchenko-pastur",
                 "<th>shards</th><td>1 (1.2 MB)</td>", "6 of 13 matrices selected"):
        assert text in page
    for type_name, column in VALUES.items():
        section = page.split(f'<h3 id="{type_name}">')[1].split("</table>")[0]
        modules = re.findall(r'<td class="mono">([^<]+)</td>', section)
        ranked = sorted(range(4), key=lambda layer: -column[layer])  # stable: ties in file order
        assert modules == [f"model.layers.{layer}.{type_name}" for layer in ranked]
        rows = re.findall(r"<tr[^>]*>", section)[1:]  # after the header row
        assert rows[2] == '<tr class="cut">', type_name  # the cut follows the two selected rows
        assert rows[:2] == ['<tr class="selected">'] * 2 and rows[3:] == ["<tr>"] * 2
    assert "top 50% keeps 0 of 1" in page.split('<h3 id="lm_head">')[1]


def test_infinity_scores_take_the_top_colour_not_the_empty_grey(tmp_path):
    from PIL import Image

    scores = hand_scores()
    scores.entries["model.layers.1.self_attn.q_proj"] = ModuleScore(float("inf"), "self_attn.q_proj")
    write_scores(str(tmp_path / "model_snr_results" / "snr_results_org-report-model.json"), scores)
    result = run_cli("report", "org/report-model", "--top-percent", "50", "--no-html", cwd=tmp_path)
    assert result.returncode == 0 and "Warning" not in result.stderr, result.stderr
    rgb = Image.open(tmp_path / "snr_results_org-report-model_50percent.png").convert("RGB")
    assert close(pixel(rgb, 1, 1, 12, 6), VIRIDIS_HIGH)  # Infinity: at the top of the scale
    assert close(pixel(rgb, 1, 0, 12, 6), VIRIDIS_HIGH)  # 5.0 is still the largest finite score
    assert close(pixel(rgb, 0, 0, 12, 6), VIRIDIS_LOW)


def test_report_paths_and_types(cache):
    from spectrum.cli import main

    out = cache / "out"
    out.mkdir()
    scores_file = cache / "model_snr_results" / "snr_results_org-report-model.json"
    code = main(["report", str(scores_file), "--types", "q_proj", "--png", str(out / "q.png"), "--no-html", "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["q.png"]
    from PIL import Image

    assert Image.open(out / "q.png").size == heatmap_size(4, ["self_attn.q_proj"])
    # --debug before the subcommand is the report's too
    assert main(["--debug", "report", str(scores_file), "--png", str(out / "all.png"), "--no-html", "--quiet"]) == 0
    assert (out / "all.png").is_file()


def test_report_needs_the_cache(tmp_path, capsys, monkeypatch):
    from spectrum.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["report", "org/never-scanned"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("spectrum: error: ") and error.count("\n") == 1
    assert "no cached scores for org/never-scanned" in error and "spectrum --model org/never-scanned" in error
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_is_one_line(cache, capsys, monkeypatch):
    from spectrum.cli import main

    monkeypatch.chdir(cache)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    before = sorted(p.name for p in cache.iterdir())
    assert main(["report", "org/report-model"]) == 1
    assert capsys.readouterr().err == (
        "spectrum: error: spectrum report needs matplotlib, an optional extra: pip install 'spectrum-snr[plot]' "
        "(in a checkout: pip install -e '.[plot]')\n"
    )
    assert sorted(p.name for p in cache.iterdir()) == before


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(cache, tmp_path):
    from PIL import Image

    from spectrum.report.html import write_report

    html_file = cache / "report.html"
    write_report(hand_scores(), Fraction(50), png_path=str(cache / "report.png"), html_path=str(html_file))
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--window-size=1000,900", f"--screenshot={shot}", html_file.as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 900)
    rgb = np.asarray(image).astype(int)  # (900, 1000, 3)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # The inline heatmap was decoded and drawn: viridis' blues and purples (blue well above red) cover
    # thousands of pixels, and nothing else on the page has them; text was laid out around it.
    bluish = int(((b > r + 40) & (b > g)).sum())
    assert bluish > 3000, bluish
    white = float((rgb.min(axis=2) > 245).mean())
    assert 0.5 < white < 0.99, white


def test_after_an_incremental_types_scan_the_report_and_sidecar_tell_the_cli_s_figures(tmp_path):
    from helpers import load_json, save_tiny_llama

    model = save_tiny_llama(tmp_path / "weights")
    sidecar = tmp_path / "model_snr_results" / "snr_results_t.meta.json"
    scan = ("--model", str(model), "--name", "t", "--no-check", "--top-percent", "34")
    first = run_cli(*scan, cwd=tmp_path)
    assert first.returncode == 0 and "7 of 21 matrices selected" in first.stderr, first.stderr
    whole = load_json(sidecar)
    # K = 100 for the increment: its one embedding matrix is a type of one, which 34% would leave empty (an error)
    increment = run_cli(*scan, "--types", "embed", "--top-percent", "100", "--output", "increment.yaml", "--quiet",
                        cwd=tmp_path)
    assert increment.returncode == 0, increment.stderr
    merged = load_json(sidecar)
    # The whole scan's cost: the first scan's figures plus the increment's (which read one more matrix).
    assert merged["bytes_read"] > whole["bytes_read"] and merged["seconds"] >= whole["seconds"]
    assert merged["bytes_read"] == whole["bytes_read"] + 96 * 48 * 2  # embed_tokens: 96 x 48 bf16
    again = run_cli(*scan, cwd=tmp_path)
    assert "7 of 21 matrices selected" in again.stderr, again.stderr
    yaml_text = (tmp_path / "snr_results_t_unfrozenparameters_34percent.yaml").read_text()
    assert "- ^model.embed_tokens.weight$\n" in yaml_text

    assert run_cli("report", "t", "--top-percent", "34", "--quiet", cwd=tmp_path).returncode == 0
    page = (tmp_path / "snr_results_t_34percent.html").read_text()
    assert "Top 34% of each module type by SNR: 7 of 21 matrices selected, 7 types. The YAML also unfreezes the " \
           "output head and the input embeddings (<code>^lm_head.weight$</code>, " \
           "<code>^model.embed_tokens.weight$</code>) unless <code>--no-embeddings</code>." in page
    assert "model.embed_tokens" not in page.split("<h2>Module types</h2>")[1]  # not a selected type here
    assert run_cli("report", "t", "--top-percent", "34", "--types", "embed", "--quiet", cwd=tmp_path).returncode == 0
    page = (tmp_path / "snr_results_t_34percent.html").read_text()
    assert re.search(r'<tr class="selected"><td class="num">1</td><td class="mono">model\.embed_tokens</td>'
                     r'<td class="num">[^<]+</td><td>in the YAML with the embeddings</td></tr>', page)
