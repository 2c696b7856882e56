"""A pretrain job from the console's form against a real `geoadapt serve` (imagery only: no classes, no
validation), then a train job started from its weights by choosing it in the form."""
from __future__ import annotations

import httpx
import pytest

from .conftest import fill_tiny_run, open_submit_form, submit_form_and_wait

pytestmark = pytest.mark.integration


def test_pretrain_from_the_form_then_train_from_its_weights(served, page):
    from playwright.sync_api import expect

    h = {"Authorization": f"Bearer {served.token}"}
    open_submit_form(page, served)
    page.get_by_label("Job type").select_option("pretrain")
    # the pretraining methods only; nothing to validate or compare with
    visible = page.evaluate("() => Array.from(document.querySelectorAll('#f-method option')).filter(o => !o.hidden)"
                            ".map(o => o.value)")
    assert visible == ["simclr", "siameseim", "croco"]
    expect(page.get_by_label("Validation scenes (optional)")).to_be_hidden()
    expect(page.get_by_label("Compare with source-only")).to_be_hidden()
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#f-source-err")).to_contain_text("pretrain on")  # no imagery chosen yet

    page.get_by_label("Method").select_option("siameseim")
    page.get_by_label("Target scenes").select_option([served.olinda])
    page.get_by_label("Classes", exact=True).fill("")
    fill_tiny_run(page)
    j = submit_form_and_wait(page, served)
    pre_id = j["id"]
    assert j["status"] == "successful", j
    assert j["type"] == "pretrain" and j["method"] == "siameseim" and j["spec"]["classes"] is None
    res = httpx.get(f"{served.url}/v1/jobs/{pre_id}/results", headers=h, timeout=10).json()
    assert res["pretrained"]["record"]["method"] == "siameseim" and res["pretrained"]["record"]["iterations"] == 2
    expect(page.locator("#job-status .badge")).to_have_text("successful")

    # a train job that starts from it: the form offers the finished pretrain job
    page.get_by_role("link", name="Submit", exact=True).click()
    page.locator(f"#f-start option[value='{pre_id}']").wait_for(state="attached")
    page.get_by_label("Job type").select_option("train")
    page.get_by_label("Source scenes (with labels)").select_option([served.nc])
    page.get_by_label("Classes", exact=True).fill("\n".join(f"{c['id']} {c['name']} {c['color']}" for c in served.classes))
    page.get_by_label("Start from (optional)").select_option(pre_id)
    fill_tiny_run(page)
    j = submit_form_and_wait(page, served)
    train_id = j["id"]
    assert j["status"] == "successful", j
    assert j["spec"]["model"]["checkpoint"] == f"jobs/{pre_id}/output"
    meta = httpx.get(f"{served.url}/v1/models/{train_id}", headers=h, timeout=10).json()["metadata"]
    started = meta["provenance"]["pretrained"]
    assert started["pretraining"]["method"] == "siameseim" and started["loaded"] > 0
