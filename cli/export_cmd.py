"""`geoadapt export`: a model bundle's network in another format (ONNX, with the QGIS Deepness plugin's metadata)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

FORMATS = ("onnx",)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""

    @app.command()
    def export(
        bundle: Path = typer.Argument(..., help="model bundle, job output folder, or bundle zip", metavar="BUNDLE"),
        out: Path = typer.Option(..., "--out", help="the file to write (replaced atomically)", metavar="MODEL.onnx"),
        format: str = typer.Option("onnx", "--format", help="onnx"),
        tile_size: int = typer.Option(256, "--tile-size", min=32, help="tile size in pixels the metadata suggests"),
        overlap: int = typer.Option(32, "--overlap", min=0, help="overlap in pixels the metadata suggests"),
        static_size: Optional[int] = typer.Option(
            None, "--static-size", min=32,
            help="fixed input height and width (a multiple of 32) for tools that need one; default: dynamic"),
        resolution: Optional[float] = typer.Option(
            None, "--resolution", min=0.0, help="cm per pixel for the metadata (default: the training imagery's)"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        """Export the network that predicts (ST-DASegNet: both students, the DDM and the mean of both decoders)
        as ONNX: input `image` (batch, bands, height, width), normalised with the bundle's default statistics;
        output `probabilities` per class. Metadata for QGIS's Deepness plugin: model type, class names and
        colours, resolution, tile size and overlap, standardisation."""
        from core.errors import ConfigError

        if format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}", field="format")
        if static_size is not None and static_size % 32:
            raise ConfigError(f"--static-size must be a multiple of 32, got {static_size}", field="static_size")
        from models.onnx_export import export_onnx

        r = export_onnx(bundle, out, tile_size=tile_size, overlap=overlap, static_size=static_size,
                        resolution_cm=resolution)
        if as_json:
            typer.echo(json.dumps({"path": str(r.path), "exporter": r.exporter, "max_abs_diff": r.max_abs_diff,
                                   "metadata": r.metadata}, indent=1))
            return
        names = ", ".join(r.metadata["class_names"].values())
        typer.echo(f"wrote {r.path} ({r.path.stat().st_size / 1e6:.1f} MB, {r.exporter} exporter; onnxruntime "
                   f"within {r.max_abs_diff:.1g} of torch); classes: {names}")
