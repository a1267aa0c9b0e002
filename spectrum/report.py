"""Everything the user sees on the terminal: progress, warnings and the summary, on stderr via rich."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .scores import Scores

console = Console(stderr=True, highlight=False)


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"[yellow]warning:[/] {record.getMessage()}", markup=True, soft_wrap=True)


def install_log_handler() -> None:
    """Send the library's warnings to stderr as `warning: ...` lines."""
    logger = logging.getLogger("spectrum")
    if not any(isinstance(handler, _ConsoleHandler) for handler in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(logging.WARNING)


@contextmanager
def scan_progress(model: str, *, enabled: bool) -> Iterator:
    """A progress bar for a scan (matrices done of total, GB read, ETA); yields the callback.

    Only on a terminal: logs and pipes get the summary alone.
    """
    if not enabled or not console.is_terminal:
        yield None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[matrices]} matrices"),
        TextColumn("{task.fields[gigabytes]:.2f} GB read"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task(f"scanning {model}", total=None, gigabytes=0.0, matrices="")

    def on_progress(done: int, total: int, nbytes: int) -> None:
        progress.update(task, completed=done, total=total, gigabytes=nbytes / 1e9, matrices=f"{done}/{total}")

    with progress:
        yield on_progress


def format_types(types: dict[str, dict], default_types: set[str]) -> str:
    """The checkpoint's matrix types with counts and shapes, as aligned plain text (for --list-types)."""
    rows = [("type", "count", "shapes", "default")]
    for type_name, entry in types.items():
        shapes = ", ".join("x".join(str(d) for d in shape) for shape in entry["shapes"])
        rows.append((type_name, str(entry["count"]), shapes, "yes" if type_name in default_types else "no"))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"


def print_summary(
    scores: Scores,
    selection: dict[str, list[str]],
    *,
    top_percent: str,
    scanned: bool,
    seconds: float,
    scores_file: str,
    yaml_file: str,
) -> None:
    """Matrices per type, how many selected, the time taken and where the files are."""
    console.print(f"[bold]{scores.model}[/]: top {top_percent}% of each module type", soft_wrap=True)
    table = Table()
    table.add_column("type")
    table.add_column("matrices", justify="right")
    table.add_column("selected", justify="right")
    counts: dict[str, int] = {}
    for score in scores.entries.values():
        counts[score.type] = counts.get(score.type, 0) + 1
    for type_name, modules in selection.items():
        table.add_row(type_name, str(counts.get(type_name, 0)), str(len(modules)))
    total_selected = sum(len(modules) for modules in selection.values())
    total = sum(counts.get(type_name, 0) for type_name in selection)
    table.add_row("[bold]all", f"[bold]{total}", f"[bold]{total_selected}")
    console.print(table)
    how = "scanned" if scanned else "cached scores reused"
    console.print(f"{how} in {seconds:.1f} s")
    console.print(f"scores:    {scores_file}", soft_wrap=True)
    console.print(f"selection: {yaml_file}", soft_wrap=True)
