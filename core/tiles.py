"""Class-map tiles, shared by the API and the tile workers: a class palette and paletted PNG encoding.

A class map tile is one byte per pixel: the class's index into a 256-entry PNG palette whose entries
carry the class colours, every other entry (nodata, unknown values) fully transparent. Nothing is
ever blended, so every opaque pixel of a tile is exactly one class's colour; and for uint8 class maps
(the predictor's default) the stored class id *is* the palette index, so a tile is encoded without
a per-pixel lookup.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.raster.cog import ClassStyle

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: zlib level of tile PNGs: class maps are long runs of a few values, level 1 already packs them well
PNG_LEVEL = 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_paletted_png(index: np.ndarray, palette: bytes, alpha: bytes, level: int = PNG_LEVEL) -> bytes:
    """A PNG (colour type 3) of an (h, w) uint8 array of palette indexes; ``alpha`` is the tRNS table."""
    if index.ndim != 2:
        raise ValueError(f"expected an (h, w) index array, got shape {index.shape}")
    h, w = index.shape
    rows = np.empty((h, w + 1), np.uint8)
    rows[:, 0] = 0  # filter type "None" on every row: the runs of a class map need no prediction
    rows[:, 1:] = index
    header = struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0)
    return b"".join((
        _SIGNATURE, _chunk(b"IHDR", header), _chunk(b"PLTE", palette), _chunk(b"tRNS", alpha),
        _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)), _chunk(b"IEND", b""),
    ))


class ClassPalette:
    """Class values -> paletted PNG tiles: each class its colour, anything else transparent."""

    def __init__(self, classes: Sequence[Any]):
        self.classes = [ClassStyle.of(c) for c in classes]
        if not self.classes:
            raise ValueError("a class palette needs at least one class")
        if len(self.classes) > 255:
            raise ValueError("a class palette holds at most 255 classes (one entry stays transparent)")
        ids = np.array([c.id for c in self.classes], dtype=np.int64)
        #: uint8 class maps index the palette with their own values; others go through a lookup
        self.direct = int(ids.max()) < 256
        slots = ids if self.direct else np.arange(len(ids))
        self.transparent = 255 if self.direct else len(ids)
        rgb = np.zeros((256, 3), np.uint8)
        a = np.zeros(256, np.uint8)
        for slot, c in zip(slots, self.classes):
            rgb[slot] = c.rgb
            a[slot] = 255
        if self.direct and 255 in set(ids.tolist()):
            raise ValueError("class id 255 is the nodata value of uint8 class maps")
        self.palette = rgb.tobytes()
        self.alpha = a.tobytes()
        self._ids = np.sort(ids)
        self._slot_of_sorted = slots[np.argsort(ids)]
        self.colors = {c.id: c.rgb for c in self.classes}

    def indexes(self, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(h, w) palette indexes of class values; transparent where ``valid`` is False."""
        if self.direct and values.dtype == np.uint8:
            idx = values
        else:
            v = values.astype(np.int64, copy=False)
            pos = np.clip(np.searchsorted(self._ids, v), 0, len(self._ids) - 1)
            known = self._ids[pos] == v
            idx = np.where(known, self._slot_of_sorted[pos], self.transparent).astype(np.uint8)
        if valid is not None:
            idx = np.where(valid, idx, np.uint8(self.transparent))
        return idx

    def png(self, values: np.ndarray, valid: np.ndarray | None = None) -> bytes:
        """A paletted PNG of an (h, w) class map; pixels not valid (nodata, outside) are transparent."""
        return encode_paletted_png(np.ascontiguousarray(self.indexes(values, valid)), self.palette, self.alpha)

    def rgba(self, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(4, h, w) uint8 colours of a class map (for tests and clients that want arrays)."""
        idx = self.indexes(values, valid)
        pal = np.frombuffer(self.palette, np.uint8).reshape(256, 3)
        a = np.frombuffer(self.alpha, np.uint8)
        return np.concatenate([pal[idx].transpose(2, 0, 1), a[idx][None]], axis=0)
