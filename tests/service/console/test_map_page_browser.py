"""The Map page and header-less tile clients in headless Chromium against a real `geoadapt serve`: the page
opens on a job's prediction over that job's own scene, live tile inference adds no second legend, and a
plain Leaflet tile layer on another page (no token, no header) draws a result's signed tiles."""
from __future__ import annotations

import time

import httpx
import pytest

from .conftest import wait_job

pytestmark = pytest.mark.integration


def _enter_token(page, token: str) -> None:
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Use token").click()


@pytest.fixture(scope="module")
def nc_on_nc_job(served) -> str:
    """A tiny adapt job NC -> NC, its scenes named by dataset id, submitted after the datasets (so the newest
    dataset, Olinda, is not its imagery: the old Map page showed Olinda under its NC prediction)."""
    h = {"Authorization": f"Bearer {served.token}"}
    spec = {"type": "adapt", "method": "st-dasegnet", "model": "segformer-tiny", "classes": served.classes,
            "source": {"scenes": [{"dataset": served.nc}]}, "target": {"scenes": [{"dataset": served.nc}]},
            "params": {"iterations": 3, "batch_size": 2, "crop": 32}}
    r = httpx.post(f"{served.url}/v1/jobs", headers=h, json=spec, timeout=60)
    assert r.status_code == 201, r.text
    assert wait_job(served, r.json()["id"])["status"] == "successful"
    return r.json()["id"]


def _wait(page, cond, timeout_s: float = 30.0) -> bool:
    """Poll `cond` while Playwright delivers the page's events (a plain sleep would hold them back)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        page.wait_for_timeout(300)
    return False


def test_map_page_opens_on_the_jobs_own_scene_and_one_legend_for_tile_inference(served, page, nc_on_nc_job):
    from playwright.sync_api import expect

    tiles: list[str] = []
    page.on("request", lambda r: tiles.append(r.url) if "/tiles/" in r.url else None)
    page.goto(served.url + "/")
    _enter_token(page, served.token)
    expect(page.locator("#token-status")).to_contain_text("accepted")
    page.goto(served.url + f"/#/map?job={nc_on_nc_job}")
    panel = page.locator("#main-map-panel")
    img_sel, pred_sel = panel.locator("select[id$='-img']"), panel.locator("select[id$='-pred']")
    expect(pred_sel).to_be_visible()
    job = nc_on_nc_job
    # the job's prediction, over the scene it predicted (its target: NC), not the first dataset (Olinda)
    expect(pred_sel.locator("option:checked")).to_contain_text(job[:8])
    expect(img_sel).to_have_value(f"{job}/target/0")
    assert _wait(page, lambda: any(f"/v1/jobs/{job}/scenes/target/0/tiles/" in u for u in tiles)
                 and any(f"/v1/results/{job}" in u for u in tiles)), tiles
    assert not any("/v1/datasets/" in u for u in tiles), tiles

    # live tile inference of the same model: its classes are the prediction's, so still one legend
    legend = panel.locator(".legend .class-legend")
    expect(legend).to_have_count(1)
    panel.locator("select[id$='-model']").select_option(job)
    expect(panel.locator(".layer-model")).to_have_count(1)
    page.wait_for_timeout(500)  # the legend is redrawn once the model's tilejson is in
    expect(legend).to_have_count(1)
    expect(legend.locator("li")).to_have_count(len(served.classes))

    # the newest job on a bare #/map: whichever prediction it opens on, the imagery is that job's scene
    page.goto(served.url + "/#/jobs")
    page.goto(served.url + "/#/map")
    expect(pred_sel).to_be_visible()
    label = pred_sel.locator("option:checked").text_content()
    shown = next(j["id"] for j in httpx.get(f"{served.url}/v1/jobs?status=successful", timeout=10,
                                             headers={"Authorization": f"Bearer {served.token}"}).json()["jobs"]
                 if j["id"].startswith(label.split(" ")[0]))
    assert img_sel.input_value().startswith(f"{shown}/"), (label, img_sel.input_value())


@pytest.fixture
def other_site(tmp_path):
    """Another origin on this machine (a static file server of its own port) for a page of a third party."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_plain_leaflet_tile_layer_draws_signed_tiles_with_no_header(served, page, nc_on_nc_job, other_site):
    h = {"Authorization": f"Bearer {served.token}"}
    res = httpx.get(f"{served.url}/v1/jobs/{nc_on_nc_job}/results", headers=h, timeout=30).json()
    entry = next(p for p in res["predictions"] if p["kind"] == "classes")
    tj = httpx.get(entry["links"]["tilejson"], headers=h, timeout=30).json()
    w, s, e, n = tj["bounds"]
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.headers) if "/tiles/" in r.url else None)
    # another site's page: Leaflet's own tile layer, nothing of the console, no token anywhere
    folder, site = other_site
    (folder / "map.html").write_text(f"""<!doctype html><html><head>
<link rel="stylesheet" href="{served.url}/console/static/vendor/leaflet/leaflet.css">
<script src="{served.url}/console/static/vendor/leaflet/leaflet.js"></script></head>
<body><div id="m" style="width:512px;height:512px"></div><script>
window.loaded = 0; window.failed = 0;
const map = L.map("m").fitBounds([[{s}, {w}], [{n}, {e}]]);
L.tileLayer({tj["tiles"][0]!r}, {{bounds: [[{s}, {w}], [{n}, {e}]], maxNativeZoom: {tj["maxzoom"]},
                                  minNativeZoom: {tj["minzoom"]}, maxZoom: 19}})
  .on("tileload", () => window.loaded++).on("tileerror", () => window.failed++).addTo(map);
</script></body></html>""")
    logs: list[str] = []
    page.on("console", lambda m: logs.append(m.text))
    page.on("pageerror", lambda e: logs.append(str(e)))
    page.goto(f"{site}/map.html")
    settled = "window.loaded + window.failed >= Math.max(1, document.querySelectorAll('.leaflet-tile').length)"
    assert _wait(page, lambda: page.evaluate(settled)), (logs, page.evaluate("[window.loaded, window.failed]"))
    assert page.evaluate("window.failed") == 0 and page.evaluate("window.loaded") >= 1
    assert sent and not any("authorization" in {k.lower() for k in hd} for hd in sent)


def test_a_suggest_jobs_windows_show_on_its_map_and_in_its_downloads(served, page, nc_on_nc_job):
    """A suggest job with the adapted model (named by its id) over the NC scene: its map draws one outline per
    suggested window over the job's own scene, and its files are grouped as windows to label."""
    from playwright.sync_api import expect

    h = {"Authorization": f"Bearer {served.token}"}
    spec = {"type": "suggest", "bundle": nc_on_nc_job, "classes": served.classes,
            "target": {"scenes": [{"dataset": served.nc}]}, "suggest": {"count": 3, "window": 64}}
    r = httpx.post(f"{served.url}/v1/jobs", headers=h, json=spec, timeout=60)
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    assert wait_job(served, job)["status"] == "successful"
    page.goto(served.url + "/")
    _enter_token(page, served.token)
    expect(page.locator("#token-status")).to_contain_text("accepted")
    page.goto(served.url + f"/#/jobs/{job}")
    panel = page.locator("#job-map-panel")
    expect(panel.locator("path.layer-suggestion")).to_have_count(3)
    expect(panel.locator("[id$='-sugg-count']")).to_have_text("3 windows")
    expect(panel.locator("select[id$='-img']")).to_have_value("target/0")
    expect(page.locator("#job-downloads")).to_contain_text("Windows to label")
    expect(page.locator("#job-downloads button[data-file='suggestions.gpkg']")).to_have_count(1)
    # hiding them removes the outlines; the Map page opened on the job shows them too
    panel.locator("input[id$='-sugg']").uncheck()
    expect(panel.locator("path.layer-suggestion")).to_have_count(0)
    page.goto(served.url + f"/#/map?job={job}")
    main = page.locator("#main-map-panel")
    expect(main.locator("path.layer-suggestion")).to_have_count(3)
    expect(main.locator("select[id$='-img']")).to_have_value(f"{job}/target/0")
