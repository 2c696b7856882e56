"""`geoadapt bench scale` at a tiny size (the CI smoke run): two served instances, five predict jobs, a job
worker killed mid-shard; the report holds every figure, the sharded outputs equal the single worker's."""
from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_bench_scale_smoke(nc_data, tmp_path):
    from benchmarks.scale import ScaleSettings, run_scale_benchmark

    r = run_scale_benchmark(tmp_path, ScaleSettings(size=768, small=512, shards=2, kill_after=0.0),
                            data_dir=nc_data["b10"].parent, log=lambda m: None)
    assert json.loads((tmp_path / "report.json").read_text())["e2e_ratio"] == r["e2e_ratio"] > 0
    assert "e2e ratio" in (tmp_path / "report.md").read_text()
    assert r["identical_outputs"] == {"sharded": {"classes": True, "probabilities": True},
                                      "sharded_worker_killed": {"classes": True, "probabilities": True}}
    killed = r["worker_killed"]
    assert killed["pid"] and killed["reruns"] >= 1, killed  # killed mid-shard: that shard ran again
    assert killed["attempts"] == (2 if killed["coordinator"] else 1)
    for config, by_size in r["peak_rss_mb_per_worker"].items():
        assert set(by_size) == {"512", "768"}
        assert all(len(w) == (2 if "2 workers" in config else 1) and min(w.values()) > 100 for w in by_size.values())
    assert set(r["goals"]) == {"e2e ratio >= 0.9", "outputs identical", "a killed worker's job succeeds, shards re-run",
                               "peak RSS per worker within 10% across sizes"}
    assert r["runs"]["2x_sharded_768"]["shards"]["count"] == 2
