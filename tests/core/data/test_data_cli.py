"""`geoadapt data fetch|shift|stats` through the Typer app (the commands live in service/cli/data_cmd.py)."""
from __future__ import annotations

import json
import shutil

import rasterio
from typer.testing import CliRunner

from service.cli.data_cmd import app


def test_fetch_shift_stats_commands(tmp_path, nc_data):
    d = tmp_path / "nc"
    d.mkdir()
    for p in nc_data.values():
        shutil.copy(p, d / p.name)
    runner = CliRunner()
    r = runner.invoke(app, ["fetch", "nc-landsat", "--dir", str(d)])
    assert r.exit_code == 0, r.output
    assert f"strata\t{d / 'strata.tif'}" in r.output
    out = tmp_path / "shifted.tif"
    r = runner.invoke(app, ["shift", "--dir", str(d), "--out", str(out), "--seed", "3"])
    assert r.exit_code == 0, r.output
    with rasterio.open(out) as ds:
        assert ds.count == 6 and ds.tags()["seed"] == "3"
    r = runner.invoke(app, ["stats", str(out), "--columns", "0,0.6", "--out", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    st = json.loads((tmp_path / "s.json").read_text())
    assert len(st["mean"]) == 6 and st["count"] > 80_000
    assert "valid pixels" in r.output
