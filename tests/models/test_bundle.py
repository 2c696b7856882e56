"""Bundle save/load round trip: same predictions, class ids (not train ids), nodata, zip and output-dir paths."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from core.errors import BandCountMismatchError, BundleError
from core.jobspec import ClassSpec
from core.raster.stats import BandStats
from models.adaptation import build_method
from models.bundle import load_bundle, save_bundle


def _stats(bands, shift=0.0):
    return BandStats(mean=[10.0 + shift] * bands, std=[2.0] * bands, count=100)


@pytest.mark.parametrize("method", ["source-only", "st-dasegnet"])
def test_round_trip_predicts_the_same_and_maps_class_ids(tiny, method, tmp_path):
    torch.manual_seed(0)
    classes = [ClassSpec(id=0, name="background", color="#000000"), ClassSpec(id=255, name="building", color="#ff0000")]
    cfg = tiny(method, bands=3, classes=2)
    m = build_method(cfg, total_iters=1)
    stats = {"source": _stats(3), "target": _stats(3, 5.0)}
    out = save_bundle(tmp_path / "job" / "bundle", m.inference_segmentor(), cfg, classes, stats,
                      {"job": "t1"}, {"miou": 0.5}, inference=m.inference_config(), method=method)
    assert (out / "bundle.json").exists() and (out / "weights.pth").exists()

    b = load_bundle(tmp_path / "job")  # a job output folder is accepted too
    assert b.method == method and b.band_count == 3 and b.class_ids == [0, 255]
    assert b.class_dtype == np.uint16 and b.class_nodata == 65535  # 255 is a class here
    rng = np.random.default_rng(0)
    raw = rng.normal(12, 3, size=(3, 40, 36)).astype(np.float32)
    valid = np.ones((40, 36), bool)
    valid[:5, :5] = False
    ids, probs = b.predict(raw, valid, stats="source")
    assert ids.shape == (40, 36) and probs.shape == (2, 40, 36) and probs.dtype == np.float32
    assert set(np.unique(ids[valid])) <= {0, 255} and (ids[~valid] == 65535).all()
    assert np.allclose(probs[:, valid].sum(0), 1, atol=1e-5) and (probs[:, ~valid] == 0).all()

    # the same numbers straight from the trained network
    seg = m.inference_segmentor().eval()
    x = torch.from_numpy((raw - 10.0) / 2.0)
    x[:, ~torch.from_numpy(valid)] = 0
    with torch.no_grad():
        pad = torch.nn.functional.pad(x[None], (0, 28, 0, 24), mode="reflect")  # to 64 x 64
        ref = seg.predict_logits(pad)[..., :40, :36].softmax(1)[0].numpy()
    assert np.allclose(probs[:, valid], ref[:, valid], atol=1e-5)
    assert b.normalization.stats["target"].mean[0] == 15.0 and b.normalization.default == "target"
    assert b.metadata["provenance"]["job"] == "t1" and b.metrics["miou"] == 0.5

    zpath = shutil.make_archive(str(tmp_path / "bundle"), "zip", out)
    bz = load_bundle(zpath)
    assert np.array_equal(bz.predict(raw, valid, stats="source")[0], ids)

    with pytest.raises(BandCountMismatchError):
        b.predict(raw[:2])
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "nowhere")


def test_small_class_ids_use_uint8(tiny, tmp_path):
    classes = [ClassSpec(id=i + 1, name=f"c{i}", color="#00ff00") for i in range(3)]
    cfg = tiny("source-only", bands=2, classes=3)
    m = build_method(cfg, total_iters=1)
    save_bundle(tmp_path / "b", m.inference_segmentor(), cfg, classes, {"source": _stats(2)},
                inference=m.inference_config())
    b = load_bundle(tmp_path / "b")
    ids, _ = b.predict(np.zeros((2, 20, 20), np.float32))
    assert ids.dtype == np.uint8 and set(np.unique(ids)) <= {1, 2, 3} and b.normalization.default == "source"
    with pytest.raises(BundleError):
        b.predict(np.zeros((2, 20, 20), np.float32), stats="target")


def test_manifest_counts_the_batchnorm_layers_adabn_would_reestimate(tiny, tmp_path):
    classes = [ClassSpec(id=1, name="a", color="#00ff00"), ClassSpec(id=2, name="b", color="#0000ff")]
    counts = {}
    for name, overrides in (("bn", {}), ("gn", {"model.decode_head.norm_cfg": {"type": "GN", "num_groups": 8}})):
        cfg = tiny("source-only", bands=2, classes=2, **overrides)
        m = build_method(cfg, total_iters=1)
        save_bundle(tmp_path / name, m.inference_segmentor(), cfg, classes, {"source": _stats(2)},
                    inference=m.inference_config())
        counts[name] = load_bundle(tmp_path / name).metadata["batchnorm_layers"]
    # segformer-tiny: the decoder's four projections and its fusion conv; a GroupNorm decoder has none
    assert counts == {"bn": 5, "gn": 0}
