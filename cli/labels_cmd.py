"""`geoadapt labels suggest|consensus`: which target windows to label next, and one label map from several annotators."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Labels: windows worth labelling, and consensus labels from several annotators.",
                  no_args_is_help=True)

SUGGEST_FORMATS = (".gpkg", ".geojson", ".json")


@app.command("suggest")
def suggest(
    bundle: Path = typer.Argument(..., help="model bundle, job output folder, or bundle zip", metavar="BUNDLE"),
    target: List[Path] = typer.Argument(
        ..., help="TARGET: the target image; several single-band files are stacked in order", metavar="TARGET..."),
    count: int = typer.Option(10, "--count", help="how many windows to suggest"),
    out: Path = typer.Option(..., "--out", help="GeoPackage (.gpkg, image CRS) or GeoJSON (.geojson, WGS84) to write",
                             metavar="WINDOWS.gpkg"),
    window: Optional[int] = typer.Option(
        None, "--window", help="side of each window in pixels, a multiple of 4 (default: the largest of 256, 128, "
                               "64, 32 whose COUNT windows cover at most a quarter of the region)"),
    diversity: float = typer.Option(0.5, "--diversity", help="0..1: how much a class mix already chosen counts less"),
    min_valid: float = typer.Option(0.5, "--min-valid", help="least share of valid pixels in a window"),
    region: Optional[str] = typer.Option(
        None, "--region", help="window=COL,ROW,W,H (pixels), columns=LO,HI;rows=LO,HI (fractions), or an AOI file"),
    stats: str = typer.Option("auto", "--stats", help="normalisation: auto (the bundle's default), target, source, input"),
    nodata: Optional[float] = typer.Option(None, "--nodata", help="treat this value as nodata in every band"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if present)"),
    as_json: bool = typer.Option(False, "--json", help="print the suggestions as JSON"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Rank COUNT non-overlapping windows of the target image by the model's uncertainty (mean entropy, and the
    two students' disagreement for ST-DASegNet) with a penalty for class mixes already chosen, and write them
    as polygons with their rank, score, entropy, disagreement and predicted class mix, ready to label in QGIS."""
    from core.errors import ConfigError

    if out.suffix.lower() not in SUGGEST_FORMATS:
        raise ConfigError(f"--out must end in .gpkg or .geojson, got {out.name}", field="out")
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}", field="count")
    from cli.predict_cmd import parse_predict_region

    reg = parse_predict_region(region)
    from tqdm import tqdm

    from core.raster.vector_write import write_geojson, write_gpkg
    from models.label_suggestions import suggest_windows

    bar = tqdm(desc="suggest", unit="win", disable=not progress, dynamic_ncols=True)

    def on_progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        res = suggest_windows(bundle, target[0] if len(target) == 1 else target, count, window=window, region=reg,
                              stats=stats, diversity=diversity, min_valid=min_valid, nodata=nodata, device=device,
                              progress=on_progress)
    finally:
        bar.close()
    if out.suffix.lower() == ".gpkg":  # in the image's CRS
        write_gpkg(out, res.features(), res.crs, layer="suggestions")
    else:  # GeoJSON: WGS84 (RFC 7946)
        write_geojson(out, res.to_geojson())
    if len(res) < count:
        typer.secho(f"only {len(res)} non-overlapping {res.window} px windows with enough valid pixels fit; "
                    f"asked for {count}", err=True, fg="yellow")
    if as_json:
        typer.echo(json.dumps({"path": str(out), **res.summary()}, indent=1, default=str))
        return
    typer.echo(f"wrote {out}: {len(res)} windows of {res.window} px, ranked from {res.candidates} candidates "
               f"({'entropy and student disagreement' if res.two_networks else 'entropy'})")
    for s in res.suggestions[:5]:
        typer.echo(f"  #{s.rank}: col {int(s.window.col_off)} row {int(s.window.row_off)} score {s.score:.3f} "
                   f"entropy {s.entropy:.3f}" + (f" disagreement {s.disagreement:.3f}" if s.disagreement is not None
                                                else ""))


def _class_list(text: Optional[str]):
    if not text:
        return None
    from core.jobspec import ClassSpec
    from core.raster.annotations import PALETTE

    try:
        ids = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected class ids like 1,2,3, got {text!r}", param_hint="--classes") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise typer.BadParameter(f"expected distinct non-negative class ids, got {text!r}", param_hint="--classes")
    return [ClassSpec(id=i, name=str(i), color=PALETTE[n % len(PALETTE)]) for n, i in enumerate(ids)]


@app.command("consensus")
def consensus(
    annotations: List[Path] = typer.Argument(
        ..., help="ANNOTATION: label rasters (nodata = not annotated) or vector files, any grid", metavar="ANNOTATION..."),
    image: List[Path] = typer.Option(..., "--image", help="the image (repeat for single-band files, stacked in order)",
                                     metavar="IMG"),
    out: Path = typer.Option(..., "--out", help="the label GeoTIFF to write (COG); <out>_disagreement.tif and "
                                                "<out>_scores.json go beside it", metavar="LABELS.tif"),
    classes: Optional[str] = typer.Option(None, "--classes", help="class ids, e.g. 1,2,3 (default: those the "
                                                                  "annotations use)"),
    label_property: Optional[str] = typer.Option(None, "--label-property",
                                                 help="vector annotations: the attribute with the class id"),
    smoothness: float = typer.Option(0.25, "--smoothness", help="Potts weight between similar neighbours (votes)"),
    image_weight: float = typer.Option(0.05, "--image-weight", help="weight of the image classifier's vote"),
    nodata: Optional[float] = typer.Option(None, "--nodata", help="treat this value as nodata in every image band"),
    as_json: bool = typer.Option(False, "--json", help="print the scores as JSON"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress"),
) -> None:
    """One label map from several annotators: each annotator's self-consistency score against the image's own
    structure, missing annotations predicted from the others and the image, and a second-order MRF with those
    scores as penalties solved by graph cuts (alpha-expansion). Writes the labels, a disagreement map and the
    scores."""
    from core.errors import ConfigError

    if len(annotations) < 2:
        raise ConfigError(f"give at least two annotations, got {len(annotations)}", field="annotations")
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"--out must be a GeoTIFF (.tif), got {out.name}", field="out")
    if any(out.resolve() == p.resolve() for p in [*annotations, *image]):
        raise ConfigError(f"--out {out} is one of the inputs; choose another path", field="out")
    class_list = _class_list(classes)
    from tqdm import tqdm

    from models.consensus.consensus import ConsensusOptions
    from models.consensus.run import run_consensus

    steps = ["features", "self-consistency scores", "missing annotations", "image classifier", "graph cuts"]
    bar = tqdm(total=len(steps), desc="consensus", disable=not progress, dynamic_ncols=True)

    def on_step(name: str) -> None:
        bar.set_postfix_str(name)
        bar.n = steps.index(name) if name in steps else bar.n
        bar.refresh()

    try:
        r = run_consensus(annotations, image[0] if len(image) == 1 else image, out, classes=class_list,
                          label_property=label_property, nodata=nodata, progress=on_step,
                          options=ConsensusOptions(smoothness=smoothness, image_weight=image_weight))
        bar.n = len(steps)
        bar.refresh()
    finally:
        bar.close()
    if as_json:
        typer.echo(json.dumps({"labels": str(r.labels), "disagreement": str(r.disagreement), "scores": str(r.scores),
                               **r.report}, indent=1))
        return
    typer.echo(f"wrote {r.labels}, {r.disagreement.name}, {r.scores.name}")
    for name in r.report["ranking"]:
        a = r.report["annotators"][name]
        typer.echo(f"  {name}: score {a['score']:.3f} = self-consistency {a['self_consistency']:.3f} x agreement "
                   f"with the consensus {a['agreement']:.1%} (weight {a['weight']:.2f}), "
                   f"labelled {a['labelled_fraction']:.0%}")
