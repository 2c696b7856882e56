"""Benchmark of consensus labels: faulty annotators made from real labels, consensus vs majority vote vs the best one.

    run_consensus_case(case, labels_on_grid, image, out) -> dict
      real labels on the image grid -> four annotators with known faults (make_annotators):
        eroded    every class region eroded by 2 px (its borders left unannotated)
        dilated   every class region dilated by 2 px over its neighbours, half of those pixels at random
        missing   a random third of each class's connected regions left unannotated
        careless  10 % of 8 x 8 px blocks labelled with a random class
      written as GeoTIFFs (nodata = not annotated) -> models.consensus.run.run_consensus (the CLI's path)
      scored against the real labels: mIoU over the classes present, for the consensus, the majority vote
      (ties to the lowest class id, as a plain argmax does) and each annotator alone; and whether the
      self-consistency scores rank the annotators as their faults do: by precision, the share of an
      annotator's own labels that are right (eroded and missing 1.0: they only leave pixels out)
    run_benchmark(cases, out) -> report.json {"consensus": {case: {...}}} (other keys of an existing file kept)

Cases: nc (the NC strata on the six-band Landsat stack) and neon (OSBS_029 tree / not tree on its RGB).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from scipy import ndimage as ndi

from core.jobspec import IGNORE_INDEX, ClassSpec

ANNOTATORS = ("eroded", "dilated", "missing", "careless")
CASES = ("nc", "neon")


def make_annotators(truth: np.ndarray, *, seed: int = 0, nodata: int = 0) -> dict[str, np.ndarray]:
    """Four faulty copies of ``truth`` (class ids; ``nodata`` = unlabelled, also what 'not annotated' reads)."""
    rng = np.random.default_rng(seed)
    valid = truth != nodata
    classes = [int(c) for c in np.unique(truth[valid])]
    eroded, dilated = truth.copy(), truth.copy()
    for c in classes:
        m = truth == c
        eroded[m & ~ndi.binary_erosion(m, iterations=2)] = nodata
        grown = ndi.binary_dilation(m, iterations=2) & valid & (truth != c)
        dilated[grown & (rng.random(truth.shape) < 0.5)] = c
    missing = truth.copy()
    for c in classes:
        regions, n = ndi.label(truth == c)
        if n:
            drop = rng.choice(np.arange(1, n + 1), size=max(1, n // 3), replace=False)
            missing[np.isin(regions, drop)] = nodata
    careless = truth.copy()
    h, w = truth.shape
    blocks = rng.random((h // 8 + 1, w // 8 + 1)) < 0.10
    swap = np.kron(blocks, np.ones((8, 8), bool))[:h, :w] & valid
    careless[swap] = rng.choice(np.array(classes, dtype=truth.dtype), size=int(swap.sum()))
    return {"eroded": eroded, "dilated": dilated, "missing": missing, "careless": careless}


def majority_vote(annotations: dict[str, np.ndarray], nodata: int = 0) -> np.ndarray:
    """Per pixel the class most annotators name; ties to the lowest class id; ``nodata`` where none names one."""
    stack = np.stack(list(annotations.values()))
    classes = sorted(int(c) for c in np.unique(stack) if c != nodata)
    votes = np.stack([(stack == c).sum(axis=0) for c in classes])
    out = np.array(classes, dtype=stack.dtype)[votes.argmax(axis=0)]
    return np.where(votes.max(axis=0) > 0, out, nodata)


def miou_over_present(truth: np.ndarray, pred: np.ndarray, scored: np.ndarray) -> float:
    """Mean IoU over the classes present in ``truth`` where ``scored``; a pixel left unlabelled counts as wrong."""
    ious = []
    for c in np.unique(truth[scored]):
        inter = ((truth == c) & (pred == c) & scored).sum()
        union = (((truth == c) | (pred == c)) & scored).sum()
        ious.append(inter / union if union else 0.0)
    return float(np.mean(ious)) if ious else 0.0


def order_agreement(scores: dict[str, float], truth: dict[str, float]) -> float:
    """Share of annotator pairs the scores order as ``truth`` does (pairs tied in truth are left out)."""
    names = list(scores)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if abs(truth[a] - truth[b]) > 1e-9]
    if not pairs:
        return 1.0
    good = sum((scores[a] - scores[b]) * (truth[a] - truth[b]) > 0 for a, b in pairs)
    return good / len(pairs)


def run_consensus_case(case_name: str, labels_on_grid: str | Path, image: str | Path | Sequence[str | Path],
                       out: str | Path, *, classes: Sequence[ClassSpec] | None = None, seed: int = 0,
                       log: Callable[[str], None] | None = None) -> dict:
    """Faulty annotators of ``labels_on_grid`` (class ids on ``image``'s grid, its nodata = unlabelled), their
    consensus over ``image``, and the scores (see the module docstring)."""
    from models.consensus.run import run_consensus

    say = log or (lambda _m: None)
    out = Path(out)
    (out / "annotators").mkdir(parents=True, exist_ok=True)
    with rasterio.open(labels_on_grid) as ds:
        raw = ds.read(1)
        profile = ds.profile
        lab_nodata = ds.nodata
    ids = sorted(int(v) for v in np.unique(raw[raw != lab_nodata]) if np.isfinite(v)) if lab_nodata is not None \
        else sorted(int(v) for v in np.unique(raw))
    # annotator files: class ids as uint8/uint16 with a nodata value that is no class ("not annotated")
    nodata = IGNORE_INDEX if max(ids) < IGNORE_INDEX else 65535
    dtype = "uint8" if nodata == IGNORE_INDEX else "uint16"
    truth = np.where(raw == lab_nodata, nodata, raw).astype(dtype) if lab_nodata is not None else raw.astype(dtype)
    scored = truth != nodata
    anns = make_annotators(truth, seed=seed, nodata=nodata)
    prof = dict(profile, count=1, dtype=dtype, nodata=nodata, driver="GTiff")
    prof.pop("blockxsize", None), prof.pop("blockysize", None), prof.pop("tiled", None)
    paths = []
    for name, a in anns.items():
        p = out / "annotators" / f"{name}.tif"
        with rasterio.open(p, "w", **prof) as ds:
            ds.write(a, 1)
        paths.append(p)
    if classes is None:
        from core.raster.annotations import PALETTE

        classes = [ClassSpec(id=i, name=str(i), color=PALETTE[n % len(PALETTE)]) for n, i in enumerate(ids)]
    say(f"{case_name}: consensus of {', '.join(anns)} over {truth.shape[1]} x {truth.shape[0]} px")
    t0 = time.perf_counter()
    res = run_consensus(paths, image, out / "consensus.tif", classes=classes)
    seconds = time.perf_counter() - t0
    with rasterio.open(res.labels) as ds:
        cons = ds.read(1)
        cons = np.where(cons == ds.nodata, nodata, cons)
    singles = {n: miou_over_present(truth, a, scored) for n, a in anns.items()}
    precision = {n: float((a[scored & (a != nodata)] == truth[scored & (a != nodata)]).mean()) for n, a in anns.items()}
    scored_by = res.report["annotators"]
    scores = {n: scored_by[n]["score"] for n in anns}
    best = max(singles, key=singles.get)
    s_cons = miou_over_present(truth, cons, scored)
    s_mv = miou_over_present(truth, majority_vote(anns, nodata), scored)
    report = {
        "miou": {"consensus": round(s_cons, 4), "majority_vote": round(s_mv, 4),
                 "best_single": round(singles[best], 4), "best_single_name": best},
        "beats_majority_vote": s_cons > s_mv, "beats_best_single": s_cons > singles[best],
        "annotators": {n: {**{k: scored_by[n][k] for k in ("score", "self_consistency", "agreement", "weight")},
                           "precision": round(precision[n], 4), "miou": round(singles[n], 4),
                           "labelled_fraction": round(float((anns[n][scored] != nodata).mean()), 4)}
                       for n in anns},
        "score_order": sorted(anns, key=lambda n: -scores[n]),
        "fault_order": sorted(anns, key=lambda n: -precision[n]),
        "order_agreement": round(order_agreement(scores, precision), 4),
        "pixels": int(scored.sum()), "classes": ids, "seconds": round(seconds, 1),
        "files": {"consensus": str(res.labels), "scores": str(res.scores)},
    }
    say(f"{case_name}: consensus mIoU {s_cons:.3f}, majority vote {s_mv:.3f}, best single {singles[best]:.3f} ({best}); "
        f"score order {report['score_order']}, fault order {report['fault_order']} "
        f"(pairs agreeing {report['order_agreement']:.2f})")
    return report


def _nc_inputs(out: Path, data_dir) -> tuple[Path, Path, list[ClassSpec]]:
    """The six NC bands stacked into one file, and the strata reprojected onto its grid (nearest)."""
    from rasterio.warp import Resampling, reproject

    from core.data.fetch import fetch
    from core.data.nc import nc_band_paths, nc_class_specs

    files = fetch("nc-landsat", data_dir)
    bands = nc_band_paths(files)
    arrs = []
    for b in bands:
        with rasterio.open(b) as ds:
            arrs.append(ds.read(1).astype("float32"))
            prof = ds.profile
    prof.update(count=len(arrs), dtype="float32", nodata=-99999, driver="GTiff")
    stack = out / "nc_stack.tif"
    with rasterio.open(stack, "w", **prof) as ds:
        ds.write(np.stack(arrs))
    lab = np.zeros((prof["height"], prof["width"]), "uint8")
    with rasterio.open(files["strata"]) as s:
        reproject(s.read(1), lab, src_transform=s.transform, src_crs=s.crs, src_nodata=s.nodata,
                  dst_transform=prof["transform"], dst_crs=prof["crs"], dst_nodata=0, resampling=Resampling.nearest)
    truth = out / "nc_truth.tif"
    with rasterio.open(truth, "w", **dict(prof, count=1, dtype="uint8", nodata=0)) as ds:
        ds.write(lab, 1)
    return stack, truth, list(nc_class_specs())


def _neon_inputs(out: Path, data_dir) -> tuple[Path, Path, list[ClassSpec]]:
    """OSBS_029's RGB and its tree / not-tree raster (already on one grid)."""
    from core.data.fetch import fetch
    from core.data.neon import TARGET_SCENES, neon_class_specs, prepare_neon

    scene = prepare_neon(fetch("neon-crowns", data_dir))[TARGET_SCENES["osbs"]]
    return Path(scene.image), Path(scene.labels), list(neon_class_specs())


CASE_INPUTS = {"nc": _nc_inputs, "neon": _neon_inputs}


def run_benchmark(cases: Sequence[str] | None, out: str | Path, *, data_dir=None, seed: int = 0,
                  log: Callable[[str], None] | None = print) -> dict:
    """Every case (default: nc and neon); writes ``out``/report.json with key ``consensus``."""
    from core.errors import ConfigError
    from core.files import write_json

    cases = list(cases or CASES)
    for c in cases:
        if c not in CASE_INPUTS:
            raise ConfigError(f"unknown case {c!r}; known: {', '.join(CASES)}", field="case")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for c in cases:
        folder = out / "consensus" / c
        folder.mkdir(parents=True, exist_ok=True)
        image, truth, classes = CASE_INPUTS[c](folder, data_dir)
        results[c] = run_consensus_case(c, truth, image, folder, classes=classes, seed=seed, log=log)
    path = out / "report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report.setdefault("consensus", {}).update(results)
    write_json(path, report)
    return report
