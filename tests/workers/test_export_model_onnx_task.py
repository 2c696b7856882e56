"""The worker task behind a model's ONNX download: registered under core's name, it writes model.onnx into the
model's bundle by the model's id, or the reason it could not; a model deleted since is skipped."""
from __future__ import annotations

import uuid

from core import task_names
from core.bundle_manifest import ONNX, ONNX_FAILED
from core.raster.stats import BandStats
from service.settings import Settings
from tests.helpers import small_conv_bundle
from workers import celery_app, tasks


def test_the_export_task_writes_the_file_or_the_reason_by_model_id(nc_classes, tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path, broker_url="memory://")
    monkeypatch.setattr(celery_app.app, "settings", settings)
    assert tasks.export_model_onnx.name == task_names.EXPORT_MODEL_ONNX
    model_id = str(uuid.uuid4())
    out = settings.job_dir(model_id) / "output"
    small_conv_bundle(out, nc_classes, BandStats(mean=[0.0] * 6, std=[1.0] * 6, count=1))
    assert tasks.export_model_onnx(model_id) == "ok" and (out / "bundle" / ONNX).stat().st_size > 1000

    broken = str(uuid.uuid4())
    out = settings.job_dir(broken) / "output"
    small_conv_bundle(out, nc_classes, BandStats(mean=[0.0] * 6, std=[1.0] * 6, count=1))
    (out / "bundle" / "weights.pth").write_bytes(b"no weights")
    assert tasks.export_model_onnx(broken) == "failed" and (out / "bundle" / ONNX_FAILED).read_text()
    assert tasks.export_model_onnx(str(uuid.uuid4())) == "skipped"
