"""COG writing: stream windows into a tiled temporary GeoTIFF, then GDAL's COG driver, then an atomic rename.

GDAL marks a file ``LAYOUT=COG`` only when its COG driver wrote it, and that driver needs a whole
source dataset, so a streamed prediction goes through a tiled temporary GeoTIFF next to the output
(same filesystem, so the final ``os.replace`` is atomic and a reader never sees half a file).
A class map's names and attribute table, which GeoTIFF cannot hold, go in GDAL's ``.aux.xml`` sidecar
(core.raster.pam), moved into place just before the COG.
A raster already written in parts (row bands written by the shards of a sharded prediction,
core.raster.prediction_shards) is finished the same way: the temporary file is then a VRT over the parts,
so the COG driver reads them in place and nothing is copied twice.
Callers that stream large rasters cap GDAL's block cache (:func:`gdal_cache_limit`) so that memory
does not grow with the raster.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from core.raster.pam import class_sidecar_xml, sidecar_path

#: GDAL block cache while streaming (MB); bounded so that peak memory does not follow raster size
DEFAULT_CACHE_MB = 64
#: probabilities are stored as round(p * PROB_SCALE); PROB_NODATA marks pixels with no prediction
PROB_SCALE = 254
PROB_NODATA = 255


@dataclass(frozen=True)
class ClassStyle:
    """What a class map's metadata says about one class: the stored value, a name, a colour."""

    id: int
    name: str
    color: str  # "#rrggbb"

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]

    @classmethod
    def of(cls, c: Any) -> "ClassStyle":
        """From a ClassSpec, a mapping, or a ClassStyle."""
        if isinstance(c, ClassStyle):
            return c
        if isinstance(c, dict):
            return cls(int(c["id"]), str(c["name"]), str(c.get("color", "#808080")).lower())
        return cls(int(c.id), str(c.name), str(getattr(c, "color", "#808080")).lower())


def class_encoding(class_ids: Sequence[int]) -> tuple[str, int]:
    """The smallest dtype that holds the class ids plus a nodata value that is not one of them."""
    top = max(class_ids) if class_ids else 0
    if top < 255:
        return "uint8", 255
    if top < 65535:
        return "uint16", 65535
    raise ValueError(f"class ids must be below 65535, got {top}")


def class_tags(classes: Sequence[ClassStyle]) -> dict[str, str]:
    """Dataset tags naming the classes; readers without the colour table still get names and colours."""
    return {
        "CLASSES": json.dumps([{"id": c.id, "name": c.name, "color": c.color} for c in classes]),
        "CLASS_NAMES": ",".join(c.name for c in classes),
    }


def read_class_tags(tags: dict[str, str]) -> list[ClassStyle]:
    """The classes recorded by :func:`class_tags` (empty when the file has none)."""
    raw = tags.get("CLASSES")
    return [ClassStyle.of(d) for d in json.loads(raw)] if raw else []


#: the temporary files a writer makes beside its output: (kind, suffix)
_TEMPORARIES = (("part", ".tif"), ("part", ".vrt"), ("cog", ".tif"), ("pam", ".xml"))


def _temp_name(path: Path, what: str, suffix: str = ".tif") -> Path:
    # hidden, unique, and in the output's folder so that os.replace stays on one filesystem
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{what}{suffix}")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder``; returns what was deleted.

    A process killed mid-write (SIGKILL, the OOM killer) cannot clean up. Only for a folder that no
    other writer is using at the time, e.g. a job's output folder when the job starts again.
    """
    removed = []
    for what, suffix in _TEMPORARIES:
        for p in Path(folder).glob(f".*.{what}{suffix}"):
            _unlink(p)
            removed.append(p)
    return removed


class CogWriter:
    """Write a raster window by window; :meth:`close` turns it into a COG at ``path``.

    Use as a context manager: on an exception nothing is left at ``path`` (an older file there stays
    untouched) and the temporary files are removed. ``sidecar``: a GDAL PAM document (core.raster.pam)
    for ``<path>.aux.xml``; without one, a sidecar left there by an earlier file is removed, since GDAL
    would read it as this file's. ``parts``: the raster is already written, as GeoTIFFs each covering the
    whole width and a band of rows ((path, first row) pairs; rows nobody covers read as nodata): the
    temporary file is a VRT over them, and :meth:`write` is not used.
    """

    def __init__(
        self,
        path: str | Path,
        grid: Any,
        *,
        count: int = 1,
        dtype: str = "uint8",
        nodata: float | None = None,
        blocksize: int = 512,
        compress: str = "DEFLATE",
        overview_resampling: str = "mode",
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        tags: dict[str, str] | None = None,
        band_descriptions: Sequence[str] | None = None,
        scales: Sequence[float] | None = None,
        sidecar: str | None = None,
        parts: Sequence[tuple[str | Path, int]] | None = None,
    ):
        self.path = Path(path)
        self.grid = grid
        self.count = count
        self.dtype = dtype
        self.nodata = nodata
        self.blocksize = blocksize
        self.compress = compress
        self.overview_resampling = overview_resampling
        self.sidecar = sidecar
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if parts is None:
                self._tmp = _temp_name(self.path, "part")
                # the temporary file is uncompressed: written once, read once by the COG driver, then deleted
                tile = _tile_size(blocksize, grid.width, grid.height)
                profile = dict(
                    driver="GTiff", width=grid.width, height=grid.height, count=count, dtype=dtype,
                    crs=grid.crs, transform=grid.transform, nodata=nodata, interleave="band",
                    tiled=True, blockxsize=tile, blockysize=tile, BIGTIFF="IF_SAFER", SPARSE_OK="TRUE",
                )
                self._ds = rasterio.open(self._tmp, "w", **profile)
            else:
                self._tmp = _temp_name(self.path, "part", ".vrt")
                vrt = _mosaic_vrt(grid, count, dtype, nodata, parts, _tile_size(blocksize, grid.width, grid.height))
                self._tmp.write_text(vrt, encoding="utf-8")
                self._ds = rasterio.open(self._tmp, "r+")  # the metadata below goes into the VRT
                if grid.crs is not None:
                    self._ds.crs = grid.crs
            if colormap:
                self._ds.write_colormap(1, colormap)
            if tags:
                self._ds.update_tags(**tags)
            if band_descriptions:
                for i, d in enumerate(band_descriptions, start=1):
                    self._ds.set_band_description(i, d)
            if scales:
                self._ds.scales = tuple(scales)
                self._ds.offsets = tuple(0.0 for _ in scales)
        except Exception:
            _unlink(self._tmp)
            raise
        self._closed = False

    def write(self, data: np.ndarray, window: Window) -> None:
        """Write (count, h, w) or (h, w) values at ``window`` (pixel offsets in the output grid)."""
        if data.ndim == 2:
            data = data[None]
        self._ds.write(data.astype(self.dtype, copy=False), window=window)

    def close(self) -> Path:
        """Finish: translate the temporary file to a COG with overviews and move it (sidecar first) into place."""
        if self._closed:
            return self.path
        self._closed = True
        out_tmp = _temp_name(self.path, "cog")
        pam_tmp = _temp_name(self.path, "pam", ".xml")
        try:
            self._ds.close()
            resampling = self.overview_resampling.upper()
            rasterio.shutil.copy(
                self._tmp, out_tmp, driver="COG",
                BLOCKSIZE=self.blocksize, COMPRESS=self.compress, PREDICTOR="NO",
                RESAMPLING=resampling, OVERVIEW_RESAMPLING=resampling,
                OVERVIEWS="AUTO", BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS",
            )
            # the sidecar goes first: once the COG is in place, GDAL reads them together
            if self.sidecar is not None:
                pam_tmp.write_text(self.sidecar, encoding="utf-8")
                os.replace(pam_tmp, sidecar_path(self.path))
            else:
                _unlink(sidecar_path(self.path))
            os.replace(out_tmp, self.path)
        finally:
            _unlink(self._tmp)
            _unlink(out_tmp)
            _unlink(pam_tmp)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            self._ds.close()
        finally:
            _unlink(self._tmp)

    def __enter__(self) -> "CogWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def close_together(writers: Sequence[CogWriter | None]) -> None:
    """Close ``writers`` (None entries skipped) at once, each translate in a thread of its own.

    GDAL lets go of the GIL while it reads, computes overviews and compresses, so a prediction's class
    and probability COGs overlap on the cores one translate leaves idle (two 6000 x 6000 COGs on 2 cores:
    22 s one after the other, 19 s together; the same pixels and overviews either way). Each writer is
    closed, successfully or not, before this returns; the first failure is then raised.
    """
    todo = [w for w in writers if w is not None]
    if len(todo) <= 1:
        for w in todo:
            w.close()
        return
    with ThreadPoolExecutor(len(todo), thread_name_prefix="cog-close") as pool:
        futures = [pool.submit(w.close) for w in todo]
    for f in futures:
        f.result()


def class_cog_writer(path: str | Path, grid: Any, classes: Sequence[Any], **kw: Any) -> CogWriter:
    """A writer for a class map: class ids as stored values, a colour table, class names in the tags, and
    a sidecar with GDAL category names and a raster attribute table (value, name, colour) for GIS tools."""
    styles = [ClassStyle.of(c) for c in classes]
    dtype, nodata = class_encoding([c.id for c in styles])
    colormap = {c.id: (*c.rgb, 255) for c in styles}
    colormap[nodata] = (0, 0, 0, 0)
    return CogWriter(
        path, grid, count=1, dtype=dtype, nodata=nodata, overview_resampling="mode",
        colormap=colormap, tags=class_tags(styles), band_descriptions=["class"],
        sidecar=class_sidecar_xml(styles), **kw,
    )


def probability_cog_writer(path: str | Path, grid: Any, classes: Sequence[Any], **kw: Any) -> CogWriter:
    """A writer for per-class probabilities as uint8 (p * 254; 255 = no prediction), one band per class."""
    styles = [ClassStyle.of(c) for c in classes]
    tags = class_tags(styles) | {"PROBABILITY_SCALE": f"1/{PROB_SCALE}"}
    return CogWriter(
        path, grid, count=len(styles), dtype="uint8", nodata=PROB_NODATA, overview_resampling="average",
        tags=tags, band_descriptions=[c.name for c in styles], scales=[1.0 / PROB_SCALE] * len(styles), **kw,
    )


def gdal_cache_limit(mb: int = DEFAULT_CACHE_MB) -> rasterio.Env:
    """A context in which GDAL's (process-wide) block cache holds at most ``mb`` megabytes.

    GDAL's default is 5% of RAM, which a streamed read of a large raster fills: peak memory would
    then follow the raster's size up to that cap instead of staying flat.
    """
    return rasterio.Env(GDAL_CACHEMAX=int(mb))


#: numpy dtype -> GDAL's name for it, for VRT documents
_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
               "float32": "Float32", "float64": "Float64"}


def _mosaic_vrt(grid: Any, count: int, dtype: str, nodata: float | None,
                parts: Sequence[tuple[str | Path, int]], block: int) -> str:
    """A VRT document of ``grid``'s size whose bands read each part (full width, a band of rows) in place,
    in ``block`` x ``block`` blocks, the COG's own: with VRT's default (128) the COG driver took 2.4 times
    as long over a 4096 px mosaic's probability parts as over one GeoTIFF of them; at 512, as long."""
    from xml.sax.saxutils import escape

    gt = ", ".join(repr(float(v)) for v in grid.transform.to_gdal())
    placed = []  # (absolute path, first row, rows)
    for path, row in parts:
        with rasterio.open(path) as ds:
            if ds.width != grid.width or ds.count != count or not 0 <= row <= grid.height - ds.height:
                raise ValueError(f"part {path} ({ds.width} x {ds.height}, {ds.count} bands at row {row}) "
                                 f"does not fit a {grid.width} x {grid.height} raster of {count} bands")
            placed.append((escape(str(Path(path).resolve())), int(row), ds.height))
    bands = []
    for b in range(1, count + 1):
        sources = [
            f'<SimpleSource><SourceFilename relativeToVRT="0">{path}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{grid.width}" ySize="{h}"/>'
            f'<DstRect xOff="0" yOff="{row}" xSize="{grid.width}" ySize="{h}"/></SimpleSource>'
            for path, row, h in placed
        ]
        nd = "" if nodata is None else f"<NoDataValue>{nodata!r}</NoDataValue>"
        bands.append(f'<VRTRasterBand dataType="{_GDAL_TYPES[str(np.dtype(dtype))]}" band="{b}" '
                     f'blockXSize="{block}" blockYSize="{block}">{nd}'
                     + "".join(sources) + "</VRTRasterBand>")
    return (f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">'
            f"<GeoTransform>{gt}</GeoTransform>" + "".join(bands) + "</VRTDataset>")


def _tile_size(blocksize: int, width: int, height: int) -> int:
    # GeoTIFF tiles must be multiples of 16; small rasters still get one whole tile
    return max(16, min(blocksize, 16 * -(-max(width, height) // 16)))


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
