"""ONNX export of a bundle's inference segmentor (a plain segmentor, and ST-DASegNet's students + DDM): the graph
runs in onnxruntime at other sizes than the traced one with torch's probabilities, its metadata reads as the
QGIS Deepness plugin reads it, and `predict` on onnxruntime agrees with torch on the real NC scene."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import rasterio
import torch

from core.bundle_manifest import ONNX, ONNX_FAILED
from core.raster.scene import Scene
from core.raster.stats import BandStats, compute_stats
from models.bundle import load_bundle, save_bundle
from models.inference import predict_raster
from models.inference.onnx_window_model import OnnxWindowModel
from models.inference.windowed import WindowModel
from models.onnx_export import ExportError, ProbabilityNet, export_onnx, write_bundle_onnx
from tests.helpers import small_conv_bundle
from tests.models.conftest import tiny_cfg


@pytest.fixture(scope="module")
def nc_stats(nc_bands):
    with Scene.open(nc_bands) as s:
        return compute_stats([s])


def _torch_probs(bundle, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ProbabilityNet(bundle.segmentor).eval()(torch.from_numpy(x)).numpy()


def _ort_probs(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"image": x})[0]


def test_a_plain_segmentor_exports_with_dynamic_sizes_and_deepness_metadata(nc_classes, nc_stats, tmp_path):
    bundle = small_conv_bundle(tmp_path / "job", nc_classes, nc_stats)
    r = export_onnx(bundle, tmp_path / "m.onnx", tile_size=256, overlap=32, resolution_cm=2850)
    assert r.path.is_file() and r.max_abs_diff <= 1e-3
    # batch, height and width are free: a non-square window of another batch size
    x = np.random.default_rng(0).normal(size=(1, 6, 64, 160)).astype(np.float32)
    assert np.abs(_ort_probs(r.path, x) - _torch_probs(bundle, x)).max() < 1e-4

    # the metadata as Deepness reads it: every value JSON, class names by consecutive output index
    meta = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    read = {k: json.loads(v) for k, v in meta.items()}
    assert read["model_type"] == "Segmentor"
    assert read["class_names"] == {str(i): c.name for i, c in enumerate(nc_classes)}
    assert read["class_colors"]["0"] == nc_classes[0].color and read["class_ids"]["6"] == nc_classes[6].id
    assert (read["resolution"], read["tile_size"], read["tiles_overlap"]) == (2850.0, 256, 12)
    # Deepness scales its input by 1/255 before standardising: the same (x - mean) / std as ours
    raw = np.array([100.0, 50.0, 30.0, 70.0, 20.0, 10.0])
    ours = (raw - np.array(nc_stats.mean)) / np.array(nc_stats.std)
    theirs = (raw / 255 - np.array(read["standardization_mean"])) / np.array(read["standardization_std"])
    assert np.allclose(ours, theirs)
    assert read["band_count"] == 6 and read["geoadapt_statistics"]["name"] == "source"


def test_st_dasegnet_exports_both_students_and_the_ddm(tmp_path):
    from models.adaptation import build_method

    torch.manual_seed(0)
    cfg = tiny_cfg("st-dasegnet", bands=4, classes=3)
    m = build_method(cfg, total_iters=1)
    classes = [{"id": i + 1, "name": f"c{i}", "color": "#00ff00"} for i in range(3)]
    stats = BandStats(mean=[0.0] * 4, std=[1.0] * 4, count=10)
    save_bundle(tmp_path / "b", m.inference_segmentor(), cfg, classes, {"source": stats}, inference=m.inference_config())
    bundle = load_bundle(tmp_path / "b")
    assert type(bundle.segmentor).__name__ == "DualSegmentor"
    r = export_onnx(bundle, tmp_path / "dual.onnx")
    x = np.random.default_rng(1).normal(size=(2, 4, 128, 96)).astype(np.float32)
    assert np.abs(_ort_probs(r.path, x) - _torch_probs(bundle, x)).max() < 1e-4


def test_a_static_size_and_a_failed_export_leave_no_partial_file(nc_classes, nc_stats, tmp_path):
    bundle = small_conv_bundle(tmp_path / "job", nc_classes, nc_stats)
    r = export_onnx(bundle, tmp_path / "fixed.onnx", static_size=128, exporters=("torchscript",))
    shape = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    assert shape[1:] == [6, 128, 128] and not isinstance(shape[0], int)  # the batch stays free
    with pytest.raises(ExportError, match="multiple of 32"):
        export_onnx(bundle, tmp_path / "bad.onnx", static_size=100)
    with pytest.raises(ExportError, match="could not be exported"):
        export_onnx(bundle, tmp_path / "none.onnx", exporters=("no-such-exporter",))
    assert sorted(p.name for p in tmp_path.glob("*.onnx*")) == ["fixed.onnx"]


def test_the_onnxruntime_engine_keeps_the_window_model_contract(nc_classes, nc_stats, tmp_path):
    bundle = small_conv_bundle(tmp_path / "job", nc_classes, nc_stats)
    path = export_onnx(bundle, tmp_path / "m.onnx").path
    x = np.random.default_rng(2).normal(size=(3, 6, 50, 70)).astype(np.float32)  # padded to 64 x 96, cropped back
    for tta in (False, True):
        ours = OnnxWindowModel(path, threads=1, tta=tta)(x)
        ref = WindowModel(bundle.segmentor, device="cpu", tta=tta)(x)
        assert ours.shape == (3, 7, 50, 70) and np.abs(ours - ref).max() < 1e-4


def test_predict_on_onnxruntime_agrees_with_torch_on_the_nc_scene(nc_bands, nc_classes, nc_stats, tmp_path):
    bundle = small_conv_bundle(tmp_path / "job", nc_classes, nc_stats)
    assert not (bundle.path / ONNX).exists()  # the engine exports the network itself when the bundle has none
    opts = dict(window=128, overlap=32, batch_size=4, probabilities=True)
    a = predict_raster(bundle, nc_bands, tmp_path / "torch.tif", engine="torch", **opts)
    b = predict_raster(bundle, nc_bands, tmp_path / "onnx.tif", engine="onnxruntime", **opts)
    assert b.options["engine"] == "onnxruntime" and b.windows == a.windows
    assert (bundle.path / ONNX).is_file()  # exported once, into the bundle, for the next prediction
    with rasterio.open(tmp_path / "torch.tif") as ta, rasterio.open(tmp_path / "onnx.tif") as tb:
        x, y = ta.read(1), tb.read(1)
        assert tb.nodata == ta.nodata and np.array_equal(x == ta.nodata, y == tb.nodata)
    assert (x == y).mean() >= 0.999
    with rasterio.open(tmp_path / "torch_probs.tif") as pa, rasterio.open(tmp_path / "onnx_probs.tif") as pb:
        assert np.abs(pa.read().astype(int) - pb.read().astype(int)).max() <= 1


def test_the_onnxruntime_engine_refuses_what_it_cannot_do(nc_classes, nc_stats, tmp_path):
    from core.errors import ConfigError

    bundle = small_conv_bundle(tmp_path / "job", nc_classes, nc_stats)
    for bad in ({"device": "cuda"}, {"precision": "bf16"}, {"engine": "tensorrt"}):
        with pytest.raises(ConfigError):
            predict_raster(bundle, tmp_path / "none.tif", tmp_path / "o.tif", **{"engine": "onnxruntime", **bad})


def test_write_bundle_onnx_leaves_the_file_or_the_reason_in_the_bundle(nc_classes, tmp_path):
    small_conv_bundle(tmp_path / "job", nc_classes, BandStats(mean=[0.0] * 6, std=[1.0] * 6, count=1))
    bundle = tmp_path / "job" / "bundle"
    (bundle / "weights.pth").write_bytes(b"not weights")
    assert write_bundle_onnx(bundle) is None
    assert "weights" in (bundle / ONNX_FAILED).read_text() and not (bundle / ONNX).exists()
    small_conv_bundle(tmp_path / "job", nc_classes, BandStats(mean=[0.0] * 6, std=[1.0] * 6, count=1))
    (bundle / ONNX_FAILED).write_text("an earlier failure")
    r = write_bundle_onnx(bundle)
    assert r.path == bundle / ONNX and r.path.is_file() and not (bundle / ONNX_FAILED).exists()
