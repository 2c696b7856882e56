"""core.bundle_manifest: a manifest made, written and read back without torch, from a bundle folder, a job
output folder or a zip; the errors a client sees name no server path."""
from __future__ import annotations

import json
import zipfile

import pytest

from core.bundle_manifest import FORMAT, MANIFEST, BundleManifest, bundle_dir_of, manifest_member
from core.errors import BundleError
from core.jobspec import ClassSpec
from core.raster.stats import BandStats

CLASSES = [ClassSpec(id=1, name="building", color="#ff0000"), ClassSpec(id=2, name="road", color="#0000ff")]


def _stats(bands: int, mean: float = 10.0) -> BandStats:
    return BandStats(mean=[mean] * bands, std=[2.0] * bands, count=100)


def _manifest(**kw) -> BundleManifest:
    args = dict(classes=CLASSES, stats={"source": _stats(4)}, inference={"type": "Segmentor"}, method="source-only")
    return BundleManifest.create(**{**args, **kw})


def _write(folder, manifest: BundleManifest):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps(manifest.data))
    return folder


def test_made_manifest_reads_back_from_a_bundle_and_from_a_job_output(tmp_path):
    made = _manifest(stats={"source": _stats(4), "target": _stats(4, 20.0)}, batchnorm_layers=3,
                     config_name="segformer-tiny", provenance={"job": "j1"}, metrics={"miou": 0.5})
    bundle = _write(tmp_path / "output" / "bundle", made)
    for given in (bundle, tmp_path / "output"):
        m = BundleManifest.read(given)
        assert m.data["format"] == FORMAT and m.method == "source-only" and m.config_name == "segformer-tiny"
        assert m.band_count == 4 and [c.id for c in m.classes] == m.class_ids == [1, 2]
        assert sorted(m.stats) == ["source", "target"] and m.stats["target"].mean == [20.0] * 4
        assert m.default_stats == "target"  # target statistics, when there are some, are the default
        assert m.batchnorm_layers == 3 and m.provenance == {"job": "j1"} and m.metrics == {"miou": 0.5}
        assert [b["name"] for b in m.band_map] == ["band 1", "band 2", "band 3", "band 4"]
        m.check_loadable()
    assert bundle_dir_of(tmp_path / "output") == bundle_dir_of(bundle) == bundle
    assert bundle_dir_of(tmp_path) is None


def test_a_zip_is_read_without_unpacking_it(tmp_path):
    bundle = _write(tmp_path / "job" / "output" / "bundle", _manifest())
    zpath = tmp_path / "model.zip"
    with zipfile.ZipFile(zpath, "w") as zf:  # an output folder zipped with its parent: output/bundle/bundle.json
        zf.write(bundle / MANIFEST, f"output/bundle/{MANIFEST}")
    assert BundleManifest.read(zpath).band_count == 4


def test_the_shallowest_manifest_of_a_zip_within_two_folders():
    assert manifest_member(["a/b/c/bundle.json", "x/bundle/bundle.json", "bundle/bundle.json"]) == "bundle/bundle.json"
    assert manifest_member([MANIFEST, f"bundle/{MANIFEST}"]) == MANIFEST
    assert manifest_member(["a/b/c/bundle.json", "weights.pth", "not-bundle.json"]) is None


def test_no_bundle_or_an_unreadable_one_is_a_bundle_error_that_names_no_path(tmp_path):
    with pytest.raises(BundleError) as missing:
        BundleManifest.read(tmp_path / "secret-folder")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError) as broken:
        BundleManifest.read(tmp_path / "broken")
    (tmp_path / "z.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BundleError):
        BundleManifest.read(tmp_path / "z.zip")
    for e in (missing.value, broken.value):
        assert e.field == "bundle" and str(tmp_path) not in e.message and MANIFEST in e.message


def test_a_client_written_manifest_is_read_as_far_as_it_goes():
    m = BundleManifest({"classes": [{"id": 3}, "junk"], "band_count": "x"})
    assert m.class_ids == [3] and m.batchnorm_layers is None and m.method is None
    with pytest.raises(BundleError, match="no band count"):
        _ = m.band_count
    with pytest.raises(BundleError, match="format"):
        m.check_loadable()
    with pytest.raises(BundleError, match="'inference'"):
        BundleManifest({"format": FORMAT, "classes": [], "band_count": 3, "stats": {}}).check_loadable()


def test_a_manifest_needs_source_statistics_and_a_default_among_them():
    with pytest.raises(BundleError, match="source statistics"):
        _manifest(stats={"target": _stats(4)})
    with pytest.raises(BundleError, match="default_stats"):
        _manifest(default_stats="target")
    assert _manifest().default_stats == "source"
    assert _manifest(stats={"source": _stats(4), "target": _stats(4)}, default_stats="source").default_stats == "source"
