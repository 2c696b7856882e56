"""Labels on a scene's grid as train ids (index in the job's class list; 255 = ignore).

Sources: a label raster of class ids (any dtype, own nodata), an RGB label image whose colours are
the class colours (ISPRS), a single-band palette image whose palette colours are the class colours,
or vector polygons (GeoJSON / GeoPackage) with a class property or one class for all. A raster on
another CRS or grid is reprojected onto the image grid with nearest resampling; rasters without
georeferencing must have the image's size and are taken as pixel-aligned with it.

Label windows (polygons, e.g. the windows ``geoadapt labels suggest`` proposed) limit any of these to
the part of the scene that was labelled: pixels outside every window read as 255 (unlabelled). On an
image without a CRS the windows must have none either; their coordinates are then the image grid's own.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.features import rasterize
from rasterio.windows import Window

from core.errors import GeoadaptError, LabelValuesError, MissingCRSError, NoOverlapError, UnreadableRasterError
from core.jobspec import IGNORE_INDEX
from core.raster.grid import Grid, iter_blocks
from core.raster.scene import DEFAULT_MAX_PIXELS, Scene, data_band_indexes, open_raster, read_problem
from core.raster.vector import VectorLayer, geometry_bounds, read_vector
from core.raster.warp import bounds_in, covering_window, pixel_grids, reproject_array

VECTOR_SUFFIXES = {".geojson", ".json", ".gpkg"}
#: property names tried, in order, when vector labels name no class property
DEFAULT_CLASS_PROPERTIES = ("class_id", "class", "label", "classid")


class ClassMap:
    """Maps class ids or class colours to train ids (position in the class list)."""

    def __init__(self, classes):
        self.classes = list(classes)
        ids = np.array([c.id for c in self.classes], dtype=np.float64)
        self._id_order = np.argsort(ids, kind="stable")
        self._ids_sorted = ids[self._id_order]
        codes = np.array([(r << 16) | (g << 8) | b for r, g, b in (c.rgb for c in self.classes)], dtype=np.int64)
        self._code_order = np.argsort(codes, kind="stable")
        self._codes_sorted = codes[self._code_order]

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.classes]

    def from_ids(self, values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(train ids uint8, mask of valid pixels whose value is no class id)."""
        return self._lookup(values.astype(np.float64, copy=False), valid, self._ids_sorted, self._id_order)

    def from_rgb(self, rgb: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = rgb.astype(np.int64)
        code = (c[0] << 16) | (c[1] << 8) | c[2]
        return self._lookup(code, valid, self._codes_sorted, self._code_order)

    @staticmethod
    def _lookup(values, valid, keys_sorted, order) -> tuple[np.ndarray, np.ndarray]:
        idx = np.clip(np.searchsorted(keys_sorted, values), 0, len(keys_sorted) - 1)
        found = (keys_sorted[idx] == values) & valid
        out = np.full(values.shape, IGNORE_INDEX, np.uint8)
        out[found] = order[idx[found]].astype(np.uint8)
        return out, valid & ~found

    def colour_ids(self, rgb_codes: np.ndarray) -> np.ndarray:
        """Train id for each colour code, 255 where the colour is no class colour."""
        idx = np.clip(np.searchsorted(self._codes_sorted, rgb_codes), 0, len(self._codes_sorted) - 1)
        hit = self._codes_sorted[idx] == rgb_codes
        return np.where(hit, self._code_order[idx], IGNORE_INDEX).astype(np.uint8)


class Labels:
    """Labels of one scene, read as train ids on the scene's grid (or onto another grid)."""

    kind: str  # "ids" | "rgb" | "palette" | "vector"

    def __init__(self, scene: Scene, classes, path: Path):
        self.scene = scene
        self.grid = scene.grid
        self.classmap = ClassMap(classes)
        self.path = Path(path)
        self.notes: list[str] = []
        self.footprint_fraction: float | None = None
        self._summary: dict | None = None
        self._ds = None
        #: label windows (geometry, bounds) in the image CRS, or None: the labels hold everywhere
        self._windows: list[tuple[dict, tuple]] | None = None
        self.windows_path: Path | None = None

    # construction ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        source,
        scene: Scene,
        classes,
        *,
        label_property: str | None = None,
        label_class: int | None = None,
        windows: str | Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> "Labels":
        """Open the labels of a SceneSpec (or a label path) against its opened scene; ``windows`` (or the
        SceneSpec's ``label_windows``): polygons outside which the labels are ignored."""
        if hasattr(source, "labels") and hasattr(source, "paths"):
            label_property = source.label_property if label_property is None else label_property
            label_class = source.label_class if label_class is None else label_class
            windows = getattr(source, "label_windows", None) if windows is None else windows
            source = source.labels
        if source is None:
            raise ValueError("this scene has no labels")
        path = Path(source)
        lab = cls(scene, classes, path)
        if path.suffix.lower() in VECTOR_SUFFIXES:
            lab._open_vector(label_property, label_class)
        else:
            lab._open_raster(max_pixels)
        if windows is not None:
            try:
                lab._open_windows(Path(windows))
            except BaseException:
                lab.close()
                raise
        return lab

    def _open_windows(self, path: Path) -> None:
        """The polygons the labels are limited to, in the image CRS (or the image grid's own coordinates
        when neither has a CRS)."""
        try:
            layer = read_vector(path)
        except GeoadaptError as e:
            e.field = e.field or "label_windows"
            raise
        polygons = [(g, p) for g, p in layer.features if g.get("type") in ("Polygon", "MultiPolygon")]
        if not polygons:
            raise LabelValuesError(f"label windows {path.name} hold no polygons", field="label_windows")
        if layer.crs is not None and "undefined srs" in layer.crs.to_wkt().lower():
            layer.crs = None  # GDAL writes a GeoPackage without a CRS as an "Undefined SRS" local system
        if self.grid.crs is None:
            if layer.crs is not None:
                raise MissingCRSError(
                    f"image {self.scene.name} has no CRS but label windows {path.name} are in {layer.crs}: write "
                    f"the windows without a CRS, in the image grid's coordinates", field="label_windows")
            geoms = [g for g, _ in polygons]
        else:
            if layer.crs is None:
                raise MissingCRSError(f"label windows {path.name} have no CRS, so they cannot be placed on image "
                                      f"{self.scene.name}", field="label_windows")
            geoms = [g for g, _ in VectorLayer(polygons, layer.crs, layer.path).to_crs(self.grid.crs)]
        windows = [(g, geometry_bounds(g)) for g in geoms]
        left, bottom, right, top = self.grid.bounds
        if not any(b[0] < right and b[2] > left and b[1] < top and b[3] > bottom for _, b in windows):
            raise NoOverlapError(f"label windows {path.name} and image {self.scene.name} share no ground",
                                 field="label_windows")
        self._windows = windows
        self.windows_path = path
        self.notes.append(f"labels limited to the {len(windows)} polygon(s) of {path.name}")

    def _open_raster(self, max_pixels: int) -> None:
        ds = open_raster(self.path, max_pixels=max_pixels, what="label raster")
        self._ds = ds
        bands = data_band_indexes(ds)
        lgrid = Grid.from_dataset(ds)
        if len(bands) >= 3:
            self.kind = "rgb"
            self._bands = bands[:3]
        else:
            self._bands = bands[:1]
            self.kind = "ids"
            self._palette_lut = self._palette_if_class_colours(ds)
            if self._palette_lut is not None:
                self.kind = "palette"
        # where the label pixels lie relative to the image
        if lgrid.same_as(self.grid):
            self._src_grid = self.grid
        elif lgrid.crs is None or self.grid.crs is None:
            if (lgrid.width, lgrid.height) != (self.grid.width, self.grid.height):
                who = "label raster" if lgrid.crs is None else "image"
                raise MissingCRSError(
                    f"the {who} has no CRS and the label raster ({lgrid.width} x {lgrid.height}) is not the "
                    f"image's size ({self.grid.width} x {self.grid.height}), so they cannot be aligned"
                )
            self._src_grid = self.grid  # same size, no georeferencing: tiles are pixel-aligned
            self.notes.append("labels carry no georeferencing; taken as pixel-aligned with the image")
        else:
            self._src_grid = lgrid
        self._file_grid = lgrid
        self.footprint_fraction = _footprint_fraction(self.grid, self._src_grid)
        if self.footprint_fraction <= 0.0:
            raise NoOverlapError(
                f"label raster {self.path.name} and image {self.scene.name} share no ground "
                f"(labels {_fmt_bounds(bounds_in(lgrid, self.grid.crs))}, image {_fmt_bounds(self.grid.bounds)})"
            )
        if self.footprint_fraction < 0.999:
            self.notes.append(
                f"labels cover {100 * self.footprint_fraction:.1f}% of the image footprint; the rest is ignored"
            )

    def _palette_if_class_colours(self, ds) -> np.ndarray | None:
        """A LUT palette index -> train id when the file has a palette whose used colours are all class
        colours (the palette then carries the meaning, not the index)."""
        try:
            cmap = ds.colormap(self._bands[0])
        except (ValueError, RasterioError):
            return None
        if not cmap:
            return None
        sample = _sample_values(ds, self._bands[0])
        used = [int(v) for v in np.unique(sample) if 0 <= v < 256 and float(v).is_integer()]
        if not used:
            return None
        codes = np.zeros(256, np.int64) - 1
        for k, (r, g, b, *_a) in cmap.items():
            if 0 <= k < 256:
                codes[k] = (r << 16) | (g << 8) | b
        lut = self.classmap.colour_ids(codes)
        lut[codes < 0] = IGNORE_INDEX
        if all(lut[u] != IGNORE_INDEX for u in used):
            return lut
        return None

    def _open_vector(self, label_property: str | None, label_class: int | None) -> None:
        self.kind = "vector"
        if self.grid.crs is None:
            raise MissingCRSError(
                f"image {self.scene.name} has no CRS, so vector labels {self.path.name} cannot be placed on it"
            )
        layer = read_vector(self.path)
        if not layer.features:
            raise NoOverlapError(f"vector labels {self.path.name} hold no geometries")
        ids = self.classmap.ids
        if label_class is None and label_property is None:
            keys = set().union(*(p.keys() for _, p in layer.features))
            label_property = next((k for k in DEFAULT_CLASS_PROPERTIES if k in keys), None)
            if label_property is None:
                if len(ids) != 1:
                    raise LabelValuesError(
                        f"vector labels {self.path.name}: name the class property (label_property) or give "
                        f"one class for all polygons (label_class); properties found: {sorted(keys)[:10]}"
                    )
                label_class = ids[0]
        shapes, bad = [], set()
        for geom, props in layer.to_crs(self.grid.crs):
            value = label_class if label_class is not None else props.get(label_property)
            try:
                v = int(value) if value is not None and float(value).is_integer() else None
            except (TypeError, ValueError):
                v = None
            if v is None or v not in ids:
                bad.add(repr(value))
                continue
            shapes.append((geom, ids.index(v), geometry_bounds(geom)))
        if bad:
            raise LabelValuesError(
                f"vector labels {self.path.name}: class values {sorted(bad)[:10]} are not in the class list {ids}",
                field=label_property,
            )
        self._shapes = shapes
        self._vector_crs = self.grid.crs
        left, bottom, right, top = self.grid.bounds
        if not any(b[0] < right and b[2] > left and b[1] < top and b[3] > bottom for _, _, b in shapes):
            raise NoOverlapError(f"vector labels {self.path.name} and image {self.scene.name} share no ground")

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None

    def __enter__(self) -> "Labels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # reading -----------------------------------------------------------------------------------
    def read(self, window: Window | None = None, *, onto: Grid | None = None) -> np.ndarray:
        """(h, w) uint8 train ids of a window of the scene grid, or of another grid; 255 = ignore.

        Values that are no class (see :meth:`check_values`) read as 255.
        """
        if onto is None:
            onto = self.grid if window is None else self.grid.window(window)
        elif window is not None:
            raise ValueError("give either a window or a grid to read onto, not both")
        ids = self._read_onto(onto)
        if self._windows is not None:
            ids = np.where(self.inside_windows(onto), ids, np.uint8(IGNORE_INDEX))
        return ids

    def inside_windows(self, onto: Grid) -> np.ndarray:
        """(h, w) bool: which pixels of a grid lie in the label windows (all of them without windows)."""
        if self._windows is None:
            return np.ones((onto.height, onto.width), bool)
        shapes = self._windows
        if onto.crs != self.grid.crs:
            if onto.crs is None or self.grid.crs is None:
                raise MissingCRSError("label windows can only be placed on a grid with the image's CRS status")
            from rasterio.warp import transform_geom

            shapes = [(g, geometry_bounds(g)) for g in (transform_geom(self.grid.crs, onto.crs, g) for g, _ in shapes)]
        left, bottom, right, top = onto.bounds
        hits = [g for g, b in shapes if b[0] <= right and b[2] >= left and b[1] <= top and b[3] >= bottom]
        if not hits:
            return np.zeros((onto.height, onto.width), bool)
        return rasterize([(g, 1) for g in hits], out_shape=(onto.height, onto.width), transform=onto.transform,
                         fill=0, dtype="uint8").astype(bool)

    def _read_onto(self, onto: Grid) -> np.ndarray:
        if self.kind == "vector":
            return self._rasterize(onto)
        src, dst = pixel_grids(self._src_grid, onto)
        off = src.aligned_offset(dst)
        if off is not None:
            ids, _, _ = self._read_src(Window(off[0], off[1], onto.width, onto.height))
            return ids
        win = covering_window(src, dst)
        if win is None:
            return np.full((onto.height, onto.width), IGNORE_INDEX, np.uint8)
        ids, _, _ = self._read_src(win)
        return reproject_array(
            ids, src.window(win), dst, resampling="nearest", src_nodata=IGNORE_INDEX, dst_nodata=IGNORE_INDEX
        )

    def _read_src(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Train ids, the 'value outside the classes' mask, and the raw values (bands, n) of those
        outside pixels, for a window of the label file's own pixels."""
        ds = self._ds
        h, w = int(window.height), int(window.width)
        ids = np.full((h, w), IGNORE_INDEX, np.uint8)
        outside = np.zeros((h, w), bool)
        c0, r0 = int(window.col_off), int(window.row_off)
        ic0, ir0 = max(c0, 0), max(r0, 0)
        ic1, ir1 = min(c0 + w, ds.width), min(r0 + h, ds.height)
        if ic1 <= ic0 or ir1 <= ir0:
            return ids, outside, None
        inner = Window(ic0, ir0, ic1 - ic0, ir1 - ir0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                vals = ds.read(self._bands, window=inner)
                valid = np.logical_and.reduce(ds.read_masks(self._bands, window=inner) > 0, axis=0)
        except (RasterioError, OSError) as e:
            raise UnreadableRasterError(f"cannot read label pixels of {self.path.name}: {read_problem(e)}") from None
        if self.kind == "rgb":
            t, o = self.classmap.from_rgb(vals, valid)
        elif self.kind == "palette":
            v = vals[0]
            inrange = (v >= 0) & (v < 256)
            t = np.where(valid & inrange, self._palette_lut[np.clip(v, 0, 255).astype(np.int64)], IGNORE_INDEX)
            t = t.astype(np.uint8)
            o = valid & (t == IGNORE_INDEX)
        else:
            v = vals[0]
            finite = np.isfinite(v) if v.dtype.kind == "f" else np.ones(v.shape, bool)
            t, o = self.classmap.from_ids(np.where(finite, v, 0), valid & finite)
        sl = (slice(ir0 - r0, ir1 - r0), slice(ic0 - c0, ic1 - c0))
        ids[sl] = t
        outside[sl] = o
        return ids, outside, vals[:, o]

    def _rasterize(self, onto: Grid) -> np.ndarray:
        if onto.crs is None:
            raise MissingCRSError("vector labels can only be rasterised onto a georeferenced grid")
        if onto.crs != self._vector_crs:
            from rasterio.warp import transform_geom

            shapes = [(transform_geom(self._vector_crs, onto.crs, g), t, None) for g, t, _ in self._shapes]
            shapes = [(g, t, geometry_bounds(g)) for g, t, _ in shapes]
        else:
            shapes = self._shapes
        left, bottom, right, top = onto.bounds
        hits = [(g, t) for g, t, b in shapes if b[0] <= right and b[2] >= left and b[1] <= top and b[3] >= bottom]
        if not hits:
            return np.full((onto.height, onto.width), IGNORE_INDEX, np.uint8)
        return rasterize(
            hits, out_shape=(onto.height, onto.width), transform=onto.transform, fill=IGNORE_INDEX, dtype="uint8"
        )

    # whole-raster checks (streaming) -------------------------------------------------------------
    def check_values(self, block: int = 1024) -> None:
        """Raise :class:`LabelValuesError` if any labelled pixel holds a value that is no class."""
        if self.kind == "vector":
            return  # checked when opened
        found: set = set()
        n_bad = 0
        for win in iter_blocks(Window(0, 0, self._ds.width, self._ds.height), block):
            _, outside, vals = self._read_src(win)
            if outside.any():
                n_bad += int(outside.sum())
                if self.kind == "rgb":
                    codes = np.unique(vals.astype(np.int64).T, axis=0)[:50]
                    found.update("#%02x%02x%02x" % tuple(int(x) for x in c) for c in codes)
                else:
                    found.update(_fmt_value(x) for x in np.unique(vals[0])[:50])
        if n_bad:
            what = "colours" if self.kind == "rgb" else "values"
            allowed = [c.color for c in self.classmap.classes] if self.kind == "rgb" else self.classmap.ids
            raise LabelValuesError(
                f"label raster {self.path.name}: {n_bad:,} pixels hold {what} {sorted(found)[:10]} that are not in "
                f"the class list {allowed}"
            )

    def summary(self, block: int = 512) -> dict:
        """Class counts over valid image pixels and coverage, streamed over the scene grid (cached)."""
        if self._summary is not None:
            return self._summary
        k = len(self.classmap)
        counts = np.zeros(k, np.int64)
        n_total = n_valid = n_lab = n_lab_valid = 0
        for win in iter_blocks(self.grid.full_window(), block):
            ids = self.read(win)
            valid = self.scene.read_valid(win)
            lab = ids != IGNORE_INDEX
            n_total += ids.size
            n_valid += int(valid.sum())
            n_lab += int(lab.sum())
            both = lab & valid
            n_lab_valid += int(both.sum())
            counts += np.bincount(ids[both], minlength=k)[:k]
        self._summary = {
            "kind": self.kind,
            "class_counts": {str(c.id): int(n) for c, n in zip(self.classmap.classes, counts)},
            "coverage": {
                "footprint_fraction": self.footprint_fraction,
                "labelled_fraction": n_lab / max(n_total, 1),
                "valid_labelled_fraction": n_lab_valid / max(n_valid, 1),
                "lost_fraction": 1.0 - n_lab_valid / max(n_valid, 1),
            },
            "notes": list(self.notes),
        }
        return self._summary

    @property
    def coverage(self) -> dict:
        """Fraction of the image (and of its valid pixels) that has labels; what the rest loses."""
        return self.summary()["coverage"]


def _sample_values(ds, band: int, size: int = 512) -> np.ndarray:
    """A decimated read of a band (nearest), enough to see which values a label raster uses."""
    h, w = min(ds.height, size), min(ds.width, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            v = ds.read(band, out_shape=(h, w), masked=True)
        except (RasterioError, OSError) as e:
            raise UnreadableRasterError(
                f"cannot read label pixels of {Path(ds.name).name}: {read_problem(e)}") from None
    return np.asarray(v.compressed())


def _footprint_fraction(image: Grid, labels: Grid) -> float:
    """Area of the image footprint inside the label footprint, as a fraction (bounding boxes)."""
    a = image.bounds
    b = bounds_in(labels, image.crs) if labels.crs is not None and image.crs is not None else labels.bounds
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = (a[2] - a[0]) * (a[3] - a[1])
    return float(w * h / area) if area > 0 else 0.0


def _fmt_bounds(b) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def _fmt_value(x) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else f"{x:g}"
