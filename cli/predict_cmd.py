"""`geoadapt predict`: large-raster prediction to a COG, locally (the same function the workers call)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def parse_predict_region(text: str | None):
    """``window=COL,ROW,WIDTH,HEIGHT`` (pixels), ``columns=LO,HI;rows=LO,HI`` (fractions) or an AOI file."""
    if not text:
        return None
    if text.startswith("window="):
        try:
            c, r, w, h = (int(v) for v in text.removeprefix("window=").split(","))
        except ValueError:
            raise typer.BadParameter(f"expected window=COL,ROW,WIDTH,HEIGHT in pixels, got {text!r}",
                                     param_hint="--region") from None
        return (c, r, w, h)
    from core.jobspec import RegionSpec
    from cli.local_cmd import parse_region

    return RegionSpec.model_validate(parse_region(text), context={"base_dir": Path.cwd()})


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""

    @app.command()
    def predict(
        bundle: Path = typer.Argument(..., help="model bundle, job output folder, or bundle zip", metavar="BUNDLE"),
        inputs: List[Path] = typer.Argument(
            ..., help="INPUT: the raster to predict; several single-band files are stacked in order", metavar="INPUT..."
        ),
        output: Path = typer.Argument(..., help="the class COG to write (replaced atomically)", metavar="OUTPUT"),
        window: int = typer.Option(256, "--window", help="window side in pixels"),
        overlap: int = typer.Option(32, "--overlap", help="pixels shared by neighbouring windows"),
        blend: str = typer.Option("hann", "--blend", help="none | average | hann"),
        batch_size: int = typer.Option(4, "--batch-size", help="windows per forward pass"),
        tta: bool = typer.Option(False, "--tta/--no-tta", help="average over horizontal/vertical flips"),
        precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16"),
        stats: str = typer.Option(
            "auto", "--stats", help="normalisation: auto (the bundle's default), target, source, input (the image's own)"
        ),
        nodata: Optional[float] = typer.Option(None, "--nodata", help="treat this value as nodata in every band"),
        region: Optional[str] = typer.Option(
            None, "--region", help="window=COL,ROW,W,H (pixels), columns=LO,HI;rows=LO,HI (fractions), or an AOI file"
        ),
        probabilities: bool = typer.Option(
            False, "--probabilities/--no-probabilities", help="also write <output>_probs.tif (uint8, p x 254)"
        ),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if present)"),
        streams: Optional[int] = typer.Option(
            None, "--streams", help="batches in the model at once (default: CPU one per core up to 4, GPU 1)"
        ),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch threads per stream"),
        engine: str = typer.Option(
            "torch", "--engine",
            help="torch | onnxruntime (CPU, the bundle's model.onnx, exported into the bundle first when it has none)"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    ) -> None:
        """Predict a raster of any size into a tiled COG with overviews: class ids, the class colours and
        names, nodata where the input has no valid data, the input's CRS and transform."""
        from core.raster.prediction_windows import PredictOptions

        opts = PredictOptions(
            window=window, overlap=overlap, blend=blend, batch_size=batch_size, tta=tta, precision=precision,
            stats=stats, nodata=nodata, region=parse_predict_region(region), probabilities=probabilities,
            device=device, streams=streams, threads=threads, engine=engine,
        ).validate()  # bad options fail before torch loads

        from tqdm import tqdm

        from models.inference import predict_raster

        source = inputs[0] if len(inputs) == 1 else inputs
        bar = tqdm(desc="predict", unit="win", disable=not progress, dynamic_ncols=True)

        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            result = predict_raster(bundle, source, output, opts, progress=on_progress)
        finally:
            bar.close()
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=1))
            return
        mpx = result.pixels / 1e6
        typer.echo(
            f"wrote {result.output} ({mpx:.1f} Mpx, {result.windows} windows, {result.skipped} all-nodata skipped, "
            f"statistics: {result.stats}, {result.seconds:.1f} s, {mpx / max(result.seconds, 1e-9):.2f} Mpx/s)"
        )
        if result.probabilities:
            typer.echo(f"probabilities: {result.probabilities}")
