"""Local commands that run jobs without the service: run, evaluate, configs."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
