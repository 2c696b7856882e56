"""More of the console in headless Chromium: accessibility (axe-core rules incl. contrast, labels, keyboard),
the page without the map library, a YAML spec submitted and the job cancelled, the training curve, the
label-free signals."""
from __future__ import annotations

import json

import httpx
import pytest

from .conftest import REPO, wait_job

pytestmark = pytest.mark.integration

AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"


def _login(page, served, hash_: str = "#/jobs") -> None:
    page.goto(f"{served.url}/{hash_}")
    page.get_by_label("API token").fill(served.token)
    page.get_by_role("button", name="Use token").click()
    page.locator("#token-status.ok").wait_for()


def _axe(page, context: str = "main") -> list:
    page.add_script_tag(path=str(AXE))
    res = page.evaluate("""async (ctx) => {
        const r = await axe.run(document.querySelector(ctx) ? ctx : document,
            {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}});
        return r.violations.map(v => ({id: v.id, help: v.help, nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}));
    }""", context)
    return res


@pytest.fixture
def page_for_axe(browser):
    """A page that lets the test inject axe-core (the console's CSP rightly allows no injected script)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    ctx.close()


def test_accessibility_rules_hold_on_every_view(served, nc_job, page_for_axe):
    """axe-core's WCAG 2.1 A/AA rules: labels on inputs, names on buttons and links, colour contrast, ..."""
    if not AXE.is_file():
        pytest.skip("axe-core is not installed (npm ci installs it with the console's build step)")
    page = page_for_axe
    page.goto(served.url + "/")
    page.locator("#token-status").wait_for()
    found = {"welcome": _axe(page, "body")}
    _login(page, served)
    page.locator("#jobs-table tbody tr").first.wait_for()
    found["jobs"] = _axe(page, "body")
    page.goto(f"{served.url}/#/submit")
    page.locator("#f-source option").first.wait_for(state="attached")
    found["submit"] = _axe(page, "body")
    page.get_by_label("Job spec (YAML or JSON)", exact=True).check()
    found["submit-spec"] = _axe(page, "body")
    page.goto(f"{served.url}/#/datasets")
    page.locator("#datasets-table tbody tr").first.wait_for()
    found["datasets"] = _axe(page, "body")
    page.goto(f"{served.url}/#/jobs/{nc_job}")
    page.locator("#metrics-table").wait_for()
    page.locator("#label-free-table").wait_for()
    page.locator("#job-map-panel .class-legend li").first.wait_for()
    found["job"] = _axe(page, "body")
    page.goto(f"{served.url}/#/map")
    page.locator("#main-map-panel .leaflet-container").wait_for()
    found["map"] = _axe(page, "body")
    bad = {k: v for k, v in found.items() if v}
    assert not bad, json.dumps(bad, indent=1)
    # and the rules do bite: an unlabelled input and pale text on this page are both caught
    page.evaluate("""() => { const m = document.querySelector('main');
        m.insertAdjacentHTML('beforeend', '<input id=x-unlabelled><p style="color:#bbb;background:#fff">pale</p>'); }""")
    assert {"label", "color-contrast"} <= {v["id"] for v in _axe(page, "body")}


def test_keyboard_reaches_every_control(served, page):
    _login(page, served, "#/submit")
    page.locator("#f-source option").first.wait_for(state="attached")
    page.locator("body").focus()
    reached = set()
    for _ in range(80):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id || document.activeElement.getAttribute('href') || "
                                  "document.activeElement.textContent.trim()"))
    for want in ("#main", "token-input", "token-use", "token-forget", "#/jobs", "#/submit", "#/datasets", "#/map",
                 "f-type", "f-method", "f-model", "f-source", "f-target", "f-validation", "f-classes",
                 "f-classes-from", "f-iterations", "f-batch", "f-crop", "f-seed", "job-submit", "job-form-to-spec"):
        assert want in reached, (want, sorted(map(str, reached)))
    # every visible control of the page can take the focus, and is named
    stray = page.evaluate("""() => Array.from(document.querySelectorAll('a[href], button, input, select, textarea'))
        .filter(e => e.offsetParent !== null && e.tabIndex < 0).map(e => e.outerHTML.slice(0, 80))""")
    assert not stray, stray
    # Enter on the focused submit button submits the form (here: the form's own check of empty fields)
    page.get_by_label("Classes", exact=True).fill("")
    page.get_by_role("button", name="Submit job").focus()
    page.keyboard.press("Enter")
    assert "give at least one class" in page.locator("#f-classes-err").text_content()


def test_without_the_map_library_a_banner_and_a_still_map(served, nc_job, page):
    """What a machine without npm serves: no Leaflet file. The rest works; the result is a still picture."""
    page.route("**/vendor/leaflet/**", lambda route: route.fulfill(status=404, body="not found"))
    _login(page, served, f"#/jobs/{nc_job}")
    banner = page.locator("#no-map-library")
    banner.wait_for()
    assert "map library (Leaflet) is not installed" in banner.text_content()
    assert "npm" in banner.text_content()
    page.locator("#metrics-table").wait_for()  # everything but the map is there
    preview = page.locator("#job-map-panel img.preview")
    preview.wait_for()
    page.wait_for_function("() => document.querySelector('#job-map-panel img.preview').naturalWidth > 0")
    legend = page.locator("#job-map-panel .class-legend li")
    legend.first.wait_for()  # drawn after the picture, once the classes are fetched: wait, do not race it
    assert legend.count() == len(served.classes)
    assert page.locator(".leaflet-container").count() == 0


def test_yaml_spec_errors_then_submit_then_cancel(served, page):
    _login(page, served, "#/submit")
    page.get_by_label("Job spec (YAML or JSON)", exact=True).check()
    text = page.get_by_label("Spec text (YAML or JSON)")
    # not YAML at all: the line is named
    text.fill("type: adapt\nclasses: [1, 2\n")
    page.locator("#spec-submit").click()
    errors = page.locator("#spec-errors")
    errors.locator("li").first.wait_for()
    assert "(file)" in errors.text_content() and "line 3" in errors.text_content()
    # YAML the API refuses: every problem listed with the field it names
    h = {"Authorization": f"Bearer {served.token}"}
    ds = {d["id"]: d for d in httpx.get(f"{served.url}/v1/datasets", headers=h).json()["datasets"]}
    nc, ol = ds[served.nc]["paths"], ds[served.olinda]["paths"]
    classes = "\n".join(f"  - {{id: {c['id']}, name: {c['name']}, color: '{c['color']}'}}" for c in served.classes)
    good = (f"type: adapt\nmethod: st-dasegnet\nmodel: segformer-tiny\nclasses:\n{classes}\n"
            f"source:\n  scenes:\n    - bands: {json.dumps(nc['bands'])}\n      labels: {nc['labels']}\n"
            f"target:\n  scenes:\n    - image: {ol['image']}\n"
            f"params: {{iterations: 100000, batch_size: 2, crop: 32, checkpoint_interval: 5}}\n")
    text.fill(good.replace(f"labels: {nc['labels']}", "labels: /etc/hostname"))
    page.locator("#spec-submit").click()
    page.wait_for_function("() => document.querySelector('#spec-errors').textContent.includes('source.scenes.0.labels')")
    # then a good one: it runs, and the job page dismisses it
    text.fill(good)
    page.locator("#spec-submit").click()
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[-1]
    page.locator("#job-status .badge.s-running").wait_for(timeout=90_000)
    dismiss = page.get_by_role("button", name="Dismiss job")  # the API's word for it
    dismiss.click()
    page.get_by_role("button", name="Press again to dismiss").click()
    page.locator("#job-status .badge.s-dismissed").wait_for(timeout=60_000)
    assert wait_job(served, job_id, 5)["status"] == "dismissed"


def test_the_spec_side_works_while_the_forms_lists_still_load(served, page):
    """Choosing "Job spec" and submitting one does not wait for the datasets and models the form lists
    (on a loaded server that took longer than a user waits)."""
    held = []
    page.route("**/v1/datasets?*", lambda route: held.append(route))  # answered only at the end
    _login(page, served, "#/submit")
    for _ in range(100):  # until the form has asked for its datasets (and waits for them)
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the form's dataset list was not asked for"
    page.get_by_label("Job spec (YAML or JSON)", exact=True).check()
    page.get_by_label("Spec text (YAML or JSON)").fill("type: adapt\nclasses: [1, 2\n")
    page.locator("#spec-submit").click()
    page.locator("#spec-errors li").first.wait_for()
    assert "line 3" in page.locator("#spec-errors").text_content()
    for route in held:
        route.continue_()


def test_training_curve_from_the_jobs_history(served, nc_job, page):
    """The curve reads <output>/history.jsonl: losses per logged iteration, validations on the right axis."""
    out = served.data_dir / "jobs" / nc_job / "output" / "history.jsonl"
    if not out.exists():  # written here for the console's part of that contract when the worker does not yet
        rows = [{"iteration": i, "losses": {"loss": 2.0 / i, "loss_seg": 1.5 / i, "loss_adv": 0.1}} for i in range(1, 31)]
        rows += [{"iteration": 10, "validation": {"miou": 0.2}}, {"iteration": 30, "validation": {"miou": 0.35}}]
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _login(page, served, f"#/jobs/{nc_job}")
    curve = page.locator("#job-curve svg.curve")
    curve.wait_for()
    assert curve.locator("polyline.series").count() >= 1
    label = curve.get_attribute("aria-label")
    assert "Training losses over" in label
    assert page.locator("#job-curve .series-legend li").count() >= 1


def test_register_a_dataset_by_path_with_the_servers_checks(served, page, tmp_path):
    _login(page, served, "#/datasets")
    page.locator("#datasets-table tbody tr").first.wait_for()
    before = page.locator("#datasets-table tbody tr").count()
    outside = tmp_path / "elsewhere.tif"
    outside.write_bytes(b"not under an allowed root")
    page.get_by_label("Name", exact=True).first.fill("from the console")
    page.get_by_label("Image (one multi-band file)").fill(str(outside))
    page.get_by_role("button", name="Register").click()
    err = page.locator("#d-image-err")
    err.wait_for()
    assert "image" in err.text_content() and page.get_by_label("Image (one multi-band file)").get_attribute("aria-invalid") == "true"
    h = {"Authorization": f"Bearer {served.token}"}
    olinda = httpx.get(f"{served.url}/v1/datasets/{served.olinda}", headers=h).json()["paths"]["image"]
    page.get_by_label("Image (one multi-band file)").fill(olinda)
    page.get_by_role("button", name="Register").click()
    page.locator("#datasets-table tbody tr", has_text="from the console").wait_for()
    assert page.locator("#datasets-table tbody tr").count() == before + 1
    assert page.locator("#d-image-err").count() == 0


def test_job_page_shows_the_label_free_signals_beside_the_source_only_ones(served, nc_job, page):
    from playwright.sync_api import expect

    h = {"Authorization": f"Bearer {served.token}"}
    lf = httpx.get(f"{served.url}/v1/jobs/{nc_job}/results", headers=h, timeout=10).json()["metrics"]["label_free"]
    _login(page, served, f"#/jobs/{nc_job}")
    table = page.locator("#label-free-table")
    expect(table).to_be_visible()
    assert table.locator("thead th").all_text_contents() == ["signal", "source-only", "adapted (st-dasegnet)",
                                                             "what it tells"]
    expect(table.locator("caption")).to_contain_text(f"{lf['pixels']['target']:,} target pixels")
    for key in ("mean_max_prob", "entropy", "entropy_normalised", "agreement", "pseudo_coverage",
                "pseudo_coverage_0.9", "class_tv", "expected_miou"):
        base, adapted, explained = table.locator(f"tr[data-signal='{key}'] td").all_text_contents()
        assert float(adapted) == pytest.approx(lf[key], abs=5e-4), key
        if key in lf["source_only"]:
            assert float(base) == pytest.approx(lf["source_only"][key], abs=5e-4), key
        else:  # one network: no agreement to show
            assert key == "agreement" and base == "–"
        assert len(explained) > 20, key
    expect(table.locator("tr[data-signal='agreement'] th")).to_have_text("Agreement (students)")
    expect(table.locator("tr[data-signal='pseudo_coverage'] th")).to_have_text(f"Coverage ≥ {lf['pseudo_threshold']}")
    # the predicted class mix on target beside the source's, one row per class
    mix = page.locator("#class-mix-table")
    for c in served.classes:
        row = mix.locator(f"tr[data-class='{c['id']}']")
        expect(row.locator("th")).to_have_text(c["name"])
        source, target = row.locator("td").all_text_contents()
        assert float(source) == pytest.approx(100 * lf["class_distribution"]["source"][str(c["id"])], abs=0.05)
        assert float(target) == pytest.approx(100 * lf["class_distribution"]["target"][str(c["id"])], abs=0.05)
