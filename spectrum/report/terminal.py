"""Everything the user sees on the terminal: progress, warnings and the summary, on stderr via rich."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..naming import printable
from .summary import TypeSummary

console = Console(stderr=True, highlight=False)
if not console.is_terminal and not os.environ.get("COLUMNS"):
    console.width = 1000  # a log or a pipe: Rich's 80 columns would fold the summary's columns to fragments


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:  # the message names tensors, files and models: text, never markup
            console.print(f"[yellow]warning:[/] {escape(printable(record.getMessage()))}", markup=True, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's own rule: a failing handler must not fail the caller
            self.handleError(record)


def install_log_handler() -> None:
    """Send the library's warnings to stderr as `warning: ...` lines."""
    logger = logging.getLogger("spectrum")
    if not any(isinstance(handler, _ConsoleHandler) for handler in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(logging.WARNING)


def shorten_middle(text: str, width: int) -> str:
    """`text` in at most `width` characters, its middle replaced by `…` when it is longer."""
    if len(text) <= width:
        return text
    if width <= 1:
        return "…"[:max(width, 0)]
    head, tail = width // 2, (width - 1) // 2
    return text[:head] + "…" + (text[-tail:] if tail else "")


# The progress line's columns besides the description and the bar: "100%", the counts (sized by the
# total), "2.50 GB read", elapsed and remaining time (h:mm:ss; one more digit from ten hours up, rare
# enough to cost the name a character then), and one space between each two of the 7 columns.
_TIME_WIDTH, _GAPS, _BAR_MIN, _BAR_MAX = len("0:00:00"), 6, 10, 40


def progress_layout(model: str, width: int, total: int | None, gigabytes: float = 0.0) -> tuple[str, int]:
    """The description and the bar width that fit the progress line in `width` columns: counts, GB and
    times stay whole; the bar shrinks first, then the model name loses its middle."""
    counts = len(f"{total or 0}/{total or 0} matrices")
    read = len(f"{gigabytes:.2f} GB read")
    room = width - 1 - (4 + counts + read + 2 * (_TIME_WIDTH + 1) + _GAPS)  # 1: the terminal's last column;
    # +1 a time: h:mm:ss from ten hours up
    description = f"scanning {model}"
    bar = max(_BAR_MIN, min(_BAR_MAX, room - len(description)))
    room -= bar
    if len(description) > room:
        prefix = "scanning " if room - len("scanning ") >= 12 else ""
        description = prefix + shorten_middle(model, max(room - len(prefix), 1))
    return description, bar


def _progress(model: str, console: Console) -> tuple[Progress, object]:
    """The progress display and its callback (the layout is fitted to the console on each update)."""
    description, bar_width = progress_layout(printable(model), console.width, None)
    bar = BarColumn(bar_width=bar_width)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        bar,
        TaskProgressColumn(),
        TextColumn("{task.fields[matrices]} matrices"),
        TextColumn("{task.fields[gigabytes]:.2f} GB read"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task(escape(description), total=None, gigabytes=0.0, matrices="")

    def on_progress(done: int, total: int, nbytes: int) -> None:
        text, bar.bar_width = progress_layout(model, console.width, total, nbytes / 1e9)
        progress.update(task, description=escape(text), completed=done, total=total, gigabytes=nbytes / 1e9,
                        matrices=f"{done}/{total}")

    return progress, on_progress


@contextmanager
def scan_progress(model: str, *, enabled: bool, console: Console = console) -> Iterator:
    """A progress bar for a scan (matrices done of total, GB read, ETA); yields the callback.

    Only on a terminal: logs and pipes get the summary alone.
    """
    if not enabled or not console.is_terminal:
        yield None
        return
    progress, on_progress = _progress(model, console)
    with progress:
        yield on_progress


def format_types(types: dict[str, dict], default_types: set[str]) -> str:
    """The checkpoint's matrix types with counts and shapes, as aligned plain text (for --list-types)."""
    rows = [("type", "count", "shapes", "default")]
    for type_name, entry in types.items():
        shapes = ", ".join("x".join(str(d) for d in shape) for shape in entry["shapes"])
        rows.append((printable(type_name), str(entry["count"]), shapes, "yes" if type_name in default_types else "no"))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"


def print_summary(
    model: str,
    summaries: list[TypeSummary],
    *,
    top_percent: str,
    scanned: bool,
    seconds: float,
    scores_file: str,
    yaml_file: str,
) -> None:
    """One row per type (count, selected, min / median / max score, selected layers), the time and the files."""
    console.print(f"[bold]{escape(printable(model))}[/]: top {top_percent}% of each module type", soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("type", no_wrap=True)
    for name in ("count", "selected", "min", "median", "max"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("selected layers", overflow="fold")
    for summary in summaries:
        table.add_row(
            escape(printable(summary.type)) + (" (fused)" if summary.matrices is not None else ""), str(summary.count),
            str(summary.selected), f"{summary.min:.4g}", f"{summary.median:.4g}", f"{summary.max:.4g}",
            summary.layer_ranges or "-",
        )
    total = sum(summary.count for summary in summaries)
    selected = sum(summary.selected for summary in summaries)
    table.add_row("[bold]all", f"[bold]{total}", f"[bold]{selected}", "", "", "", "")
    console.print(table)
    how = "scanned" if scanned else "cached scores reused"
    fused = [summary for summary in summaries if summary.matrices is not None]
    if fused:
        scored = sum(summary.matrices or summary.count for summary in summaries)
        held = ", ".join(f"{printable(s.type)}: {s.matrices} in {s.count}" for s in fused[:3]) + (", ..." if len(fused) > 3 else "")
        console.print(f"fused: each row of a fused type is one layer's 3-D expert tensor, ranked by the mean score of the "
                      f"expert matrices it holds ({held}); the trainer unfreezes it whole, as the YAML does",
                      soft_wrap=True, markup=False)
        console.print(f"{how} in {seconds:.1f} s: {selected} of {total} tensors selected "
                      f"({scored} matrices scored; a fused expert tensor counts once)")
    else:
        console.print(f"{how} in {seconds:.1f} s: {selected} of {total} matrices selected")
    console.print(f"scores:    {printable(scores_file)}", soft_wrap=True, markup=False)
    console.print(f"selection: {printable(yaml_file)}", soft_wrap=True, markup=False)


def print_status(position: int, count: int, model: str, message: str, *, ok: bool) -> None:
    """One line per model of a several-model run: `[2/3] ok      org/name: ...` or `[3/3] failed  ...`."""
    label = "[green]ok    [/]" if ok else "[red]failed[/]"
    console.print(f"[{position}/{count}] {label}  {escape(printable(model))}: {escape(printable(message))}", soft_wrap=True)


def print_line(text: str) -> None:
    """A plain line on stderr (no markup; anything not printable escaped)."""
    console.print(printable(text), markup=False, soft_wrap=True)


def ask(prompt: str) -> str:
    """Read one answer from the terminal, with `prompt` on stderr."""
    return console.input(escape(printable(prompt)))
