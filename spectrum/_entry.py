"""The `spectrum` command's entry point: Ctrl-C at any moment is exit 130 without a traceback.

The command line imports rich, NumPy and the rest of the package before `spectrum.cli.main` can
catch anything; a Ctrl-C during those imports would print a KeyboardInterrupt traceback. This module
imports nothing heavy itself (the package `__init__` is lazy), so its `main` is running before they
start. A Ctrl-C during the interpreter's own start-up, before any of our code runs, is Python's.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def main(argv: list[str] | None = None) -> int:
    try:
        from .cli import main as cli_main

        return cli_main(argv)
    except KeyboardInterrupt:  # before the command line could catch it (importing), or as it returned
        try:
            sys.stderr.write("spectrum: interrupted\n")
            sys.stderr.flush()
        except (OSError, ValueError, KeyboardInterrupt):
            pass
        return INTERRUPTED


def run() -> None:
    """`python -m spectrum` and the console script: exit with main()'s code, Ctrl-C included."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = INTERRUPTED
    if code == INTERRUPTED:
        # A Ctrl-C that landed while Python ran `exec` on a string (dataclasses build their methods
        # so, on import) leaves CPython set to end the process by SIGINT at exit, whatever the exit
        # code: leave now, with 130, once the streams are flushed (every file of ours is closed).
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError, KeyboardInterrupt):
                pass
        os._exit(INTERRUPTED)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done: a late Ctrl-C does not change the exit code
    raise SystemExit(code)
