"""`geoadapt predict`: large-raster prediction to a COG, locally."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
