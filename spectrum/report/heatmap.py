"""The heatmap of a scan: layers down, module types across, colour = score, selected cells marked.

matplotlib is an optional extra (`pip install 'spectrum-snr[plot]'`); it is imported only here, and only
when a picture is asked for. The figure is drawn on its own Agg canvas (no pyplot, no global state).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from ..errors import SpectrumError
from ..naming import layer_index
from .summary import TypeSummary

MISSING_MATPLOTLIB = ("spectrum report needs matplotlib, an optional extra: pip install 'spectrum-snr[plot]' "
                      "(in a checkout: pip install -e '.[plot]')")

# Layout in pixels at DPI, so the image size is an exact function of the grid (see `heatmap_size`).
DPI = 100
CELL_WIDTH, CELL_HEIGHT = 40, 24
LEFT, RIGHT, TOP = 90, 130, 60
BOTTOM_BASE, BOTTOM_PER_CHAR = 30, 6  # room for the rotated type names under the grid
MIN_WIDTH, MIN_HEIGHT = 480, 320


def require_matplotlib() -> None:
    """Raise a one-line SpectrumError naming the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise SpectrumError(MISSING_MATPLOTLIB) from err


@dataclass(frozen=True)
class Grid:
    """What the heatmap shows.

    Args:
        layers: row labels, ascending layer indices.
        types: column labels, module types inside numbered layers.
        values: values[row][column], the score, or NaN where a type has no module in that layer
            (the mean when several modules of one type share a layer).
        selected: selected[row][column], True where a selected module sits.
    """

    layers: tuple[int, ...]
    types: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    selected: tuple[tuple[bool, ...], ...]


def heatmap_grid(summaries: list[TypeSummary]) -> Grid:
    """The layers x types grid of a selection's summaries; types outside numbered layers are left out."""
    cells: dict[tuple[int, str], list[float]] = {}
    chosen: set[tuple[int, str]] = set()
    types: list[str] = []
    for summary in summaries:
        picked = set(summary.selected_modules)
        for module, score in summary.ranked:
            layer = layer_index(module)
            if layer is None:
                continue
            if summary.type not in types:
                types.append(summary.type)
            cells.setdefault((layer, summary.type), []).append(score)
            if module in picked:
                chosen.add((layer, summary.type))
    layers = sorted({layer for layer, _ in cells})
    values = tuple(
        tuple(sum(cells[(layer, t)]) / len(cells[(layer, t)]) if (layer, t) in cells else math.nan for t in types)
        for layer in layers
    )
    selected = tuple(tuple((layer, t) in chosen for t in types) for layer in layers)
    return Grid(tuple(layers), tuple(types), values, selected)


def heatmap_size(layers: int, types: list[str] | tuple[str, ...], *, minimum: bool = True) -> tuple[int, int]:
    """(width, height) in pixels of the heatmap of `layers` rows and these type columns.

    LEFT + 40 px per type + RIGHT wide, TOP + 24 px per layer + room for the longest type name
    (30 + 6 px per character) high; at least 480 x 320.
    """
    longest = max((len(name) for name in types), default=0)
    width = LEFT + CELL_WIDTH * len(types) + RIGHT
    height = TOP + CELL_HEIGHT * layers + BOTTOM_BASE + BOTTOM_PER_CHAR * longest
    if not minimum:
        return width, height
    return max(width, MIN_WIDTH), max(height, MIN_HEIGHT)


def heatmap_png(grid: Grid, *, title: str, subtitle: str = "") -> bytes:
    """The heatmap as PNG bytes (viridis, colour bar of the score, a dot on every selected cell).

    The colour scale is logarithmic when every score is positive and they span more than a factor
    of 10 (one outlier matrix would otherwise flatten every other cell into one colour).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LogNorm, Normalize
        from matplotlib.figure import Figure
    except ImportError as err:
        raise SpectrumError(MISSING_MATPLOTLIB) from err
    import numpy as np

    width, height = heatmap_size(len(grid.layers), grid.types)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.text(0.5, 1 - 8 / height, _fit(title, width, 8.6), ha="center", va="top", fontsize=10, weight="bold")
    figure.text(0.5, 1 - 26 / height, _fit(subtitle, width, 6.0), ha="center", va="top", fontsize=8.5)
    if not grid.types:
        figure.text(0.5, 0.5, "no module types inside numbered layers to show", ha="center", va="center")
        return _png(figure)
    # The grid's box in pixels: fixed margins, so cells keep their size; centred when a minimum size applies.
    natural_width, natural_height = heatmap_size(len(grid.layers), grid.types, minimum=False)
    box_width, box_height = CELL_WIDTH * len(grid.types), CELL_HEIGHT * len(grid.layers)
    left = LEFT + (width - natural_width) // 2
    bottom = height - TOP - (height - natural_height) // 2 - box_height
    axes = figure.add_axes((left / width, bottom / height, box_width / width, box_height / height))
    raw = np.array(grid.values, dtype=np.float64)  # (layers, types); NaN where a type has no matrix
    finite = raw[np.isfinite(raw)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    # An Infinity score is drawn at the end of the scale (matplotlib would leave it out, grey like no matrix).
    values = np.ma.masked_where(np.isnan(raw), np.clip(raw, low, high))
    norm = LogNorm(low, high) if low > 0 and high > 10 * low else Normalize(low, high)
    axes.set_facecolor("#d9d9d9")  # cells with no module
    image = axes.imshow(values, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
    rows, columns = np.nonzero(np.array(grid.selected, dtype=bool))
    axes.scatter(columns, rows, s=22, c="white", edgecolors="black", linewidths=0.8)
    axes.set_xticks(range(len(grid.types)), grid.types, rotation=90, fontsize=8)
    step = max(1, math.ceil(len(grid.layers) / 25))
    positions = list(range(0, len(grid.layers), step))
    axes.set_yticks(positions, [str(grid.layers[p]) for p in positions], fontsize=8)
    axes.set_ylabel("layer", fontsize=9)
    axes.set_xlim(-0.5, len(grid.types) - 0.5)
    axes.set_ylim(len(grid.layers) - 0.5, -0.5)
    bar_axes = figure.add_axes(((left + box_width + 20) / width, bottom / height, 14 / width, box_height / height))
    figure.colorbar(image, cax=bar_axes).set_label("score (SNR)", fontsize=8)
    bar_axes.tick_params(labelsize=7, which="both")
    return _png(figure)


def _fit(text: str, width: int, char_pixels: float) -> str:
    """`text`, shortened in the middle to fit `width` pixels at about `char_pixels` per character."""
    room = max(int((width - 20) / char_pixels), 12)
    return text if len(text) <= room else text[: room // 2 - 1] + "…" + text[-(room - room // 2):]


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()
