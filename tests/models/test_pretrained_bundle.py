"""A model bundle as ``model.checkpoint``: a source-only bundle starts a model with its exact weights (folder,
job output folder or zip); an ST-DASegNet bundle gives its target student (backbone B_T, decoder D_T with the
DDM's extra input channels dropped); anything else is refused naming model.checkpoint."""
from __future__ import annotations

import shutil

import pytest
import torch

from core.errors import ConfigError
from core.jobspec import ClassSpec
from core.raster.stats import BandStats
from models.adaptation import build_method
from models.bundle import save_bundle
from models.pretrained import load_pretrained

CLASSES = [ClassSpec(id=1, name="a", color="#ff0000"), ClassSpec(id=2, name="b", color="#00ff00"),
           ClassSpec(id=3, name="c", color="#0000ff")]


def _bundle(method, cfg, folder):
    stats = {"source": BandStats(mean=[0.0] * 4, std=[1.0] * 4, count=10)}
    return save_bundle(folder, method.inference_segmentor(), cfg, CLASSES, stats, {}, {},
                       inference=method.inference_config(), method=method.name)


def test_a_source_only_bundle_starts_a_semi_model_with_its_weights(tiny, tmp_path):
    torch.manual_seed(0)
    so = build_method(tiny("source-only", bands=4, classes=3), total_iters=1)
    folder = _bundle(so, tiny("source-only", bands=4, classes=3), tmp_path / "job" / "bundle")
    zipped = shutil.make_archive(str(tmp_path / "zipped"), "zip", folder)
    for start in (folder, tmp_path / "job", zipped):
        torch.manual_seed(1)
        semi = build_method(tiny("semi", bands=4, classes=3), total_iters=1)
        report = load_pretrained(semi, start)
        assert report["missing"] == 0 and not report["skipped"] and not report["narrowed"]
        mine, theirs = semi.segmentor.state_dict(), so.inference_segmentor().state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), start


def test_an_st_dasegnet_bundle_gives_its_target_student(tiny, tmp_path):
    torch.manual_seed(0)
    cfg = tiny("st-dasegnet", bands=4, classes=3)
    st = build_method(cfg, total_iters=1)
    folder = _bundle(st, cfg, tmp_path / "st")
    semi = build_method(tiny("semi", bands=4, classes=3), total_iters=1)
    report = load_pretrained(semi, folder)
    dual = st.inference_segmentor()
    assert report["narrowed"], report  # the decoder's deepest input lost the DDM's channels
    for k, v in dual.backbone_t.state_dict().items():
        assert torch.equal(semi.segmentor.backbone.state_dict()[k], v), k
    head = semi.segmentor.decode_head.state_dict()
    for k, v in dual.decoder_t.state_dict().items():
        if k in report["narrowed"]:
            assert torch.equal(head[k], v[:, : head[k].shape[1]]) and v.shape[1] > head[k].shape[1]
        else:
            assert torch.equal(head[k], v), k


def test_a_folder_that_is_no_bundle_is_refused(tiny, tmp_path):
    semi = build_method(tiny("semi", bands=4, classes=3), total_iters=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as e:
        load_pretrained(semi, tmp_path / "empty")
    assert e.value.field == "model.checkpoint" and "no model bundle" in e.value.message
