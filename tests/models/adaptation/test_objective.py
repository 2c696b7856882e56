"""The ST-DASegNet student objective equals the weighted sum of its terms, each recomputed independently."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.adaptation import build_method
from models.discriminator import spatial_softmax


def _ce(logits, target, cw, w=None):
    """CE by the definition: sum over non-ignored pixels of w * cw[y] * (-log softmax) / their count."""
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    logp = logits.log_softmax(1)
    keep = target != 255
    y = target.clamp(max=logits.shape[1] - 1)
    nll = -logp.gather(1, y[:, None])[:, 0] * torch.tensor(cw)[y]
    if w is not None:
        nll = nll * w
    return (nll * keep).sum() / keep.sum()


def _bce(logits, value, size):
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, value))


def test_objective_is_the_weighted_sum_of_independent_terms(tiny, make_batch):
    torch.manual_seed(0)
    cfg = tiny("st-dasegnet", bands=4, classes=3, **{
        "model.decode_head.loss_decode.class_weight": [1.0, 1.25, 1.5],
        "adaptation.target_class_weight": [1.0, 2.0, 1.0],
        "adaptation.pseudo_class_weight": [1.01, 1.51, 2.01],
        "adaptation.pseudo_threshold": 0.34,  # a random-init teacher is unsure: make q non-zero
        "adaptation.pseudo_rare_threshold": 0.335})
    m = build_method(cfg, total_iters=10)
    batch = make_batch(bands=4, classes=3, b=2, crop=48)
    terms, _ = m.student_losses(batch)
    assert 0 < float(terms["pseudo_q"]) < 1

    st = m.net["students"]
    xs, ys, xt = batch["source"]["img"], batch["source"]["label"], batch["target"]["img"]
    vt = batch["target"]["valid"]
    with torch.no_grad():
        f_ss, f_st, f_ts, f_tt = st.backbone_s(xs), st.backbone_t(xs), st.backbone_s(xt), st.backbone_t(xt)
        g_ss, g_st = st.ddm(f_ss, f_st)
        g_ts, g_tt = st.ddm(f_ts, f_tt)
        t = (m.net["teacher_s"](g_ts) + m.net["teacher_t"](g_tt)) / 2
        prob = F.interpolate(t, size=xt.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
        conf, yhat = prob.max(1)
        yhat[~vt] = 255
        q = ((conf >= 0.34) & vt).sum() / vt.sum()
        cwp = torch.tensor([1.01, 1.51, 2.01])[yhat.clamp(max=2)]
        w = torch.where(conf >= 0.335, q * cwp, 0.5 * q) * vt
        size = xs.shape[-2:]
        ref = {
            "ce_src_s": _ce(st.decoder_s(g_ss), ys, [1.0, 1.25, 1.5]),
            "ce_src_t": _ce(st.decoder_t(g_st), ys, [1.0, 2.0, 1.0]),
            "ce_pseudo_s": _ce(st.decoder_s(g_ts), yhat, [1.0, 1.25, 1.5], w),
            "ce_pseudo_t": _ce(st.decoder_t(g_tt), yhat, [1.0, 2.0, 1.0], w),
            "adv_s": _bce(m.net["disc_src"](spatial_softmax(f_ts[-1])), 1.0, size),
            "adv_t": _bce(m.net["disc_tgt"](spatial_softmax(f_st[-1])), 1.0, size),
        }
    assert float(terms["pseudo_q"]) == pytest.approx(float(q))
    for k, v in ref.items():
        assert float(terms[k].detach()) == pytest.approx(float(v), rel=1e-5, abs=1e-6), k
    total = (ref["ce_src_s"] + ref["ce_src_t"] + 0.25 * (ref["ce_pseudo_s"] + ref["ce_pseudo_t"])
             + 0.005 * (ref["adv_s"] + ref["adv_t"]))
    assert float(terms["loss"].detach()) == pytest.approx(float(total), rel=1e-5)
    assert float(terms["ce_pseudo_s"]) > 0


def test_train_step_moves_students_and_discriminators_not_teachers_at_t0(tiny, make_batch):
    torch.manual_seed(0)
    m = build_method(tiny("st-dasegnet"), total_iters=10)
    snap = {k: [p.detach().clone() for p in m.net[k].parameters()] for k in m.net}
    out = m.train_step(make_batch(crop=32), 0)
    assert {"loss", "loss_disc", "ce_src_s", "adv_s", "pseudo_q"} <= set(out)
    moved = {k: any(not torch.equal(a, b) for a, b in zip(snap[k], m.net[k].parameters())) for k in m.net}
    assert moved["students"] and moved["disc_src"] and moved["disc_tgt"]
    assert not moved["teacher_s"] and not moved["teacher_t"]  # EMA starts at t = 1
    m.train_step(make_batch(crop=32, seed=1), 1)
    # at t = 1, alpha = 0.5: teacher = mean of its old weights and the student's after step 0
    # (checked on the decoder classifier, which the EMA covers)
    assert not torch.equal(snap["teacher_s"][0], next(m.net["teacher_s"].parameters()))


def test_both_backbones_start_identical_and_inference_is_the_ensemble(tiny, make_batch):
    torch.manual_seed(0)
    m = build_method(tiny("st-dasegnet"), total_iters=10)
    st = m.net["students"]
    for a, b in zip(st.backbone_s.parameters(), st.backbone_t.parameters()):
        assert torch.equal(a, b)
    x = make_batch(crop=32)["source"]["img"]
    st.eval()
    with torch.no_grad():
        g_s, g_t = st.ddm(st.backbone_s(x), st.backbone_t(x))
        ref = (st.decoder_s(g_s) + st.decoder_t(g_t)) / 2
        ref = F.interpolate(ref, size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(st.predict_logits(x), ref, atol=1e-6)


def test_source_only_loss_is_class_weighted_ce(tiny, make_batch):
    torch.manual_seed(0)
    m = build_method(tiny("source-only", **{"model.decode_head.loss_decode.class_weight": [0.5, 1.0, 3.0]}),
                     total_iters=5)
    batch = make_batch(crop=32, target=False)
    got = m.losses(batch)["loss"]
    seg = m.net["segmentor"]
    with torch.no_grad():
        ref = _ce(seg.forward_logits(batch["source"]["img"]), batch["source"]["label"], [0.5, 1.0, 3.0])
    assert float(got) == pytest.approx(float(ref), rel=1e-5)


def _blind_discriminators(m, logit: float) -> None:
    """A last layer of zero weights: the same logit everywhere, whatever the features."""
    for d in ("disc_src", "disc_tgt"):
        last = m.net[d].model[-1]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.constant_(last.bias, logit)


def test_disc_bce_is_the_mean_unweighted_discriminator_term(tiny, make_batch):
    torch.manual_seed(0)
    m = build_method(tiny("st-dasegnet", **{"adaptation.adv_weight": 0.02}), total_iters=10)
    _blind_discriminators(m, 0.0)  # no idea of the domain: every term is ln 2
    out = m.train_step(make_batch(crop=32), 0)
    assert out["disc_bce"] == pytest.approx(math.log(2), rel=1e-6)
    assert out["loss_disc"] == pytest.approx(0.02 * 4 * math.log(2), rel=1e-6)

    _blind_discriminators(m, 2.0)  # says "real" to everything: two terms softplus(-2), two softplus(2)
    out = m.train_step(make_batch(crop=32, seed=1), 1)
    want = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) / 2
    assert out["disc_bce"] == pytest.approx(want, rel=1e-6)
    assert out["loss_disc"] == pytest.approx(0.02 * 4 * want, rel=1e-6)
