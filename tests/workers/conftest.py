"""Fixtures for the workers tests: Benchmark A's domains on the real NC scene."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench_domains(nc_data):
    """Benchmark A's domain specs: the NC source and its shifted copy as target (seed 0, cached)."""
    from core.data.demo import benchmark_a_domains, ensure_shifted_target, shifted_target_path

    shifted = ensure_shifted_target(nc_data, shifted_target_path(None, 0), 0)
    return benchmark_a_domains(nc_data, shifted)


def _check_label_free(signals: dict, class_ids: list[int], *, agreement_of: str | None) -> None:
    """Every label-free signal of a job present and within its range (models.label_free)."""
    import math

    k = len(class_ids)
    assert signals["pixels"]["target"] > 0 and signals["pixels"]["source"] > 0
    assert 1 / k - 1e-9 <= signals["mean_max_prob"] <= 1
    assert 0 <= signals["entropy"] <= math.log(k) + 1e-9
    assert signals["entropy_normalised"] == pytest.approx(signals["entropy"] / math.log(k))
    assert 0 <= signals["pseudo_coverage"] <= signals["pseudo_coverage_0.9"] <= 1
    for side in ("target", "source"):
        dist = signals["class_distribution"][side]
        assert set(dist) == {str(c) for c in class_ids} and sum(dist.values()) == pytest.approx(1.0)
    assert 0 <= signals["class_tv"] <= 1
    assert 0 <= signals["expected_miou"] <= 1
    if agreement_of is None:
        assert "agreement" not in signals
    else:
        assert signals["agreement_of"] == agreement_of and 0 <= signals["agreement"] <= 1


@pytest.fixture
def check_label_free():
    """check_label_free(signals, class_ids, agreement_of=...): asserts every signal is there and in range."""
    return _check_label_free
