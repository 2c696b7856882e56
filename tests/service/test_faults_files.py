"""A disk that fills up while a result is written: the JSON, COG and bundle writers go through a temporary
file (or folder) and a rename, so the write fails with the OS error, the previous result stays whole and
readable, and no temporary file is left. On a real full filesystem (a small tmpfs, when this machine lets
the tests mount one) and, portably, in a child process whose file-size limit (RLIMIT_FSIZE) is reached."""
from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from core.files import write_json
from core.raster.cog import class_cog_writer
from core.raster.scene import gdal_message
from benchmarks.security import CLASSES, write_class_cog
from tests.helpers import fill


def _hash_tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny_fs(tmp_path):
    """A 6 MB tmpfs mounted for the test (needs root/CAP_SYS_ADMIN; skipped with the reason otherwise)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); the RLIMIT_FSIZE test covers it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _tiny_bundle(folder: Path, seed: int) -> Path:
    import torch

    from core.raster.stats import BandStats
    from models.bundle import save_bundle
    from models.segmentor import build_segmentor

    net = dict(type="Segmentor",
               backbone=dict(type="ResNetV1c", depth=18, in_channels=3, stem_channels=8, base_channels=8, num_stages=4,
                             out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                             norm_cfg=dict(type="BN", requires_grad=True)),
               decode_head=dict(type="FCNHead", in_channels=64, in_index=3, channels=16, num_convs=1,
                                concat_input=False, num_classes=len(CLASSES), norm_cfg=dict(type="BN", requires_grad=True),
                                align_corners=False, loss_decode=dict(type="CrossEntropyLoss")))
    torch.manual_seed(seed)
    stats = {"source": BandStats(mean=[50.0] * 3, std=[20.0] * 3, count=1)}
    return save_bundle(folder, build_segmentor(net), {}, CLASSES, stats, {"seed": seed}, inference=net)


def test_full_filesystem_keeps_the_previous_json_cog_and_bundle(tiny_fs):
    out = tiny_fs / "job" / "output"
    write_json(out / "metrics.json", {"miou": 0.5})
    cog = write_class_cog(out / "predictions" / "scene.tif", size=512)
    bundle = _tiny_bundle(out / "bundle", seed=0)
    before = _hash_tree(out)
    with rasterio.open(cog) as ds:
        classes_before = ds.read(1)

    ballast = fill(tiny_fs)
    with pytest.raises(OSError) as e:
        write_json(out / "metrics.json", {"miou": 0.9, "pad": "x" * 200_000})
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(Exception) as e:  # GDAL reports ENOSPC through rasterio as a write error
        write_class_cog(cog, size=2048)
    assert "write" in gdal_message(e.value).lower(), gdal_message(e.value)
    with pytest.raises((OSError, RuntimeError)):  # torch.save's writer raises RuntimeError on ENOSPC
        _tiny_bundle(bundle, seed=1)
    assert _hash_tree(out) == before, "a failed write changed or left something in the job folder"
    with rasterio.open(cog) as ds:
        assert np.array_equal(ds.read(1), classes_before)
    from models.bundle import load_bundle

    assert load_bundle(bundle).metadata["provenance"]["seed"] == 0

    ballast.unlink()  # space again: the same writes go through
    write_json(out / "metrics.json", {"miou": 0.9})
    assert json.loads((out / "metrics.json").read_text()) == {"miou": 0.9}
    _tiny_bundle(bundle, seed=1)
    assert load_bundle(bundle).metadata["provenance"]["seed"] == 1
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG instead of a kill
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    out = Path(sys.argv[1])
    result = {}
    from core.files import write_json
    try:
        write_json(out / "metrics.json", {"pad": "x" * (4 * limit)})
        result["json"] = "written"
    except OSError as e:
        result["json"] = e.errno
    from benchmarks.security import write_class_cog
    try:
        write_class_cog(out / "predictions" / "scene.tif", size=1024)
        result["cog"] = "written"
    except Exception as e:
        result["cog"] = type(e).__name__ + ": " + str(e)[:200]
    print(json.dumps(result))
""")


def test_file_size_limit_in_a_child_keeps_the_previous_results(tmp_path):
    """Portable stand-in for a full disk: the same writers in a process that may not write files over 64 KB."""
    out = tmp_path / "output"
    write_json(out / "metrics.json", {"miou": 0.5})
    write_class_cog(out / "predictions" / "scene.tif", size=64)  # a few KB
    before = _hash_tree(out)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(out), str(64 * 1024)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["json"] == errno.EFBIG, result
    assert result["cog"] != "written", result
    assert _hash_tree(out) == before
    with rasterio.open(out / "predictions" / "scene.tif") as ds:
        assert ds.read(1).shape == (64, 64)


def test_cog_writer_aborted_midway_leaves_the_old_file(tmp_path):
    """An exception while windows are written (a cancelled or failing prediction) leaves the old COG."""
    from core.raster.grid import Grid
    from affine import Affine
    from rasterio.crs import CRS

    old = write_class_cog(tmp_path / "scene.tif", size=64)
    before = _hash_tree(tmp_path)  # the COG and its sidecar of class names
    grid = Grid(crs=CRS.from_epsg(32617), transform=Affine(10, 0, 600000, 0, -10, 4000000), width=128, height=128)
    with pytest.raises(RuntimeError):
        with class_cog_writer(old, grid, CLASSES) as w:
            w.write(np.ones((64, 64), np.uint8), Window(0, 0, 64, 64))
            raise RuntimeError("worker stopped " + uuid.uuid4().hex)
    assert _hash_tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif", "scene.tif.aux.xml"]


def test_a_failed_job_names_a_full_disk(tmp_path, tiny_fs):
    """The reason a job fails with: ENOSPC anywhere in the chain, or a bare write error where the job writes
    and no space is left (GDAL's "Write failed. See previous exception"), is called disk_full."""
    from workers.tasks import failure_reason

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("checkpoint write failed") from inner
    except RuntimeError as e:
        kind, msg = failure_reason(e, str(tmp_path))
    assert kind == "disk_full" and "no space left" in msg
    ballast = fill(tiny_fs)
    try:
        with pytest.raises(Exception) as e:
            write_class_cog(tiny_fs / "job" / "output" / "p.tif", size=1024)
        kind, msg = failure_reason(e.value, str(tiny_fs / "job" / "output"))
        assert kind == "disk_full" and "MB free" in msg and "previous exception" not in msg, msg
    finally:
        ballast.unlink()
    assert failure_reason(ValueError("a bug"), str(tmp_path)) == ("internal_error", "ValueError: a bug")
