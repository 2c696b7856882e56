"""``adaptation.average_weights``: a training job delivers the equal-weight average of its network over the last
fraction of the budget (parameters and batch-norm statistics): ST-DASegNet's students, a source-only model alike. The
average goes through a stop and resume; values that are not a fraction of the budget are refused."""
from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from models.adaptation import build_method
from models.weight_average import averaging_start

ITERS = 4


def _method(tiny, fraction, method="st-dasegnet"):
    torch.manual_seed(0)
    return build_method(tiny(method, bands=4, classes=3, **{"adaptation.average_weights": fraction}),
                        total_iters=ITERS)


def _train(method, make_batch, iterations, states=None):
    for i in iterations:
        method.train_step(make_batch(bands=4, classes=3, b=2, crop=32, seed=i), i)
        if states is not None:
            states.append({k: v.clone() for k, v in method.inference_segmentor().state_dict().items()})


@pytest.mark.parametrize("method", ["st-dasegnet", "source-only"])
def test_the_delivered_network_is_the_mean_of_its_last_states(tiny, make_batch, method):
    plain, states = _method(tiny, 0.0, method), []
    _train(plain, make_batch, range(ITERS), states)
    averaged = _method(tiny, 0.5, method)
    _train(averaged, make_batch, range(ITERS))

    delivered = averaged.inference_segmentor().state_dict()
    floating = [k for k, v in delivered.items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floating)  # the batch-norm statistics are averaged too
    moved = 0
    for k in floating:
        expected = (states[2][k] + states[3][k]) / 2
        assert torch.allclose(delivered[k], expected, atol=1e-6), k
        moved += not torch.allclose(states[3][k], expected, atol=1e-6)
    assert moved > len(floating) // 2  # the last state is not what is delivered
    assert averaged.training_record()["weight_average"] == {"from_iteration": 2, "states": 2}
    assert "weight_average" not in plain.training_record()


def test_a_stopped_job_resumes_to_the_same_average(tiny, make_batch):
    whole = _method(tiny, 0.75)
    _train(whole, make_batch, range(ITERS))
    first = _method(tiny, 0.75)
    _train(first, make_batch, range(2))  # iteration 1 is already in the average
    saved = first.state_dict()
    assert any(k.startswith("weight_average.") for k in saved["net"])
    resumed = _method(tiny, 0.75)
    resumed.load_state_dict(saved)
    _train(resumed, make_batch, range(2, ITERS))
    mine, theirs = resumed.inference_segmentor().state_dict(), whole.inference_segmentor().state_dict()
    assert all(torch.allclose(v, theirs[k], atol=1e-6) for k, v in mine.items())


@pytest.mark.parametrize("fraction, start", [(None, None), (0, None), (0.5, 50), (1, 0), (0.001, 99)])
def test_the_average_starts_at_the_last_fraction_of_the_budget(fraction, start):
    assert averaging_start(fraction, 100) == start


@pytest.mark.parametrize("fraction", [1.5, -0.1, True, "half"])
def test_a_value_that_is_not_a_fraction_of_the_budget_is_refused(tiny, fraction):
    with pytest.raises(ConfigError, match="average_weights must be the fraction of the budget"):
        _method(tiny, fraction)
