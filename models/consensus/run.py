"""Consensus labels from files: annotations and an image in, a label COG, a disagreement COG and scores out.

    run_consensus(annotations, image, out)
      Scene.open(image).read()                     -> image (bands, H, W) and its valid pixels
      core.raster.annotations.read_annotations     -> every annotation on the image grid
      models.consensus.consensus_labels            -> labels, disagreement, annotator scores
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

from core.files import write_json
from core.job_layout import disagreement_path_for
from core.jobspec import IGNORE_INDEX, ClassSpec
from core.raster.annotations import read_annotations
from core.raster.cog import CogWriter, class_cog_writer, class_encoding
from core.raster.scene import Scene
from models.consensus.consensus import ConsensusOptions, consensus_labels


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
                  nodata: float | None = None, progress: Callable[[str], None] | None = None) -> ConsensusOutputs:
    """Write the consensus of ``annotations`` over ``image`` to ``out`` (and its two companions)."""
    opts = (options or ConsensusOptions()).validate()
    labels_path, dis_path, scores_path = output_paths(out)
    spec = [Path(p) for p in image] if isinstance(image, (list, tuple)) else Path(image)
    with Scene.open(spec, nodata=nodata) as scene:
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
