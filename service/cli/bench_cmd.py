"""`geoadapt bench adapt|predict`: the project's benchmarks (see shared design benchmarks.md)."""
from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Benchmarks that print and write their figures.", no_args_is_help=True)
