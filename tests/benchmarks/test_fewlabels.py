"""Benchmark fewlabels: budgets, window tilings, the per-seed gap closure, and few-iteration smoke runs of the
whole command on both cases (NC: georeferenced label windows; NEON: label windows on grids without a CRS)."""
from __future__ import annotations

import json

import pytest
import torch
from rasterio.windows import Window
from typer.testing import CliRunner

from benchmarks.fewlabels import budget, few_labels_summary, labelled_target, random_windows, region_windows
from cli import app


def test_budgets_count_windows_and_label_at_least_one():
    assert budget(1, 15) == 1 and budget(5, 15) == 1  # NC at 64 px: both budgets are one window
    assert budget(5, 60) == 3 and budget(1, 60) == 1 and budget(5, 300) == 15


def test_the_nc_train_region_tiles_into_windows_with_enough_valid_pixels(nc_data, tmp_path):
    from core.data.demo import benchmark_a_domains, ensure_shifted_target, shifted_target_path

    domains = benchmark_a_domains(nc_data, ensure_shifted_target(nc_data, shifted_target_path(None, 0), 0))
    tiling = region_windows(domains["target"], 64)
    # 293 x 443 px region: 4 x 6 tiles, of which the rotated footprint leaves some mostly nodata
    assert 8 <= len(tiling) < 24 and all(share >= 0.5 for _, _, share in tiling)
    assert all(w.col_off + 64 <= 293 for _, w, _ in tiling)
    a, b = random_windows(tiling, 3, seed=7), random_windows(tiling, 3, seed=7)
    assert a == b and len({(int(w.col_off), int(w.row_off)) for _, w in a}) == 3
    # a scene without a chosen window loses its labels; one with windows keeps them, limited
    two = {**domains["target"], "scenes": domains["target"]["scenes"] * 2}
    out = labelled_target(two, [(1, Window(64, 192, 64, 64))], tmp_path)
    assert "labels" not in out["scenes"][0] and out["scenes"][1]["label_windows"].endswith("scene1_windows.gpkg")
    assert (tmp_path / "scene1_windows.gpkg").stat().st_size > 0


def test_under_the_blocks_split_the_windows_to_label_lie_in_the_train_cells(nc_data):
    from core.data.demo import BLOCK_CELL, benchmark_a_domains, ensure_shifted_target, shifted_target_path

    domains = benchmark_a_domains(nc_data, ensure_shifted_target(nc_data, shifted_target_path(None, 0), 0), "blocks")
    tiling = region_windows(domains["target"], 32)
    assert len(tiling) > 20
    for _, w, _ in tiling:  # 32 px windows from the region's corner: each inside one cell, an even one
        cells = {((int(w.row_off) + dr) // BLOCK_CELL, (int(w.col_off) + dc) // BLOCK_CELL) for dr in (0, 31)
                 for dc in (0, 31)}
        assert len(cells) == 1 and sum(next(iter(cells))) % 2 == 0


def test_gap_closure_per_seed_against_the_best_source_only_row():
    def row(mious):
        return {"miou": mious, "oa": mious, "mf1": mious, "mean": {"miou": sum(mious) / len(mious)},
                "per_class_iou_mean": {}}

    report = {"best_source_only": "source-only+target-stats", "gap_closure": {"semi-suggest@5%": 0.75},
              "methods": {"source-only": row([0.05, 0.07]), "source-only+target-stats": row([0.10, 0.12]),
                          "oracle": row([0.20, 0.22]),
                          "semi-suggest@5%": {**row([0.18, 0.17]), "labels": [{"windows": 3}, {"windows": 3}]},
                          "semi-random@5%": row([0.10, 0.27]),
                          "finetune-suggest@5%": row([0.15, 0.12])}}
    s = few_labels_summary(report)
    assert s["suggest@5%"]["gap_closure"] == pytest.approx([0.8, 0.5])
    assert s["random@5%"]["gap_closure"] == pytest.approx([0.0, 1.5])  # unclipped
    assert s["suggest@5%"]["labels"] == [{"windows": 3}, {"windows": 3}]
    assert s["best_source_only"] == "source-only+target-stats" and "suggest@1%" not in s
    assert s["finetune-suggest@5%"]["gap_closure"] == pytest.approx([0.5, 0.0])


def _smoke(case, tmp_path, window=None):
    n = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["bench", "fewlabels", "--case", case, "--iterations", "2", "--semi-iterations",
                                       "2", "--seeds", "1", "--crop", "32", "--batch-size", "2", "--threads", "1",
                                       "--jobs", "2", *(["--window", str(window)] if window else []),
                                       "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(n)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    c = report["few_labels"][case]
    assert {"suggest@1%", "suggest@5%", "random@1%", "random@5%"} <= set(c)
    for key in ("suggest@1%", "suggest@5%", "random@1%", "random@5%"):
        e = c[key]
        assert len(e["miou"]) == len(e["gap_closure"]) == 1 and 0 <= e["miou"][0] <= 1
        [labels] = e["labels"]
        assert labels["windows"] == len(labels["chosen"]) >= 1 and labels["labelled_pixels"] > 0
        assert labels["window"] == (window or 32) and 0 < labels["labelled_share"] < 1  # default: the crop
    # 5 % of the windows is at least as many as 1 %
    assert c["suggest@5%"]["labels"][0]["windows"] >= c["suggest@1%"]["labels"][0]["windows"]
    # plain fine-tuning beside each semi row, on exactly its windows
    for key in ("suggest@1%", "suggest@5%", "random@1%", "random@5%"):
        ft = c[f"finetune-{key}"]
        assert len(ft["miou"]) == len(ft["gap_closure"]) == 1 and 0 <= ft["miou"][0] <= 1
        assert ft["labels"][0]["chosen"] == c[key]["labels"][0]["chosen"]
    assert c["oracle"]["miou"] and c["source_only"]["miou"]
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Benchmark fewlabels") and "vs plain fine-tuning on the same windows" in md
    assert (tmp_path / "few_labels.png").stat().st_size > 1000
    assert "gap closure" in res.output
    return c


@pytest.mark.slow
def test_bench_fewlabels_nc_smoke(nc_data, tmp_path):
    c = _smoke("nc", tmp_path)
    assert c["suggest@5%"]["labels"][0]["windows"] > c["suggest@1%"]["labels"][0]["windows"]  # many 32 px windows


@pytest.mark.slow
def test_bench_fewlabels_neon_smoke(tmp_path):
    # 128 px windows: the NEON train halves hold 6, so 1 % and 5 % label the same one window and share one run
    c = _smoke("neon", tmp_path, window=128)
    for strategy in ("suggest", "random"):
        one, five = c[f"{strategy}@1%"], c[f"{strategy}@5%"]
        assert five["labels"][0]["chosen"] == one["labels"][0]["chosen"] and len(one["labels"][0]["chosen"]) == 1
        assert five["miou"] == one["miou"]
        assert c[f"finetune-{strategy}@5%"]["miou"] == c[f"finetune-{strategy}@1%"]["miou"]
