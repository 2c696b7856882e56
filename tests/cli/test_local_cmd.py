"""`geoadapt configs | run | evaluate` through the real CLI app on the real NC scene."""
from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from core.data.nc import NC_CLASSES
from cli import app


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


def test_run_refuses_overrides_nothing_reads_before_writing_anything(tmp_path):
    """What a job once wrote into its bundle and then ignored: refused, by name, with the keys that exist."""
    import subprocess
    import sys

    from tests.helpers import train_spec, write_tiny_scene

    img, lab = write_tiny_scene(tmp_path / "scene")
    for overrides, words in (
            ({"model.type": "os.system"}, ["model.overrides.model.type", "not a registered module name"]),
            ({"custom_imports": {"imports": ["os"]}}, ["model.overrides.custom_imports", "no part of the model reads",
                                                       "the top level has adaptation, augment"]),
            ({"a": 1}, ["model.overrides.a", "no part of the model reads 'a'"])):
        job = {**train_spec(img, lab), "output": "out", "model": {"config": "segformer-tiny", "overrides": overrides}}
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
        r = subprocess.run([sys.executable, "-m", "cli", "run", str(tmp_path / "job.yaml"), "--threads", "1"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stdout + r.stderr
        assert all(w in r.stderr for w in words), r.stderr
        assert not (tmp_path / "out" / "bundle").exists()
