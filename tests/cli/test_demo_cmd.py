"""The README's run command, `geoadapt demo`, end to end on the real data with a tiny budget."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import rasterio


@pytest.mark.slow
def test_demo_runs_the_real_flow_through_the_embedded_service(tmp_path, nc_data):
    r = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--iterations", "2", "--exit", "--state", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    # the data part: both domains validated, statistics printed for the six bands
    assert "source: valid, 6 bands, 489x443 px, EPSG:32119" in out
    assert all(band in out for band in ("B1 blue", "B4 NIR", "B7 SWIR2"))
    # the service part: a successful adapt job whose Olinda map has tile links and a console
    job_id = re.search(r"Job ([0-9a-f-]{36}) successful", out).group(1)
    assert re.search(r"tilejson\s+http://127\.0\.0\.1:\d+/v1/results/\S+/tilejson\.json", out)
    # and one that a client with no header opens (signed for that map, until exp)
    assert re.search(r"tilejson_signed\s+http://127\.0\.0\.1:\d+/v1/results/\S+/tilejson\.json\?exp=\d+&kid=\w+&sig=\S+", out)
    assert re.search(rf"Console:\s+http://127\.0\.0\.1:\d+/#/jobs/{job_id}", out)
    assert re.search(r"Token:\s+ga_\S+", out)
    cog = tmp_path / "state" / "jobs" / job_id / "output" / "predictions" / "target-0-L7_ETMs.tif"
    with rasterio.open(cog) as p:
        assert p.crs.to_epsg() == 31985 and (p.width, p.height) == (349, 352)
        assert p.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
