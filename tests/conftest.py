"""Shared fixtures: the real North Carolina Landsat-7 scene (fetched once into the data cache)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def nc_data():
    """{"b10".."b70", "strata": Path} of the NC set, fetched and verified (cached across runs)."""
    from core.data.fetch import fetch

    return fetch("nc-landsat")


@pytest.fixture(scope="session")
def nc_bands(nc_data):
    """The six NC band files in band order."""
    from core.data.nc import nc_band_paths

    return nc_band_paths(nc_data)


@pytest.fixture(scope="session")
def nc_classes():
    """The 7 strata classes as ClassSpec objects."""
    from core.data.nc import nc_class_specs

    return nc_class_specs()


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: two cores are shared with other work, and one thread also
    makes runs bit-reproducible."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
