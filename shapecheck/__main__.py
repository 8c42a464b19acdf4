"""`python -m shapecheck`: the same as the `shapecheck` command."""

from .cli import entry

entry()
