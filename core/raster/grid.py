"""Grid: the georeferencing of a raster or a window (CRS, affine transform, size), and GSD helpers."""
from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

#: GSDs that differ by more than this fraction are matched by default (JobSpec params.match_gsd)
GSD_MATCH_THRESHOLD = 0.2
_M_PER_DEGREE = 111_320.0


@dataclass(frozen=True)
class Grid:
    """Where a raster's pixels lie on the ground. ``crs`` is None for non-georeferenced tiles."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @classmethod
    def from_dataset(cls, ds) -> "Grid":
        return cls(ds.crs if ds.crs else None, ds.transform, ds.width, ds.height)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def res(self) -> tuple[float, float]:
        t = self.transform
        return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the grid's footprint (its corners' envelope)."""
        t = self.transform
        xs, ys = zip(*(t @ (c, r) for c, r in ((0, 0), (self.width, 0), (0, self.height), (self.width, self.height))))
        return (min(xs), min(ys), max(xs), max(ys))

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    @property
    def gsd(self) -> float:
        """Ground sampling distance in metres (mean of x and y; degrees converted at the centre)."""
        rx, ry = self.res
        r = (rx + ry) / 2.0
        if self.crs is None:
            return r
        if self.crs.is_geographic:
            lat = (self.bounds[1] + self.bounds[3]) / 2.0
            # geometric mean of the pixel's east-west and north-south sizes
            return _M_PER_DEGREE * math.sqrt(rx * abs(math.cos(math.radians(lat))) * ry)
        try:
            return r * float(self.crs.linear_units_factor[1])
        except Exception:  # unusual units: assume metres rather than fail a GSD comparison
            return r

    def window(self, win: Window) -> "Grid":
        """The grid of a window of this grid (may extend beyond it)."""
        # composed here rather than with rasterio.windows.transform, which uses affine's deprecated `*`
        t = self.transform @ Affine.translation(win.col_off, win.row_off)
        return Grid(self.crs, t, int(win.width), int(win.height))

    def full_window(self) -> Window:
        return Window(0, 0, self.width, self.height)

    def with_resolution(self, res: float | tuple[float, float]) -> "Grid":
        """The same footprint sampled at another resolution (in CRS units); origin kept."""
        rx, ry = (res, res) if isinstance(res, (int, float)) else res
        ox, oy = self.res
        fx, fy = rx / ox, ry / oy
        width = max(1, int(round(self.width / fx)))
        height = max(1, int(round(self.height / fy)))
        return Grid(self.crs, self.transform @ Affine.scale(fx, fy), width, height)

    def with_gsd(self, gsd_m: float) -> "Grid":
        """The same footprint at a ground sampling distance in metres."""
        f = gsd_m / self.gsd
        rx, ry = self.res
        return self.with_resolution((rx * f, ry * f))

    def same_as(self, other: "Grid", tol: float = 1e-6) -> bool:
        """Same CRS, size and (within ``tol`` pixels) transform."""
        if (self.width, self.height) != (other.width, other.height):
            return False
        if not _same_crs(self.crs, other.crs):
            return False
        return _transform_close(self.transform, other.transform, tol)

    def aligned_offset(self, other: "Grid", tol: float = 1e-6) -> tuple[int, int] | None:
        """If ``other`` is an integer-pixel window of this grid (same CRS and pixel size), its (col, row)."""
        if not _same_crs(self.crs, other.crs):
            return None
        a, b = self.transform, other.transform
        if not all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip((a.a, a.b, a.d, a.e), (b.a, b.b, b.d, b.e))):
            return None
        col, row = ~a @ (b.c, b.f)
        rc, rr = round(col), round(row)
        if abs(col - rc) > 1e-3 or abs(row - rr) > 1e-3:
            return None
        return int(rc), int(rr)

    def to_dict(self) -> dict:
        return {
            "crs": self.crs.to_wkt() if self.crs else None,
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        crs = CRS.from_user_input(d["crs"]) if d.get("crs") else None
        return cls(crs, Affine(*d["transform"]), int(d["width"]), int(d["height"]))


def _same_crs(a: CRS | None, b: CRS | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a == b


def _transform_close(a: Affine, b: Affine, tol_px: float) -> bool:
    px = max(abs(a.a), abs(a.e), 1e-12)
    return all(abs(x - y) <= tol_px * px for x, y in zip(a, b))


def gsd_ratio(source: Grid | float, target: Grid | float) -> float:
    """target GSD / source GSD (2.0: the target's pixels are twice as large)."""
    s = source.gsd if isinstance(source, Grid) else float(source)
    t = target.gsd if isinstance(target, Grid) else float(target)
    return t / s


def should_match_gsd(
    source: Grid | float, target: Grid | float, option: bool | None = None, threshold: float = GSD_MATCH_THRESHOLD
) -> bool:
    """JobSpec params.match_gsd: an explicit choice wins; by default match beyond a 20% difference."""
    if option is not None:
        return bool(option)
    r = gsd_ratio(source, target)
    return max(r, 1.0 / r) - 1.0 > threshold


def window_intersection(a: Window, b: Window) -> Window | None:
    """Intersection of two windows, or None when they do not overlap."""
    c0, r0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    c1 = min(a.col_off + a.width, b.col_off + b.width)
    r1 = min(a.row_off + a.height, b.row_off + b.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def iter_blocks(window: Window, block: int):
    """Tile ``window`` into sub-windows of at most block x block pixels (row-major)."""
    c0, r0 = int(window.col_off), int(window.row_off)
    w, h = int(window.width), int(window.height)
    for r in range(r0, r0 + h, block):
        for c in range(c0, c0 + w, block):
            yield Window(c, r, min(block, c0 + w - c), min(block, r0 + h - r))
