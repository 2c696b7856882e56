"""The one reader of imagery: a raster (image, COG) or band files stacked in order, opened once per process.

Every caller that shows or infers from imagery asks this module (as rio-tiler's one Reader is injected
into TiTiler's factories): the dataset and scene tiles, the result COG tiles, and live inference.

    open_imagery(files) -> ImageReader        one per file version (path, mtime, size) in one LRU of
                                              the process; evicted readers close their handles
      one file                     -> that file
      band files on one pixel grid -> an in-memory VRT stacking them (one warp for all bands:
                                      a third of the time of one reader per band)
      band files on other grids    -> each file alone, stacked after the read
      .tiler(tms, band, warp)      a pooled rio-tiler Reader (a GDAL handle serves one thread at a time)
      .tile() .point()             rio-tiler's tile and point reads over every band file
      .percentiles()               each band's stretch, from a decimated read of the whole image
      .lattice_pixels()            pixels on a live-inference lattice, assembled from fixed blocks
      .memo(key, make)             what callers derive from the files (classes, zooms, areas), kept with them

Why pooled handles: opening a file and building the transformer from its CRS to the TMS CRS costs
more than reading a tile (tens of ms for CRSs whose datum shift PROJ resolves through grids, e.g.
NAD83(HARN) State Plane). With ``warp`` a handle keeps a WarpedVRT onto the TMS CRS, so rio-tiler
reads tiles from a dataset already in the TMS CRS (for class maps, where nearest is the only
resampling); without it rio-tiler warps each tile from the file itself.
"""
from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from xml.sax.saxutils import escape

import morecantile
import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rio_tiler.io import Reader
from rio_tiler.models import ImageData, PointData

from core.errors import UnreadableRasterError
from core.lru import LRU
from core.raster.lattice import Lattice
from core.raster.scene import Scene, open_raster
from core.raster.warp import crs_name

#: readers kept open per process (each with its pooled handles)
MAX_OPEN_READERS = 32
#: idle handles kept per (band file, TMS, warp) of a reader; more are opened under load and closed when given back
MAX_IDLE_HANDLES = 8
#: the TMS of reads that need none (bounds, statistics): rio-tiler's own default
DEFAULT_TMS = "WebMercatorQuad"
#: lattice pixels a side of the blocks read for live inference, and how many blocks the process keeps
#: (of all its images: a bound on memory whatever the number of readers)
READ_BLOCK = 512
MAX_BLOCKS = 128

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}

_tms_sets: dict[str, morecantile.TileMatrixSet] = {}


def tile_matrix_set(tms_id: str) -> morecantile.TileMatrixSet:
    """A tile matrix set by id, kept: morecantile.tms.get deep-copies the whole set on every call, which
    costs more than serving a cached tile. Raises morecantile's InvalidIdentifier for unknown ids."""
    tms = _tms_sets.get(tms_id)
    if tms is None:
        tms = _tms_sets[tms_id] = morecantile.tms.get(tms_id)
    return tms


def same_grid(files: Sequence[Path]) -> bool:
    grids = set()
    for p in files:
        with rasterio.open(p) as ds:
            grids.add((ds.width, ds.height, tuple(ds.transform), ds.crs.to_wkt() if ds.crs else None))
    return len(grids) == 1


def stack_vrt(files: Sequence[Path]) -> str:
    """VRT XML stacking single-band files of one pixel grid (GDAL opens the XML text itself)."""
    with rasterio.open(files[0]) as ds:
        w, h, crs, gt = ds.width, ds.height, ds.crs, ds.transform.to_gdal()
    head = [f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">']
    if crs is not None:
        head.append(f"<SRS>{escape(crs.to_wkt())}</SRS>")
    head.append(f"<GeoTransform>{', '.join(repr(float(v)) for v in gt)}</GeoTransform>")
    kinds = []
    for p in files:
        with rasterio.open(p) as ds:
            kinds.append((ds.dtypes[0], ds.nodata))
    # one type for the stack (GDAL reads a VRT's bands into one array), wide enough for every file
    dtype = _GDAL_TYPES.get(np.result_type(*[k[0] for k in kinds]).name, "Float64")
    bands = []
    for i, (p, (_, nodata)) in enumerate(zip(files, kinds), start=1):
        # each file keeps its own nodata value (NC: -99999 in float bands, -32768 in an int16 one)
        nd = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else ""
        bands.append(f'<VRTRasterBand dataType="{dtype}" band="{i}">{nd}<SimpleSource>'
                     f'<SourceFilename relativeToVRT="0">{escape(str(Path(p).resolve()))}</SourceFilename>'
                     f"<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>")
    return "".join(head + bands + ["</VRTDataset>"])


@dataclass
class _Handle:
    dataset: Any  # the opened file or stack
    vrt: Any  # a WarpedVRT of it onto the TMS CRS, or None
    tiler: Reader

    def close(self) -> None:
        self.tiler.close()
        if self.vrt is not None:
            self.vrt.close()
        self.dataset.close()


class ImageReader:
    """One image's files opened for reading: its bands, bounds and pooled rio-tiler readers."""

    def __init__(self, files: Sequence[str | Path]):
        if not files:
            raise UnreadableRasterError("imagery needs at least one file")
        self.files = tuple(Path(p) for p in files)
        self.version = file_version(self.files)
        for p in self.files:  # a missing, empty or corrupt file is a typed error naming it
            open_raster(p, what="image").close()
        self._lock = threading.Lock()
        self._memo_lock = threading.RLock()
        self._idle: dict[tuple, list[_Handle]] = {}
        self._memo: dict = {}
        self._closed = False
        self._scene: Scene | None = None
        self._scene_lock = threading.Lock()  # GDAL handles must not be used by two threads at once

    @property
    def _sources(self) -> list[str]:
        """What rio-tiler opens: the one file, a VRT stacking band files of one grid, or each band file.
        Decided when first needed: live inference reads through a Scene and never needs it."""
        def decide() -> list[str]:
            if len(self.files) == 1:
                return [str(self.files[0])]
            return [stack_vrt(self.files)] if same_grid(self.files) else [str(p) for p in self.files]

        return self.memo("sources", decide)

    def _describe(self) -> dict:
        def read() -> dict:
            with self.tiler() as r:
                ds = r.dataset
                return {"count": len(self.files) if len(self.files) > 1 else ds.count, "dtype": ds.dtypes[0],
                        "nodata": ds.nodata, "crs": crs_name(ds.crs), "bounds": list(r.bounds)}

        return self.memo("description", read)

    @property
    def count(self) -> int:
        return self._describe()["count"]

    @property
    def dtype(self) -> str:
        return self._describe()["dtype"]

    @property
    def nodata(self) -> float | None:
        return self._describe()["nodata"]

    @property
    def crs(self) -> str | None:
        """The image's CRS by name (EPSG:xxxx where it has one)."""
        return self._describe()["crs"]

    @property
    def bounds(self) -> list[float]:
        """(left, bottom, right, top) in the image's CRS."""
        return self._describe()["bounds"]

    @property
    def stacked(self) -> bool:
        """True when one handle reads every band (one file, or band files stacked by a VRT)."""
        return len(self._sources) == 1

    # handles ---------------------------------------------------------------------------------------
    def _open(self, source: str, tms: morecantile.TileMatrixSet, warp: bool) -> _Handle:
        ds = rasterio.open(source)
        try:
            vrt = None
            if warp and ds.crs != tms.rasterio_crs:
                vrt = WarpedVRT(ds, crs=tms.rasterio_crs, resampling=Resampling.nearest,
                                src_nodata=ds.nodata, nodata=ds.nodata)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # rio-tiler's "no overviews" note on small images
                tiler = Reader(source, dataset=vrt if vrt is not None else ds, tms=tms)
            return _Handle(ds, vrt, tiler)
        except BaseException:
            ds.close()
            raise

    @contextmanager
    def tiler(self, tms: morecantile.TileMatrixSet | None = None, *, band: int = 0,
              warp: bool = False) -> Iterator[Reader]:
        """A rio-tiler Reader of the stack, or of band file ``band`` (0-based) when the files are not
        stackable; ``warp``: of a WarpedVRT onto the TMS CRS (nearest), for class maps."""
        tms = tms or tile_matrix_set(DEFAULT_TMS)
        source = self._sources[0 if self.stacked else band]
        key = (source if self.stacked else band, tms.id, warp)
        with self._lock:
            idle = self._idle.get(key)
            h = idle.pop() if idle else None
        if h is None:
            h = self._open(source, tms, warp)
        try:
            yield h.tiler
        finally:
            with self._lock:
                idle = self._idle.setdefault(key, [])
                keep = not self._closed and len(idle) < MAX_IDLE_HANDLES
                if keep:
                    idle.append(h)
            if not keep:
                h.close()

    @contextmanager
    def dataset(self, band: int = 0) -> Iterator[Any]:
        """The rasterio dataset of the stack (or of band file ``band``), from the pool."""
        with self.tiler(band=band) as r:
            yield r.dataset

    def memo(self, key, make: Callable[[], Any]) -> Any:
        """``make()`` once per reader: what callers derive from these files lives as long as the handles."""
        with self._memo_lock:
            if key not in self._memo:
                self._memo[key] = make()
            return self._memo[key]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [h for hs in self._idle.values() for h in hs]
            self._idle = {}
        for h in idle:
            h.close()
        with self._scene_lock:
            if self._scene is not None:
                self._scene.close()
                self._scene = None

    # map tiles and values --------------------------------------------------------------------------
    def tile(self, x: int, y: int, z: int, tms: morecantile.TileMatrixSet, *, indexes: Sequence[int] | None = None,
             tilesize: int | None = None, warp: bool = False, **options: Any) -> ImageData:
        """Bands ``indexes`` (1-based; default all) of one tile; rio-tiler's TileOutsideBounds off the image."""
        if self.stacked:
            with self.tiler(tms, warp=warp) as r:
                return r.tile(x, y, z, tilesize=tilesize, indexes=indexes, **options)
        parts = []
        for b in indexes or range(1, self.count + 1):
            with self.tiler(tms, band=b - 1, warp=warp) as r:
                parts.append(r.tile(x, y, z, tilesize=tilesize, indexes=1, **options))
        return ImageData.create_from_list(parts)

    def point(self, lon: float, lat: float) -> PointData:
        """Every band's value at a WGS84 point (masked where there is no data); rio-tiler's
        PointOutsideBounds off the image, a rasterio error outside the domain of its CRS."""
        if self.stacked:
            with self.tiler() as r:
                return r.point(lon, lat)
        parts = []
        for i in range(self.count):
            with self.tiler(band=i) as r:
                parts.append(r.point(lon, lat, indexes=1))
        return PointData.create_from_list(parts)

    def percentiles(self, p: tuple[float, float], max_size: int) -> list[tuple[float, float]]:
        """(low, high) percentiles of every band over a read of the whole image decimated to ``max_size``
        pixels a side (computed once per reader).

        Each band with its own mask: in a stack a band may lack data where the others have it (NC's
        int16 band 7 marks pixels -32768 that the float bands fill), which a dataset-wide mask would
        count as values.
        """
        def compute() -> list[tuple[float, float]]:
            out: list[tuple[float, float]] = []
            for k in range(len(self._sources)):
                with self.dataset(k) as ds:
                    f = max(1.0, max(ds.width, ds.height) / max_size)
                    shape = (max(1, round(ds.height / f)), max(1, round(ds.width / f)))
                    for b in range(1, ds.count + 1):
                        a = ds.read(b, out_shape=shape, masked=True, resampling=Resampling.nearest)
                        v = a.compressed().astype(np.float64)
                        v = v[np.isfinite(v)]
                        lo, hi = (np.percentile(v, p) if v.size else (0.0, 1.0))
                        out.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
            return out

        return self.memo(("percentiles", tuple(p), max_size), compute)

    # live inference: pixels on a lattice -----------------------------------------------------------
    def _scene_handle(self) -> Scene:
        if self._scene is None:
            self._scene = Scene.open(list(self.files))
        return self._scene

    def native_res(self, crs) -> tuple[float, float]:
        """(x, y) pixel size of the image expressed in ``crs`` units, near the image's centre."""
        def compute() -> tuple[float, float]:
            from rasterio.warp import calculate_default_transform

            with self._scene_lock:
                g = self._scene_handle().grid
                t, _, _ = calculate_default_transform(g.crs, crs, g.width, g.height, *g.bounds)
            return abs(t.a), abs(t.e)

        return self.memo(("native_res", crs_name(crs)), compute)

    def _block(self, lattice: Lattice, bx: int, by: int, resampling: str):
        def read():
            with self._scene_lock:
                grid = lattice.grid(bx * READ_BLOCK, by * READ_BLOCK, READ_BLOCK, READ_BLOCK)
                return self._scene_handle().read(onto=grid, resampling=resampling)

        return _blocks.get((self.version, lattice.key, resampling, bx, by), read)

    def lattice_pixels(self, lattice: Lattice, c0: int, r0: int, c1: int, r1: int,
                       resampling: str = "nearest") -> tuple[np.ndarray, np.ndarray]:
        """(data (bands, h, w) float32, valid (h, w)) of lattice pixels [c0, c1) x [r0, r1).

        Reads go through fixed blocks of the lattice (READ_BLOCK px square, cached): each reprojection
        has a set-up cost, and a block read onto the same grid always gives the same pixels, so an area
        assembled from blocks is the same whichever tile asked for it (a grid made for the occasion could
        let GDAL's approximate reprojection pick another pixel).
        """
        B = READ_BLOCK
        blocks = [(bx, by, self._block(lattice, bx, by, resampling))
                  for by in range(r0 // B, (r1 - 1) // B + 1) for bx in range(c0 // B, (c1 - 1) // B + 1)]
        data = np.zeros((blocks[0][2].data.shape[0], r1 - r0, c1 - c0), np.float32)
        valid = np.zeros((r1 - r0, c1 - c0), bool)
        for bx, by, blk in blocks:
            x0, x1 = max(c0, bx * B), min(c1, (bx + 1) * B)
            y0, y1 = max(r0, by * B), min(r1, (by + 1) * B)
            src = (slice(y0 - by * B, y1 - by * B), slice(x0 - bx * B, x1 - bx * B))
            dst = (slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0))
            data[(slice(None), *dst)] = blk.data[(slice(None), *src)]
            valid[dst] = blk.valid[src]
        return data, valid


def file_version(files: Sequence[str | Path]) -> tuple:
    """What names one version of the files (a rewritten file, with a new mtime or size, is a new version);
    OSError when one is gone."""
    out = []
    for p in files:
        st = Path(p).stat()
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


_readers = LRU(MAX_OPEN_READERS, close=lambda reader: reader.close())
_blocks = LRU(MAX_BLOCKS)


def open_imagery(files: Sequence[str | Path]) -> ImageReader:
    """The process's reader of these files at their current version (OSError when one is gone)."""
    return _readers.get(file_version(files), lambda: ImageReader(files))
