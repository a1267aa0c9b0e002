"""`spectrum report`: the heatmap PNG and a self-contained HTML page of a model's cached scores.

The page needs no network: the heatmap is inline (base64), the style is inline, and its
Content-Security-Policy forbids loading anything else.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from fractions import Fraction

from .._version import __version__
from ..cache.scores_file import write_output_bytes
from .heatmap import heatmap_grid, heatmap_png
from ..provenance import Provenance
from ..scores import Scores
from ..selection.topk import format_percent, parse_top_percent
from .summary import TypeSummary, compact_ranges, summarize

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1b1b1b; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; }
h3 { font-size: 1em; margin: 1.4em 0 0.3em; font-family: ui-monospace, monospace; }
.lead { color: #444; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
th { white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.selected td { background: #eef4ea; }
tr.cut td { background: #fff; border-top: 2px solid #c0392b; color: #c0392b; font-size: 0.9em; }
.stats { color: #444; font-size: 0.85em; margin: 0 0 0.4em; }
code, .mono { font-family: ui-monospace, monospace; }
img.heatmap { max-width: 100%; height: auto; border: 1px solid #eee; }
"""

# Nothing but the inline image and style may load: the page works offline and fetches nothing.
_CSP = (
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
    "style-src 'unsafe-inline'\">"
)



@dataclass(frozen=True)
class ReportFiles:
    """Where `write_report` put the picture and the page."""

    png: str
    html: str


def render_html(scores: Scores, summaries: list[TypeSummary], top_percent: Fraction, png: bytes) -> str:
    """The report page: title, the heatmap inline, provenance, and per-type tables with the selection cut."""
    title = _display_name(scores)
    percent = format_percent(top_percent)
    total = sum(summary.count for summary in summaries)
    kept = sum(summary.selected for summary in summaries)
    embeddings = scores.embedding_patterns()  # the YAML's lines for them, unless --no-embeddings
    also = (f" The YAML also unfreezes the output head and the input embeddings "
            f"({', '.join(f'<code>{_e(line)}</code>' for line in embeddings)}) unless <code>--no-embeddings</code>."
            if embeddings else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        _CSP,
        f"<title>Spectrum: {_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Spectrum scan of <span class=\"mono\">{_e(title)}</span></h1>",
        (f'<p class="lead">Top {percent}% of each module type by SNR: {kept} of {total} matrices selected, '
         f"{len(summaries)} types.{also} Report by spectrum {__version__}.</p>"),
        (f'<img class="heatmap" alt="heatmap of scores by layer and module type" src="data:image/png;base64,'
         f'{base64.b64encode(png).decode("ascii")}">'),
        "<h2>Provenance</h2>",
        _provenance_table(scores.provenance),
        "<h2>Module types</h2>",
        _types_table(summaries),
    ]
    for summary in summaries:
        parts.append(_type_section(summary, percent, embeddings))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(
    scores: Scores,
    top_percent: float | str | Fraction,
    *,
    png_path: str,
    html_path: str | None,
    types: set[str] | None = None,
) -> ReportFiles:
    """Draw the heatmap and write it (and the HTML page unless `html_path` is None), each file atomically
    (a device or a FIFO is written through, a link's target replaced: `spectrum.cache.write_output_bytes`).

    Args:
        scores: from `spectrum.scan` or `spectrum.load_scores`.
        top_percent: K in (0, 100]: the top K% of each type is marked.
        types: only these module types (default: every type in the scores).
    """
    top_percent = top_percent if isinstance(top_percent, Fraction) else parse_top_percent(top_percent)
    summaries = summarize(scores, top_percent, types=types)
    subtitle = f"score by layer and module type; dot: in the top {format_percent(top_percent)}% of its type"
    png = heatmap_png(heatmap_grid(summaries), title=_display_name(scores), subtitle=subtitle)
    write_output_bytes(png_path, png)
    if html_path is not None:
        write_output_bytes(html_path, render_html(scores, summaries, top_percent, png).encode("utf-8"))
    return ReportFiles(png_path, html_path or "")


def _display_name(scores: Scores) -> str:
    return scores.provenance.name or scores.model


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _provenance_table(provenance: Provenance) -> str:
    if provenance.is_empty():
        return "<p>No sidecar: this scores file was made elsewhere, so nothing is known of how.</p>"
    shown: list[tuple[str, object]] = [  # in this order, with these labels; the absent and the empty left out
        ("name", provenance.name), ("model argument", provenance.model), ("note", provenance.note),
        ("spectrum version", provenance.version), ("threshold", provenance.threshold),
        ("singular values", provenance.method), ("device", provenance.device), ("workers", provenance.workers),
        ("scan seconds", provenance.seconds),
        ("bytes read", None if provenance.bytes_read is None else f"{provenance.bytes_read / 1e6:,.1f} MB"),
        ("stored dtypes", ", ".join(provenance.dtypes) if provenance.dtypes else None),
        ("processes", provenance.world_size),
    ]
    rows = [(label, value) for label, value in shown if value not in (None, "")]
    source = provenance.source
    if source is not None:
        rows.insert(1, ("source", " ".join(part for part in (source.kind, source.location) if part)))
        if source.revision:
            rows.insert(2, ("revision", source.revision))
        if source.shards:
            size = sum(shard.size or 0 for shard in source.shards)
            rows.append(("shards", f"{len(source.shards)} ({size / 1e6:,.1f} MB)"))
    body = "".join(f"<tr><th>{_e(label)}</th><td>{_e(value)}</td></tr>" for label, value in rows)
    return f"<table>{body}</table>"


def _types_table(summaries: list[TypeSummary]) -> str:
    head = ('<tr><th>type</th><th class="num">count</th><th class="num">selected</th><th class="num">min</th>'
            '<th class="num">median</th><th class="num">max</th><th>selected layers</th></tr>')
    body = "".join(
        f'<tr><td class="mono">{_e(s.type)}</td><td class="num">{s.count}</td><td class="num">{s.selected}</td>'
        f'<td class="num">{s.min:.4g}</td><td class="num">{s.median:.4g}</td><td class="num">{s.max:.4g}</td>'
        f"<td>{_e(compact_ranges(s.selected_layers)) or '&mdash;'}</td></tr>"
        for s in summaries
    )
    return f"<table>{head}{body}</table>"


def _type_section(summary: TypeSummary, percent: str, embeddings: list[str] = ()) -> str:
    cut = (f'<tr class="cut"><td colspan="4">selection cut: top {percent}% keeps {summary.selected} of '
           f"{summary.count}</td></tr>")
    rows = []
    if summary.selected == 0:
        rows.append(cut)
    for rank, (module, score) in enumerate(summary.ranked, start=1):
        chosen = rank <= summary.selected
        embedding = not chosen and any(re.search(line, f"{module}.weight") for line in embeddings)
        row_class = ' class="selected"' if chosen or embedding else ""
        mark = "selected" if chosen else "in the YAML with the embeddings" if embedding else ""
        rows.append(
            f'<tr{row_class}><td class="num">{rank}</td><td class="mono">{_e(module)}'
            f'</td><td class="num">{score:.6g}</td><td>{mark}</td></tr>'
        )
        if rank == summary.selected:
            rows.append(cut)
    return (
        f'<h3 id="{_e(summary.type)}">{_e(summary.type)}</h3>'
        f'<p class="stats">{summary.count} matrices, {summary.selected} selected; score min {summary.min:.4g}, '
        f"median {summary.median:.4g}, max {summary.max:.4g}</p>"
        '<table><tr><th class="num">rank</th><th>module</th><th class="num">score</th><th></th></tr>'
        + "".join(rows) + "</table>"
    )
