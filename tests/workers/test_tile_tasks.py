"""Tile inference worker code on the real NC scene with a real (small, untrained) bundle: the lattice and the
hann weights of its windows, areas that agree pixel for pixel whatever tile asks, rendered tiles, empty/zoomed-out/bad
inputs, and the names and result backend shared with the API."""
from __future__ import annotations

import io

import morecantile
import numpy as np
import pytest
import torch
from PIL import Image

from core import task_names
from core.data.nc import NC_CLASSES
from core.raster import reader as imagery_reader
from core.raster.lattice import Lattice
from core.raster.reader import ImageReader
from core.raster.scene import Scene
from core.raster.stats import compute_stats
from core.raster.prediction_windows import WindowPlan
from models.inference.context import lattice_windows
from service.settings import Settings
from workers import tile_tasks
from workers.tile_tasks import predict_area, render_model_tile, render_tile

WM = morecantile.tms.get("WebMercatorQuad")
_BN = dict(type="BN", requires_grad=True)
#: a small convolutional network (real mmseg modules), fast enough for many windows on a CPU
SMALL = dict(
    type="Segmentor",
    backbone=dict(type="ResNetV1c", depth=18, in_channels=6, stem_channels=8, base_channels=8, num_stages=2,
                  out_indices=(0, 1), dilations=(1, 1), strides=(1, 2), norm_cfg=_BN),
    decode_head=dict(type="FCNHead", in_channels=16, in_index=1, channels=16, num_convs=1, concat_input=False,
                     num_classes=7, norm_cfg=_BN, align_corners=False, loss_decode=dict(type="CrossEntropyLoss")),
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, nc_bands, nc_classes):
    from models.bundle import save_bundle
    from models.segmentor import build_segmentor

    torch.manual_seed(0)
    with Scene.open(nc_bands) as s:
        stats = compute_stats([s])
    d = tmp_path_factory.mktemp("tilebundle") / "bundle"
    save_bundle(d, build_segmentor(SMALL), {}, nc_classes, {"source": stats}, inference=SMALL)
    return d


@pytest.fixture(scope="module")
def opened(nc_bands):
    o = ImageReader(nc_bands)
    yield o
    o.close()


def hann(window: int) -> np.ndarray:
    """(window, window) weights of a lattice window: those of an inner window of the predictor's plan."""
    return WindowPlan(2 * window, 2 * window, window, window // 2, "hann").weights(1, 1)


def test_hann_windows_shifted_by_half_sum_to_one():
    w = hann(64)
    acc = np.zeros((160, 160))
    for i in range(0, 128, 32):
        for j in range(0, 128, 32):
            acc[i:i + 64, j:j + 64] += w
    assert np.allclose(acc[32:128, 32:128], 1.0, atol=1e-6)
    assert w.min() > 0  # every pixel of a window counts a little: none is dropped


def test_lattice_spans_and_windows_cover_every_pixel():
    lat = Lattice(WM.rasterio_crs, -100.0, 100.0, 2.0, 2.0)
    assert lat.span(-100.0, 90.0, -90.0, 100.0) == (0, 0, 5, 5)
    assert lat.span(-99.0, 90.5, -89.5, 99.5) == (0, 0, 6, 5)
    g = lat.grid(3, 4, 10, 8)
    assert g.transform.c == -94.0 and g.transform.f == 92.0 and (g.width, g.height) == (10, 8)
    c0, r0, c1, r1 = 13, 5, 40, 22
    cover = np.zeros((r1 - r0, c1 - c0))
    for kx, ky in lattice_windows((c0, r0, c1, r1), 16):
        xs = np.arange(max(c0, kx * 8), min(c1, kx * 8 + 16))
        ys = np.arange(max(r0, ky * 8), min(r1, ky * 8 + 16))
        assert len(xs) and len(ys)  # every listed window touches the area
        w = hann(16)[np.ix_(ys - ky * 8, xs - kx * 8)]
        cover[np.ix_(ys - r0, xs - c0)] += w
    assert np.allclose(cover, 1.0, atol=1e-6)


def test_a_pixel_gets_the_same_class_whatever_area_asks_for_it(bundle_dir, opened):
    """The seamlessness of live tiles: areas predicted separately agree exactly where they overlap and
    put side by side equal the area predicted at once."""
    from models.bundle import load_bundle

    b = load_bundle(bundle_dir)
    lat = Lattice.for_tms(WM, opened.native_res(WM.rasterio_crs))
    t = WM.tile(-78.69, 35.75, 12)
    c0, r0, _, _ = lat.span(*WM.xy_bounds(t))
    tile_windows = tile_tasks._window_cache()
    tile_windows._items.clear()
    whole = predict_area(b, opened, lat, 64, (c0, r0, c0 + 150, r0 + 120), "nearest", ("whole",))
    left = predict_area(b, opened, lat, 64, (c0, r0, c0 + 77, r0 + 120), "nearest", ("parts",))
    tile_windows._items.clear()  # the right part reads and predicts its windows afresh
    imagery_reader._blocks._items.clear()
    right = predict_area(b, opened, lat, 64, (c0 + 77, r0, c0 + 150, r0 + 120), "nearest", ("parts",))
    assert np.array_equal(np.concatenate([left, right], axis=1), whole)
    assert len(np.unique(whole[whole != 255])) >= 2  # a real class map, not one class


def _decode(path):
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGBA"))


def _request(bundle_dir, nc_bands, tmp_path, z, x, y, **kw):
    return {"bundle": str(bundle_dir), "version": "v1", "images": [str(p) for p in nc_bands], "tms": "WebMercatorQuad",
            "z": z, "x": x, "y": y, "out": str(tmp_path / f"{z}-{x}-{y}.png"), "window": 64, **kw}


def test_render_tile_writes_a_png_of_class_colours_empty_and_zoomed_out(bundle_dir, nc_bands, tmp_path):
    colours = {tuple(int(c["color"][i:i + 2], 16) for i in (1, 3, 5)) for c in NC_CLASSES}
    t = WM.tile(-78.69, 35.75, 13)
    res = render_tile(_request(bundle_dir, nc_bands, tmp_path, 13, t.x, t.y))
    assert res["status"] == "ok" and res["valid_pixels"] > 10_000, res
    rgba = _decode(tmp_path / f"13-{t.x}-{t.y}.png")
    assert rgba.shape == (256, 256, 4) and set(np.unique(rgba[..., 3])) <= {0, 255}
    assert {tuple(v) for v in np.unique(rgba[rgba[..., 3] == 255][:, :3], axis=0)} <= colours
    far = WM.tile(-78.0, 36.5, 13)
    res = render_tile(_request(bundle_dir, nc_bands, tmp_path, 13, far.x, far.y))
    assert res["status"] == "empty" and (tmp_path / f"13-{far.x}-{far.y}.empty").exists()
    low = WM.tile(-78.69, 35.75, 9)
    res = render_tile(_request(bundle_dir, nc_bands, tmp_path, 9, low.x, low.y))
    assert res["status"] == "out_of_range" and "zoom" in res["message"]


def test_the_task_turns_input_errors_into_a_status(bundle_dir, nc_bands, tmp_path):
    t = WM.tile(-78.69, 35.75, 13)
    res = render_model_tile(_request(bundle_dir, nc_bands[:3], tmp_path, 13, t.x, t.y))
    assert res["status"] == "error" and res["type"] == "band_count_mismatch", res
    res = render_model_tile(_request(tmp_path / "no-bundle", nc_bands, tmp_path, 13, t.x, t.y))
    assert res["status"] == "error" and res["type"] == "invalid_bundle", res


@pytest.mark.parametrize("broker, result_backend, expected", [
    (None, "none", "sqlite"),  # the embedded broker: a SQLite file of its own
    ("redis://127.0.0.1:6379/0", "db", "broker"),  # Redis carries the statuses whatever the job results do
    ("amqp://guest@localhost//", "db", "jobs-db"),
    ("amqp://guest@localhost//", "none", "sqlite"),
])
def test_api_and_worker_agree_on_names_and_result_backend(tmp_path, broker, result_backend, expected):
    assert render_model_tile.name == task_names.RENDER_MODEL_TILE  # the name the API's TileClient sends
    s = Settings(data_dir=tmp_path, result_backend=result_backend, **({"broker_url": broker} if broker else {}))
    want = {"sqlite": f"db+sqlite:///{tmp_path / 'tile-results.db'}", "broker": broker,
            "jobs-db": f"db+sqlite:///{tmp_path / 'geoadapt.db'}"}[expected]
    assert s.tile_result_backend_url == want
