"""The web console's files: static HTML/CSS/JS, and the map library copied in by the npm build step."""
from __future__ import annotations

from pathlib import Path

#: served at /console/static; index.html is also the page at /
STATIC_DIR = Path(__file__).resolve().parent / "static"
#: where `npm run build` (service/console/build.mjs) copies Leaflet; not committed
LEAFLET_DIR = STATIC_DIR / "vendor" / "leaflet"


def map_library_ready() -> bool:
    """Whether the set-up's npm step has put the map library in place."""
    return (LEAFLET_DIR / "leaflet.js").is_file() and (LEAFLET_DIR / "leaflet.css").is_file()
