"""`geoadapt data fetch|shift|stats` through the Typer app (the commands live in cli/data_cmd.py)."""
from __future__ import annotations

import json
import shutil

import rasterio
from typer.testing import CliRunner

from cli.data_cmd import app


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


def test_fetch_neon_crowns_builds_the_scenes_beside_the_files_and_prints_them(tmp_path, neon_data):
    for p in neon_data.values():
        shutil.copy(p, tmp_path / p.name)
    r = CliRunner().invoke(app, ["fetch", "neon-crowns", "--dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    table = [line.split() for line in r.output.splitlines()
             if line.startswith(("YELL", "OSBS", "SOAP")) and "\t" not in line]
    lines = {row[0]: row for row in table}
    assert {n: (v[1], v[3], v[4]) for n, v in lines.items()} == {  # width, height, crowns
        "YELL_528000_4978000": ("2299", "2472", "574"),
        "YELL_541000_4977000": ("1249", "1035", "279"),
        "OSBS_029": ("400", "400", "61"),
        "SOAP_061": ("400", "400", "37"),
    }
    assert f"OSBS_029\t{tmp_path / 'OSBS_029_rgb.tif'}\t{tmp_path / 'OSBS_029_trees.tif'}" in r.output
    with rasterio.open(tmp_path / "OSBS_029_trees.tif") as ds:
        assert ds.count == 1 and ds.tags()["crowns"] == "61"
