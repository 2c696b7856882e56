"""Console test fixtures: Debian's headless Chromium driven by Playwright (no browser download), and a real
`geoadapt serve` (API + workers) with the NC Landsat-7 scene and the Olinda scene registered as datasets."""
from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.helpers import wait_until_workers_ok

#: the system browser; GEOADAPT_CHROMIUM points elsewhere
CHROMIUM = os.environ.get("GEOADAPT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
#: no network on the test machines: nothing in the browser may try to reach out
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
REPO = Path(__file__).resolve().parents[3]


def _chromium_or_skip() -> str:
    if not CHROMIUM:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the console's browser tests need it")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the Python playwright package is not installed (pip install playwright; no browser download)")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser():
    path = _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=BROWSER_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context per test (its own localStorage: no token carried over)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    ctx.close()


def _stddev(png: bytes) -> float:
    from PIL import Image, ImageStat

    return ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).stddev[0]


@pytest.fixture
def stddev():
    """Grey-level standard deviation of a PNG screenshot (a blank page is ~0; the outside check wants > 10)."""
    return _stddev


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    url: str
    token: str
    other_token: str
    data_dir: Path
    nc: str        # dataset id: NC Landsat-7, six band files + strata labels
    olinda: str    # dataset id: Olinda Landsat-7, one six-band file, no labels
    classes: list  # the NC classes as dicts


def _ga(env, *args) -> str:
    r = subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="session")
def served(tmp_path_factory, nc_data, nc_bands, nc_classes):
    """`geoadapt serve` on a free port (the README's embedded mode), two tokens, NC and Olinda registered."""
    _chromium_or_skip()  # no point starting a service for tests that will skip
    from core.data.fetch import fetch

    olinda = fetch("olinda")["l7_etms"]
    tmp = tmp_path_factory.mktemp("console")
    port = _free_port()
    env = {**os.environ, "GEOADAPT_DATA_DIR": str(tmp / "state"),
           "GEOADAPT_ALLOWED_ROOTS": f"{nc_data['strata'].parent}:{olinda.parent}",
           "GEOADAPT_HEARTBEAT_INTERVAL_S": "1", "OMP_NUM_THREADS": "1", "GEOADAPT_RATE_LIMIT_PER_MINUTE": "0"}
    token = _ga(env, "token", "create", "--name", "console").strip().splitlines()[-1].split()[-1]
    other = _ga(env, "token", "create", "--name", "someone-else").strip().splitlines()[-1].split()[-1]
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_workers_ok(url, proc, tmp / "serve.log")
        h = {"Authorization": f"Bearer {token}"}
        nc = httpx.post(f"{url}/v1/datasets", headers=h, timeout=60,
                        json={"name": "NC Landsat-7 2000", "bands": [str(p) for p in nc_bands],
                              "labels": str(nc_data["strata"])})
        ol = httpx.post(f"{url}/v1/datasets", headers=h, timeout=60,
                        json={"name": "Olinda Landsat-7", "image": str(olinda)})
        assert nc.status_code == 201 and ol.status_code == 201, (nc.text, ol.text)
        yield Served(url=url, token=token, other_token=other, data_dir=tmp / "state", nc=nc.json()["id"],
                     olinda=ol.json()["id"], classes=[c.model_dump() for c in nc_classes])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def open_submit_form(page, served: Served) -> None:
    """Sign in with the served token and open the Submit page's form once it is filled and wired."""
    from playwright.sync_api import expect

    page.goto(served.url + "/")
    page.get_by_label("API token").fill(served.token)
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#token-status")).to_contain_text("accepted")
    page.get_by_role("link", name="Submit", exact=True).click()
    page.locator("#f-start option").first.wait_for(state="attached")


def fill_tiny_run(page) -> None:
    """The smallest run the form tests train: 2 iterations of 2 crops of 32 px."""
    page.get_by_label("Iterations", exact=True).fill("2")
    page.get_by_label("Batch size", exact=True).fill("2")
    page.get_by_label("Crop (pixels)", exact=True).fill("32")


def submit_form_and_wait(page, served: Served) -> dict:
    """Submit the job form, follow it to its page, and wait for the job to end; the job as the API has it."""
    import re

    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r".*#/jobs/[0-9a-f-]{36}$"))
    return wait_job(served, page.url.rsplit("/", 1)[-1])


def wait_job(served: Served, job_id: str, timeout_s: float = 150.0) -> dict:
    h = {"Authorization": f"Bearer {served.token}"}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        j = httpx.get(f"{served.url}/v1/jobs/{job_id}", headers=h, timeout=10).json()
        if j["status"] in ("successful", "failed", "dismissed"):
            return j
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {j['status']} after {timeout_s} s")


@pytest.fixture(scope="session")
def nc_job(served) -> str:
    """A successful tiny NC -> Olinda adapt job with its source-only baseline: the one the form test submitted,
    else one submitted here."""
    h = {"Authorization": f"Bearer {served.token}"}
    done = httpx.get(f"{served.url}/v1/jobs?status=successful&type=adapt&limit=200", headers=h,
                     timeout=10).json()["jobs"]
    for j in (j for j in done if j["method"] == "st-dasegnet"):  # not other tests' adabn or semi jobs
        spec = httpx.get(f"{served.url}/v1/jobs/{j['id']}", headers=h, timeout=10).json()["spec"]
        if spec["params"].get("compare_source_only"):
            return j["id"]
    ds = {d["id"]: d for d in httpx.get(f"{served.url}/v1/datasets", headers=h, timeout=10).json()["datasets"]}
    nc, ol = ds[served.nc]["paths"], ds[served.olinda]["paths"]
    spec = {"type": "adapt", "method": "st-dasegnet", "model": "segformer-tiny", "classes": served.classes,
            "source": {"scenes": [{"bands": nc["bands"], "labels": nc["labels"]}]},
            "target": {"scenes": [{"image": ol["image"]}]},
            "validation": {"scenes": [{"bands": nc["bands"], "labels": nc["labels"]}]},
            "params": {"iterations": 3, "batch_size": 2, "crop": 32, "compare_source_only": True}}
    r = httpx.post(f"{served.url}/v1/jobs", headers=h, json=spec, timeout=60)
    assert r.status_code == 201, r.text
    assert wait_job(served, r.json()["id"])["status"] == "successful"
    return r.json()["id"]
