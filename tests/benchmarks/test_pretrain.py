"""The pretraining benchmark: label subsets, the per-start summary and goal, and the command end to end at toy size."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from typer.testing import CliRunner

from benchmarks.pretrain import goal_met, label_subset, starts_of, summarise_case
from cli import app


def test_label_subsets_keep_a_nested_share_of_the_labelled_blocks(tmp_path):
    labels = np.full((40, 40), -1.0, np.float32)
    labels[:, :30] = np.arange(30) % 3 + 1  # 30 labelled columns, 10 nodata
    path = tmp_path / "labels.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=1, dtype="float32", nodata=-1.0,
                       transform=from_origin(0, 40, 1, 1), crs="EPSG:32617") as ds:
        ds.write(labels[None])
    small, large = (label_subset(path, f, 5, tmp_path / "sub") for f in (0.25, 0.5))
    with rasterio.open(small) as a, rasterio.open(large) as b:
        sa, sb = a.read(1), b.read(1)
        assert a.nodata == -1.0
    # 8 x 8 blocks of 5 px; 6 of each row's 8 hold labels: 48 labelled blocks -> 12 and 24 kept
    assert (sa != -1).sum() == 12 * 25 and (sb != -1).sum() == 24 * 25
    assert np.all(sb[sa != -1] == sa[sa != -1]) and np.all(sa[sa != -1] == labels[sa != -1])  # nested, unchanged
    assert label_subset(path, 0.25, 5, tmp_path / "sub") == small  # built once
    # a uint8 raster without nodata gets its largest value as nodata
    with rasterio.open(tmp_path / "u8.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       transform=from_origin(0, 8, 1, 1), crs="EPSG:32617") as ds:
        ds.write(np.ones((1, 8, 8), np.uint8))
    with rasterio.open(label_subset(tmp_path / "u8.tif", 0.5, 4, tmp_path / "sub")) as ds:
        assert ds.nodata == 255 and (ds.read(1) == 255).sum() == 32


def _case_report(so, st, oracle, gap, extra=None):
    rows = {"source-only": so, "st-dasegnet": st, "oracle": oracle, **(extra or {})}
    methods = {k: {"miou": v, "mean": {"miou": float(np.mean(v)), "oa": 0.5, "mf1": 0.4},
                   "std": {"miou": float(np.std(v)), "oa": 0.0, "mf1": 0.0}} for k, v in rows.items()}
    return {"methods": methods, "gap_closure": {"st-dasegnet": gap}, "best_source_only": "source-only"}


def test_summary_lifts_over_random_and_the_goal():
    reports = {"random": _case_report([0.10, 0.12], [0.14, 0.14], [0.2, 0.2], 0.2,
                                      {"source-only@5%": [0.05, 0.07]}),
               "simclr": _case_report([0.13, 0.15], [0.16, 0.18], [0.2, 0.2], 0.4, {"source-only@5%": [0.1, 0.1]}),
               "croco": _case_report([0.12, 0.12], [0.12, 0.12], [0.2, 0.2], 0.0, {"source-only@5%": [0.1, 0.1]})}
    s = summarise_case(reports, (0.05,))
    assert s["starts"]["simclr"]["source-only"]["miou"] == [0.13, 0.15]
    assert s["lift_over_random"]["simclr"]["source-only"] == pytest.approx(0.14 / 0.11 - 1)
    assert s["lift_over_random"]["simclr"]["gap_closure_change"] == pytest.approx(0.2)
    assert s["lift_over_random"]["random"]["source-only"] == pytest.approx(0.0)
    assert s["label_efficiency"]["random"] == {"5": pytest.approx(0.06), "100": pytest.approx(0.11)}
    assert goal_met(s)  # simclr: +27 % and a higher gap closure
    reports["simclr"] = _case_report([0.13, 0.15], [0.16, 0.18], [0.2, 0.2], 0.1)
    assert not goal_met(summarise_case(reports, ()))  # +27 %, but a lower gap closure; croco +9 %


def test_each_case_has_its_starts():
    assert starts_of("nc", ("simclr", "siameseim", "croco")) == ["random", "simclr", "siameseim", "croco"]
    assert starts_of("neon", ("simclr", "siameseim", "croco")) == ["random", "imagenet", "simclr", "siameseim"]


@pytest.mark.slow
def test_bench_pretrain_smoke(nc_data, tmp_path):
    """The NC case at toy size, one pretraining (croco: the paired one) and both label subsets."""
    n = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["bench", "pretrain", "--case", "nc", "--seeds", "1", "--method", "croco",
                                       "--pretrain-iterations", "2", "--iterations", "2", "--crop", "32",
                                       "--batch-size", "2", "--threads", "1", "--jobs", "2", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(n)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    nc = report["pretraining"]["nc"]
    assert list(nc) == ["random", "croco"]
    for start in nc.values():
        assert {"source-only", "source-only+target-stats", "st-dasegnet", "oracle", "source-only@5%",
                "source-only@20%"} <= set(start)
        assert len(start["source-only"]["miou"]) == 1 and "st-dasegnet" in start["gap_closure"]
    assert report["pretrain_runs"]["nc"]["croco"]["iterations"] == 2
    # the croco start's runs began from the pretrain job's weights
    from models.bundle import load_bundle

    [run] = (tmp_path / "nc" / "croco" / "runs").glob("*start-croco-*/seed0")
    started = load_bundle(run / "source-only").provenance["pretrained"]
    assert started["pretraining"]["method"] == "croco" and started["loaded"] > 0
    assert set(report["label_efficiency"]["nc"]["croco"]) == {"5", "20", "100"}
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Pretraining benchmark") and "| croco |" in md
    assert (tmp_path / "starts.png").stat().st_size > 1000 and (tmp_path / "label_efficiency.png").is_file()
    assert "source-only vs random" in res.output
    # a subset of the rows: the same pretraining and runs, source-only alone reported
    args = ["bench", "pretrain", "--case", "nc", "--seeds", "1", "--method", "croco", "--pretrain-iterations", "2",
            "--iterations", "2", "--crop", "32", "--batch-size", "2", "--threads", "1", "--jobs", "1",
            "--no-label-efficiency", "--out", str(tmp_path)]
    try:
        res = CliRunner().invoke(app, args + ["--row", "source-only"])
        bad = CliRunner().invoke(app, args + ["--row", "adabn"])
    finally:
        torch.set_num_threads(n)
    assert res.exit_code == 0, res.output
    nc = json.loads((tmp_path / "report.json").read_text())["pretraining"]["nc"]
    for start in nc.values():
        assert {"source-only", "source-only+target-stats"} <= set(start) and "st-dasegnet" not in start
    assert "st-dasegnet -   gap closure -" in res.output  # a row not run prints as absent, not as 0
    assert bad.exit_code == 2 and "unknown row(s) adabn" in bad.output
