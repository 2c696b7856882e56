"""The pixel lattice of live inference: one fixed, unbounded pixel grid per image and tile matrix set.

Its origin is the TMS's corner and its pixel size the image's own resolution in the TMS's CRS, so
the model sees pixels at the scale it was trained on, every zoom level shares the same pixels, and
a pixel's position never depends on which tile asked for it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from affine import Affine

from core.errors import ConfigError
from core.raster.grid import Grid
from core.raster.warp import crs_name


@dataclass(frozen=True)
class Lattice:
    """Pixel (col, row) covers x in [x0 + col*rx, x0 + (col+1)*rx) and y in (y0 - (row+1)*ry, y0 - row*ry]."""

    crs: Any
    x0: float
    y0: float
    rx: float
    ry: float

    @classmethod
    def for_tms(cls, tms, native_res: tuple[float, float]) -> "Lattice":
        """The lattice of an image of resolution ``native_res`` (TMS CRS units) in a regular TMS."""
        import morecantile

        if tms.is_variable:
            raise ConfigError(f"tile matrix set {tms.id} has variable matrix widths; live inference needs a "
                              "regular one", field="tileMatrixSetId")
        b = tms.xy_bounds(morecantile.Tile(0, 0, tms.minzoom))
        return cls(tms.rasterio_crs, b.left, b.top, float(native_res[0]), float(native_res[1]))

    @property
    def key(self) -> tuple:
        """What identifies the lattice's pixels in caches."""
        return (crs_name(self.crs), self.x0, self.y0, self.rx, self.ry)

    def grid(self, col: int, row: int, width: int, height: int) -> Grid:
        t = Affine(self.rx, 0.0, self.x0 + col * self.rx, 0.0, -self.ry, self.y0 - row * self.ry)
        return Grid(self.crs, t, width, height)

    def span(self, left: float, bottom: float, right: float, top: float) -> tuple[int, int, int, int]:
        """(col0, row0, col1, row1), end exclusive: the lattice pixels that bounds touch."""
        c0 = math.floor((left - self.x0) / self.rx + 1e-9)
        c1 = math.ceil((right - self.x0) / self.rx - 1e-9)
        r0 = math.floor((self.y0 - top) / self.ry + 1e-9)
        r1 = math.ceil((self.y0 - bottom) / self.ry - 1e-9)
        return c0, r0, max(c1, c0 + 1), max(r1, r0 + 1)
