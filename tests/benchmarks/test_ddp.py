"""`geoadapt bench ddp`: the loss-curve comparison, and a few-iteration run of the whole command on CPU."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from benchmarks.ddp import curve_difference
from cli import app


def test_curve_difference_is_the_largest_gap_per_iteration():
    a = [{"loss": 2.0}, {"loss": 1.0}, {"loss": 0.5}]
    assert curve_difference(a, a) == {"iterations": 3, "max_abs": 0.0, "max_rel": 0.0, "identical": True}
    d = curve_difference(a, [{"loss": 2.0}, {"loss": 1.1}, {"loss": 0.45}])
    assert not d["identical"] and d["max_abs"] == pytest.approx(0.1) and d["max_rel"] == pytest.approx(0.1)


def test_bench_ddp_command_compares_devices_1_with_the_plain_path(tmp_path, one_torch_thread):
    r = CliRunner().invoke(app, ["bench", "ddp", "--out", str(tmp_path), "--iterations", "3", "--warmup", "1",
                                 "--rounds", "1", "--batch-size", "2", "--crop", "32", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["variants"]) == {"plain", "devices-1"}
    one = report["variants"]["devices-1"]
    # one rank through torch.distributed trains exactly as the plain path (CPU: bit for bit)
    assert one["curve_vs_plain"] == {"iterations": 3, "max_abs": 0.0, "max_rel": 0.0, "identical": True}
    assert one["final_loss"] == report["variants"]["plain"]["final_loss"] and one["sec_per_iter"] > 0
    assert report["verdict"]["same_loss_curve"] is True and "speed_within_5pct" in report["verdict"]
    assert "devices-1" in r.output and "same_loss_curve: met" in r.output
