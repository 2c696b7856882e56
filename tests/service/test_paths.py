"""Client paths: only under allowed roots or the caller's own job/dataset folders; symlinks followed."""
from __future__ import annotations

import os
import uuid

import pytest

from service.paths import PathPolicy


def test_roots_traversal_and_symlink_escape(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.tif").write_bytes(b"x")
    os.symlink(outside / "secret.tif", root / "link.tif")
    os.symlink(outside, root / "dirlink")
    (root / "sub" / "ok.tif").write_bytes(b"x")
    pol = PathPolicy([root])
    assert pol(root / "sub" / "ok.tif") == (root / "sub" / "ok.tif").resolve()
    assert pol(root / "not-yet-there.tif")  # existence is checked later, by the spec
    for bad, why in [
        ("relative/x.tif", "absolute"),
        (f"{root}/../outside/secret.tif", "'..'"),
        (str(outside / "secret.tif"), "outside"),
        ("/etc/passwd", "outside"),
        (str(root / "link.tif"), "outside"),
        (str(root / "dirlink" / "secret.tif"), "outside"),
        (f"{root}/a\x00b", "NUL"),
        (str(root) + "-sibling/x.tif", "outside"),  # a prefix is not a parent
    ]:
        with pytest.raises(ValueError, match=why):
            pol(bad)


def test_own_job_and_dataset_folders_only(tmp_path):
    data = tmp_path / "state"
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    pol = PathPolicy([], data_dir=data, owns=lambda kind, i: i == mine)
    assert pol(data / "jobs" / str(mine) / "output" / "bundle")
    assert pol(data / "datasets" / str(mine) / "a.tif")
    for bad in (data / "jobs" / str(theirs) / "output", data / "jobs", data / "geoadapt.db",
                data / "jobs" / "not-a-uuid" / "x"):
        with pytest.raises(ValueError):
            pol(bad)
