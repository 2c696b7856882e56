"""Scene: one multi-band raster or single-band files stacked in order, read as windows with a valid mask.

Every read returns one :class:`RasterWindow` (float32 raw values + valid mask + grid). A pixel is
valid only where every band is valid: not the band's nodata, not masked by an internal mask or an
alpha band, and finite. Invalid pixels hold 0 so nothing downstream sees a sentinel like -99999.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

from core.errors import BandCountMismatchError, RasterTooLargeError, UnreadableRasterError
from core.raster.grid import Grid, window_intersection
from core.raster.warp import covering_window, pixel_grids, reproject_array, require_crs

log = logging.getLogger("geoadapt.raster")

#: largest width x height accepted from a header (a guard against decompression bombs); ~65k x 65k
DEFAULT_MAX_PIXELS = 2**32
#: more bands than this is not imagery we can train on
MAX_BANDS = 1024


@dataclass
class RasterWindow:
    """The one data container: raw values, where they are valid, and where they lie."""

    data: np.ndarray  # (bands, h, w) float32, raw values (not normalised); invalid pixels are 0
    valid: np.ndarray  # (h, w) bool, True where every band is valid
    grid: Grid

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean()) if self.valid.size else 0.0


def open_raster(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "raster"):
    """Open a raster with rasterio, turning every failure into a typed error with a clear message."""
    path = Path(path)
    if not path.exists():
        raise UnreadableRasterError(f"{what} file not found: {path.name}")
    if path.is_dir():
        raise UnreadableRasterError(f"{what} {path.name} is a folder; expected a GeoTIFF")
    if path.stat().st_size == 0:
        raise UnreadableRasterError(f"{what} file is empty: {path.name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError as e:
        msg = str(e)
        if "not recognized as" in msg or "not recognised as" in msg:
            raise UnreadableRasterError(f"{what} is not an image GDAL can read: {path.name}") from None
        raise UnreadableRasterError(f"cannot open {what} {path.name}: {read_problem(e)}") from None
    except (RasterioError, OSError) as e:
        raise UnreadableRasterError(f"cannot open {what} {path.name}: {read_problem(e)}") from None
    check_size(ds, path, max_pixels)
    return ds


def gdal_message(e: BaseException) -> str:
    """The most specific message of a rasterio error: GDAL's own, chained under 'Read failed'."""
    msgs = []
    while e is not None and len(msgs) < 4:
        msgs.append(str(e))
        e = e.__cause__ or e.__context__
    useful = [m for m in msgs if m and "see previous exception" not in m.lower()]
    return (useful[-1] if useful else msgs[0]).strip()


#: "got 5948 bytes, expected 8064": libtiff's words for a block that the end of the file cut short
_SHORT_BLOCK = re.compile(r"got (\d+) bytes, expected (\d+)")


def read_problem(e: BaseException) -> str:
    """What is wrong with a file GDAL failed to open or read, in words its owner can act on. GDAL's own
    text ("TIFFReadEncodedStrip:Read error at scanline 4294967295") goes to the log only."""
    msg = gdal_message(e)
    log.info("GDAL/libtiff: %s", msg)
    low = msg.lower()
    short = _SHORT_BLOCK.search(msg)
    if short:
        return (f"the file is truncated: a block of its pixels holds {short[1]} of its {short[2]} bytes "
                "(an interrupted copy or download?)")
    if any(w in low for w in ("read error", "seek error", "short read", "unexpected end", "not enough data",
                              "truncat", "past end")):
        return "the file is truncated: it ends before its last pixels (an interrupted copy or download?)"
    if any(w in low for w in ("decod", "decompress", "corrupt", "lzw", "deflate", "zip", "jpeg", "packbits")):
        return "the file is corrupt: a compressed block of its pixels cannot be decompressed"
    if any(w in low for w in ("directory", "header", "offset", "tag")):
        return "the file is corrupt or truncated: its TIFF header or directory is damaged"
    return "the file is truncated or corrupt: GDAL cannot read it"


def check_size(ds, path: Path | str, max_pixels: int) -> None:
    n = int(ds.width) * int(ds.height)
    if n > max_pixels:
        ds.close()
        raise RasterTooLargeError(
            f"{Path(path).name} declares {ds.width} x {ds.height} pixels ({n:,}), over the limit of "
            f"{max_pixels:,}; split it or raise the limit"
        )
    if ds.count > MAX_BANDS:
        ds.close()
        raise RasterTooLargeError(f"{Path(path).name} declares {ds.count} bands, over the limit of {MAX_BANDS}")


def data_band_indexes(ds) -> list[int]:
    """1-based band indexes that hold data: alpha bands are masks, not bands."""
    interp = ds.colorinterp
    idx = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha]
    return idx or [1]


class Scene:
    """An image as one stack of bands on one grid (the first file's); read windows of it.

    Files of a stack may differ in dtype and nodata. A band file on another grid (e.g. a 20 m band
    stacked with 10 m ones) is resampled onto the first file's grid as it is read.
    """

    def __init__(self, datasets: list, paths: list[Path], *, nodata: float | None = None, owned: bool = True):
        self._ds = datasets
        self.paths = paths
        self._owned = owned
        self._nodata_override = nodata
        self._bands = [data_band_indexes(ds) for ds in datasets]
        self.grid = Grid.from_dataset(datasets[0])
        self._file_grids = [Grid.from_dataset(ds) for ds in datasets]
        for p, g in zip(paths[1:], self._file_grids[1:]):
            if not g.same_as(self.grid) and (g.crs is None or self.grid.crs is None):
                raise BandCountMismatchError(
                    f"band file {Path(p).name} is {g.width} x {g.height} without georeferencing, the first band "
                    f"is {self.grid.width} x {self.grid.height}: stacked files must share one grid"
                )

    # construction ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, spec, *, nodata: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> "Scene":
        """Open a SceneSpec, a path, a list of band paths (stacked in order) or an open rasterio dataset."""
        if hasattr(spec, "read_masks"):  # an already open dataset: the caller keeps ownership
            check_size(spec, spec.name, max_pixels)
            return cls([spec], [Path(spec.name)], nodata=nodata, owned=False)
        if hasattr(spec, "paths") and hasattr(spec, "image"):
            paths = list(spec.paths)
        elif isinstance(spec, (str, os.PathLike)):
            paths = [Path(spec)]
        else:
            paths = [Path(p) for p in spec]
        if not paths:
            raise UnreadableRasterError("a scene needs at least one image file")
        datasets = []
        try:
            for p in paths:
                datasets.append(open_raster(p, max_pixels=max_pixels, what="image"))
            return cls(datasets, paths, nodata=nodata)
        except BaseException:
            for ds in datasets:
                ds.close()
            raise

    def close(self) -> None:
        if self._owned:
            for ds in self._ds:
                ds.close()
        self._ds = []

    def __enter__(self) -> "Scene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ",".join(Path(p).name for p in self.paths)
        return f"Scene({names}, {self.count} bands, {self.grid.width}x{self.grid.height})"

    # description -------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return sum(len(b) for b in self._bands)

    @property
    def dtypes(self) -> list[str]:
        return [ds.dtypes[i - 1] for ds, idx in zip(self._ds, self._bands) for i in idx]

    @property
    def nodata(self) -> list[float | None]:
        if self._nodata_override is not None:
            return [self._nodata_override] * self.count
        return [ds.nodatavals[i - 1] for ds, idx in zip(self._ds, self._bands) for i in idx]

    @property
    def name(self) -> str:
        return Path(self.paths[0]).name

    # reading -----------------------------------------------------------------------------------
    def read(
        self, window: Window | None = None, *, onto: Grid | None = None, resampling: str = "bilinear"
    ) -> RasterWindow:
        """Read a window of the scene's grid, or the ground of another grid (``onto``) resampled onto it.

        Parts of the window outside the raster come back invalid.
        """
        if onto is None:
            onto = self.grid if window is None else self.grid.window(window)
        elif window is not None:
            raise ValueError("give either a window or a grid to read onto, not both")
        datas, valids = [], []
        for k in range(len(self._ds)):
            d, v = self._read_file(k, onto, resampling)
            datas.append(d)
            valids.append(v)
        data = np.concatenate(datas, axis=0)
        valid = np.logical_and.reduce(np.concatenate(valids, axis=0), axis=0)
        data[:, ~valid] = 0.0
        return RasterWindow(data, valid, onto)

    def read_per_band(self, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(data, valid), both (bands, h, w): each band's own validity, for tools that keep nodata per band."""
        onto = self.grid if window is None else self.grid.window(window)
        parts = [self._read_file(k, onto, "nearest") for k in range(len(self._ds))]
        data = np.concatenate([d for d, _ in parts], axis=0)
        valid = np.concatenate([v for _, v in parts], axis=0)
        data[~valid] = 0.0
        return data, valid

    def read_valid(self, window: Window | None = None, *, onto: Grid | None = None) -> np.ndarray:
        """Only the valid mask of a window (same rules as :meth:`read`)."""
        return self.read(window, onto=onto, resampling="nearest").valid

    def _read_file(self, k: int, onto: Grid, resampling: str) -> tuple[np.ndarray, np.ndarray]:
        fgrid = self._file_grids[k]
        off = fgrid.aligned_offset(onto)
        if off is not None:  # same pixel grid: a plain window read, no resampling
            return self._read_direct(k, Window(off[0], off[1], onto.width, onto.height))
        fgrid, onto_w = pixel_grids(fgrid, onto)
        require_crs(fgrid, f"image {Path(self.paths[k]).name}")
        require_crs(onto_w, "the grid to read onto")
        nb = len(self._bands[k])
        src_win = covering_window(fgrid, onto_w)
        if src_win is None:
            return (np.zeros((nb, onto.height, onto.width), np.float32), np.zeros((nb, onto.height, onto.width), bool))
        d, v = self._read_direct(k, src_win)
        sgrid = fgrid.window(src_win)
        d = np.where(v, d, np.float32(np.nan))
        out = reproject_array(d, sgrid, onto_w, resampling=resampling, src_nodata=np.nan, dst_nodata=np.nan)
        vout = reproject_array(v.astype(np.uint8), sgrid, onto_w, resampling="nearest", dst_nodata=0)
        valid = (vout > 0) & np.isfinite(out)
        return np.nan_to_num(out, nan=0.0).astype(np.float32, copy=False), valid

    def _read_direct(self, k: int, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of file k on its own grid; parts outside the file are invalid."""
        ds, idx = self._ds[k], self._bands[k]
        h, w = int(window.height), int(window.width)
        data = np.zeros((len(idx), h, w), np.float32)
        valid = np.zeros((len(idx), h, w), bool)
        inner = window_intersection(window, Window(0, 0, ds.width, ds.height))
        if inner is None:
            return data, valid
        r0 = int(inner.row_off - window.row_off)
        c0 = int(inner.col_off - window.col_off)
        ih, iw = int(inner.height), int(inner.width)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                d = ds.read(idx, window=inner, out_dtype="float32")
                if self._nodata_override is not None:
                    m = d != np.float32(self._nodata_override)
                else:
                    m = ds.read_masks(idx, window=inner) > 0
        except (RasterioError, OSError) as e:
            raise UnreadableRasterError(
                f"cannot read pixels of {Path(self.paths[k]).name}: {read_problem(e)}") from None
        m &= np.isfinite(d)
        data[:, r0 : r0 + ih, c0 : c0 + iw] = d
        valid[:, r0 : r0 + ih, c0 : c0 + iw] = m
        return data, valid

