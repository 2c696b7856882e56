"""NEON crowns: checksummed fetch, crown boxes rasterised as tree / not tree, the case's domains as jobs see them."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from core.data.fetch import DATASETS, cached, fetch, sha256_of
from core.data.neon import (
    NEON_CLASSES,
    build_scene,
    neon_class_specs,
    neon_train_test_halves,
    prepare_neon,
    read_crown_boxes,
)
from core.errors import DataFetchError
from core.raster.grid import Grid


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ds.read(), Grid.from_dataset(ds), ds.profile, ds.tags()


def _voc(path, width, height, boxes, name="Tree"):
    objects = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
        f"</bndbox></object>"
        for x0, y0, x1, y1 in boxes
    )
    path.write_text(f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
                    f"{objects}</annotation>")
    return path


def _png(path, rgb):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=rgb.shape[2], height=rgb.shape[1], count=3,
                           dtype="uint8") as ds:
            ds.write(rgb)
    return path


def test_neon_files_verify(neon_data):
    assert set(neon_data) == {f"{s}_{k}" for s in ("yell1", "yell2", "osbs", "soap") for k in ("image", "crowns")}
    for key, (member, digest) in DATASETS["neon-crowns"].files.items():
        assert sha256_of(neon_data[key]) == digest


def test_a_tampered_file_is_refused_and_fetched_again(tmp_path, neon_data):
    for p in neon_data.values():
        shutil.copy(p, tmp_path / p.name)
    assert cached("neon-crowns", tmp_path) is not None
    xml = tmp_path / "SOAP_061.xml"
    xml.write_text(xml.read_text().replace("<xmin>", "<xmin>1", 1))  # one box moved
    assert cached("neon-crowns", tmp_path) is None
    got = fetch("neon-crowns", tmp_path)
    assert sha256_of(got["soap_crowns"]) == DATASETS["neon-crowns"].files["soap_crowns"][1]


def test_a_checksum_mismatch_fails_the_cli_with_the_file_named(tmp_path, monkeypatch, capsys):
    from core.data import fetch as f
    from cli import main

    pkg = f.DATASETS["neon-crowns"]
    files = dict(pkg.files)
    files["osbs_crowns"] = (files["osbs_crowns"][0], "0" * 64)
    monkeypatch.setitem(f.DATASETS, "neon-crowns", f.Package(pkg.kind, pkg.spec, files, pkg.about))
    monkeypatch.setattr("sys.argv", ["geoadapt", "data", "fetch", "neon-crowns", "--dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "OSBS_029.xml from deepforest==2.1.0 failed its checksum" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing kept, not even the files that verified


def test_tree_fraction_is_the_union_of_the_boxes(tmp_path):
    # 12 x 10 pixels; A and B overlap in 2 x 1 pixels, C reaches past the bottom-right corner, D repeats A
    a, b, c = (2, 1, 6, 4), (4, 3, 9, 7), (10, 8, 14, 12)
    xml = _voc(tmp_path / "t.xml", 12, 10, [a, b, c, a], name="Dead")
    rgb = np.random.default_rng(0).integers(0, 256, (3, 10, 12), dtype=np.uint8)
    png = _png(tmp_path / "t.png", rgb)
    union = 4 * 3 + 5 * 4 - 2 * 1 + 2 * 2  # inclusion-exclusion, C clipped to 2 x 2 inside the image
    s = build_scene("t", png, xml, tmp_path / "out")
    assert s.crowns == 4 and (s.width, s.height) == (12, 10)
    assert s.tree_fraction == pytest.approx(union / 120)
    labels, lgrid, lprofile, _ = _read(s.labels)
    image, igrid, iprofile, _ = _read(s.image)
    assert labels.shape == (1, 10, 12) and labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1}
    assert labels.sum() == union
    # boxes are pixel edges: the box covers columns xmin..xmax-1 and rows ymin..ymax-1
    assert labels[0, 1, 2] == 1 and labels[0, 0, 2] == 0 and labels[0, 3, 9] == 0 and labels[0, 9, 11] == 1
    assert np.array_equal(image, rgb) and iprofile["tiled"] and iprofile["nodata"] is None
    assert igrid.same_as(lgrid) and igrid.crs is None and igrid.res == pytest.approx((0.1, 0.1))


def test_a_box_file_for_another_image_size_is_refused(tmp_path):
    png = _png(tmp_path / "t.png", np.zeros((3, 10, 12), np.uint8))
    xml = _voc(tmp_path / "t.xml", 400, 400, [(1, 1, 5, 5)])
    with pytest.raises(DataFetchError, match="t.xml is for a 400 x 400 image but t.png is 12 x 10"):
        build_scene("t", png, xml, tmp_path / "out")
    assert not (tmp_path / "out" / "t_rgb.tif").exists() and not (tmp_path / "out" / "t_trees.tif").exists()


def test_crowns_sizes_and_grids_of_the_four_scenes(neon_data, neon_scenes):
    got = {n: (s.width, s.height, s.crowns) for n, s in neon_scenes.items()}
    assert got == {
        "YELL_528000_4978000": (2299, 2472, 574),
        "YELL_541000_4977000": (1249, 1035, 279),
        "OSBS_029": (400, 400, 61),
        "SOAP_061": (400, 400, 37),
    }
    for name, s in neon_scenes.items():
        image, igrid, iprofile, _ = _read(s.image)
        labels, lgrid, _, _ = _read(s.labels)
        assert igrid.same_as(lgrid), name
        assert image.shape[0] == 3 and image.dtype == np.uint8 and iprofile["tiled"]
        assert labels.mean() == pytest.approx(s.tree_fraction) and 0.1 < s.tree_fraction < 0.9
        assert igrid.gsd == pytest.approx(0.1)
    # OSBS keeps its georeferencing; its pixels are the fetched image's, 255 included (not nodata)
    osbs = neon_scenes["OSBS_029"]
    fetched, fgrid, _, _ = _read(neon_data["osbs_image"])
    image, igrid, iprofile, _ = _read(osbs.image)
    assert osbs.georeferenced and igrid.crs.to_epsg() == 32617 and igrid.same_as(fgrid)
    assert np.array_equal(image, fetched) and iprofile["nodata"] is None and (image == 255).any()
    assert not neon_scenes["SOAP_061"].georeferenced


def test_labels_match_the_fetched_boxes(neon_data, neon_scenes):
    crowns = read_crown_boxes(neon_data["soap_crowns"])
    labels, _, _, _ = _read(neon_scenes["SOAP_061"].labels)
    for x0, y0, x1, y1 in crowns.boxes:
        assert labels[0, y0:y1, x0:x1].all()
    inside = np.zeros(labels.shape[1:], bool)
    for x0, y0, x1, y1 in crowns.boxes:
        inside[y0:y1, x0:x1] = True
    assert not labels[0][~inside].any()


def test_derived_rasters_are_built_once_and_rebuilt_when_stale(tmp_path, neon_data):
    first = prepare_neon(neon_data, tmp_path)
    osbs = first["OSBS_029"]
    stamps = {n: (s.image.stat().st_mtime_ns, s.labels.stat().st_mtime_ns) for n, s in first.items()}
    again = prepare_neon(neon_data, tmp_path)
    assert {n: (s.image.stat().st_mtime_ns, s.labels.stat().st_mtime_ns) for n, s in again.items()} == stamps
    assert again == first
    osbs.labels.write_bytes(b"half a file")  # e.g. a copy cut short: not reused
    rebuilt = prepare_neon(neon_data, tmp_path)["OSBS_029"]
    assert rebuilt == osbs and _read(rebuilt.labels)[0].mean() == pytest.approx(osbs.tree_fraction)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary leftovers


def test_the_benchmark_domains_split_each_target_into_halves_of_their_own(neon_scenes, tmp_path):
    from core.jobspec import DomainSpec
    from core.raster.domain import Domain

    case = neon_train_test_halves(neon_scenes, tmp_path / "halves")
    assert [sc["image"] for sc in case["source"]["scenes"]] == [
        str(neon_scenes[n].image) for n in ("YELL_528000_4978000", "YELL_541000_4977000")
    ]
    assert all(sc["labels"] for sc in case["source"]["scenes"]) and "region" not in case["source"]
    for part, columns in (("target", (0, 200)), ("target_test", (200, 400))):
        assert len(case[part]["scenes"]) == 2  # OSBS's and SOAP's halves, in that order
        for sc, name in zip(case[part]["scenes"], ("OSBS_029", "SOAP_061")):
            with rasterio.open(neon_scenes[name].labels) as whole, rasterio.open(sc["labels"]) as half:
                assert half.read(1).tolist() == whole.read(1)[:, slice(*columns)].tolist()
        with Domain.open(DomainSpec.model_validate(case[part]), neon_class_specs()) as dom:
            assert [(it.region.width, it.region.height) for it in dom.items] == [(200, 400), (200, 400)]
    again = neon_train_test_halves(neon_scenes, tmp_path / "halves")  # built once
    assert again == case


def test_a_job_on_the_domains_passes_submission_validation(tmp_path, neon_scenes):
    from core.jobspec import load_job_spec
    from core.raster.validate import validate_job_inputs

    d = neon_train_test_halves(neon_scenes, tmp_path / "halves")
    spec = load_job_spec(
        {"type": "adapt", "method": "st-dasegnet", "classes": NEON_CLASSES, "source": d["source"],
         "target": d["target"], "validation": d["target_test"], "output": str(tmp_path / "out")},
        check_files=True,
    )
    report = validate_job_inputs(spec)
    assert report["gsd"]["match"] is False and report["gsd"]["ratio"] == pytest.approx(1.0)  # both 0.1 m
    assert report["warnings"] == []
    for name, dom in report["domains"].items():
        assert dom["band_count"] == 3
        for sc in dom["scenes"]:
            assert sc["valid_fraction"] == 1.0, (name, sc["paths"])  # saturated 255s are data
            labels = sc["labels"]
            assert labels["kind"] == "ids" and labels["coverage"]["labelled_fraction"] == 1.0
            assert labels["class_counts"]["0"] > 0 and labels["class_counts"]["1"] > 0  # trees and not trees
    for name in ("target", "validation"):  # each half a whole file of its own
        assert [sc["region"] for sc in report["domains"][name]["scenes"]] == [[0, 0, 200, 400]] * 2
