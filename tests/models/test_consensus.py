"""Consensus labels: alpha-expansion finds the known min cut, missing annotations are filled, scores order a clean
annotator above a noisy one, annotations on other grids and vectors land on the image grid, and the consensus
of faulty annotators beats their majority vote."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from core.errors import LabelValuesError, RasterTooLargeError
from core.jobspec import IGNORE_INDEX, ClassSpec
from core.raster.annotations import AnnotationStack, read_annotations
from core.raster.grid import Grid
from core.raster.scene import Scene
from models.consensus.consensus import ConsensusOptions, consensus_labels
from models.consensus.run import consensus_bytes_per_pixel, run_consensus
from models.consensus.graph_cut import alpha_expansion, potts_energy

TRANSFORM = from_origin(500000.0, 3000000.0, 10.0, 10.0)


def test_two_labels_give_the_known_min_cut():
    # a 1 x 3 chain: unaries favour 0, 1, 0 by 1 each; a link of 3 between neighbours makes "all 0" cheapest
    # (cost 1: the middle pixel's unary) against 0,1,0 (cost 6: two cut links)
    unary = np.array([[[0.0, 1.0, 0.0]], [[1.0, 0.0, 1.0]]])
    w = np.full((1, 3), 3.0)
    f, info = alpha_expansion(unary, w, np.zeros((1, 3)))
    assert f.tolist() == [[0, 0, 0]] and info["energy"] == pytest.approx(1.0)
    f, info = alpha_expansion(unary, np.full((1, 3), 0.4), np.zeros((1, 3)))  # weak links: follow the unaries
    assert f.tolist() == [[0, 1, 0]] and info["energy"] == pytest.approx(0.8)


def test_two_labels_reach_the_global_minimum_and_more_labels_never_increase_energy():
    rng = np.random.default_rng(1)
    for trial in range(20):
        k = 2 if trial < 10 else 3
        u, wr, wd = rng.random((k, 2, 3)) * 2, rng.random((2, 3)), rng.random((2, 3))
        best = min(potts_energy(np.array(c).reshape(2, 3), u, wr, wd) for c in itertools.product(range(k), repeat=6))
        f, info = alpha_expansion(u, wr, wd)
        assert info["energy"] <= info["energy_start"] + 1e-12
        assert info["energy"] == pytest.approx(potts_energy(f, u, wr, wd))
        if k == 2:
            assert info["energy"] == pytest.approx(best)
        else:
            assert info["energy"] <= 2 * best + 1e-9  # the expansion bound for Potts


def _scene_arrays(h=64, w=64, seed=0):
    """An image of two halves that look different (left dark, right bright) and its true labels."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.uint8)
    truth[:, w // 2:] = 1
    img = np.where(truth == 1, 3.0, 0.0)[None].repeat(3, 0) + rng.normal(0, 0.3, (3, h, w))
    return img.astype(np.float32), truth


def _stack(layers, k=2):
    classes = [ClassSpec(id=i + 1, name=f"c{i}", color="#000000") for i in range(k)]
    grid = Grid(None, TRANSFORM, layers[0].shape[1], layers[0].shape[0])
    return AnnotationStack(np.stack(layers).astype(np.uint8), classes, [f"a{j}" for j in range(len(layers))], grid)


def test_missing_annotations_are_filled_from_their_own_neighbours_where_the_others_confirm_it():
    img, truth = _scene_arrays()
    eroded = truth.copy()
    eroded[:, 30:34] = IGNORE_INDEX  # a gap along the boundary
    b = truth.copy()
    c = truth.copy()
    b[:16, 30:32] = 1  # in the top rows the two others disagree at the boundary: a tie without the gap's
    c[:16, 32:34] = 0  # own annotator, whose nearest labels the rows below confirm
    r = consensus_labels(_stack([eroded, b, c]), img, np.ones(truth.shape, bool), ConsensusOptions(smoothness=0.0))
    first = r.annotators[0]
    assert first.fill_confidence[0] == pytest.approx(2 * (48 + 8) / 64 - 1, abs=0.01)  # agreement 56 of 64 rows
    assert first.filled_fraction == pytest.approx(4 / 64)
    assert (r.labels == truth).all()
    # without the filled annotation the tie goes to one of the two: the top rows' gap is wrong on one side
    alone = consensus_labels(_stack([b, c]), img, np.ones(truth.shape, bool), ConsensusOptions(smoothness=0.0,
                                                                                              image_weight=0.0))
    assert (alone.labels[:16, 30:34] != truth[:16, 30:34]).sum() == 32


def test_scores_order_a_clean_annotator_above_a_noisy_one():
    img, truth = _scene_arrays(96, 96)
    rng = np.random.default_rng(0)
    noisy = truth.copy()
    blocks = rng.random((12, 12)) < 0.3
    noisy[np.kron(blocks, np.ones((8, 8), bool))] ^= 1  # 30 % of 8 px blocks swapped
    r = consensus_labels(_stack([truth, noisy, truth.copy()]), img, np.ones(truth.shape, bool))
    s = {a.name: a for a in r.annotators}
    assert s["a0"].score > s["a1"].score + 0.1 and s["a0"].weight == 1.0 and s["a1"].weight < 1.0
    assert s["a0"].agreement == 1.0 and s["a1"].agreement < 0.8
    assert (r.labels == truth).all() and r.disagreement.max() == pytest.approx(1 - 2 / (2 + s["a1"].weight), abs=1e-3)


def _write(path, arr, transform=TRANSFORM, nodata=0, dtype="uint8"):
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[-1], height=arr.shape[-2],
                       count=1 if arr.ndim == 2 else arr.shape[0], dtype=dtype, crs="EPSG:32617",
                       transform=transform, nodata=nodata) as ds:
        ds.write(arr if arr.ndim == 3 else arr[None])
    return path


def test_rasters_on_another_grid_and_vectors_land_on_the_image_grid(tmp_path):
    img, truth = _scene_arrays()
    image = _write(tmp_path / "img.tif", img, nodata=-99999, dtype="float32")
    labels = (truth + 1).astype(np.uint8)
    # the same labels at twice the pixel size
    coarse = _write(tmp_path / "coarse.tif", labels[::2, ::2], from_origin(500000.0, 3000000.0, 20.0, 20.0))
    same = _write(tmp_path / "same.tif", labels)
    right = {"type": "Polygon", "coordinates": [[(500320.0, 3000000.0), (500640.0, 3000000.0),
                                                 (500640.0, 2999360.0), (500320.0, 2999360.0),
                                                 (500320.0, 3000000.0)]]}
    left = {"type": "Polygon", "coordinates": [[(500000.0, 3000000.0), (500320.0, 3000000.0),
                                                (500320.0, 2999360.0), (500000.0, 2999360.0),
                                                (500000.0, 3000000.0)]]}
    vec = tmp_path / "vec.geojson"
    vec.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "EPSG:32617"}},
                               "features": [{"type": "Feature", "geometry": left, "properties": {"class": 1}},
                                            {"type": "Feature", "geometry": right, "properties": {"class": 2}}]}))
    with Scene.open(image) as scene:
        stack = read_annotations([coarse, same, vec], scene)
    assert [c.id for c in stack.classes] == [1, 2] and stack.labels.shape == (3, 64, 64)
    for layer in stack.labels:
        assert (layer == truth).all()

    out = run_consensus([coarse, same, vec], image, tmp_path / "cons.tif")
    with rasterio.open(out.labels) as ds:
        assert ds.read(1).tolist() == labels.tolist() and ds.crs.to_epsg() == 32617 and ds.transform == TRANSFORM
    with rasterio.open(out.disagreement) as ds:
        assert ds.read(1).max() == 0.0
    report = json.loads(out.scores.read_text())
    assert set(report["annotators"]) == {"coarse", "same", "vec"} and report["class_pixels"] == {"1": 2048, "2": 2048}


def test_too_few_annotations_and_unlabelled_images_are_refused(tmp_path):
    img, truth = _scene_arrays()
    image = _write(tmp_path / "img.tif", img, nodata=-99999, dtype="float32")
    one = _write(tmp_path / "one.tif", (truth + 1).astype(np.uint8))
    with Scene.open(image) as scene, pytest.raises(LabelValuesError) as e:
        read_annotations([one], scene)
    assert e.value.field == "annotations"
    empty = _write(tmp_path / "empty.tif", np.zeros_like(truth))
    with pytest.raises(LabelValuesError):
        run_consensus([empty, empty], image, tmp_path / "c.tif")


def test_consensus_beats_majority_vote_on_faulty_annotators_of_real_labels(nc_bands, nc_data, tmp_path):
    """The outside check's setting, on a crop of the NC scene: eroded, dilated, missing and careless annotators."""
    from benchmarks.consensus import make_annotators, miou_over_present, majority_vote, order_agreement

    with Scene.open(list(nc_bands)) as scene:
        rw = scene.read()
    with rasterio.open(nc_data["strata"]) as ds:
        truth = ds.read(1)
    truth = np.where(np.isfinite(truth) & (truth > 0), truth, 0).astype(np.uint8)
    crop = (slice(0, 200), slice(0, 240))
    truth, img, valid = truth[crop], rw.data[(slice(None), *crop)], rw.valid[crop]
    anns = make_annotators(truth, seed=0)
    ids = sorted(int(v) for v in np.unique(truth) if v)
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[ids] = np.arange(len(ids))
    classes = [ClassSpec(id=i, name=str(i), color="#000000") for i in ids]
    stack = AnnotationStack(np.stack([lut[a] for a in anns.values()]), classes, list(anns), Grid(None, TRANSFORM, 240, 200))
    r = consensus_labels(stack, img, valid)
    cons = np.where(r.labels == IGNORE_INDEX, 0, np.array(ids + [0])[np.minimum(r.labels, len(ids))])
    scored = truth > 0
    s_cons = miou_over_present(truth, cons, scored)
    s_mv = miou_over_present(truth, majority_vote(anns), scored)
    best = max(miou_over_present(truth, a, scored) for a in anns.values())
    assert s_cons > s_mv and s_cons > best
    # the scores rank the annotators as their faults do: by precision, the share of their own labels that are right
    precision = {n: float((a[scored & (a > 0)] == truth[scored & (a > 0)]).mean()) for n, a in anns.items()}
    by_name = {a.name: a for a in r.annotators}
    assert order_agreement({n: a.score for n, a in by_name.items()}, precision) == 1.0
    assert all(a.score == pytest.approx(a.self_consistency * a.agreement, abs=1e-3) for a in r.annotators)


def test_a_consensus_over_its_memory_limit_is_refused_and_writes_nothing(tmp_path):
    """The limit (default: the machine's free memory) against the measured bytes per pixel, checked before
    anything is read."""
    img, truth = _scene_arrays()
    image = _write(tmp_path / "img.tif", img, nodata=-99999, dtype="float32")
    a = _write(tmp_path / "a.tif", (truth + 1).astype(np.uint8))
    b = _write(tmp_path / "b.tif", (truth + 1).astype(np.uint8))
    classes = [ClassSpec(id=i + 1, name=f"c{i}", color="#000000") for i in range(2)]
    h, w = truth.shape
    need = h * w * consensus_bytes_per_pixel(img.shape[0], 2, 2)
    with pytest.raises(RasterTooLargeError) as e:
        run_consensus([a, b], image, tmp_path / "c.tif", classes=classes, memory_limit=need - 1)
    assert e.value.field == "image" and f"{w} x {h} px" in e.value.message
    assert not (tmp_path / "c.tif").exists()
    assert run_consensus([a, b], image, tmp_path / "c.tif", classes=classes, memory_limit=need).labels.exists()

