"""The North Carolina Landsat-7 set: band order and the 7 land-cover classes of strata.tif."""
from __future__ import annotations

from pathlib import Path

from core.data.fetch import NC_BANDS

#: strata.tif classes (ids as stored in the raster); colours are ours, for maps and RGB labels
NC_CLASSES: list[dict] = [
    {"id": 1, "name": "developed", "color": "#d7301f"},
    {"id": 2, "name": "agriculture", "color": "#fdd835"},
    {"id": 3, "name": "herbaceous", "color": "#a5d66a"},
    {"id": 4, "name": "shrubland", "color": "#c2a15a"},
    {"id": 5, "name": "forest", "color": "#1b7837"},
    {"id": 6, "name": "water", "color": "#2166ac"},
    {"id": 7, "name": "sediment", "color": "#bdbdbd"},
]


def nc_class_specs():
    from core.jobspec import ClassSpec

    return [ClassSpec(**c) for c in NC_CLASSES]


def nc_band_paths(files: dict[str, Path]) -> list[Path]:
    """The six band files of :func:`core.data.fetch.fetch` ("nc-landsat") in band order."""
    return [Path(files[k]) for k in NC_BANDS]


#: STAC eo common names of Landsat-7 ETM+ bands 1, 2, 3, 4, 5, 7 (NC's six files, Olinda's six bands): the
#: roles that map them onto a pretrained RGB stem
LANDSAT7_BAND_ROLES = ("blue", "green", "red", "nir", "swir16", "swir22")
