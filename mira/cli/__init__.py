"""The front door: the ``mira`` command line, one module per command group.

``root`` holds the Typer app, the global flags and ``main``; the other modules each register
their commands on it. Nothing below ``mira.cli`` is imported by storage/, tasks/ or flows/.
"""

from mira.cli.root import app, main, register_commands

__all__ = ["app", "main", "register_commands"]
