"""Fixtures for the workers tests: Benchmark A's domains on the real NC scene."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench_domains(nc_data):
    """Benchmark A's domain specs: the NC source and its shifted copy as target (seed 0, cached)."""
    from core.data.demo import benchmark_a_domains, ensure_shifted_target, shifted_target_path

    shifted = ensure_shifted_target(nc_data, shifted_target_path(None, 0), 0)
    return benchmark_a_domains(nc_data, shifted)
