"""ST-DASegNet's ``norm_eval`` option: batch norm frozen at its running statistics in students and teachers, so
training sees the features prediction sees (per-domain batch statistics would re-centre each target batch)."""
from __future__ import annotations

import pytest
import torch

from models.adaptation import build_method
from models.batchnorm_statistics import batchnorm_layers, reestimate_batchnorm
from models.config import resolve_config


def _lite0(**overrides):
    # EfficientNet-Lite0 has batch norm throughout; no pretrained weights needed for what is checked here
    ov = {"pretrained": None, "model.decode_head.dropout_ratio": 0.0, **overrides}
    return build_method(resolve_config("efficientnet-lite0", method="st-dasegnet", in_channels=3, num_classes=2,
                                       overrides=ov), total_iters=10)


def _running(m):
    return [layer.running_mean.clone() for part in ("students", "teacher_s", "teacher_t")
            for layer in batchnorm_layers(m.net[part])]


def test_frozen_batch_norm_keeps_its_statistics_and_trains_as_it_predicts(make_batch):
    torch.manual_seed(0)
    m = _lite0(**{"adaptation.norm_eval": True})
    layers = [layer for part in ("students", "teacher_s", "teacher_t") for layer in batchnorm_layers(m.net[part])]
    before, weights = _running(m), [p.clone() for p in m.net["students"].parameters()]
    batch = make_batch(bands=3, classes=2, b=2, crop=64)
    m.train_step(batch, 0)  # adapting from the first iteration: frozen before its forward pass
    assert layers and m.norm_eval_started and not any(layer.training for layer in layers)
    assert all(torch.equal(a, b) for a, b in zip(before, _running(m)))
    assert any(not torch.equal(a, b) for a, b in zip(weights, m.net["students"].parameters()))
    x = batch["target"]["img"]
    with torch.no_grad():
        training_mode = m.net["students"].predict_logits(x)
        m.eval()
        assert torch.allclose(m.net["students"].predict_logits(x), training_mode, atol=1e-5)
    m.train()
    assert not any(layer.training for layer in layers)  # train() keeps them frozen


def test_a_source_warmup_stage_trains_batch_norm_then_freezes_it(make_batch):
    torch.manual_seed(0)
    m = _lite0(**{"adaptation.norm_eval": True, "adaptation.source_warmup": 0.2})  # 2 of 10 iterations
    before = _running(m)
    m.train_step(make_batch(bands=3, classes=2, b=2, crop=64), 0)
    assert not m.norm_eval_started and any(not torch.equal(a, b) for a, b in zip(before, _running(m)))
    m.train_step(make_batch(bands=3, classes=2, b=2, crop=64, seed=1), 1)
    m.train_step(make_batch(bands=3, classes=2, b=2, crop=64, seed=2), 2)
    assert m.norm_eval_started
    settled = _running(m)
    m.train_step(make_batch(bands=3, classes=2, b=2, crop=64, seed=3), 3)
    assert all(torch.equal(a, b) for a, b in zip(settled, _running(m)))


def test_without_the_option_batch_statistics_train_and_move(make_batch):
    torch.manual_seed(0)
    m = _lite0()
    assert not m.joint_backbone_pass and not m.norm_eval_started
    assert all(layer.training for layer in batchnorm_layers(m.net["students"]))
    before = _running(m)
    m.train_step(make_batch(bands=3, classes=2, b=2, crop=64), 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, _running(m)))


# -- norm_eval: per-domain (models.domain_statistics) ------------------------------------------------------------
def _domain_batches(batch, n=3):
    return ([batch["source"]["img"]] * n, [batch["target"]["img"]] * n)


def _estimated(make_batch, **overrides):
    torch.manual_seed(0)
    m = _lite0(**{"adaptation.norm_eval": "per-domain", **overrides})
    batch = make_batch(bands=3, classes=2, b=2, crop=64)
    batch["source"]["img"] = batch["source"]["img"] * 3 + 2  # a shifted source: its statistics differ
    m.estimate_domain_statistics(*_domain_batches(batch))
    return m, batch


def test_per_domain_statistics_are_each_domains_own_and_the_target_s_stay_in_place(make_batch):
    m, batch = _estimated(make_batch)
    target_stats = _running(m)
    students = m.net["students"]
    with torch.no_grad():
        m.eval()
        on_target = students.predict_logits(batch["target"]["img"])
        with m.source_statistics():
            source_stats = _running(m)
            on_source = students.predict_logits(batch["source"]["img"])
        assert all(torch.equal(a, b) for a, b in zip(target_stats, _running(m)))  # swapped back
    assert any(not torch.allclose(a, b) for a, b in zip(source_stats, target_stats))
    # each set is what AdaBN estimates on that domain alone, the teachers' their decoders'
    for x, expected in ((batch["source"]["img"], source_stats), (batch["target"]["img"], target_stats)):
        alone = _lite0(**{"adaptation.norm_eval": "per-domain"})
        alone.net.load_state_dict(m.net.state_dict())
        reestimate_batchnorm(alone.net["students"], [x] * 3)
        assert torch.allclose(torch.cat(_running(alone)[:len(batchnorm_layers(students))]),
                              torch.cat(expected[:len(batchnorm_layers(students))]), atol=1e-5)
    def decoders():
        return [layer.running_mean.clone() for d in (students.decoder_s, students.decoder_t)
                for layer in batchnorm_layers(d)]

    n = len(batchnorm_layers(students))
    assert all(torch.equal(a, b) for a, b in zip(decoders(), target_stats[n:]))
    with m.source_statistics():
        assert all(torch.equal(a, b) for a, b in zip(decoders(), source_stats[n:]))
    # a model normalising the source with the target's statistics predicts it otherwise
    with torch.no_grad():
        assert not torch.allclose(students.predict_logits(batch["source"]["img"]), on_source, atol=1e-3)
    assert torch.isfinite(on_target).all()


def test_training_keeps_both_sets_and_normalises_each_domain_with_its_own(make_batch):
    m, batch = _estimated(make_batch)
    target_stats = _running(m)
    with m.source_statistics():
        source_stats = _running(m)
    weights = [p.clone() for p in m.net["students"].parameters()]
    out = m.train_step(batch, 0)
    assert m.norm_eval_started and all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert all(torch.equal(a, b) for a, b in zip(target_stats, _running(m)))
    with m.source_statistics():
        assert all(torch.equal(a, b) for a, b in zip(source_stats, _running(m)))
    assert any(not torch.equal(a, b) for a, b in zip(weights, m.net["students"].parameters()))
    # the source terms are the source batch through the source's statistics (eval: no drop-connect to differ by)
    m.eval()
    with torch.no_grad():
        with m.source_statistics():
            p_s = m.domain_pass(batch["source"]["img"])[4]
            with m.source_statistics():  # nested: still the source's
                assert torch.equal(m.domain_pass(batch["source"]["img"])[4], p_s)
        terms, _ = m.student_losses(batch)
    from models.losses import cross_entropy
    assert torch.allclose(terms["ce_src_s"], cross_entropy(p_s, batch["source"]["label"],
                                                           class_weight=m.class_weight_s), atol=1e-5)


def test_the_source_statistics_travel_in_checkpoints(make_batch):
    m, _ = _estimated(make_batch)
    with m.source_statistics():
        source_stats = _running(m)
    resumed = _lite0(**{"adaptation.norm_eval": "per-domain"})
    resumed.load_state_dict(m.state_dict())
    with resumed.source_statistics():
        assert all(torch.equal(a, b) for a, b in zip(source_stats, _running(resumed)))


def test_per_domain_statistics_are_refused_unestimated_after_a_warmup_or_misnamed(make_batch):
    from core.errors import ConfigError

    m = _lite0(**{"adaptation.norm_eval": "per-domain"})
    with pytest.raises(RuntimeError, match="before they were estimated"):
        m.train_step(make_batch(bands=3, classes=2, b=2, crop=64), 0)
    with pytest.raises(ConfigError, match="source warm-up"):
        _lite0(**{"adaptation.norm_eval": "per-domain", "adaptation.source_warmup": 0.2})
    with pytest.raises(ConfigError, match="norm_eval must be"):
        _lite0(**{"adaptation.norm_eval": "domains"})


def test_the_label_free_source_distribution_sees_the_source_through_its_own_statistics(make_batch):
    from models.label_free import label_free_signals

    m, batch = _estimated(make_batch)
    x = batch["source"]["img"][:1]
    counted = torch.ones(x.shape[-2:], dtype=torch.bool)

    def share_of_class_1():
        with torch.no_grad():
            return float((m.net["students"].predict_logits(x).argmax(dim=1) == 1).float().mean())

    m.eval()
    with m.source_statistics():
        own = share_of_class_1()
    assert abs(own - share_of_class_1()) > 0.01  # the two sets predict the source differently
    signals = label_free_signals(m, [(batch["target"]["img"][:1], counted)], [(x, counted)], class_ids=[0, 1])
    assert signals["class_distribution"]["source"]["1"] == pytest.approx(own, abs=1e-6)


def test_tracked_per_domain_statistics_follow_each_domains_own_batches(make_batch):
    # DSBN as Chang et al. train it: batch norm in training mode, each domain's batches moving that domain's set
    m, _ = _estimated(make_batch, **{"adaptation.track_domain_statistics": True})
    batch = make_batch(bands=3, classes=2, b=2, crop=64, seed=5)  # not the batch the sets were estimated on
    batch["source"]["img"] = batch["source"]["img"] * 3 + 2
    stem = batchnorm_layers(m.net["students"].backbone_s)[0]
    with m.source_statistics():
        source_set = stem.running_mean
    before = {"source": source_set.clone(), "target": stem.running_mean.clone()}
    seen = {}  # the stem's input mean per channel, by the set in place when the domain's batch reached it

    def record(layer, args):
        seen["source" if layer.running_mean is source_set else "target"] = args[0].detach().mean(dim=(0, 2, 3))

    hook = stem.register_forward_pre_hook(record)
    m.train_step(batch, 0)
    hook.remove()
    momentum = stem.momentum
    assert set(seen) == {"source", "target"}
    assert not torch.allclose(seen["source"], seen["target"], atol=1e-2)
    assert torch.allclose(stem.running_mean, (1 - momentum) * before["target"] + momentum * seen["target"], atol=1e-5)
    with m.source_statistics():
        assert torch.allclose(stem.running_mean, (1 - momentum) * before["source"] + momentum * seen["source"],
                              atol=1e-5)
    assert all(layer.training for layer in batchnorm_layers(m.net["students"]))


def test_tracking_needs_per_domain_statistics():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="track_domain_statistics needs adaptation.norm_eval 'per-domain'"):
        _lite0(**{"adaptation.track_domain_statistics": True})
