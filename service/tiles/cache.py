"""Disk cache of inferred tiles, keyed by (model, dataset, TMS, z, x, y) and the version of what made them.

    <data_dir>/tiles/models/<model>/<dataset>/<tms>/<version>/<z>/<x>/<y>.png     a rendered tile
                                                              .../<y>.empty    no data there (answered 404)

The version is a digest of the bundle's files (size, mtime), the dataset's files and the rendering
options, so a retrained bundle or a replaced image never serves stale tiles; old versions are left
for a clean-up to remove. Workers write entries atomically (temporary file, then rename), so a reader
sees a whole PNG or nothing.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

#: bump when the rendering changes, so that cached tiles of an older renderer are not served
RENDERER_VERSION = 1
EMPTY_SUFFIX = ".empty"


def _stat_key(p: Path) -> str:
    try:
        st = os.stat(p)
    except OSError:
        return f"{p}:missing"
    return f"{p}:{st.st_size}:{st.st_mtime_ns}"


def tile_version(bundle_files: Iterable[Path], image_files: Iterable[Path], options: dict) -> str:
    """A short digest naming everything an inferred tile depends on besides its coordinates."""
    h = hashlib.sha256()
    for p in (*bundle_files, *image_files):
        h.update(_stat_key(Path(p)).encode())
        h.update(b"\0")
    h.update(repr(sorted(options.items())).encode())
    h.update(f"renderer={RENDERER_VERSION}".encode())
    return h.hexdigest()[:16]


def tile_path(data_dir: Path, model_id, dataset_id, tms_id: str, version: str, z: int, x: int, y: int) -> Path:
    return Path(data_dir) / "tiles" / "models" / str(model_id) / str(dataset_id) / tms_id / version / str(z) / str(x) / f"{y}.png"


def empty_marker(tile: Path) -> Path:
    return tile.with_suffix(EMPTY_SUFFIX)


def lookup(tile: Path) -> bytes | None | bool:
    """The cached PNG bytes; False when the tile is known to hold no data; None when not cached."""
    try:
        with open(tile, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        pass
    return False if empty_marker(tile).exists() else None
