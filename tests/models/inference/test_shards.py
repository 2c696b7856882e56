"""A prediction in shards (models.inference.shards) against the same prediction in one piece (predict_raster):
a real convolutional network whose receptive field spans windows, seams blended across every shard border,
nodata (a whole window row of it, skipped), an AOI, each blend mode; class ids, probabilities, overviews and
metadata equal, pixel for pixel, whatever order the shards run in."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from core.jobspec import ClassSpec
from core.raster.prediction_shards import edge_path, part_path, seams
from core.raster.scene import Scene
from core.raster.stats import compute_stats
from models.inference import PredictionCancelled, predict_raster
from models.inference.shards import ShardManifest, assemble_shards, plan_shards, predict_shard, shard_done
from tests.helpers import small_conv_bundle

CLASSES = [ClassSpec(id=i, name=f"class{i}", color=c) for i, c in ((1, "#ff0000"), (3, "#00ff00"), (7, "#0000ff"))]
OPTS = dict(window=64, overlap=24, batch_size=3, blocksize=128, probabilities=True, streams=1, threads=1)


@pytest.fixture(scope="module")
def raster(tmp_path_factory, nc_bands):
    """A 6-band 330 x 410 float raster cut from the real NC scene; rows 120-229 all nodata (a window row with
    nothing to predict), and a nodata notch at the right edge."""
    folder = tmp_path_factory.mktemp("shards")
    with Scene.open(nc_bands) as s:
        data = s.read().data[:, :330, :410].astype("float32")
    data[:, 120:230, :] = -9999
    data[:, 40:90, 380:] = -9999
    path = folder / "scene.tif"
    profile = dict(driver="GTiff", width=410, height=330, count=6, dtype="float32", nodata=-9999,
                   crs="EPSG:32617", transform=Affine(30, 0, 600000, 0, -30, 4000000), tiled=True,
                   blockxsize=128, blockysize=128)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    with Scene.open(path) as s:
        stats = compute_stats([s])
    return path, small_conv_bundle(folder, CLASSES, stats)


def _same_rasters(a, b) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.profile == y.profile and x.tags() == y.tags() and x.descriptions == y.descriptions
        assert np.array_equal(x.read(), y.read())
        assert x.overviews(1) == y.overviews(1) and x.overviews(1)  # the COG's overviews, built alike
        for f in x.overviews(1):
            shape = (x.count, -(-x.height // f), -(-x.width // f))
            assert np.array_equal(x.read(out_shape=shape), y.read(out_shape=shape))
        if x.count == 1:
            assert x.colormap(1) == y.colormap(1)


@pytest.mark.parametrize("blend", ["hann", "average", "none"])
def test_three_shards_equal_one_piece_pixel_for_pixel(raster, tmp_path, blend):
    path, bundle = raster
    ref = predict_raster(bundle, path, tmp_path / "one.tif", blend=blend, **OPTS)
    manifest = plan_shards(bundle, path, 3, blend=blend, **OPTS)
    shards = manifest.shards
    assert len(shards) == 3 and shards[0].rows[0] == 0 and shards[-1].rows[1] == 330
    # every window row runs in one shard; the rows its neighbour's windows also reach form a seam between them
    assert all(a.window_rows[1] == b.window_rows[0] for a, b in zip(shards, shards[1:]))
    borders = seams(manifest.plan(), shards)
    assert all(seam.rows == (a.rows[1], b.rows[0]) and seam.rows[1] - seam.rows[0] >= OPTS["overlap"]
               for seam, a, b in zip(borders, shards, shards[1:]))
    folder = tmp_path / "parts"
    manifest = ShardManifest.from_dict(manifest.to_dict())  # as other processes read it
    results = [predict_shard(bundle, manifest, i, folder).to_dict() for i in (2, 0, 1)]  # any order
    assert all(r["published"] for r in results)
    out = assemble_shards(bundle, manifest, folder, tmp_path / "sharded.tif", results=results)
    _same_rasters(tmp_path / "one.tif", tmp_path / "sharded.tif")
    _same_rasters(tmp_path / "one_probs.tif", tmp_path / "sharded_probs.tif")
    assert out.valid_pixels == ref.valid_pixels and out.pixels == ref.pixels and out.windows == ref.windows
    assert sum(r["skipped"] for r in results) >= 7  # the nodata window row never reached the model
    assert sum(r["windows"] for r in results) == ref.windows  # no window predicted twice


def test_an_aoi_and_a_region_shard_alike(raster, tmp_path):
    path, bundle = raster
    with rasterio.open(path) as ds:
        b = ds.bounds
    aoi = {"type": "Polygon", "crs": "EPSG:32617", "coordinates": [[
        (b.left + 1000, b.top - 500), (b.right - 900, b.top - 1500), (b.right - 2000, b.bottom + 700),
        (b.left + 600, b.bottom + 1200), (b.left + 1000, b.top - 500)]]}
    aoi = {"type": "Feature", "geometry": aoi, "properties": {},
           "crs": {"type": "name", "properties": {"name": "EPSG:32617"}}}
    opts = {**OPTS, "probabilities": False, "region": aoi}
    predict_raster(bundle, path, tmp_path / "one.tif", **opts)
    manifest = plan_shards(bundle, path, 4, **opts)
    assert manifest.geoms  # the AOI travels resolved: a shard does not read the vector again
    for i in range(len(manifest.shards)):
        predict_shard(bundle, manifest, i, tmp_path / "parts")
    assemble_shards(bundle, manifest, tmp_path / "parts", tmp_path / "sharded.tif")
    assert not (tmp_path / "sharded_probs.tif").exists()
    _same_rasters(tmp_path / "one.tif", tmp_path / "sharded.tif")


def test_a_part_is_written_once_and_a_cancelled_shard_publishes_nothing(raster, tmp_path):
    path, bundle = raster
    manifest = plan_shards(bundle, path, 3, **OPTS)
    folder = tmp_path / "parts"
    assert predict_shard(bundle, manifest, 1, folder).published
    written = sorted(folder.iterdir())  # its parts, and the edge files of the seams above and below it
    assert written == sorted([edge_path(folder, 1, "top"), edge_path(folder, 1, "bottom"),
                              part_path(folder, 1, "classes"), part_path(folder, 1, "probabilities")])
    first = [p.stat() for p in written]
    again = predict_shard(bundle, manifest, 1, folder)  # a second run (its claimant was presumed dead)
    assert not again.published
    later = [p.stat() for p in written]
    assert [(s.st_ino, s.st_mtime_ns) for s in first] == [(s.st_ino, s.st_mtime_ns) for s in later]
    with pytest.raises(PredictionCancelled):
        predict_shard(bundle, manifest, 0, folder, should_stop=lambda: True)
    assert not shard_done(manifest, folder, 0) and sorted(folder.iterdir()) == written  # no temporaries left
    edge_path(folder, 1, "top").unlink()  # a part without its edge file is not done
    assert not shard_done(manifest, folder, 1)
    with pytest.raises(FileNotFoundError, match=r"shards \[0, 1, 2\] have not written all their files"):
        assemble_shards(bundle, manifest, folder, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()


def test_a_shard_may_only_change_how_it_runs(raster, tmp_path):
    path, bundle = raster
    manifest = plan_shards(bundle, path, 2, **OPTS)
    with pytest.raises(ValueError, match="window"):
        predict_shard(bundle, manifest, 0, tmp_path, window=128)
