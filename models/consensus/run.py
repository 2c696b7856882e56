"""Consensus labels from files: annotations and an image in, a label COG, a disagreement COG and scores out.

    run_consensus(annotations, image, out)
      Scene.open(image).read()                     -> image (bands, H, W) and its valid pixels
      core.raster.annotations.read_annotations     -> every annotation on the image grid
      models.consensus.consensus_labels            -> labels, disagreement, annotator scores
      (before anything is read: the memory it would take against what the machine has free -> RasterTooLargeError)
      out                  class ids (class COG: colours, names), nodata where no label
      <out>_disagreement.tif  float32 in [0, 1], -1 = no annotation
      <out>_scores.json    per annotator: score, weight, labelled share, fill confidence, agreement
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from core.errors import RasterTooLargeError
from core.files import write_json
from core.job_layout import disagreement_path_for
from core.jobspec import IGNORE_INDEX, ClassSpec
from core.raster.annotations import read_annotations
from core.raster.cog import CogWriter, class_cog_writer, class_encoding
from core.raster.scene import Scene
from models.consensus.consensus import ConsensusOptions, consensus_labels


#: the fewest classes a consensus has (the class count is known before reading only when the classes are given)
_MIN_CLASSES = 2


def consensus_bytes_per_pixel(bands: int, classes: int, annotators: int) -> int:
    """Peak memory of a consensus per image pixel (the whole image is held: models.consensus.consensus). Fitted to
    peak RSS measured over 1 to 9 megapixel images: 560 bytes with 3 bands, 4 classes and 4 annotators; 780 with 6
    bands and 7 classes (features 20 per band, per-class vote, cost and probability planes 60 per class, the
    max-flow graph and the rest)."""
    return 220 + 20 * bands + 60 * classes + 10 * annotators


def available_memory_bytes() -> int | None:
    """Memory the kernel says can be had without swapping (Linux's MemAvailable); None where it does not say."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits_in_memory(width: int, height: int, bands: int, classes: int | None, annotators: int,
                         available: int | None) -> None:
    """Refuse a consensus that would not fit in ``available`` bytes, before a byte of it is read: one that did not
    would be killed by the kernel, and a worker would retry it until it fails as lost. ``classes``: None when not
    yet known (the fewest a consensus has is counted)."""
    need = width * height * consensus_bytes_per_pixel(bands, classes or _MIN_CLASSES, annotators)
    if available is not None and need > available:
        raise RasterTooLargeError(
            f"a consensus over {width} x {height} px ({width * height / 1e6:.0f} megapixels, {bands} bands, "
            f"{annotators} annotators, {classes or f'{_MIN_CLASSES} or more'} classes) holds the "
            f"whole image in memory and needs about {need / 2**30:.1f} GiB; {available / 2**30:.1f} GiB is free "
            "here. Split the image and its annotations into parts (e.g. gdal_translate -srcwin) and run a consensus "
            "of each", field="image")


@dataclass
class ConsensusOutputs:
    labels: Path
    disagreement: Path
    scores: Path
    report: dict


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """(labels, disagreement, scores) paths of a consensus written to ``out``."""
    out = Path(out)
    return out, disagreement_path_for(out), out.with_name(f"{out.stem}_scores.json")


def run_consensus(annotations: Sequence[str | Path], image: str | Path | Sequence[str | Path], out: str | Path, *,
                  classes: Sequence[ClassSpec] | None = None, label_property: str | None = None,
                  names: Sequence[str] | None = None, options: ConsensusOptions | None = None,
                  nodata: float | None = None, progress: Callable[[str], None] | None = None,
                  memory_limit: int | None = None) -> ConsensusOutputs:
    """Write the consensus of ``annotations`` over ``image`` to ``out`` (and its two companions). ``memory_limit``:
    the bytes it may take (default: what the machine has free)."""
    opts = (options or ConsensusOptions()).validate()
    labels_path, dis_path, scores_path = output_paths(out)
    spec = [Path(p) for p in image] if isinstance(image, (list, tuple)) else Path(image)
    with Scene.open(spec, nodata=nodata) as scene:
        check_fits_in_memory(scene.grid.width, scene.grid.height, scene.count,
                             len(classes) if classes else None, len(annotations),
                             memory_limit if memory_limit is not None else available_memory_bytes())
        stack = read_annotations(annotations, scene, classes=classes, label_property=label_property, names=names)
        rw = scene.read()
    result = consensus_labels(stack, rw.data, rw.valid, opts, progress)

    ids = [c.id for c in stack.classes]
    dtype, nodata_out = class_encoding(ids)
    lut = np.array(ids + [0] * (256 - len(ids)), dtype=dtype)
    cls = np.where(result.labels == IGNORE_INDEX, nodata_out, lut[result.labels]).astype(dtype)
    full = Window(0, 0, stack.grid.width, stack.grid.height)
    with class_cog_writer(labels_path, stack.grid, stack.classes) as w:
        w.write(cls, full)
    with CogWriter(dis_path, stack.grid, dtype="float32", nodata=-1.0, overview_resampling="average",
                   band_descriptions=["disagreement"]) as w:
        w.write(result.disagreement, full)
    report = {"labels": str(labels_path), "disagreement": str(dis_path),
              "image": [str(p) for p in spec] if isinstance(spec, list) else str(spec),
              "annotations": [str(p) for p in annotations],
              "classes": [c.model_dump() for c in stack.classes], **result.report(ids)}
    write_json(scores_path, report)
    return ConsensusOutputs(labels_path, dis_path, scores_path, report)
