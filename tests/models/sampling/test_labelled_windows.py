"""LabelledWindowSampler on the real NC scene labelled in one window only (a semi job's target): crops come
from the labelled part, their labels line up, scenes without labels are never drawn, and none labelled is
a clear error."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from core.errors import EmptyRegionError
from core.jobspec import IGNORE_INDEX, DomainSpec
from core.raster.domain import Domain
from core.raster.scene import Scene
from core.raster.vector_write import write_gpkg
from models.normalization import Normalizer
from models.sampling.sampler import LabelledWindowSampler, WindowSampler

torch.set_num_threads(1)
ROW, COL, SIDE = 200, 150, 64


@pytest.fixture(scope="module")
def one_window(nc_bands, tmp_path_factory):
    with Scene.open(nc_bands) as scene:
        t, crs = scene.grid.transform, scene.grid.crs
    ring = [t @ (c, r) for c, r in ((COL, ROW), (COL + SIDE, ROW), (COL + SIDE, ROW + SIDE), (COL, ROW + SIDE),
                                   (COL, ROW))]
    path = tmp_path_factory.mktemp("one") / "window.gpkg"
    write_gpkg(path, [({"type": "Polygon", "coordinates": [ring]}, {"rank": 1})], crs, layer="windows")
    return path


def _scene(nc_bands, nc_data, windows=None, labels=True) -> dict:
    s = {"bands": [str(p) for p in nc_bands]}
    if labels:
        s["labels"] = str(nc_data["strata"])
    if windows is not None:
        s["label_windows"] = str(windows)
    return s


def test_crops_come_from_the_labelled_window_with_their_labels(nc_bands, nc_data, nc_classes, one_window):
    spec = DomainSpec.model_validate({"scenes": [_scene(nc_bands, nc_data, one_window)],
                                      "region": {"columns": [0.0, 0.6]}})
    with rasterio.open(nc_data["strata"]) as ds:
        strata = ds.read(1)
    with Domain.open(spec, nc_classes) as dom:
        s = LabelledWindowSampler(dom, SIDE, Normalizer(dom.stats()), seed=0, min_labelled=0.5)
        for _ in range(5):
            b = s.sample(4)
            assert b["img"].shape == (4, 6, SIDE, SIDE)
            labelled = (b["label"] != IGNORE_INDEX).float().mean(dim=(1, 2))
            assert labelled.min() >= 0.5
            for k, (_, w) in enumerate(s.last_windows):
                r, c = int(w.row_off), int(w.col_off)
                # every crop overlaps the window by half its area at least; its labels are the strata there
                assert abs(r - ROW) < SIDE // 2 + 8 and abs(c - COL) < SIDE // 2 + 8
                lab = b["label"][k].numpy()
                rows, cols = np.nonzero(lab != IGNORE_INDEX)
                assert (r + rows >= ROW).all() and (r + rows < ROW + SIDE).all()
                assert (c + cols >= COL).all() and (c + cols < COL + SIDE).all()
                np.testing.assert_array_equal(lab[rows, cols], strata[r + rows, c + cols] - 1)
        # resumable like every sampler
        state = s.state_dict()
        a = s.sample(2)["img"]
        s.load_state_dict(state)
        assert torch.equal(s.sample(2)["img"], a)


def test_scenes_without_labels_are_never_drawn(nc_bands, nc_data, nc_classes, one_window):
    spec = DomainSpec.model_validate({"scenes": [_scene(nc_bands, nc_data, labels=False),
                                                 _scene(nc_bands, nc_data, one_window)]})
    with Domain.open(spec, nc_classes) as dom:
        s = LabelledWindowSampler(dom, SIDE, Normalizer(dom.stats()), seed=3)
        for _ in range(3):
            s.sample(4)
            assert {i for i, _ in s.last_windows} == {1}


def test_no_labelled_window_is_a_clear_error(nc_bands, nc_data, nc_classes, one_window):
    unlabelled = DomainSpec.model_validate({"scenes": [_scene(nc_bands, nc_data, labels=False)]})
    with Domain.open(unlabelled, nc_classes) as dom:
        with pytest.raises(EmptyRegionError, match="no scene of the domain has labels"):
            LabelledWindowSampler(dom, SIDE, Normalizer(dom.stats()), seed=0)
    # the only window lies outside the region (columns 60-100 %): nothing labelled to draw
    east = DomainSpec.model_validate({"scenes": [_scene(nc_bands, nc_data, one_window)],
                                      "region": {"columns": [0.6, 1.0]}})
    with Domain.open(east, nc_classes) as dom:
        with pytest.raises(EmptyRegionError, match="labelled pixels"):
            LabelledWindowSampler(dom, SIDE, Normalizer(dom.stats()), seed=0)


def test_a_training_sampler_draws_a_windowed_scene_inside_its_windows(nc_bands, nc_data, nc_classes, one_window):
    """A train job's labelled sampler over a fully labelled scene and one labelled in a window only (a plain
    fine-tuning on suggested windows): the windowed scene's crops lie over its window, so they carry labels;
    the fully labelled scene is drawn anywhere, as before."""
    spec = DomainSpec.model_validate({"scenes": [_scene(nc_bands, nc_data), _scene(nc_bands, nc_data, one_window)],
                                      "balance": "scenes"})
    with Domain.open(spec, nc_classes) as dom:
        s = WindowSampler(dom, SIDE, Normalizer(dom.stats()), seed=0, labelled=True)
        far = 0
        for _ in range(6):
            b = s.sample(4)
            for k, (scene, w) in enumerate(s.last_windows):
                r, c = int(w.row_off), int(w.col_off)
                if scene == 1:
                    assert abs(r - ROW) < SIDE // 2 + 8 and abs(c - COL) < SIDE // 2 + 8
                    assert (b["label"][k] != IGNORE_INDEX).float().mean() >= 0.4
                else:
                    far += abs(r - ROW) >= SIDE or abs(c - COL) >= SIDE
        assert far > 0
        assert {i for i, _ in s.last_windows} <= {0, 1}


def test_a_windowed_scene_with_windows_smaller_than_a_crop_is_still_drawn(nc_bands, nc_data, nc_classes,
                                                                          one_window):
    """One 64 px window, 128 px crops: no crop can be half labelled (a quarter at most). The scene is still
    drawn, over its window, with crops that hold at least half the labelled share the best crop reaches; before,
    it had no admissible crop and its labels went unused without a word."""
    spec = DomainSpec.model_validate({"scenes": [_scene(nc_bands, nc_data), _scene(nc_bands, nc_data, one_window)],
                                      "balance": "scenes"})
    crop = 2 * SIDE
    with Domain.open(spec, nc_classes) as dom:
        s = WindowSampler(dom, crop, Normalizer(dom.stats()), seed=0, labelled=True)
        full, windowed = s.index
        assert full.min_share == 0.5 and 0.2 < windowed.best <= 0.25 and windowed.min_share == 0.5 * windowed.best
        seen = 0
        for _ in range(4):
            b = s.sample(4)
            for k, (scene, w) in enumerate(s.last_windows):
                if scene == 1:
                    seen += 1
                    share = float((b["label"][k] != IGNORE_INDEX).float().mean())
                    assert share >= windowed.min_share
                    r, c = int(w.row_off), int(w.col_off)
                    assert r <= ROW + SIDE and r + crop >= ROW and c <= COL + SIDE and c + crop >= COL
        assert seen > 0


def test_a_semi_job_sampler_draws_windows_smaller_than_half_a_crop(nc_bands, nc_data, nc_classes, one_window):
    """A semi job's labelled target sampler follows the training sampler's rule: with one 64 px window and
    128 px crops (a quarter labelled at most) and the default min_labelled 0.5, its crops hold half the best
    crop's share, where it used to refuse the scene and ask for larger windows."""
    spec = DomainSpec.model_validate({"scenes": [_scene(nc_bands, nc_data, one_window)],
                                      "region": {"columns": [0.0, 0.6]}})
    crop = 2 * SIDE
    with Domain.open(spec, nc_classes) as dom:
        s = LabelledWindowSampler(dom, crop, Normalizer(dom.stats()), seed=0, min_labelled=0.5)
        (index,) = s.index
        assert 0.2 < index.best <= 0.25 and index.min_share == 0.5 * index.best
        b = s.sample(4)
        assert ((b["label"] != IGNORE_INDEX).float().mean(dim=(1, 2)) >= index.min_share).all()
        for _, w in s.last_windows:
            r, c = int(w.row_off), int(w.col_off)
            assert r <= ROW + SIDE and r + crop >= ROW and c <= COL + SIDE and c + crop >= COL
