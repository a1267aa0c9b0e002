"""`python -m spectrum` runs the command line."""

from ._entry import run

run()
