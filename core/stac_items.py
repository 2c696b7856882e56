"""STAC Items as scene inputs: a local item's assets chosen by the common names of their bands.

A job names ``bands: [red, green, blue, nir]`` once; any sensor's item then resolves to its own files, found
by the ``eo:bands`` common names of single-band assets (STAC 1.0 ``eo:bands[].common_name``, or STAC 1.1
``bands[].eo:common_name``). Nothing is fetched: the item is a local JSON file, and an asset's href must be
a local file (relative hrefs resolve against the item's folder); a caller-given ``confine`` decides where
those files may lie (the service's allowed roots).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from core.errors import SpecError

#: an item is metadata; anything far larger is not one (and is not read into memory)
MAX_ITEM_BYTES = 16 * 1024 * 1024
#: names a band request may use: eo common names are short lower-case words (red, nir08, swir16)
_COMMON_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: a requested name that an item may carry under a narrower name: Landsat OLI's 0.85 um band is 'nir08'
#: in most catalogues, and a job that asks for 'nir' means it
_NARROWER = {"nir": ("nir08",)}


class StacItemError(SpecError):
    """A STAC Item scene that cannot be resolved; ``field`` is relative to the scene (``stac``, ``bands.2``)."""


def read_item(path: str | Path) -> dict:
    """The item at ``path`` as a dict: a GeoJSON Feature with assets (StacItemError otherwise)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_ITEM_BYTES:
            raise StacItemError(f"{p.name} is {size} bytes; a STAC Item is at most {MAX_ITEM_BYTES}", field="stac")
        item = json.loads(p.read_bytes())
    except OSError as e:
        raise StacItemError(f"cannot read {p.name}: {e.strerror}", field="stac") from None
    except ValueError as e:
        raise StacItemError(f"{p.name} is not JSON: {e}", field="stac") from None
    if not isinstance(item, dict) or item.get("type") != "Feature" or not isinstance(item.get("assets"), dict):
        raise StacItemError(f"{p.name} is not a STAC Item (a GeoJSON Feature with 'assets')", field="stac")
    return item


def _common_names(asset: dict) -> list[str]:
    """The common names of an asset's bands, one per band (None for a band that has none)."""
    bands = asset.get("eo:bands") if isinstance(asset.get("eo:bands"), list) else asset.get("bands")
    if not isinstance(bands, list):
        return []
    return [b.get("common_name") or b.get("eo:common_name") if isinstance(b, dict) else None for b in bands]


def band_assets(item: dict) -> dict[str, str]:
    """common name -> key of the first single-band asset that carries it, in the item's asset order."""
    found: dict[str, str] = {}
    for key, asset in item["assets"].items():
        names = _common_names(asset) if isinstance(asset, dict) else []
        if len(names) == 1 and isinstance(names[0], str):
            found.setdefault(names[0], key)
    return found


def _multi_band_holder(item: dict, name: str) -> str | None:
    return next((k for k, a in item["assets"].items() if isinstance(a, dict) and name in _common_names(a)), None)


def asset_path(item_path: Path, key: str, href) -> Path:
    """The local file an asset's href names: relative hrefs against the item's folder, ``file://`` URLs
    and absolute paths as they are; any other URL (http, s3, GDAL's /vsi...) is refused, never fetched."""
    if not isinstance(href, str) or not href:
        raise ValueError(f"asset {key!r} has no href")
    parts = urlsplit(href)
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        local = unquote(parts.path)
    elif parts.scheme or parts.netloc or href.startswith("/vsi"):
        raise ValueError(f"asset {key!r} is not a local file ({href[:80]}); only local files are read")
    else:
        local = unquote(href)
    p = Path(local)
    if not p.is_absolute():
        p = item_path.absolute().parent / p
    # '../data/B4.tif' is how catalogues lay out their files; the caller's confinement judges the result
    return Path(os.path.normpath(p))


def band_files(item_path: str | Path, names: list[str], confine: Callable[[Path], Path] | None = None) -> list[Path]:
    """The files of the item's single-band assets whose common names are ``names``, in that order.

    ``confine(path) -> path`` may refuse a file (ValueError): its message is reported with the asset.
    """
    item_path = Path(item_path)
    item = read_item(item_path)
    by_name = band_assets(item)
    files = []
    for i, name in enumerate(names):
        key = next((by_name[n] for n in (name, *_NARROWER.get(name, ())) if n in by_name), None)
        if key is None:
            holder = _multi_band_holder(item, name)
            if holder is not None:
                raise StacItemError(f"{name!r} is one band of the multi-band asset {holder!r}; bands are read from "
                                    "single-band assets", field=f"bands.{i}")
            have = ", ".join(sorted(by_name)) or "none"
            raise StacItemError(f"the item has no asset with common name {name!r}; its common names: {have}",
                                field=f"bands.{i}")
        try:
            p = asset_path(item_path, key, item["assets"][key].get("href"))
        except ValueError as e:
            raise StacItemError(str(e), field=f"bands.{i}") from None
        try:
            files.append(confine(p) if confine is not None else p)
        except ValueError as e:
            raise StacItemError(f"asset {key!r} ({p.name}): {e}", field=f"bands.{i}") from None
    return files


def check_common_names(names) -> list[str]:
    """``names`` as a list of common names (lower-cased); ValueError saying what is wrong."""
    if not isinstance(names, list) or not names:
        raise ValueError("with 'stac', 'bands' lists the common names of the bands to read (red, green, nir, ...)")
    out = []
    for n in names:
        if not isinstance(n, str) or not _COMMON_NAME.match(n.strip().lower()):
            raise ValueError(f"{n!r} is not a band common name (red, green, blue, nir, swir16, swir22, pan, ...)")
        out.append(n.strip().lower())
    return out
