"""`geoadapt configs | run | evaluate` through the real CLI app on the real NC scene."""
from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from core.data.nc import NC_CLASSES
from service.cli import app


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_configs_lists_the_leaves():
    res = CliRunner().invoke(app, ["configs"])
    assert res.exit_code == 0, res.output
    assert "segformer-tiny" in res.output and "st-dasegnet_mit-b5_potsdam2vaihingen" in res.output
    assert "_base_" not in res.output
    shown = CliRunner().invoke(app, ["configs", "segformer-tiny", "--method", "st-dasegnet"])
    assert json.loads(shown.output)["adaptation"]["pseudo_threshold"] == 0.975


def test_run_then_evaluate(nc_data, nc_bands, tmp_path):
    job = {
        "type": "train", "classes": NC_CLASSES, "output": "out",
        "source": {"scenes": [{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"])}],
                   "region": {"columns": [0, 0.6]}},
        "params": {"iterations": 3, "batch_size": 2, "crop": 32},
        "model": {"config": "segformer-tiny", "overrides": {"model.decode_head.channels": 32}},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(tmp_path / "job.yaml"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "bundle" / "bundle.json").exists() and (tmp_path / "out" / "metrics.json").exists()

    args = ["evaluate", str(tmp_path / "out"), "--labels", str(nc_data["strata"]), "--region", "columns=0.6,1",
            "--out", str(tmp_path / "eval.json")]
    for p in nc_bands:
        args += ["--image", str(p)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "mIoU" in res.output and "classes present in the ground truth" in res.output
    m = json.loads((tmp_path / "eval.json").read_text())
    assert m["stats"] == "source" and m["region"] == {"columns": [0.6, 1.0]}
    assert sum(map(sum, m["confusion_matrix"]["counts"])) == m["pixels"] > 40000

    bad = runner.invoke(app, args[:-2] + ["--region", "cols=0,1"])
    assert bad.exit_code != 0
