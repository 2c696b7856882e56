"""labels suggest: the most uncertain window ranks first, windows never overlap, class mixes spread the choice,
two students add their disagreement, and the GeoPackage holds the ranked polygons."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import nn

from core.errors import BandCountMismatchError, ConfigError, EmptyRegionError
from core.jobspec import ClassSpec
from core.raster.stats import BandStats
from models.adaptation import build_method
from models.bundle import load_bundle, save_bundle
from models.label_suggestions import select_windows, suggest_windows
from models.segmentor import register_segmentor

CLASSES = [ClassSpec(id=3, name="a", color="#ff0000"), ClassSpec(id=7, name="b", color="#00ff00")]
TRANSFORM = from_origin(600000.0, 4000000.0, 10.0, 10.0)


@register_segmentor
class SignOfFirstBand(nn.Module):
    """Two classes by the sign of band 0: p(class 0) = sigmoid(2 x scale x band 0); near 0 it is unsure."""

    def __init__(self, scale: float = 4.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def predict_logits(self, x):
        z = self.scale * x[:, :1]
        return torch.cat([z, -z], dim=1)


def _image(path, data, nodata=None):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype="float32", crs="EPSG:32617", transform=TRANSFORM, nodata=nodata) as ds:
        ds.write(data.astype(np.float32))
    return path


def _sign_bundle(tmp_path, bands=2):
    stats = BandStats(mean=[0.0] * bands, std=[1.0] * bands, count=1)
    save_bundle(tmp_path / "job" / "bundle", SignOfFirstBand(), {}, CLASSES, {"source": stats},
                inference={"type": "SignOfFirstBand"})
    return load_bundle(tmp_path / "job")


def _overlap(a, b):
    return not (a.col_off + a.width <= b.col_off or b.col_off + b.width <= a.col_off
                or a.row_off + a.height <= b.row_off or b.row_off + b.height <= a.row_off)


def test_the_uncertain_patch_ranks_first_and_windows_never_overlap(tmp_path):
    bundle = _sign_bundle(tmp_path)
    data = np.full((2, 96, 128), 3.0)
    data[0, :, 64:] = -3.0  # right half: the other class, equally sure
    data[0, 40:72, 8:40] = 0.0  # a 32 x 32 patch where the model cannot tell (p = 0.5)
    img = _image(tmp_path / "img.tif", data)
    res = suggest_windows(bundle, img, 5, window=32, device="cpu")
    assert [s.rank for s in res.suggestions] == [1, 2, 3, 4, 5] and res.window == 32
    top = res.suggestions[0]
    assert (int(top.window.col_off), int(top.window.row_off)) == (8, 40)
    assert top.entropy == pytest.approx(1.0, abs=1e-4) and top.disagreement is None and not res.two_networks
    assert top.uncertainty == top.entropy and top.class_mix == {3: 1.0}  # ties go to the first class
    scores = [s.score for s in res.suggestions]
    assert scores == sorted(scores, reverse=True) and scores[-1] < 0.01
    for i, a in enumerate(res.suggestions):
        w = a.window
        assert 0 <= w.col_off and w.col_off + w.width <= 128 and 0 <= w.row_off and w.row_off + w.height <= 96
        assert all(not _overlap(w, b.window) for b in res.suggestions[i + 1:])
    # the polygon is the window on the ground, in the image's CRS
    xs, ys = zip(*top.polygon["coordinates"][0])
    assert (min(xs), max(ys)) == (600000.0 + 80, 4000000.0 - 400) and max(xs) - min(xs) == 320
    assert res.crs.to_epsg() == 32617


def test_diversity_prefers_a_new_class_mix_over_a_second_window_of_the_same(tmp_path):
    bundle = _sign_bundle(tmp_path)
    data = np.full((2, 64, 192), 3.0)
    # two windows of the same unsure mix (class 0 predicted) and one slightly less unsure of the other class
    data[0, 0:32, 0:32] = 0.05
    data[0, 0:32, 64:96] = 0.05
    data[0, 0:32, 128:160] = -0.1
    img = _image(tmp_path / "img.tif", data)
    plain = suggest_windows(bundle, img, 2, window=32, diversity=0.0, device="cpu")
    mixed = suggest_windows(bundle, img, 2, window=32, diversity=1.0, device="cpu")
    cols = lambda r: [int(s.window.col_off) for s in r.suggestions]  # noqa: E731
    assert cols(plain) == [0, 64]  # uncertainty alone: both of the same mix
    assert cols(mixed) == [0, 128] and mixed.suggestions[1].class_mix == {7: 1.0}
    assert mixed.suggestions[1].similarity == 0.0 and plain.suggestions[1].similarity == pytest.approx(1.0)


def test_select_windows_greedy_formula():
    base = np.array([[1.0, 0.9, 0.8, 0.1]])
    hist = np.array([[[1, 0], [1, 0], [0, 1], [0, 1]]], float)
    picks = select_windows(base, hist, np.ones((1, 4), bool), 3, span=2, diversity=0.5)
    # (0,0) first; (0,1) overlaps it; (0,2): 0.8 x (1 - 0.5 x 0); then (0,3) overlaps (0,2): done
    assert [(i, j) for i, j, _, _ in picks] == [(0, 0), (0, 2)]
    assert picks[1][2] == pytest.approx(0.8) and picks[1][3] == 0.0


def test_nodata_windows_are_not_suggested_and_too_few_fit(tmp_path):
    bundle = _sign_bundle(tmp_path)
    data = np.zeros((2, 64, 64))  # all unsure
    data[:, :, 32:] = -99999.0  # the right half is nodata
    img = _image(tmp_path / "img.tif", data, nodata=-99999.0)
    res = suggest_windows(bundle, img, 10, window=32, device="cpu")
    assert len(res) == 2  # only the left column of windows holds valid pixels; two fit without overlap
    assert all(s.window.col_off == 0 and s.valid_fraction == 1.0 for s in res.suggestions)


def test_two_students_add_their_disagreement(tiny, tmp_path):
    torch.manual_seed(0)
    cfg = tiny("st-dasegnet", bands=3, classes=2)
    m = build_method(cfg, total_iters=1)
    with torch.no_grad():  # decoders that differ, so the students disagree
        for p in m.inference_segmentor().decoder_t.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    stats = BandStats(mean=[0.0] * 3, std=[1.0] * 3, count=1)
    save_bundle(tmp_path / "job" / "bundle", m.inference_segmentor(), cfg, CLASSES,
                {"source": stats, "target": stats}, inference=m.inference_config(), method="st-dasegnet")
    bundle = load_bundle(tmp_path / "job")
    img = _image(tmp_path / "img.tif", np.random.default_rng(0).normal(size=(3, 64, 64)))
    done = []
    res = suggest_windows(bundle, img, 3, window=16, device="cpu", progress=lambda d, t: done.append((d, t)))
    assert res.two_networks and len(res) == 3 and done[-1] == (1, 1)
    for s in res.suggestions:
        assert 0.0 < s.disagreement <= 1.0 and s.uncertainty == pytest.approx((s.entropy + s.disagreement) / 2)
        assert sum(s.class_mix.values()) == pytest.approx(1.0)


def test_bad_options_name_their_field(tmp_path):
    bundle = _sign_bundle(tmp_path)
    img = _image(tmp_path / "img.tif", np.zeros((2, 64, 64)))
    with pytest.raises(ConfigError) as e:
        suggest_windows(bundle, img, 2, window=30)
    assert e.value.field == "window"
    with pytest.raises(ConfigError) as e:
        suggest_windows(bundle, img, 0)
    assert e.value.field == "count"
    with pytest.raises(EmptyRegionError):
        suggest_windows(bundle, img, 1, window=128)
    with pytest.raises(BandCountMismatchError):
        suggest_windows(bundle, _image(tmp_path / "three.tif", np.zeros((3, 64, 64))), 1, window=32)


def test_geopackage_holds_ranked_polygons(tmp_path):
    import pyogrio

    from core.raster.vector import read_vector
    from core.raster.vector_write import write_gpkg

    bundle = _sign_bundle(tmp_path)
    data = np.full((2, 64, 64), 2.0)
    data[0, :32, :32] = 0.0
    res = suggest_windows(bundle, _image(tmp_path / "img.tif", data), 3, window=32, device="cpu")
    out = write_gpkg(tmp_path / "s.gpkg", res.features(), res.crs, layer="suggestions")
    fc = res.to_geojson()  # WGS84 for web maps: UTM 17N at 600 km east, 4000 km north is about 80 W, 36 N
    lon, lat = fc["features"][0]["geometry"]["coordinates"][0][0]
    assert -81 < lon < -79 and 35 < lat < 37 and fc["features"][0]["properties"]["rank"] == 1
    info = pyogrio.read_info(out)
    assert info["features"] == 3 and info["geometry_type"] == "Polygon" and "EPSG:32617" in info["crs"]
    assert {"rank", "score", "entropy", "disagreement", "class_mix"} <= set(info["fields"])
    layer = read_vector(out)  # our own reader reads it back
    ranks = [p["rank"] for _, p in layer.features]
    assert sorted(ranks) == [1, 2, 3] and layer.crs.to_epsg() == 32617
    first = next(p for _, p in layer.features if p["rank"] == 1)
    assert json.loads(first["class_mix"]) == {"3": 1.0} and first["col_off"] == 0 and first["row_off"] == 0
