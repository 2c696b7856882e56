"""ST-DASegNet's ``norm_eval`` option: batch norm frozen at its running statistics in students and teachers, so
training sees the features prediction sees (per-domain batch statistics would re-centre each target batch)."""
from __future__ import annotations

import torch

from models.adaptation import build_method
from models.batchnorm_statistics import batchnorm_layers
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
    assert layers and m.norm_frozen and not any(layer.training for layer in layers)
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
    assert not m.norm_frozen and any(not torch.equal(a, b) for a, b in zip(before, _running(m)))
    m.train_step(make_batch(bands=3, classes=2, b=2, crop=64, seed=1), 1)
    m.train_step(make_batch(bands=3, classes=2, b=2, crop=64, seed=2), 2)
    assert m.norm_frozen
    settled = _running(m)
    m.train_step(make_batch(bands=3, classes=2, b=2, crop=64, seed=3), 3)
    assert all(torch.equal(a, b) for a, b in zip(settled, _running(m)))


def test_without_the_option_batch_statistics_train_and_move(make_batch):
    torch.manual_seed(0)
    m = _lite0()
    assert not m.joint_backbone_pass and not m.norm_frozen
    assert all(layer.training for layer in batchnorm_layers(m.net["students"]))
    before = _running(m)
    m.train_step(make_batch(bands=3, classes=2, b=2, crop=64), 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, _running(m)))
