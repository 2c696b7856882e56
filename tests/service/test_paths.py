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


def test_the_state_folder_is_refused_whatever_the_roots_say(tmp_path):
    """Roots over the data folder (and over a SQLite store kept elsewhere) open neither: only the caller's
    own job and dataset folders in it may be named."""
    data, elsewhere = tmp_path / "state", tmp_path / "db"
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    pol = PathPolicy([tmp_path], data_dir=data, owns=lambda kind, i: i == mine,
                     state_files=[elsewhere / "store.db", elsewhere / "store.db-wal"])
    assert pol(data / "jobs" / str(mine) / "output" / "bundle")
    assert pol(data / "datasets" / str(mine) / "a.tif")
    assert pol(tmp_path / "inputs" / "scene.tif")
    assert pol(elsewhere / "notes.tif")  # beside the store's files, not one of them
    for bad in (data / "jobs" / str(theirs) / "output" / "predictions" / "map.tif",
                data / "datasets" / str(theirs) / "a.tif", data / "geoadapt.db", data / "broker.db", data / "jobs",
                data / "tiles" / "models" / str(mine), data, elsewhere / "store.db", elsewhere / "store.db-wal"):
        with pytest.raises(ValueError, match="state folder"):
            pol(bad)
    os.symlink(data / "jobs" / str(theirs), tmp_path / "inputs-link")
    with pytest.raises(ValueError, match="state folder"):
        pol(tmp_path / "inputs-link" / "output" / "map.tif")
