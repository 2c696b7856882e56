"""QGIS, the tool our users map in, on our results: a class COG opens with a paletted style that lists the
class names and colours, and a result's signed tile URL, added as an XYZ layer with no header, renders a
map in the class colours. PyQGIS is Debian's (qgis, python3-qgis; .ci/run installs them), driven offscreen
through tests/service/qgis_client.py under the system python."""
from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio

from benchmarks.common import free_port
from benchmarks.security import CLASSES, COG_NAME, TMS, prepare, start_server, stop_server, write_class_cog

#: PyQGIS is packaged for Debian's own interpreter, not for the project's venv
SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT = Path(__file__).with_name("qgis_client.py")
RGB = {c["id"]: tuple(int(c["color"][i : i + 2], 16) for i in (1, 3, 5)) for c in CLASSES}


def _qgis_missing() -> str | None:
    try:
        r = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{SYSTEM_PYTHON} cannot run: {e}"
    return None if r.returncode == 0 else f"PyQGIS not importable by {SYSTEM_PYTHON} (apt-get install qgis python3-qgis)"


@pytest.fixture(scope="module", autouse=True)
def pyqgis():
    """Skips the module, with the reason, where Debian's QGIS is not installed (asked once, not at collection)."""
    reason = _qgis_missing()
    if reason:
        pytest.skip(reason)


def _qgis(*args, tmp_path: Path) -> dict:
    # a home of its own: QGIS writes its profile and caches there
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    r = subprocess.run([SYSTEM_PYTHON, str(CLIENT), *map(str, args)], capture_output=True, text=True, timeout=300,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_class_cog_opens_with_a_paletted_style_naming_the_classes(tmp_path):
    cog = write_class_cog(tmp_path / "classes.tif", size=256)
    layer = _qgis("palette", cog, tmp_path=tmp_path)
    assert layer["valid"] and layer["renderer"] == "paletted", layer
    legend = {int(v): (label, tuple(rgba)) for v, label, rgba in layer["classes"]}
    for c in CLASSES:
        assert legend[c["id"]] == (c["name"], (*RGB[c["id"]], 255)), legend.get(c["id"])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A finished job with a class COG (benchmarks.security's world), served on a free port."""
    tmp = tmp_path_factory.mktemp("qgis")
    world = prepare(tmp / "w", clients=1)
    port = free_port()
    proc = start_server(world, port, log=tmp / "serve.log")
    try:
        yield world, f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def _tiles_in_the_middle(tilejson: dict):
    """A 2 x 2 block of maxzoom tiles at the centre of the result (all inside its valid pixels)."""
    import morecantile

    tms = morecantile.tms.get(TMS)
    west, south, east, north = tilejson["bounds"]
    z = tilejson["maxzoom"]
    centre = tms.tile((west + east) / 2, (south + north) / 2, z)
    corner = tms.xy_bounds(centre)
    far = tms.xy_bounds(morecantile.Tile(centre.x + 1, centre.y + 1, z))
    return (corner.left, far.bottom, far.right, corner.top), 512


def test_the_signed_tile_url_renders_in_qgis_in_the_class_colours(served, tmp_path):
    world, base = served
    tj = httpx.get(f"{base}/v1/results/{world.job_id}.{COG_NAME}/{TMS}/tilejson.json",
                   headers={"Authorization": f"Bearer {world.tokens[-1]}"})
    assert tj.status_code == 200, tj.text
    tj = tj.json()
    url = tj["tiles"][0]
    assert "sig=" in url  # QGIS sends no header: the signature alone opens the tiles
    (xmin, ymin, xmax, ymax), size = _tiles_in_the_middle(tj)
    png = tmp_path / "map.png"
    out = _qgis("render", url, tj["minzoom"], tj["maxzoom"], xmin, ymin, xmax, ymax, size, png, tmp_path=tmp_path)
    assert out["valid"] and not out["errors"], out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(png) as ds:
            rgba = ds.read()
    assert rgba.shape == (4, size, size)
    opaque = rgba[3] == 255
    assert opaque.mean() > 0.99, f"only {opaque.mean():.1%} of the map was drawn"
    pixels = rgba[:3, opaque].T
    counts = {cid: int((pixels == rgb).all(axis=1).sum()) for cid, rgb in RGB.items()}
    # the map is the classes' colours (nearest-neighbour, at the tiles' own resolution) and shows each class
    assert sum(counts.values()) >= 0.98 * len(pixels), counts
    assert all(n > 0.1 * len(pixels) for n in counts.values()), counts
