"""Feature-regression method on real NC windows: zero loss at identity, tolerance, masks, frozen parts, and
the student's features moving towards the teacher's on the NC / shifted-NC pair."""
from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from core.jobspec import DomainSpec
from core.raster.domain import Domain
from models.adaptation import build_method
from models.adaptation.feature_regression import PairedBatches, level_loss
from models.sampling.sampler import PairedSampler, WindowSampler
from models.config import resolve_config
from models.normalization import Normalization, Normalizer


def _fr(**overrides):
    # the tiny SegFormer fitted to NC's 6 bands and 7 classes; dropout off so passes repeat exactly
    ov = {"model.decode_head.dropout_ratio": 0.0, **overrides}
    cfg = resolve_config("segformer-tiny", method="feature-regression", overrides=ov, in_channels=6, num_classes=7)
    return build_method(cfg, total_iters=20)


@pytest.fixture(scope="module")
def nc_source(nc_bands, nc_data, nc_classes):
    spec = DomainSpec.model_validate({"scenes": [{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"])}],
                                      "region": {"columns": [0.0, 0.6]}})
    with Domain.open(spec, nc_classes) as dom:
        yield dom


@pytest.fixture(scope="module")
def nc_pair(nc_source, nc_bands, nc_classes, tmp_path_factory):
    """NC and the Benchmark A shifted copy (another sensor-like radiometry, same ground)."""
    from core.data.shift import build_shifted_target

    p = build_shifted_target(nc_bands, tmp_path_factory.mktemp("shift") / "t.tif", seed=0)
    spec = DomainSpec.model_validate({"scenes": [{"image": str(p)}], "region": {"columns": [0.0, 0.6]}})
    with Domain.open(spec, nc_classes) as tgt:
        yield nc_source, tgt


@pytest.mark.parametrize("tol", ["none", "shift", "pool"])
def test_loss_is_zero_when_target_is_source_and_student_is_teacher(nc_source, tol):
    m = _fr(**{"adaptation.tolerance": {"type": tol, "radius": 1}})
    m.set_teacher(m.teacher.state_dict())
    b = WindowSampler(nc_source, 64, Normalizer(nc_source.stats()), seed=0).sample(2)
    batch = {"source": {"img": b["img"], "valid": b["valid"]}, "target": {"img": b["img"].clone(), "valid": b["valid"]}}
    m.train()
    losses = m.losses(batch)
    assert float(losses["loss"].detach()) == pytest.approx(0.0, abs=1e-6)
    assert set(losses) == {"loss", "feat_l0", "feat_l1", "feat_l2", "feat_l3"}
    # and not vacuously: another target window gives a clearly positive loss
    other = WindowSampler(nc_source, 64, Normalizer(nc_source.stats()), seed=5).sample(2)["img"]
    batch["target"]["img"] = other
    assert float(m.losses(batch)["loss"].detach()) > 0.1


def test_shift_search_forgives_a_one_cell_misregistration_and_pooling_softens_it():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 8, 12, 12, generator=g)
    s = torch.roll(t, shifts=1, dims=-1)  # the student sees the ground one cell east
    valid = torch.ones(2, 48, 48, dtype=torch.bool)
    plain = level_loss(s, t, valid)
    shifted = level_loss(s, t, valid, tolerance="shift", radius=1)
    pooled = level_loss(s, t, valid, tolerance="pool", radius=1)
    assert float(plain) > 1.0 and float(shifted) < 1e-6
    assert 0.0 < float(pooled) < float(plain)


def test_nodata_cells_are_ignored():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(1, 4, 8, 8, generator=g)
    s = t.clone()
    s[..., :, 4:] += 5.0  # wrong only where the pixels are nodata
    valid = torch.ones(1, 32, 32, dtype=torch.bool)
    valid[..., 16:] = False
    assert float(level_loss(s, t, valid)) == pytest.approx(0.0, abs=1e-6)
    valid[..., 15] = False  # a cell only partly valid is dropped too (min_valid 0.99)
    s[..., :, 3] += 1.0
    assert float(level_loss(s, t, valid)) == pytest.approx(0.0, abs=1e-6)
    assert float(level_loss(s, t, valid, min_valid=0.5)) > 0.1


def test_student_features_move_towards_the_teachers_on_the_real_nc_pair(nc_pair):
    src, tgt = nc_pair
    torch.manual_seed(0)
    m = _fr(**{"adaptation.optim.lr": 1e-3})
    m.set_teacher(m.teacher.state_dict())  # a random teacher is still a fixed map to regress onto
    ps = PairedSampler(src, tgt, 48, Normalization({"source": src.stats(), "target": tgt.stats()}), seed=0)
    norm = Normalization({"source": src.stats(), "target": tgt.stats()})
    held_out = PairedBatches(PairedSampler(src, tgt, 48, norm, seed=123), 4).next(0)
    batches = PairedBatches(ps, 4)
    decoder = {k: v.clone() for k, v in m.student.decode_head.state_dict().items()}
    teacher = {k: v.clone() for k, v in m.teacher.state_dict().items()}

    def held_out_loss():
        m.eval()
        with torch.no_grad():
            return float(m.losses(held_out)["loss"])

    before = held_out_loss()
    m.train()
    for it in range(25):
        m.train_step(batches.next(it), it)
    after = held_out_loss()
    assert after < 0.8 * before, (before, after)
    # only the backbone trained: the reused decoder and the teacher are untouched
    for k, v in m.student.decode_head.state_dict().items():
        assert torch.equal(v, decoder[k]), k
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(v, teacher[k]), k
    assert m.inference_segmentor() is m.student


def test_state_dict_round_trip_continues_identically(nc_pair):
    src, tgt = nc_pair
    ps = PairedSampler(src, tgt, 32, Normalization({"source": src.stats(), "target": tgt.stats()}), seed=2)
    batch = PairedBatches(ps, 2).next(0)
    a = _fr()
    a.train_step(batch, 0)
    state = a.state_dict()
    b = _fr()
    b.load_state_dict(state)
    la, lb = a.train_step(batch, 1), b.train_step(batch, 1)
    assert la == lb


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="levels"):
        _fr(**{"adaptation.levels": [0, 7]})
    with pytest.raises(ConfigError, match="level_weights"):
        _fr(**{"adaptation.levels": [0, 1], "adaptation.level_weights": [1.0]})
    with pytest.raises(ConfigError, match="trainable"):
        _fr(**{"adaptation.trainable": ["encoder"]})
    m = _fr(**{"adaptation.levels": [3], "adaptation.trainable": ["backbone", "decode_head"]})
    assert m.levels == [3] and m.trainable == ["backbone", "decode_head"]
