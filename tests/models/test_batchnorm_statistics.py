"""AdaBN: a model's BatchNorm statistics re-estimated on other images, everything else kept."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.batchnorm_statistics import reestimate_batchnorm


def _model() -> nn.Module:
    torch.manual_seed(0)
    # dropout before the BatchNorm layer: were it left on, the statistics would differ from the formula's
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Dropout(0.5), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2, momentum=0.3)).eval()


def _batches(n=5, shift=3.0):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, 3, 8, 8, generator=g) * 2 + shift for _ in range(n)]


def test_statistics_are_the_average_over_the_batches_of_each_batchs_mean_and_unbiased_variance():
    model = _model()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = _batches()

    assert reestimate_batchnorm(model, batches) == 2

    conv = model[0]
    with torch.no_grad():
        feats = [conv(x) for x in batches]  # the first BatchNorm's inputs (dropout is off)
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    bn = model[2]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, atol=1e-4)
    assert int(bn.num_batches_tracked) == len(batches)
    # the weights, biases and affine parameters are untouched
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_the_model_is_left_as_it_was_found_in_every_other_respect():
    model = _model()
    model[4].train()  # a mixed state, to be restored as it was
    reestimate_batchnorm(model, _batches(2))
    assert [m.training for m in model] == [False, False, False, False, True, False]
    assert model[2].momentum == 0.1 and model[5].momentum == 0.3


def test_after_adabn_the_new_images_leave_the_first_batchnorm_centred_on_its_bias():
    # the point of it: after AdaBN, the first BatchNorm's outputs over the new domain are centred
    model = _model()
    batches = _batches(shift=3.0)
    reestimate_batchnorm(model, batches)
    with torch.no_grad():
        out = torch.cat([model[2](model[0](x)) for x in batches])
    bn = model[2]
    assert torch.allclose(out.mean(dim=(0, 2, 3)), bn.bias, atol=1e-4)


def test_no_batches_is_refused_and_the_old_statistics_are_kept():
    model = _model()
    reestimate_batchnorm(model, _batches(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no batches"):
        reestimate_batchnorm(model, iter([]))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_model_without_batchnorm_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.LayerNorm([2, 8, 8]))
    assert reestimate_batchnorm(model, _batches(1)) == 0
