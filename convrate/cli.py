"""Command line of convrate (typer + rich). Filled in command by command."""
from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="convrate: convergence-rate control, derived, checked exactly, audited.")


@app.callback()
def _root() -> None:
    """convrate command line."""


def main() -> None:
    app()
