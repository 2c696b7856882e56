"""Window samplers on the real NC scene: valid windows only, labels aligned, exact resume, rare classes,
and paired crops that align NC with a copy of it warped to EPSG:4326 at another resolution."""
from __future__ import annotations


import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from core.jobspec import IGNORE_INDEX, DomainSpec
from core.raster.domain import Domain
from models.sampling.sampler import PairedSampler, WindowSampler
from models.normalization import Normalization, Normalizer

from tests.core.raster.helpers import warp_copy

torch.set_num_threads(1)


def test_windows_are_never_mostly_nodata_and_labels_line_up(source, nc_data):
    s = WindowSampler(source, 64, Normalizer(source.stats()), seed=0, min_valid=0.5)
    with rasterio.open(nc_data["strata"]) as ds:
        strata = ds.read(1)
    fracs = []
    for _ in range(25):
        b = s.sample(8)
        assert b["img"].shape == (8, 6, 64, 64) and b["img"].dtype == torch.float32
        assert b["label"].dtype == torch.int64 and b["valid"].dtype == torch.bool
        v = b["valid"]
        fracs += v.float().mean(dim=(1, 2)).tolist()
        assert (b["label"][~v] == IGNORE_INDEX).all() and (b["img"].permute(1, 0, 2, 3)[:, ~v] == 0).all()
        for k, (_, w) in enumerate(s.last_windows):
            assert w.col_off + w.width <= 293  # inside the western 60% (train region)
            r, c = int(w.row_off), int(w.col_off)
            truth = strata[r : r + 64, c : c + 64] - 1
            lab = b["label"][k].numpy()
            np.testing.assert_array_equal(lab[v[k].numpy()], truth[v[k].numpy()])
    fracs = np.array(fracs)
    assert fracs.min() >= 0.5
    assert fracs.min() < 0.95  # the border is reached: the check above is not vacuous
    # a valid-weighted check of the normalisation: pixels near zero mean, unit spread
    assert abs(float(b["img"][b["valid"].unsqueeze(1).expand_as(b["img"])].mean())) < 1.0


def test_stricter_min_valid_is_honoured(source):
    s = WindowSampler(source, 96, Normalizer(source.stats()), seed=1, min_valid=0.95)
    fr = torch.cat([s.sample(8)["valid"].float().mean(dim=(1, 2)) for _ in range(5)])
    assert fr.min() >= 0.95


def test_state_dict_resumes_exactly(source):
    a = WindowSampler(source, 48, Normalizer(source.stats()), seed=3)
    a.sample(4)
    state = a.state_dict()
    x = a.sample(4)
    b = WindowSampler(source, 48, Normalizer(source.stats()), seed=99)
    b.load_state_dict(state)
    y = b.sample(4)
    assert torch.equal(x["img"], y["img"]) and torch.equal(x["label"], y["label"])


def test_rare_class_bias_favours_rare_classes(source):
    def share(sampler, n=12):
        counts = np.zeros(7)
        for _ in range(n):
            lab = sampler.sample(8)["label"].numpy()
            counts += np.bincount(lab[lab != IGNORE_INDEX], minlength=7)[:7]
        return counts / counts.sum()

    uniform = share(WindowSampler(source, 64, Normalizer(source.stats()), seed=5))
    biased_sampler = WindowSampler(source, 64, Normalizer(source.stats()), seed=5, rare_class_bias=1.0)
    biased = share(biased_sampler)
    rare = int(np.argmin(biased_sampler.class_freq))  # sediment: 0.08% of the region
    assert biased[rare] > 3 * uniform[rare]
    assert biased[4] < uniform[4]  # forest, the most common class, loses share


def test_unlabelled_sampler_returns_ignore_labels(source):
    b = WindowSampler(source, 32, Normalizer(source.stats()), seed=0, labelled=False).sample(2)
    assert (b["label"] == IGNORE_INDEX).all()


@pytest.fixture(scope="module")
def warped_target(tmp_path_factory, nc_bands, nc_classes):
    # NC reprojected to lon/lat at 0.0004 deg (~36 x 44 m: another CRS and another GSD)
    p = warp_copy(nc_bands, tmp_path_factory.mktemp("warp") / "nc_4326.tif", "EPSG:4326", 0.0004)
    with Domain.open(DomainSpec.model_validate({"scenes": [{"image": str(p)}]}), nc_classes) as dom:
        yield dom


def _corr(a, b, v):
    return float(np.mean([np.corrcoef(a[i][v], b[i][v])[0, 1] for i in range(a.shape[0])]))


def test_paired_sampler_aligns_ground_across_crs_and_gsd(source, warped_target):
    norm = Normalization({"source": source.stats(), "target": warped_target.stats()})
    ps = PairedSampler(source, warped_target, 64, norm, seed=0)
    b = ps.sample(12)
    assert b["source"].shape == b["target"].shape == (12, 6, 64, 64) and b["label"].shape == (12, 64, 64)
    tscene = warped_target.items[0].scene
    for k, (_, w) in enumerate(ps.last_windows):
        v = b["valid"][k].numpy()
        assert v.mean() >= 0.5
        s, t = b["source"][k].numpy(), b["target"][k].numpy()
        aligned = _corr(s, t, v)
        # the same target read 3 px east of the true ground
        off = tscene.read(onto=source.items[0].grid.window(Window(w.col_off + 3, w.row_off, 64, 64)))
        vv = v & off.valid
        shifted = _corr(s, off.data, vv)
        assert aligned > 0.85, aligned
        assert shifted < aligned - 0.25, (aligned, shifted)


def test_paired_sampler_with_the_shifted_benchmark_target(tmp_path, source, nc_bands, nc_classes):
    from core.data.shift import build_shifted_target

    p = build_shifted_target(nc_bands, tmp_path / "t.tif", seed=0)
    spec = DomainSpec.model_validate({"scenes": [{"image": str(p)}], "region": {"columns": [0.0, 0.6]}})
    with Domain.open(spec, nc_classes) as tgt:
        ps = PairedSampler(source, tgt, 64, Normalization({"source": source.stats(), "target": tgt.stats()}), seed=0)
        b = ps.sample(4)
        state = ps.state_dict()
        x = ps.sample(2)
        ps.load_state_dict(state)
        y = ps.sample(2)
    assert torch.equal(x["target"], y["target"])
    for k in range(4):
        v = b["valid"][k].numpy()
        assert _corr(b["source"][k].numpy(), b["target"][k].numpy(), v) > 0.5


@pytest.fixture(scope="module")
def small_tile(tmp_path_factory, nc_bands):
    """A 96 x 96 px tile cut from the NC scene (about 1 % of its area), as its own GeoTIFF."""
    out = tmp_path_factory.mktemp("tile") / "tile.tif"
    with rasterio.open(nc_bands[0]) as first:
        win = Window(100, 100, 96, 96)
        profile = {**first.profile, "count": len(nc_bands), "width": 96, "height": 96,
                   "transform": first.window_transform(win)}
    with rasterio.open(out, "w", **profile) as dst:
        for i, p in enumerate(nc_bands, start=1):
            with rasterio.open(p) as ds:
                dst.write(ds.read(1, window=win), i)
    return out


@pytest.mark.parametrize("balance, tile_share", [("area", (0.0, 0.05)), ("scenes", (0.4, 0.6))])
def test_balance_shares_crops_by_area_or_equally_per_scene(nc_bands, small_tile, balance, tile_share):
    spec = DomainSpec.model_validate({"scenes": [{"bands": [str(p) for p in nc_bands]}, {"image": str(small_tile)}],
                                      "balance": balance})
    with Domain.open(spec, None, labels=False) as dom:
        s = WindowSampler(dom, 64, Normalizer(dom.stats()), seed=0, labelled=False)
        scenes = []
        for _ in range(25):
            s.sample(8)
            scenes += [i for i, _ in s.last_windows]
    share = scenes.count(1) / len(scenes)
    assert tile_share[0] <= share <= tile_share[1]


def test_balance_must_be_a_known_rule(nc_bands):
    with pytest.raises(ValueError, match="balance"):
        DomainSpec.model_validate({"scenes": [{"bands": [str(p) for p in nc_bands]}], "balance": "pixels"})
