"""The console end to end in headless Chromium against a real `geoadapt serve`: token, submit the tiny NC
job from the form (a field error first), watch it to successful, open it, metrics, legend, map tiles, click."""
from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .conftest import wait_job

pytestmark = pytest.mark.integration

#: where screenshots go when a person wants to look at them (GEOADAPT_CONSOLE_SHOTS=<dir>)
SHOTS = os.environ.get("GEOADAPT_CONSOLE_SHOTS")


def _shot(page, name: str) -> bytes:
    png = page.screenshot(full_page=False)
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        (Path(SHOTS) / f"{name}.png").write_bytes(png)
        (Path(SHOTS) / f"{name}-full.png").write_bytes(page.screenshot(full_page=True))
    return png


def _enter_token(page, token: str) -> None:
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Use token").click()


def test_page_without_token_is_not_blank_and_says_what_to_do(served, page, stddev):
    page.goto(served.url + "/")
    from playwright.sync_api import expect

    expect(page.locator("#view-welcome")).to_be_visible()
    expect(page.locator("#token-status")).to_contain_text("paste an API token")
    assert stddev(_shot(page, "welcome")) > 10


def test_wrong_token_gives_a_clear_message(served, page, stddev):
    from playwright.sync_api import expect

    page.goto(served.url + "/#/jobs")
    _enter_token(page, "ga_00000000_not-a-real-token")
    status = page.locator("#token-status")
    expect(status).to_contain_text("refused this token")
    expect(status).to_contain_text("invalid or revoked token")
    expect(page.locator("#view-welcome")).to_be_visible()  # the page stays readable, not an empty table
    assert stddev(_shot(page, "wrong-token")) > 10


def test_submit_watch_open_and_map_the_tiny_nc_job(served, page, stddev):
    from playwright.sync_api import expect

    # every tile from the server, not from the HTTP cache (whose replies carry no body to inspect)
    page.context.new_cdp_session(page).send("Network.setCacheDisabled", {"cacheDisabled": True})
    tiles: list = []
    blobs: list = []
    page.on("response", lambda r: tiles.append(r) if "/tiles/" in r.url else None)
    page.on("response", lambda r: blobs.append(r) if r.url.startswith("blob:") else None)
    # requests that completed: Response.finished() and .body() wait without a time limit, and a tile
    # request Leaflet cancels (the view moved on) never completes, which hung this test
    done: list = []
    page.on("requestfinished", lambda req: done.append(req))
    page.goto(served.url + "/")
    _enter_token(page, served.token)
    expect(page.locator("#token-status")).to_contain_text("accepted")
    expect(page.locator("#view-jobs")).to_be_visible()

    # the form: NC (labelled) -> Olinda, validated on NC; a crop the API refuses first
    page.get_by_role("link", name="Submit", exact=True).click()
    page.get_by_label("Job type").select_option("adapt")
    page.get_by_label("Method").select_option("st-dasegnet")
    page.get_by_label("Model config").fill("segformer-tiny")
    page.get_by_label("Source scenes (with labels)").select_option([served.nc])
    page.get_by_label("Target scenes").select_option([served.olinda])
    page.get_by_label("Validation scenes (optional)").select_option([served.nc])
    page.get_by_label("Classes", exact=True).fill("\n".join(f"{c['id']} {c['name']} {c['color']}" for c in served.classes))
    page.get_by_label("Iterations").fill("3")
    page.get_by_label("Batch size").fill("2")
    page.get_by_label("Crop (pixels)").fill("8")
    page.get_by_label("Compare with source-only").check()
    page.get_by_role("button", name="Submit job").click()
    crop_err = page.locator("#f-crop-err")
    expect(crop_err).to_contain_text("params.crop")  # the API's message, next to the field it names
    expect(page.get_by_label("Crop (pixels)")).to_have_attribute("aria-invalid", "true")
    _shot(page, "field-error")

    page.get_by_label("Crop (pixels)").fill("32")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[-1]

    # the list shows it live; open it from there
    page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.locator(f"tr[data-job='{job_id}']")
    expect(row).to_be_visible()
    expect(row.locator("progress")).to_have_count(1)
    seen = {row.get_attribute("data-status")}
    row.get_by_role("link", name=f"Open job {job_id[:8]}").click()
    status = page.locator("#job-status .badge")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        s = status.text_content(timeout=5000) if status.count() else None
        seen.add(s)
        if s in ("successful", "failed", "dismissed"):
            break
        time.sleep(0.5)
    assert s == "successful", (seen, page.locator("#job-status").text_content())
    assert seen & {"accepted", "running"}, seen  # it was watched on its way, not only found finished

    # metrics from the validation labels, the confusion matrix, the downloads
    table = page.locator("#metrics-table")
    expect(table).to_be_visible()
    for c in served.classes:
        expect(table.locator("tbody th", has_text=c["name"])).to_have_count(1)
    miou = table.locator("tr[data-metric='miou'] td").first.text_content()
    assert re.fullmatch(r"\d+\.\d", miou), miou
    # the source-only baseline the job trained beside it, first, then the adapted model and the change
    heads = table.locator("thead th").all_text_contents()
    assert heads[1] == "IoU source-only" and heads[3].startswith("IoU adapted") and "Δ IoU" in heads, heads
    expect(page.locator("#job-confusion canvas.confusion")).to_be_visible()
    expect(page.locator("#job-downloads button[data-file='metrics.json']")).to_be_visible()
    # the class map and its per-class probabilities
    # the class COG and its probabilities, and the class COG's GIS sidecar (category names, attribute table)
    expect(page.locator("#job-downloads button[data-file^='predictions/'][data-file$='.tif']")).to_have_count(2)
    expect(page.locator("#job-downloads button[data-file^='predictions/'][data-file$='.tif.aux.xml']")).to_have_count(1)
    with page.expect_download() as dl:
        page.locator("#job-downloads button[data-file='metrics.json']").click()
    assert "validation" in json.loads(Path(dl.value.path()).read_text())

    # the legend in the bundle's colours, in class order
    legend = page.locator("#job-map-panel .class-legend[data-kind='prediction'] li")
    expect(legend).to_have_count(len(served.classes))
    for i, c in enumerate(served.classes):
        item = legend.nth(i)
        expect(item).to_contain_text(c["name"])
        rgb = item.locator(".swatch").evaluate("e => getComputedStyle(e).backgroundColor")
        assert rgb == "rgb({}, {}, {})".format(*(int(c["color"][k:k + 2], 16) for k in (1, 3, 5))), (c, rgb)

    # map tiles: the Olinda imagery and the predicted classes. The console fetches tiles with the token and
    # hands them to <img> as blob: URLs; Chromium keeps no body for a fetch read into a blob, so the
    # network replies are checked for status and type, and the bytes through their blob: replies
    def got(kind: str) -> list:
        return [r for r in tiles if kind in r.url and r.request in done]

    deadline = time.monotonic() + 30
    # the imagery under the prediction: the job's own target scene (the Olinda file its spec names)
    while time.monotonic() < deadline and not (got("/scenes/target/0/tiles/") and got("/v1/results/")):
        page.wait_for_timeout(300)
    page.wait_for_load_state("networkidle")
    imagery, classes = got("/scenes/target/0/tiles/"), got("/v1/results/")
    assert imagery and classes, [r.url for r in tiles]
    for r in imagery + classes:
        assert r.status == 200 and r.headers["content-type"] == "image/png", (r.url, r.status)
    read = [r for r in blobs if r.request in done]
    for r in read:
        im = Image.open(io.BytesIO(r.body()))
        assert im.format == "PNG" and im.size == (256, 256)
    assert len(read) >= len(imagery + classes) // 2, (len(read), len(imagery), len(classes))
    drawn = page.locator("#job-map-panel img.leaflet-tile-loaded").evaluate_all("""imgs => imgs.map(img => {
        const c = document.createElement("canvas"); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext("2d"); g.drawImage(img, 0, 0);
        const a = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 3; i < a.length; i += 4) n += a[i] > 0;
        return {w: img.naturalWidth, opaque: n, layer: img.closest(".leaflet-layer").className}; })""")
    assert len(drawn) >= 2 and all(d["w"] == 256 for d in drawn), drawn
    for layer in ("layer-imagery", "layer-prediction"):
        assert any(layer in d["layer"] and d["opaque"] > 0 for d in drawn), (layer, drawn)

    # the opacity slider reaches the prediction layer
    slider = page.locator("#job-map-panel input[type=range]")
    slider.fill("30")
    op = page.locator("#job-map-panel .layer-prediction").evaluate("e => getComputedStyle(e).opacity")
    assert abs(float(op) - 0.3) < 0.01

    # a click on the map: the class there and the band values
    page.locator("#job-map-panel .map").click()
    info = page.locator("#job-map-panel .point-info")
    expect(info).to_contain_text("Class:")
    expect(info).to_contain_text("Bands:")
    names = [c["name"] for c in served.classes]
    text = info.text_content()
    assert any(n in text for n in names) or "no prediction here" in text
    if "no prediction here" not in text:  # a predicted pixel: its probability for every class
        expect(info.locator("ul.probs li")).to_have_count(len(names))

    png = _shot(page, "job")
    assert stddev(png) > 10
    page.locator("#job-map-panel").scroll_into_view_if_needed()
    assert stddev(_shot(page, "job-map")) > 10


def test_adabn_from_the_form_starts_from_a_model(served, nc_job, page):
    import httpx
    from playwright.sync_api import expect

    from .conftest import wait_job

    page.goto(served.url + "/")
    _enter_token(page, served.token)
    expect(page.locator("#token-status")).to_contain_text("accepted")
    page.get_by_role("link", name="Submit", exact=True).click()
    page.get_by_label("Job type").select_option("adapt")
    expect(page.get_by_label("Source model")).to_be_hidden()
    page.get_by_label("Method").select_option("adabn")
    # AdaBN starts from a trained model: its own fields in, the training fields out
    expect(page.get_by_label("Source model")).to_be_visible()
    expect(page.get_by_label("Target batches")).to_be_visible()
    for gone in ("Source scenes (with labels)", "Model config", "Iterations"):
        expect(page.get_by_label(gone)).to_be_hidden()
    page.get_by_label("Target scenes").select_option([served.olinda])
    page.get_by_label("Validation scenes (optional)").select_option([served.nc])
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#f-bundle-err")).to_contain_text("bundle")  # no model chosen yet

    page.get_by_label("Source model").select_option(nc_job)
    expect(page.get_by_label("Classes", exact=True)).to_have_value(
        "\n".join(f"{c['id']} {c['name']} {c['color']}" for c in served.classes))  # the model's classes
    page.get_by_label("Target batches").fill("3")
    page.get_by_label("Batch size").fill("2")
    page.get_by_label("Crop (pixels)").fill("32")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[-1]
    j = wait_job(served, job_id)
    assert j["status"] == "successful", j
    assert j["method"] == "adabn" and j["spec"]["params"]["batches"] == 3 and j["spec"]["source"] is None
    h = {"Authorization": f"Bearer {served.token}"}
    res = httpx.get(f"{served.url}/v1/jobs/{job_id}/results", headers=h, timeout=10).json()
    assert res["bundle"]["metadata"]["method"] == "adabn"
    assert res["bundle"]["metadata"]["provenance"]["source_model"]["method"] == "st-dasegnet"
    assert set(res["metrics"]) >= {"baseline", "validation"}  # the ST-DASegNet model before, and after
    expect(page.locator("#job-status .badge")).to_have_text("successful")
    # the class COG and its probabilities, and the class COG's GIS sidecar (category names, attribute table)
    expect(page.locator("#job-downloads button[data-file^='predictions/'][data-file$='.tif']")).to_have_count(2)
    expect(page.locator("#job-downloads button[data-file^='predictions/'][data-file$='.tif.aux.xml']")).to_have_count(1)
    heads = page.locator("#metrics-table thead th").all_text_contents()
    assert heads[1] == "IoU before adaptation" and heads[3] == "IoU adapted (adabn)", heads


def test_label_shift_from_the_form_starts_from_a_model_and_calibrates_on_the_source(served, nc_job, page):
    from playwright.sync_api import expect

    from .conftest import wait_job

    page.goto(served.url + "/")
    _enter_token(page, served.token)
    expect(page.locator("#token-status")).to_contain_text("accepted")
    page.get_by_role("link", name="Submit", exact=True).click()
    page.get_by_label("Job type").select_option("adapt")
    page.get_by_label("Method").select_option("label-shift")
    # a trained model and the labelled source (its probabilities are calibrated there); no training fields
    expect(page.get_by_label("Source model")).to_be_visible()
    expect(page.locator("#f-bundle-help-label-shift")).to_be_visible()
    expect(page.locator("#f-bundle-help-adabn")).to_be_hidden()
    expect(page.get_by_label("Source scenes (with labels)")).to_be_visible()
    for gone in ("Model config", "Iterations", "Crop (pixels)"):
        expect(page.get_by_label(gone)).to_be_hidden()
    page.get_by_label("Method").select_option("adabn")  # the check is the label-shift job's alone
    expect(page.get_by_label("Correct even if the check refuses")).to_be_hidden()
    page.get_by_label("Method").select_option("label-shift")
    expect(page.get_by_label("Correct even if the check refuses")).to_be_visible()
    page.get_by_label("Source model").select_option(nc_job)
    page.get_by_label("Source scenes (with labels)").select_option([served.nc])
    page.get_by_label("Target scenes").select_option([served.olinda])
    page.get_by_label("Target batches").fill("1")
    page.get_by_label("Batch size").fill("2")
    # a 3-iteration model read on two windows: its check is noise, so this job corrects whatever it finds
    page.get_by_label("Correct even if the check refuses").check()
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[-1]
    j = wait_job(served, job_id)
    assert j["status"] == "successful", str(j.get("error"))
    spec = j["spec"]
    assert j["method"] == "label-shift" and spec["source"]["scenes"] and spec["params"]["batches"] == 1
    assert spec["params"]["skip_shift_check"] is True
    h = {"Authorization": f"Bearer {served.token}"}
    res = httpx.get(f"{served.url}/v1/jobs/{job_id}/results", headers=h, timeout=10).json()
    meta = res["bundle"]["metadata"]
    assert meta["method"] == "label-shift" and meta["provenance"]["source_model"]["method"] == "st-dasegnet"
    shift = res["metrics"]["training"]["label_shift"]
    assert len(shift["target_prior"]) == len(served.classes) and shift["prediction_ratio"][0] == 1.0
    assert set(shift["check"]) >= {"bbse_target_prior", "label_shift_holds"}
    expect(page.locator("#job-status .badge")).to_have_text("successful")


def test_an_ended_job_offers_delete_not_cancel_and_delete_removes_it(served, page):
    """Found in #20: the page of a finished job still showed "Cancel job" (the button's style beat its hidden
    attribute), and nothing deleted a finished job. Now: "Delete job", pressed twice, removes it."""
    from playwright.sync_api import expect

    h = {"Authorization": f"Bearer {served.token}"}
    nc = httpx.get(f"{served.url}/v1/datasets/{served.nc}", headers=h, timeout=10).json()["paths"]
    spec = {"type": "train", "model": "segformer-tiny", "classes": served.classes,
            "source": {"scenes": [{"bands": nc["bands"], "labels": nc["labels"]}], "region": {"columns": [0.0, 0.5]}},
            "params": {"iterations": 2, "batch_size": 2, "crop": 32}}
    r = httpx.post(f"{served.url}/v1/jobs", headers=h, json=spec, timeout=60)
    assert r.status_code == 201, r.text
    jid = r.json()["id"]
    assert wait_job(served, jid)["status"] == "successful"
    assert (served.data_dir / "jobs" / jid / "output" / "bundle").is_dir()

    page.goto(served.url + "/")
    _enter_token(page, served.token)
    expect(page.locator("#token-status")).to_contain_text("accepted")
    page.goto(f"{served.url}/#/jobs/{jid}")
    expect(page.locator("#job-status .badge")).to_have_text("successful")
    expect(page.get_by_role("button", name="Dismiss job")).to_be_hidden()
    delete = page.locator("#job-delete")
    expect(delete).to_be_visible()
    expect(delete).to_have_text("Delete job")
    delete.click()
    expect(delete).to_have_text("Press again to delete")  # one press does nothing yet
    assert httpx.get(f"{served.url}/v1/jobs/{jid}", headers=h, timeout=90).status_code == 200
    delete.click()
    # the answer may wait behind the map's first live model tiles (about 40 s on two loaded cores)
    expect(page.locator("#banners")).to_contain_text(f"Job {jid[:8]} deleted", timeout=90_000)
    expect(page).to_have_url(re.compile(r".*#/jobs$"))
    expect(page.locator("#view-jobs")).to_be_visible()
    expect(page.locator(f"tr[data-job='{jid}']")).to_have_count(0)
    assert httpx.get(f"{served.url}/v1/jobs/{jid}", headers=h, timeout=90).status_code == 404
    assert not (served.data_dir / "jobs" / jid).exists()
