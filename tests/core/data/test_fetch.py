"""fetch: cached files verify by SHA-256; a corrupt cached file is not accepted."""
from __future__ import annotations

import shutil

import pytest

from core.data.fetch import DATASETS, cached, fetch, sha256_of
from core.errors import DataFetchError


def test_nc_files_verify(nc_data):
    assert set(nc_data) == {"b10", "b20", "b30", "b40", "b50", "b70", "strata"}
    for key, (member, digest) in DATASETS["nc-landsat"].files.items():
        assert sha256_of(nc_data[key]) == digest


def test_corrupt_cache_is_not_a_hit(tmp_path, nc_data):
    for p in nc_data.values():
        shutil.copy(p, tmp_path / p.name)
    assert cached("nc-landsat", tmp_path) is not None
    with open(tmp_path / "lsat7_2000_30.tif", "r+b") as f:
        f.seek(5000)
        f.write(b"\0\1\2\3")
    assert cached("nc-landsat", tmp_path) is None


def test_fetch_into_a_folder_uses_the_cache_when_it_verifies(tmp_path, nc_data):
    for p in nc_data.values():
        shutil.copy(p, tmp_path / p.name)
    got = fetch("nc-landsat", tmp_path)
    assert got["b10"] == tmp_path / "lsat7_2000_10.tif"


def test_unknown_dataset():
    with pytest.raises(DataFetchError, match="unknown dataset"):
        fetch("nope")
