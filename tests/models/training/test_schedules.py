"""Poly schedule with linear warm-up (mmcv-1.x semantics) and parameter groups."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.training.schedules import PolySchedule, build_optimizer, param_groups


def test_poly_with_warmup_values():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    s = PolySchedule(opt, 100, power=1.0, warmup_iters=10, warmup_ratio=1e-6)
    s.step(0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 1e-6)
    s.step(5)  # poly 0.95, warm-up 1 - 0.5 * (1 - 1e-6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.95 * (1 - 0.5 * (1 - 1e-6)))
    s.step(10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9)
    s.step(100)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)


def test_poly_power_and_floor():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    s = PolySchedule(opt, 1000, power=0.9, min_lr=1e-5)
    s.step(500)
    assert opt.param_groups[0]["lr"] == pytest.approx((1e-3 - 1e-5) * 0.5 ** 0.9 + 1e-5)
    s.step(1000)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_groups_no_decay_on_norms_and_keys_and_lr_mult():
    enc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LayerNorm(4))
    dec = nn.Sequential(nn.Conv2d(4, 2, 1))
    dec.pos_block = nn.Linear(2, 2)
    groups = param_groups({"enc": enc, "dec": dec}, lr=1.0, weight_decay=0.01, lr_mult={"dec": 2.0},
                          no_decay_keys=("pos_block",), norm_decay=False)
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_param[id(enc[0].weight)] == (1.0, 0.01)
    assert by_param[id(enc[1].weight)] == (1.0, 0.0) and by_param[id(enc[2].bias)] == (1.0, 0.0)
    assert by_param[id(dec[0].weight)] == (2.0, 0.01)
    assert by_param[id(dec.pos_block.weight)] == (2.0, 0.0)
    opt = build_optimizer({"enc": enc}, {"type": "AdamW", "lr": 6e-5, "betas": [0.9, 0.999], "weight_decay": 0.01})
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
