"""Several annotators' labels of one image, brought onto the image's grid (for consensus labels).

Each annotation is a label raster (class ids, its nodata = "not annotated"; any CRS and grid: reprojected
with nearest resampling) or vector polygons (GeoJSON / GeoPackage, rasterised), read through
core.raster.labels.Labels. The class list is given, or found as the union of the values the annotations use.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import LabelValuesError, UnreadableRasterError
from core.jobspec import IGNORE_INDEX, ClassSpec
from core.raster.grid import Grid
from core.raster.labels import DEFAULT_CLASS_PROPERTIES, VECTOR_SUFFIXES, Labels
from core.raster.scene import DEFAULT_MAX_PIXELS, Scene, open_raster
from core.raster.vector import read_vector

#: colours of classes found in the annotations (cycled)
PALETTE = ("#e31a1c", "#ffff33", "#b2df8a", "#a6761d", "#1b7837", "#1f78b4", "#bdbdbd", "#6a3d9a", "#ff7f00",
           "#fb9a99")
#: most distinct values a raster annotation may hold before it is taken for something other than classes
MAX_CLASSES = 254


@dataclass
class AnnotationStack:
    """Annotations on the image grid: ``labels[j]`` is annotator j's train ids (index in ``classes``),
    IGNORE_INDEX where it did not annotate."""

    labels: np.ndarray  # (J, H, W) uint8
    classes: list[ClassSpec]
    names: list[str]
    grid: Grid

    @property
    def present(self) -> np.ndarray:
        return self.labels != IGNORE_INDEX


def _raster_values(path: Path, max_pixels: int) -> set[int]:
    with open_raster(path, max_pixels=max_pixels, what="annotation raster") as ds:
        v = ds.read(1, masked=True)
    vals = np.unique(v.compressed()) if np.ma.isMaskedArray(v) else np.unique(v)
    vals = vals[np.isfinite(vals)] if vals.dtype.kind == "f" else vals
    if len(vals) > MAX_CLASSES or (len(vals) and not np.all(np.mod(vals, 1) == 0)) or (len(vals) and vals.min() < 0):
        raise LabelValuesError(f"annotation {path.name} holds {len(vals)} distinct values "
                               f"{vals[:5].tolist()}...: expected class ids (non-negative integers)")
    return {int(x) for x in vals}


def _vector_values(path: Path, label_property: str | None) -> set[int]:
    layer = read_vector(path)
    keys = set().union(*(p.keys() for _, p in layer.features)) if layer.features else set()
    prop = label_property or next((k for k in DEFAULT_CLASS_PROPERTIES if k in keys), None)
    if prop is None:
        raise LabelValuesError(f"vector annotation {path.name}: name the class property (label_property); "
                               f"properties found: {sorted(keys)[:10]}", field="label_property")
    out = set()
    for _, p in layer.features:
        try:
            out.add(int(p.get(prop)))
        except (TypeError, ValueError):
            raise LabelValuesError(f"vector annotation {path.name}: {prop}={p.get(prop)!r} is not a class id",
                                   field="label_property") from None
    return out


def annotation_classes(paths: Sequence[str | Path], *, label_property: str | None = None,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> list[ClassSpec]:
    """The union of the class ids the annotations use, as a class list (names = ids, default colours)."""
    ids: set[int] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise UnreadableRasterError(f"annotation not found: {p}", field="annotations")
        ids |= _vector_values(p, label_property) if p.suffix.lower() in VECTOR_SUFFIXES else _raster_values(p, max_pixels)
    if not ids:
        raise LabelValuesError("the annotations hold no labelled pixel", field="annotations")
    return [ClassSpec(id=i, name=str(i), color=PALETTE[n % len(PALETTE)]) for n, i in enumerate(sorted(ids))]


def read_annotations(paths: Sequence[str | Path], scene: Scene, *, classes: Sequence[ClassSpec] | None = None,
                     label_property: str | None = None, names: Sequence[str] | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> AnnotationStack:
    """Every annotation on ``scene``'s grid as train ids; classes found in them unless given."""
    if len(paths) < 2:
        raise LabelValuesError(f"consensus needs at least two annotations, got {len(paths)}", field="annotations")
    classes = list(classes) if classes else annotation_classes(paths, label_property=label_property,
                                                                max_pixels=max_pixels)
    stack = np.empty((len(paths), scene.grid.height, scene.grid.width), np.uint8)
    for j, p in enumerate(paths):
        with Labels.open(Path(p), scene, classes, label_property=label_property, max_pixels=max_pixels) as lab:
            if lab.kind != "vector":
                lab.check_values()
            stack[j] = lab.read()
    labels = [Path(p).stem for p in paths] if names is None else list(names)
    return AnnotationStack(stack, classes, labels, scene.grid)


__all__ = ["AnnotationStack", "IGNORE_INDEX", "annotation_classes", "read_annotations"]
