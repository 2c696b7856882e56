"""Semi-supervised adaptation and the devices field from the console's form against a real `geoadapt serve`:
the target scenes' labels go into the spec only for semi, a semi job on unlabelled targets is refused in the
form, and params.devices is offered only for the jobs that can train on several devices."""
from __future__ import annotations

import pytest

from .conftest import fill_tiny_run, open_submit_form, submit_form_and_wait

pytestmark = pytest.mark.integration


def test_semi_from_the_form_takes_the_target_labels_and_devices(served, page):
    from playwright.sync_api import expect

    open_submit_form(page, served)
    devices = page.get_by_label("Devices (optional)")
    for job_type, method, shown in (("train", None, True), ("adapt", "st-dasegnet", True), ("adapt", "semi", True),
                                    ("adapt", "feature-regression", False), ("adapt", "adabn", False),
                                    ("pretrain", "simclr", False)):
        page.get_by_label("Job type").select_option(job_type)
        if method:
            page.get_by_label("Method").select_option(method)
        (expect(devices).to_be_visible if shown else expect(devices).to_be_hidden)()

    page.get_by_label("Job type").select_option("adapt")
    page.get_by_label("Method").select_option("semi")
    expect(page.locator("#f-target-semi")).to_be_visible()
    page.get_by_label("Source scenes (with labels)").select_option([served.nc])
    page.get_by_label("Target scenes").select_option([served.olinda])  # no labels: refused before submitting
    page.get_by_label("Classes", exact=True).fill("\n".join(f"{c['id']} {c['name']} {c['color']}" for c in served.classes))
    fill_tiny_run(page)
    devices.fill("0")
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#f-target-err")).to_contain_text("target dataset with labels")
    expect(page.locator("#f-devices-err")).to_contain_text("1 or more")

    page.get_by_label("Target scenes").select_option([served.nc])  # labelled (here everywhere: a test's budget)
    devices.fill("1")
    j = submit_form_and_wait(page, served)
    assert j["status"] == "successful", j
    assert j["method"] == "semi" and j["spec"]["params"]["devices"] == 1
    assert [bool(sc.get("labels")) for sc in j["spec"]["target"]["scenes"]] == [True]
    expect(page.locator("#job-status .badge")).to_have_text("successful")
