"""Signed tile URLs against a live `geoadapt serve`: a tilejson asked with a token hands out tile URLs that
GDAL opens with no header; each signature opens its own resource's tiles and nothing else, expires, dies
with its token, and never reaches the access log."""
from __future__ import annotations

import shutil
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
import rasterio

from service.api.signed_urls import SECRET_FILE, TileUrlSigner
from benchmarks.common import free_port
from benchmarks.security import COG_NAME, TMS, prepare, start_server, stop_server

from tests.helpers import read_tms_layer

OTHER = "predictions--other"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A world (a finished job with two class COGs, a dataset) served with access logs on."""
    tmp = tmp_path_factory.mktemp("signed")
    world = prepare(tmp / "w", clients=1)
    preds = world.data_dir / "jobs" / world.job_id / "output" / "predictions"
    shutil.copy(preds / "scene.tif", preds / "other.tif")  # result B, same job
    log = tmp / "serve.log"
    port = free_port()
    proc = start_server(world, port, log=log, log_level="info")
    try:
        yield world, f"http://127.0.0.1:{port}", log
    finally:
        stop_server(proc)


def _h(plain: str) -> dict:
    return {"Authorization": f"Bearer {plain}"}


def _signature(url: str) -> dict[str, str]:
    q = parse_qs(urlsplit(url).query)
    return {k: q[k][0] for k in ("exp", "kid", "sig")}


def _tilejson(base: str, world, result: str = COG_NAME, token: str | None = None) -> dict:
    url = f"{base}/v1/results/{world.job_id}.{result}/{TMS}/tilejson.json"
    r = httpx.get(url, headers=_h(token or world.tokens[-1]))
    assert r.status_code == 200, r.text
    return r.json()


def _tile_url(tj: dict, z: int, x: int, y: int) -> str:
    return tj["tiles"][0].replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y))


def test_gdal_reads_the_signed_tile_layer_with_no_header(served):
    world, base, _ = served
    tj = _tilejson(base, world)
    url = tj["tiles"][0]
    assert url.startswith(f"{base}/v1/results/") and "ga_" not in url  # no token in the URL
    sig = _signature(url)
    assert sig["kid"] == world.tokens[-1].split("_")[1] and int(sig["exp"]) > time.time() + 3000  # default ttl 1 h
    # the 10 m COG: z14's 9.6 m pixels are the first at least as fine (the nearest zoom, z13, is 19 m)
    assert tj["maxzoom"] == 14
    arr = read_tms_layer(tj)  # no Authorization header anywhere
    alpha = arr[3]
    assert (alpha == 255).sum() > 100_000 and set(np.unique(alpha)) <= {0, 255}
    # one tile through /vsicurl/, as GDAL opens any URL
    z, x, y = world.tiles[0]
    with rasterio.open(f"/vsicurl/{_tile_url(tj, z, x, y)}") as png:
        assert png.driver == "PNG" and png.width == 256 and png.read().any()


def test_a_signature_opens_only_its_own_resources_tiles(served):
    world, base, _ = served
    tj = _tilejson(base, world)
    z, x, y = world.tiles[0]
    a_tile = _tile_url(tj, z, x, y)
    q = "?" + urlsplit(a_tile).query
    assert httpx.get(a_tile).status_code == 200
    rid = f"{world.job_id}.{COG_NAME}"
    # result B, the same result's non-tile routes, the job, a dataset: the header is still needed
    for path in (f"/v1/results/{world.job_id}.{OTHER}/tiles/{TMS}/{z}/{x}/{y}.png",
                 f"/v1/results/{rid}/info", f"/v1/results/{rid}/statistics", f"/v1/results/{rid}/preview.png",
                 f"/v1/jobs/{world.job_id}", f"/v1/jobs/{world.job_id}/results",
                 f"/v1/datasets/{world.dataset_id}/tiles/{TMS}/{z}/{x}/{y}.png"):
        r = httpx.get(base + path + q)
        assert r.status_code == 401, (path, r.status_code, r.text)
    # the signature is for result A's tiles, not B's, even from the same job and token
    b_tile = _tile_url(_tilejson(base, world, OTHER), z, x, y)
    assert httpx.get(b_tile).status_code == 200 and _signature(b_tile)["sig"] != _signature(a_tile)["sig"]
    # a moved expiry, another kid, a bent signature
    sig = _signature(a_tile)
    bare = a_tile.split("?")[0]
    for bad in ({**sig, "exp": str(int(sig["exp"]) + 86400)}, {**sig, "kid": world.tokens[0].split("_")[1]},
                {**sig, "sig": sig["sig"][:-2] + ("AA" if not sig["sig"].endswith("AA") else "BB")},
                {"exp": sig["exp"], "kid": sig["kid"]}):
        r = httpx.get(bare, params=bad)
        assert r.status_code == 401, (bad, r.text)
        assert r.json()["detail"][0]["field"] in ("sig", "exp", "kid")


def test_signatures_expire_and_die_with_their_token(served):
    world, base, _ = served
    z, x, y = world.tiles[0]
    rid = f"{world.job_id}.{COG_NAME}"
    signer = TileUrlSigner((world.data_dir / SECRET_FILE).read_bytes().strip(), ttl_s=60)
    tile = f"{base}/v1/results/{rid}/tiles/{TMS}/{z}/{x}/{y}.png"
    owner = world.tokens[-1].split("_")[1]
    assert httpx.get(tile, params=signer.params("results", rid, owner)).status_code == 200
    r = httpx.get(tile, params=signer.params("results", rid, owner, now=time.time() - 120))
    assert r.status_code == 401 and "expired" in r.json()["detail"][0]["message"]
    # an admin's signed link stops working once the admin token is revoked
    tj = _tilejson(base, world, token=world.admin)
    admin_tile = _tile_url(tj, z, x, y)
    assert httpx.get(admin_tile).status_code == 200
    from service.store import tokens
    from service.store.db import make_engine, session_factory, session_scope

    engine = make_engine(f"sqlite:///{world.data_dir / 'geoadapt.db'}")
    with session_scope(session_factory(engine)) as s:
        tokens.revoke_token(s, world.admin)
    engine.dispose()
    r = httpx.get(admin_tile)
    assert r.status_code == 401 and r.json()["detail"][0]["field"] == "kid"


def test_signed_tilejson_link_opens_with_no_header_and_never_renews_itself(served):
    world, base, _ = served
    res = httpx.get(f"{base}/v1/jobs/{world.job_id}/results", headers=_h(world.tokens[-1])).json()
    entry = next(p for p in res["predictions"] if p["name"] == COG_NAME)
    link = entry["links"]["tilejson_signed"]
    tj = httpx.get(link)
    assert tj.status_code == 200, tj.text
    tiles = tj.json()["tiles"][0]
    assert _signature(tiles) == _signature(link)  # the same expiry: opening it again gains no time
    z, x, y = world.tiles[0]
    assert httpx.get(_tile_url(tj.json(), z, x, y)).status_code == 200
    assert httpx.get(entry["links"]["tilejson"]).status_code == 401  # the plain link still wants the header


def test_dataset_tilejson_tiles_are_signed_for_that_dataset(served):
    world, base, _ = served
    tj = httpx.get(f"{base}/v1/datasets/{world.dataset_id}/{TMS}/tilejson.json", headers=_h(world.tokens[-1])).json()
    url = tj["tiles"][0]
    assert "bidx=" in url and "sig=" in url
    z = tj["maxzoom"]
    import morecantile

    t = morecantile.tms.get(TMS).tile(*[(a + b) / 2 for a, b in zip(tj["bounds"][:2], tj["bounds"][2:])], z)
    r = httpx.get(_tile_url(tj, t.z, t.x, t.y))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    # a job's scene: its own signature, which opens neither the dataset nor another scene of the job
    scene = f"{base}/v1/jobs/{world.job_id}/scenes/source/0"
    sj = httpx.get(f"{scene}/{TMS}/tilejson.json", headers=_h(world.tokens[-1])).json()
    r = httpx.get(_tile_url(sj, t.z, t.x, t.y))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    q = urlsplit(sj["tiles"][0]).query
    for other in (f"{base}/v1/datasets/{world.dataset_id}", f"{base}/v1/jobs/{world.job_id}/scenes/target/0"):
        assert httpx.get(f"{other}/tiles/{TMS}/{t.z}/{t.x}/{t.y}.png?{q}").status_code == 401, other


def test_the_access_log_holds_no_signature(served):
    world, base, log = served
    tj = _tilejson(base, world)
    z, x, y = world.tiles[0]
    url = _tile_url(tj, z, x, y)
    assert httpx.get(url).status_code == 200
    sig = _signature(url)["sig"]
    time.sleep(0.5)
    text = log.read_text()
    assert f"/tiles/{TMS}/{z}/{x}/{y}.png?" in text and "sig=REDACTED" in text  # the request is logged
    assert sig not in text
