"""`geoadapt demo`: the README's run command, the most complete real flow that exists.

Today: fetch the real NC Landsat-7 scene, build Benchmark A's shifted target from it, validate both
domains with the registration checks, and print their per-band statistics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    dir: Optional[Path] = typer.Option(
        None, "--dir", help="folder for the demo's files (default: the geoadapt data cache)"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of Benchmark A's simulated shift"),
) -> None:
    """Run the main flow on real data: NC Landsat-7 source, its shifted copy as the target."""
    from core.data.demo import format_table, prepare_demo

    def say(msg: str) -> None:
        typer.secho(f"[demo] {msg}", fg="cyan", err=True)

    result = prepare_demo(dir, seed=seed, log=say)
    paths = result["paths"]
    typer.echo("\nSource domain (NC Landsat-7 ETM+, 2000; six band files stacked):")
    for p in paths["source_bands"]:
        typer.echo(f"  {p}")
    typer.echo(f"  labels: {paths['labels']}")
    typer.echo(f"Target domain (Benchmark A sensor + atmosphere shift, seed {seed}):\n  {paths['target']}")
    for name, report in result["validation"].items():
        typer.echo(f"\nValidation of the {name} domain:")
        for line in _report_lines(report):
            typer.echo(f"  {line}")
    typer.echo("\nPer-band statistics over valid pixels (DN):")
    typer.echo(format_table(result["table"]))
    v = result["valid_pixels"]
    typer.echo(f"valid pixels: source {v['source']:,}, target {v['target']:,}")


def _report_lines(report, indent: str = "") -> list[str]:
    """A validation report as indented lines, one fact per line, whatever its nesting."""
    if not isinstance(report, dict):
        return [f"{indent}{_short(report)}"]
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines += _report_lines(value, indent + "  ")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                lines.append(f"{indent}{key}[{i}]:")
                lines += _report_lines(item, indent + "  ")
        else:
            lines.append(f"{indent}{key}: {_short(value)}")
    return lines


def _short(value) -> str:
    if isinstance(value, list) and value and all(isinstance(v, (str, Path)) for v in value):
        value = [Path(str(v)).name for v in value]  # the folders are printed above
    text = str(value)
    return text if len(text) <= 100 else text[:97] + "..."
