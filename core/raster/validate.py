"""Validation of a job's data at registration: every problem a typed error naming the spec field.

Checks, per scene: the files open and are images, declared sizes are within the limit, every block
reads (truncation), band counts agree within a domain, across domains and with the model, labels
are readable, overlap the image, and hold only class values, regions select valid pixels, and CRSs
exist wherever something must be placed on another grid. Returns a report for the job record.
"""
from __future__ import annotations

from core.errors import BandCountMismatchError, EmptyRegionError, GeoadaptError, MissingCRSError, NoOverlapError
from core.raster.domain import Domain, DomainScene
from core.raster.grid import gsd_ratio, iter_blocks, should_match_gsd
from core.raster.scene import DEFAULT_MAX_PIXELS
from core.raster.warp import bounds_in, crs_name

DOMAINS = ("source", "target", "validation")


def validate_job_inputs(
    spec,
    expected_bands: int | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    deep: bool = True,
    block: int = 1024,
) -> dict:
    """Validate every domain of a JobSpec; raise the first problem as a typed error, else a report.

    ``expected_bands``: the model's band count (a bundle's), when known. ``deep``: read every block
    (finds truncated files; costs one pass over the data).
    """
    report: dict = {"domains": {}, "warnings": []}
    opened: dict[str, Domain] = {}
    try:
        for name in DOMAINS:
            dspec = getattr(spec, name, None)
            if dspec is None:
                continue
            dom = Domain.open(dspec, spec.classes, max_pixels=max_pixels, field=name)
            opened[name] = dom
            report["domains"][name] = validate_domain(
                dom, field=name, expected_bands=expected_bands, deep=deep, block=block
            )
        _check_across(spec, opened, report)
    finally:
        for dom in opened.values():
            dom.close()
    return report


def validate_domain(
    dom: Domain, *, field: str = "domain", expected_bands: int | None = None, deep: bool = True, block: int = 1024
) -> dict:
    """Checks on one opened domain (see the module docstring); returns its part of the report."""
    scenes = []
    first = dom.items[0]
    for it in dom.items:
        f = f"{field}.scenes.{it.index}"
        if it.scene.count != first.scene.count:
            raise BandCountMismatchError(
                f"scene {it.scene.name} has {it.scene.count} bands but {first.scene.name} has {first.scene.count}; "
                f"all scenes of a domain need the same bands",
                field=f,
            )
        if expected_bands is not None and it.scene.count != expected_bands:
            raise BandCountMismatchError(
                f"scene {it.scene.name} has {it.scene.count} bands but the model expects {expected_bands}", field=f
            )
        try:
            scenes.append(_validate_scene(it, deep=deep, block=block))
        except GeoadaptError as e:
            if not e.field:
                e.field = f
            raise
    return {"band_count": first.scene.count, "gsd_m": dom.gsd, "scenes": scenes}


def _validate_scene(it: DomainScene, *, deep: bool, block: int) -> dict:
    scene = it.scene
    g = scene.grid
    info = {
        "paths": [str(p) for p in scene.paths],
        "width": g.width,
        "height": g.height,
        "bands": scene.count,
        "dtypes": scene.dtypes,
        "nodata": scene.nodata,
        "crs": crs_name(g.crs),
        "res": list(g.res),
        "gsd_m": g.gsd,
        "region": [int(it.region.col_off), int(it.region.row_off), int(it.region.width), int(it.region.height)],
    }
    if deep:
        n_valid = n_region_valid = 0
        for b in iter_blocks(g.full_window(), block):
            rw = scene.read(b)  # every block: a truncated or corrupt file fails here, not mid-job
            n_valid += int(rw.valid.sum())
            n_region_valid += int((rw.valid & it.in_region(b)).sum())
        info["valid_fraction"] = n_valid / (g.width * g.height)
        info["region_valid_pixels"] = n_region_valid
        if n_valid == 0:
            raise EmptyRegionError(f"scene {scene.name} has no valid pixel (all nodata or masked)")
        if n_region_valid == 0:
            raise EmptyRegionError(f"the region of scene {scene.name} holds no valid pixel")
    if it.labels is not None:
        lab = it.labels
        lab.check_values(block=block)
        summary = lab.summary(block=block)
        if summary["coverage"]["valid_labelled_fraction"] == 0.0:
            raise NoOverlapError(f"labels {lab.path.name} cover no valid pixel of image {scene.name}")
        info["labels"] = {"path": str(lab.path), **summary}
    return info


def _check_across(spec, opened: dict[str, Domain], report: dict) -> None:
    counts = {n: d.band_count for n, d in opened.items()}
    if len(set(counts.values())) > 1:
        a, b = list(counts)[:2]
        other = next(n for n in counts if counts[n] != counts[a])
        raise BandCountMismatchError(
            f"{other} scenes have {counts[other]} bands but {a} scenes have {counts[a]}; domains must share bands",
            field=other,
        )
    src, tgt = opened.get("source"), opened.get("target")
    if src is not None and tgt is not None:
        ratio = gsd_ratio(src.gsd, tgt.gsd)
        match = should_match_gsd(src.gsd, tgt.gsd, spec.params.match_gsd)
        report["gsd"] = {"source_m": src.gsd, "target_m": tgt.gsd, "ratio": ratio, "match": match}
        if match:
            report["warnings"].append(
                f"target GSD {tgt.gsd:.3g} m differs from source {src.gsd:.3g} m: the target is resampled to the "
                f"source GSD for training and prediction (params.match_gsd)"
            )
        if getattr(spec, "method", None) in ("feature-regression", "croco"):  # methods that pair the ground
            _check_pairs(src, tgt, "feature regression" if spec.method == "feature-regression" else spec.method)


def _check_pairs(src: Domain, tgt: Domain, method: str = "feature regression") -> None:
    """Feature regression (and CroCo pretraining) pair the same ground in both domains: both need CRSs and shared
    ground."""
    for name, dom in (("source", src), ("target", tgt)):
        for it in dom.items:
            if it.scene.grid.crs is None:
                raise MissingCRSError(
                    f"{method} pairs source and target ground, but scene {it.scene.name} has no CRS",
                    field=f"{name}.scenes.{it.index}",
                )
    for s in src.items:
        for t in tgt.items:
            a = s.grid.bounds
            b = bounds_in(t.grid, s.grid.crs)
            if min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1]):
                return
    raise NoOverlapError(
        f"{method} pairs the same ground in both domains, but no target scene overlaps a source scene",
        field="target",
    )

