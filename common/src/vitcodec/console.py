"""Console output shared by the command lines (``vitcodec``, ``vitcodec-edge``); rich only, no torch.

Errors are one ``error:`` line on stderr, never wrapped and with markup escaped (paths may hold [brackets]),
so scripts can grep them and a terminal's width never splits them.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape


def stderr_console() -> Console:
    """Where progress bars and messages go, so stdout carries only results."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def table_console() -> Console:
    """Stdout for tables: the terminal's width, or 200 columns in a pipe so whole paths survive."""
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def error_line(message: str) -> None:
    """One line on stderr, whatever the terminal width."""
    stderr_console().print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)


def abort(message: str, code: int = 2) -> NoReturn:
    """Print one error line and leave the command with `code` (2: nothing was done)."""
    error_line(message)
    raise typer.Exit(code)
