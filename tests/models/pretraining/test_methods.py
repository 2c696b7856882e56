"""The pretraining wrappers: what each trains and leaves, the geometry of their pairs, SiameseIM's EMA, CroCo's
cross-view decoder, and that each learns on a fixed batch."""
from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from models.adaptation import build_method
from models.config import resolve_config
from models.pretrained import load_pretrained
from models.pretraining import PRETRAINING, build_pretraining
from models.pretraining.batches import domain_shares
from models.pretraining.croco import same_turn, sincos_2d
from models.pretraining.siameseim import ema_momentum, ema_update
from models.pretraining.simclr import region_pairs
from models.pretraining.views import GeometrySettings, identity_geometry, map_points, random_geometry, warp


def _method(name: str, bands: int = 4, iters: int = 20, **overrides):
    cfg = resolve_config("segformer-tiny", pretraining=name, overrides=overrides, in_channels=bands, num_classes=3)
    return build_pretraining(cfg, total_iters=iters)


def _batch(bands: int = 4, b: int = 4, crop: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    # smooth random windows (some structure to learn), a nodata strip
    img = torch.nn.functional.interpolate(torch.randn(b, bands, crop // 4, crop // 4, generator=g), size=(crop, crop),
                                          mode="bilinear", align_corners=False)
    valid = torch.ones(b, crop, crop, dtype=torch.bool)
    valid[:, :, :3] = False
    img = img * valid[:, None]
    other = img * 0.8 + 0.3 * valid[:, None]  # "the target": the same ground, another tone
    return {"image": {"img": img, "valid": valid}, "source": {"img": img, "valid": valid},
            "target": {"img": other, "valid": valid}}


def test_every_method_is_registered_with_its_config_block():
    assert set(PRETRAINING) == {"simclr", "siameseim", "croco"}
    for name in PRETRAINING:
        cfg = resolve_config("segformer-tiny", pretraining=name, in_channels=6)
        assert cfg["pretraining"]["type"] == name and "adaptation" not in cfg
    with pytest.raises(ConfigError) as e:
        resolve_config("segformer-tiny", pretraining="simclr", overrides={"pretraining.type": "croco"})
    assert "set 'method' instead" in str(e.value)
    with pytest.raises(ConfigError) as e:
        resolve_config("segformer-tiny", pretraining="simclr", overrides={"pretraining.mask_ratio": 0.5})
    assert "pretraining.mask_ratio" in str(e.value)


@pytest.mark.parametrize("name, overrides, decoder", [("simclr", {}, False),
                                                     ("simclr", {"pretraining.local": True}, True),
                                                     ("siameseim", {}, True), ("croco", {}, False)])
def test_the_checkpoint_holds_what_was_trained_and_a_train_job_loads_it(name, overrides, decoder, tmp_path):
    torch.manual_seed(0)
    m = _method(name, **overrides)
    m.train()
    m.train_step(_batch(), 0)
    state = m.pretrained_state()
    assert any(k.startswith("backbone.") for k in state)
    assert any(k.startswith("decode_head.") for k in state) == decoder
    assert not any(k.startswith("decode_head.conv_seg.") for k in state)  # a later job has its own classes
    # the heads of pretraining stay behind
    assert all(k.split(".")[0] in ("backbone", "decode_head") for k in state)
    # a source-only model (other class count) starts from it: every backbone tensor, the decoder's but its classifier
    so = build_method(resolve_config("segformer-tiny", in_channels=4, num_classes=5), total_iters=1)
    path = tmp_path / "pretrained.pth"
    torch.save({"state_dict": state}, path)
    report = load_pretrained(so, path)
    seg = so.inference_segmentor()
    for k, v in seg.backbone.state_dict().items():
        assert torch.equal(v, state[f"backbone.{k}"]), k
    if decoder:
        assert torch.equal(seg.decode_head.fusion_conv.conv.weight, state["decode_head.fusion_conv.conv.weight"])
    assert report["skipped"] == []


def test_local_contrast_pairs_the_same_ground_in_the_two_views():
    torch.manual_seed(3)
    b, size = 6, 32
    # a window whose pixels hold their own position: any view of it shows where on the ground it looks
    c = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    img = torch.stack([xx, yy]).expand(b, 2, size, size).clone()
    valid = torch.ones(b, size, size, dtype=torch.bool)
    s = GeometrySettings(scale=(0.4, 1.0))
    th1, th2 = random_geometry(b, s), random_geometry(b, s)
    v1, m1 = warp(img, valid, th1)
    v2, m2 = warp(img, valid, th2)
    f1, f2 = region_pairs(v1, v2, m1, m2, th1, th2, grid=4)
    assert f1.shape[0] > 0
    assert torch.allclose(f1, f2, atol=0.1)  # the same ground positions (to about a pixel: bilinear reads)
    # and not the same view positions: the views were cropped and turned differently
    p = map_points(torch.zeros(b, 1, 2), th1, th2)
    assert float(p.abs().max()) > 0.1


def test_simclr_losses_and_local_terms():
    torch.manual_seed(0)
    m = _method("simclr", **{"pretraining.local": True, "pretraining.local_grid": 3})
    m.train()
    out = m.train_step(_batch(b=3), 0)
    assert {"loss", "contrast", "local", "local_pairs"} <= set(out)
    assert out["loss"] == pytest.approx(out["contrast"] + out["local"], rel=1e-5)
    assert 0 < out["local_pairs"] <= 3 * 9


def test_ema_by_hand():
    assert ema_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert ema_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert ema_momentum(0.99, 100, 100) == pytest.approx(1.0)
    t, o = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        t.weight.fill_(1.0), o.weight.fill_(3.0)
    ema_update(t, o, 0.75)
    assert float(t.weight.detach()) == pytest.approx(1.5)


def test_siameseim_target_branch_follows_the_online_one_by_ema():
    torch.manual_seed(0)
    m = _method("siameseim", iters=10)
    m.train()
    enc, tgt = m.encoder, m.net["target_encoder"]
    before = {k: v.clone() for k, v in tgt.state_dict().items()}
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())  # starts as a copy
    assert all(not p.requires_grad for p in tgt.parameters())
    out = m.train_step(_batch(), 0)
    mom = out["ema"]
    assert mom == pytest.approx(ema_momentum(0.99, 0, 10))
    k = "backbone.layers.0.0.projection.weight"
    want = mom * before[k] + (1 - mom) * enc.state_dict()[k]
    assert torch.allclose(tgt.state_dict()[k], want, atol=1e-7)
    assert not torch.equal(tgt.state_dict()[k], enc.state_dict()[k])
    # the online view is masked: exactly mask_ratio of its patches are zero
    view, pix = m.masked(torch.ones(2, 4, 32, 32))
    assert float(pix.float().mean()) == pytest.approx(m.mask_ratio, abs=1 / 16)
    assert bool((view.transpose(0, 1)[:, pix] == 0).all()) and bool((view.transpose(0, 1)[:, ~pix] == 1).all())


def test_croco_views_stay_registered_and_the_decoder_reads_view_two():
    x = torch.arange(2 * 3 * 8 * 8.0).reshape(2, 3, 8, 8)
    k, flip = torch.tensor([1, 3]), torch.tensor([True, False])
    a, b = same_turn(x, k, flip), same_turn(x * 2 + 1, k, flip)
    assert torch.equal(b, a * 2 + 1)  # the same pixel of both views is still the same ground
    assert torch.equal(same_turn(x, torch.tensor([0, 0]), torch.tensor([False, False])), x)
    pos = sincos_2d(2, 3, 8)
    assert pos.shape == (6, 8) and torch.equal(pos[0], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
    torch.manual_seed(0)
    m = _method("croco")
    m.eval()
    batch = _batch(crop=32)
    enc = m.encoder
    masked = torch.zeros(4, 4, 4, dtype=torch.bool)
    masked[:, :2] = True
    with torch.no_grad():
        f1 = enc.extract(batch["source"]["img"])
        one = m.net["decoder"](f1, enc.extract(batch["target"]["img"]), masked)
        two = m.net["decoder"](f1, enc.extract(batch["target"]["img"].flip(-1)), masked)
    assert one.shape == (4, 16, 4, 64)
    assert not torch.allclose(one, two)  # the completion depends on the second view (cross-attention)


def test_croco_refuses_a_crop_that_is_not_a_multiple_of_its_patch():
    m = _method("croco", **{"pretraining.patch": 12})
    with pytest.raises(ConfigError) as e:
        m.losses(_batch(crop=32))
    assert e.value.field == "params.crop"


@pytest.mark.parametrize("name, overrides", [("simclr", {}), ("siameseim", {}), ("croco", {})])
def test_each_method_learns_on_a_fixed_batch(name, overrides):
    torch.manual_seed(0)
    m = _method(name, iters=40, **{"pretraining.lr_schedule.warmup_iters": 0, **overrides})
    m.train()
    batch = _batch(b=8, seed=1)
    losses = [m.train_step(batch, it)["loss"] for it in range(40)]
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first * 0.95, (first, last)


def test_batches_split_between_domains_go_round():
    assert domain_shares(8, 2, 0) == [4, 4]
    assert domain_shares(5, 2, 0) == [3, 2] and domain_shares(5, 2, 1) == [2, 3]
    assert domain_shares(3, 1, 7) == [3]
    assert sum(domain_shares(7, 3, 4)) == 7


def test_identity_views_of_simclr_make_its_pairs_at_equal_positions():
    b = 2
    th = identity_geometry(b)
    q = torch.randn(b, 5, 8, 8)
    valid = torch.ones(b, 32, 32, dtype=torch.bool)
    f1, f2 = region_pairs(q, q.clone(), valid, valid, th, th, grid=4)
    assert f1.shape == (b * 16, 5) and torch.allclose(f1, f2)
