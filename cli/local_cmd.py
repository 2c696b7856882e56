"""Local commands that run jobs without the service: run, evaluate, configs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def parse_region(text: str | None) -> dict | None:
    """``columns=0.6,1`` / ``rows=0,0.5;columns=0.2,0.8`` (fractions) or a GeoJSON/GeoPackage AOI path."""
    if not text:
        return None
    if Path(text).expanduser().exists():
        return {"aoi": str(Path(text).expanduser())}
    region: dict = {}
    for part in text.replace(" ", ";").split(";"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if key not in ("columns", "rows") or not value:
            raise typer.BadParameter(f"expected columns=LO,HI and/or rows=LO,HI or an AOI file, got {part!r}",
                                     param_hint="--region")
        try:
            lo, hi = (float(v) for v in value.replace(":", ",").split(","))
        except ValueError:
            raise typer.BadParameter(f"{key} needs two fractions, got {value!r}", param_hint="--region") from None
        region[key] = [lo, hi]
    return region or None


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""

    @app.command()
    def run(
        job: Path = typer.Argument(..., help="job spec (YAML or JSON)", exists=True, dir_okay=False),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from <output>/checkpoints"),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if present)"),
        threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch"),
    ) -> None:
        """Run a train, adapt, pretrain or evaluate job locally (no service): bundle in <output>/bundle (a pretrain
        job's weights in <output>/pretrained.pth), metrics in <output>/metrics.json. Ctrl-C stops cooperatively
        after a checkpoint; run again to resume."""
        import signal

        from core.jobspec import load_job_spec

        spec = load_job_spec(job)
        import torch

        from models.training.callbacks import StopFlag, TqdmProgress
        from workers.pipelines.dispatch import run_job

        if threads:
            torch.set_num_threads(threads)
        stop = StopFlag()

        def on_sigint(signum, frame):
            typer.echo("\nstopping after this iteration (checkpointing)...", err=True)
            stop.set()
            signal.signal(signal.SIGINT, previous)  # a second Ctrl-C interrupts for real

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            result = run_job(spec, [TqdmProgress(desc=spec.type, keys=("loss",)), stop], resume=resume,
                             device=device, log=lambda m: typer.echo(m, err=True))
        finally:
            signal.signal(signal.SIGINT, previous)
        if result["status"] == "stopped":
            kept = (f"checkpoint {result['checkpoint']} (run the same command again to resume)"
                    if result.get("checkpoint") else "nothing written (run the same command again to start over)")
            typer.echo(f"stopped at iteration {result['iteration']}/{result['total']}; {kept}")
            raise typer.Exit(3)
        if "bundle" in result:
            typer.echo(f"bundle: {result['bundle']}")
        if "pretrained" in result:  # a pretrain job: model.checkpoint of a later job names it (or its folder)
            typer.echo(f"pretrained weights: {result['pretrained']}")
        typer.echo(f"metrics: {result['metrics_path']}")

    @app.command()
    def evaluate(
        bundle: Path = typer.Argument(..., help="model bundle, job output folder, or bundle zip"),
        image: List[Path] = typer.Option(..., "--image", help="image to score; repeat for single-band files in order"),
        labels: Path = typer.Option(..., "--labels", help="label raster (class ids, RGB colours) or vector labels"),
        region: Optional[str] = typer.Option(None, "--region",
                                             help="columns=LO,HI and/or rows=LO,HI (fractions), or an AOI file"),
        stats: str = typer.Option("default", "--stats",
                                  help="normalisation: default (the bundle's), source, target, own (the image's)"),
        out: Path = typer.Option(Path("metrics.json"), "--out", help="where to write the metrics JSON"),
        label_property: Optional[str] = typer.Option(None, "--label-property", help="vector labels: class attribute"),
    ) -> None:
        """Score a model on a labelled image: per-class IoU/F1, mIoU and mF1 over the classes present in the
        ground truth, OA, confusion matrix (counts pooled over the whole image or region)."""
        from core.jobspec import DomainSpec
        from core.raster.domain import Domain
        from models.bundle import load_bundle
        from models.evaluate import evaluate_domain, segmentor_predict_fn
        from models.metrics import format_metrics
        from core.files import write_json

        b = load_bundle(bundle)
        scene = {"image": str(image[0])} if len(image) == 1 else {"bands": [str(p) for p in image]}
        scene["labels"] = str(labels)
        if label_property:
            scene["label_property"] = label_property
        body = {"scenes": [scene]}
        reg = parse_region(region)
        if reg:
            body["region"] = reg
        dspec = DomainSpec.model_validate(body, context={"base_dir": Path.cwd()})
        with Domain.open(dspec, b.classes, field="image") as dom:
            if dom.band_count != b.band_count:
                from core.errors import BandCountMismatchError

                raise BandCountMismatchError(f"the image has {dom.band_count} bands, the model takes {b.band_count}",
                                             field="--image")
            normalizer = b.normalization.for_prediction(None if stats == "default" else stats, input_stats=dom.stats)
            metrics = evaluate_domain(segmentor_predict_fn(b.segmentor, normalizer), dom, [c.name for c in b.classes])
        metrics["stats"] = normalizer.name
        metrics["bundle"] = str(b.path)
        metrics["image"] = [str(p) for p in image]
        metrics["region"] = reg
        typer.echo(format_metrics(metrics))
        write_json(out, metrics)
        typer.echo(f"written: {out}")

    @app.command()
    def configs(
        name: Optional[str] = typer.Argument(None, help="show this config, resolved (JSON)"),
        method: str = typer.Option("source-only", "--method", help="adaptation block to show with NAME"),
    ) -> None:
        """List the model configs a job may name (model.config), or show one."""
        from models.config import describe_config, list_configs, load_config, select_adaptation

        if name:
            typer.echo(json.dumps(select_adaptation(load_config(name), method), indent=1, default=str))
            return
        names = list_configs()
        width = max(len(n) for n in names)
        for n in names:
            typer.echo(f"{n:<{width}}  {describe_config(n)}")
