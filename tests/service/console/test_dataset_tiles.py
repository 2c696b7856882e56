"""Imagery tiles of registered datasets (/v1/datasets/{id}/tiles/...?bidx=&rescale=) on the real NC band stack
and the real Olinda scene: exact values, stretch, nodata, band stacks on one grid and on several, errors, owners."""
from __future__ import annotations

import io

import morecantile
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from pyproj import Transformer
from rasterio.warp import Resampling, calculate_default_transform, reproject

from service.app import create_app
from service.settings import Settings
from service.store import tokens

TMS = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def olinda_path():
    from core.data.fetch import fetch

    return fetch("olinda")["l7_etms"]


@pytest.fixture(scope="module")
def api(tmp_path_factory, nc_data, nc_bands, olinda_path):
    """The API on SQLite with two tokens; NC (six band files + labels) and Olinda registered by the first."""
    tmp = tmp_path_factory.mktemp("tiles")
    warped = tmp / "roots"
    warped.mkdir()
    settings = Settings(data_dir=tmp / "state", allowed_roots=[nc_data["strata"].parent, olinda_path.parent, warped],
                        database_url=f"sqlite:///{tmp / 'store.db'}", broker_url="memory://", rate_limit_per_minute=0)
    app = create_app(settings)
    with app.state.sessions() as s:
        _, mine = tokens.create_token(s, name="me")
        _, other = tokens.create_token(s, name="other")
        s.commit()
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {mine}"
        nc = c.post("/v1/datasets", json={"name": "nc", "bands": [str(p) for p in nc_bands],
                                          "labels": str(nc_data["strata"])})
        ol = c.post("/v1/datasets", json={"name": "olinda", "image": str(olinda_path)})
        assert nc.status_code == 201 and ol.status_code == 201, (nc.text, ol.text)
        yield {"client": c, "nc": nc.json()["id"], "olinda": ol.json()["id"], "other": other, "roots": warped}


def _png(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


def _center_tile(path, z: int) -> morecantile.Tile:
    with rasterio.open(path) as ds:
        t = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)
        lon, lat = t.transform((ds.bounds.left + ds.bounds.right) / 2, (ds.bounds.bottom + ds.bounds.top) / 2)
    return TMS.tile(lon, lat, z)


def _source_values(path, band: int, tile: morecantile.Tile, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The source pixel under the centre of every tile pixel (nearest), and where it is inside the image."""
    b = TMS.xy_bounds(tile)
    xs = b.left + (np.arange(size) + 0.5) * (b.right - b.left) / size
    ys = b.top - (np.arange(size) + 0.5) * (b.top - b.bottom) / size
    gx, gy = np.meshgrid(xs, ys)
    with rasterio.open(path) as ds:
        sx, sy = Transformer.from_crs("EPSG:3857", ds.crs, always_xy=True).transform(gx, gy)
        rows, cols = rasterio.transform.rowcol(ds.transform, sx.ravel(), sy.ravel())
        rows, cols = np.asarray(rows).reshape(gx.shape), np.asarray(cols).reshape(gx.shape)
        inside = (rows >= 0) & (rows < ds.height) & (cols >= 0) & (cols < ds.width)
        data = ds.read(band)
    vals = np.zeros(gx.shape, data.dtype)
    vals[inside] = data[rows[inside], cols[inside]]
    return vals, inside


def test_rescale_0_255_of_a_uint8_band_is_the_raw_value(api, olinda_path):
    c = api["client"]
    t = _center_tile(olinda_path, 13)  # finer than the image (maxzoom 12): each pixel over one source pixel
    img = _png(c.get(f"/v1/datasets/{api['olinda']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?bidx=4&rescale=0,255"))
    assert img.shape == (256, 256, 2)  # grey + alpha
    want, inside = _source_values(olinda_path, 4, t)
    opaque = img[..., 1] == 255
    assert inside.mean() > 0.9 and (opaque == inside).mean() > 0.99
    both = inside & opaque
    # nearest resampling: the same DN except along source pixel edges where the two roundings differ
    assert (img[..., 0][both] == want[both]).mean() > 0.97


def test_stretch_maps_min_to_0_and_max_to_255(api, olinda_path):
    c = api["client"]
    t = _center_tile(olinda_path, 12)
    grey = _png(c.get(f"/v1/datasets/{api['olinda']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?bidx=1&rescale=0,255"))
    lo, hi = 70, 90
    s = _png(c.get(f"/v1/datasets/{api['olinda']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?bidx=1&rescale={lo},{hi}"))
    raw, out = grey[..., 0].astype(float), s[..., 0].astype(float)
    ok = grey[..., 1] == 255
    assert (out[ok & (raw <= lo)] == 0).all() and (out[ok & (raw >= hi)] == 255).all()
    mid = ok & (raw > lo) & (raw < hi)
    assert mid.sum() > 100
    assert np.abs(out[mid] - (raw[mid] - lo) / (hi - lo) * 255).max() <= 1.0


def test_rgb_band_choice_and_per_band_rescale(api, nc_bands):
    c = api["client"]
    t = _center_tile(nc_bands[0], 12)
    url = f"/v1/datasets/{api['nc']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
    rgb = _png(c.get(f"{url}?bidx=3,2,1&rescale=0,255"))
    assert rgb.shape == (256, 256, 4)
    swapped = _png(c.get(f"{url}?bidx=1,2,3&rescale=0,255"))
    ok = rgb[..., 3] == 255
    assert ok.mean() > 0.5
    assert (rgb[..., 0][ok] == swapped[..., 2][ok]).all() and (rgb[..., 2][ok] == swapped[..., 0][ok]).all()
    per_band = _png(c.get(f"{url}?bidx=3,2,1&rescale=0,255&rescale=0,255&rescale=0,127.5"))
    assert (per_band[..., 0][ok] == rgb[..., 0][ok]).all()
    blue = np.minimum(rgb[..., 2][ok].astype(int) * 2, 255)
    assert np.abs(per_band[..., 2][ok].astype(int) - blue).max() <= 1


def test_default_stretch_is_each_bands_own_percentiles(api, nc_bands):
    """NC's band 7 is int16 with -32768 where the float bands have data: its stretch must not start there."""
    c = api["client"]
    info = c.get(f"/v1/datasets/{api['nc']}/info").json()
    assert info["count"] == 6 and info["default_bidx"] == [3, 2, 1]
    assert info["band_names"][0] == nc_bands[0].stem
    p = info["percentiles"]["bands"]
    for (lo, hi), path in zip(p, nc_bands):
        with rasterio.open(path) as ds:
            a = ds.read(1, masked=True).compressed()
        assert lo >= a.min() and hi <= a.max() and lo < hi
        assert abs(lo - np.percentile(a, 2)) <= 2 and abs(hi - np.percentile(a, 98)) <= 2
    t = _center_tile(nc_bands[0], 12)
    url = f"/v1/datasets/{api['nc']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?bidx=6,5,4"
    explicit = "&".join(f"rescale={p[b - 1][0]!r},{p[b - 1][1]!r}" for b in (6, 5, 4))
    assert (_png(c.get(url)) == _png(c.get(f"{url}&{explicit}"))).all()


def test_nodata_and_outside_the_image_are_transparent(api, nc_bands):
    c = api["client"]
    with rasterio.open(nc_bands[0]) as ds:
        lon, lat = Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True).transform(ds.bounds.left, ds.bounds.top)
    t = TMS.tile(lon, lat, 12)  # holds the image's north-west corner
    alpha = _png(c.get(f"/v1/datasets/{api['nc']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"))[..., 3]
    assert set(np.unique(alpha)) == {0, 255}
    far = c.get(f"/v1/datasets/{api['nc']}/tiles/WebMercatorQuad/12/0/0.png")
    assert far.status_code == 404 and far.json()["detail"][0]["field"] == "tile"


def test_band_files_on_different_grids_read_band_by_band(api, nc_bands):
    """One band file warped to EPSG:4326: no common grid, so each band is read onto the tile on its own."""
    c = api["client"]
    src = nc_bands[1]
    dst = api["roots"] / "b20_wgs84.tif"
    with rasterio.open(src) as ds:
        tr, w, h = calculate_default_transform(ds.crs, "EPSG:4326", ds.width, ds.height, *ds.bounds)
        prof = ds.profile | {"crs": "EPSG:4326", "transform": tr, "width": w, "height": h}
        with rasterio.open(dst, "w", **prof) as out:
            reproject(rasterio.band(ds, 1), rasterio.band(out, 1), resampling=Resampling.nearest)
    mixed = c.post("/v1/datasets", json={"name": "mixed", "bands": [str(nc_bands[0]), str(dst), str(nc_bands[2])]})
    assert mixed.status_code == 201, mixed.text
    # at the image's resolution or finer both paths take the source pixel under each tile pixel; coarser,
    # the stack's VRT is decimated before the warp and picks neighbouring pixels now and then
    t = _center_tile(nc_bands[0], 13)
    q = "bidx=3,2,1&rescale=0,255"
    a = _png(c.get(f"/v1/datasets/{mixed.json()['id']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?{q}"))
    b = _png(c.get(f"/v1/datasets/{api['nc']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?{q}"))
    ok = (a[..., 3] == 255) & (b[..., 3] == 255)
    assert ok.mean() > 0.5
    assert (a[..., 0][ok] == b[..., 0][ok]).all() and (a[..., 2][ok] == b[..., 2][ok]).all()  # same files
    assert np.corrcoef(a[..., 1][ok].astype(float), b[..., 1][ok].astype(float))[0, 1] > 0.8  # warped twice, nearest both ways


def test_tilejson_info_and_point(api, nc_bands):
    c = api["client"]
    tj = c.get(f"/v1/datasets/{api['nc']}/WebMercatorQuad/tilejson.json?bidx=4,3,2&rescale=0,200").json()
    assert tj["tilejson"] == "3.0.0" and tj["minzoom"] <= tj["maxzoom"]
    # the render parameters, then the signature that lets header-less clients open it (test_signed_tiles.py)
    assert "/tiles/WebMercatorQuad/{z}/{x}/{y}.png?bidx=4%2C3%2C2&rescale=0%2C200&exp=" in tj["tiles"][0]
    assert tj["maxzoom"] == 13  # NC's 28.5 m pixels
    info = c.get(f"/v1/datasets/{api['nc']}/info").json()
    w, s, e, n = info["geographic_bounds"]
    assert tj["bounds"] == pytest.approx([w, s, e, n])
    lon, lat = (w + e) / 2, (s + n) / 2
    pt = c.get(f"/v1/datasets/{api['nc']}/point/{lon},{lat}").json()
    with rasterio.open(nc_bands[0]) as ds:
        x, y = Transformer.from_crs("EPSG:4326", ds.crs, always_xy=True).transform(lon, lat)
        want = next(ds.sample([(x, y)]))[0]
    assert len(pt["values"]) == 6 and pt["values"][0] == pytest.approx(float(want))
    assert c.get(f"/v1/datasets/{api['nc']}/point/10,10").status_code == 404


@pytest.mark.parametrize("query, field", [
    ("bidx=7", "bidx"), ("bidx=1,2", "bidx"), ("bidx=x", "bidx"), ("rescale=5,1", "rescale"),
    ("rescale=0", "rescale"), ("rescale=0,nan", "rescale"), ("bidx=1,2,3&rescale=0,1&rescale=0,2", "rescale"),
])
def test_bad_render_parameters_are_422_naming_the_parameter(api, nc_bands, query, field):
    t = _center_tile(nc_bands[0], 12)
    r = api["client"].get(f"/v1/datasets/{api['nc']}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?{query}")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, r.text


def test_another_tokens_dataset_is_404_and_no_token_is_401(api, nc_bands):
    c = api["client"]
    t = _center_tile(nc_bands[0], 12)
    for path in (f"tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png", "info", "WebMercatorQuad/tilejson.json", "point/-78.7,35.7"):
        url = f"/v1/datasets/{api['nc']}/{path}"
        assert c.get(url, headers={"Authorization": f"Bearer {api['other']}"}).status_code == 404, url
        assert c.get(url, headers={"Authorization": ""}).status_code == 401, url
    assert c.get(f"/v1/datasets/{api['nc']}/tiles/NoSuchTMS/1/0/0.png").status_code == 404


def test_a_file_changed_after_registration_is_a_422_not_a_500(api, olinda_path):
    c = api["client"]
    copy = api["roots"] / "olinda_copy.tif"
    copy.write_bytes(olinda_path.read_bytes())
    ds = c.post("/v1/datasets", json={"name": "copy", "image": str(copy)}).json()["id"]
    t = _center_tile(olinda_path, 12)
    url = f"/v1/datasets/{ds}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
    assert c.get(url).status_code == 200
    copy.write_bytes(olinda_path.read_bytes()[:2000])  # truncated on disk behind the service's back
    for path in (url, f"/v1/datasets/{ds}/info"):
        r = c.get(path)
        assert r.status_code == 422 and r.json()["type"] == "unreadable_raster", (path, r.text)
    copy.unlink()
    assert c.get(url).status_code == 404


def test_a_jobs_scenes_are_imagery_too(api, nc_data, nc_bands, olinda_path, nc_classes):
    """A job submitted with paths (CLI, demo) still shows its imagery: the same tiles as the dataset's."""
    c = api["client"]
    spec = {"type": "adapt", "method": "st-dasegnet", "model": "segformer-tiny",
            "classes": [x.model_dump() for x in nc_classes],
            "source": {"scenes": [{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"])}]},
            "target": {"scenes": [{"image": str(olinda_path)}]}, "params": {"iterations": 1}}
    job = c.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    sc = f"/v1/jobs/{job.json()['id']}/scenes"
    info = c.get(f"{sc}/target/0/info").json()
    assert info["count"] == 6 and "target scene 1" in info["name"] and not info["labelled"]
    assert info["percentiles"] == c.get(f"/v1/datasets/{api['olinda']}/info").json()["percentiles"]
    t = _center_tile(olinda_path, 12)
    tail = f"tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png?bidx=4,3,2"
    assert c.get(f"{sc}/target/0/{tail}").content == c.get(f"/v1/datasets/{api['olinda']}/{tail}").content
    tn = _center_tile(nc_bands[0], 12)
    tail = f"tiles/WebMercatorQuad/{tn.z}/{tn.x}/{tn.y}.png"
    assert c.get(f"{sc}/source/0/{tail}").content == c.get(f"/v1/datasets/{api['nc']}/{tail}").content
    tj = c.get(f"{sc}/source/0/WebMercatorQuad/tilejson.json").json()
    assert tj["tiles"][0].startswith(f"http://testserver{sc}/source/0/tiles/")
    assert c.get(f"{sc}/target/1/info").status_code == 404
    assert c.get(f"{sc}/validation/0/info").status_code == 404
    assert c.get(f"{sc}/labels/0/info").status_code == 422
    assert c.get(f"{sc}/target/0/info", headers={"Authorization": f"Bearer {api['other']}"}).status_code == 404
