"""STAC Items as scene inputs: assets chosen by band common names (STAC 1.0 and 1.1 forms), local hrefs only,
and the job spec's `{stac: ITEM, bands: [names]}` scene resolved to files that survive the spec's round trip."""
from __future__ import annotations

import json

import pytest

from core.errors import SpecError
from core.jobspec import load_job_spec
from core.stac_items import StacItemError, band_files
from tests.helpers import write_stac_scene


def _item(folder, assets: dict, name="item.json"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": "x", "geometry": None,
                                "properties": {}, "links": [], "assets": assets}))
    return path


def _asset(href, *common_names):
    return {"href": href, "eo:bands": [{"name": n.upper(), "common_name": n} for n in common_names]}


@pytest.mark.parametrize("form", ["1.0", "1.1"])
def test_common_names_pick_single_band_assets_in_the_order_asked(tmp_path, form):
    item, _ = write_stac_scene(tmp_path / "s", ("blue", "green", "red", "nir"), form=form)
    files = band_files(item, ["nir", "red", "green"])
    assert files == [tmp_path / "s" / n for n in ("B4.tif", "B3.tif", "B2.tif")]


def test_relative_hrefs_resolve_against_the_item_folder_file_urls_are_local(tmp_path):
    data = tmp_path / "data"
    item = _item(tmp_path / "catalog" / "items", {
        "red": _asset("../../data/red.tif", "red"),
        "nir": _asset((data / "nir band.tif").as_uri(), "nir"),
        "green": _asset(str(data / "green.tif"), "green"),
    })
    assert band_files(item, ["red", "nir", "green"]) == [data / "red.tif", data / "nir band.tif", data / "green.tif"]


@pytest.mark.parametrize("href", ["https://example.com/B4.tif", "s3://bucket/B4.tif", "/vsicurl/https://x/B4.tif",
                                  "file://otherhost/B4.tif"])
def test_remote_hrefs_are_refused_not_fetched(tmp_path, href):
    item = _item(tmp_path, {"B4": _asset(href, "red")})
    with pytest.raises(StacItemError) as e:
        band_files(item, ["red"])
    assert e.value.field == "bands.0" and "not a local file" in e.value.message and "'B4'" in e.value.message


def test_a_missing_common_name_lists_the_names_the_item_has(tmp_path):
    item, _ = write_stac_scene(tmp_path / "s", ("blue", "green", "red"))
    with pytest.raises(StacItemError) as e:
        band_files(item, ["red", "swir16"])
    assert e.value.field == "bands.1"
    assert "'swir16'" in e.value.message and "blue, green, red" in e.value.message


def test_nir_falls_back_to_nir08_and_multi_band_assets_are_named(tmp_path):
    item = _item(tmp_path, {"visual": _asset("rgb.tif", "red", "green", "blue"), "B5": _asset("b5.tif", "nir08")})
    assert band_files(item, ["nir"]) == [tmp_path / "b5.tif"]
    with pytest.raises(StacItemError) as e:
        band_files(item, ["red"])
    assert e.value.field == "bands.0" and "multi-band asset 'visual'" in e.value.message


def test_what_is_not_an_item_is_refused_as_stac(tmp_path):
    (tmp_path / "fc.json").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    (tmp_path / "bad.json").write_text("{not json")
    for name in ("fc.json", "bad.json", "missing.json"):
        with pytest.raises(StacItemError) as e:
            band_files(tmp_path / name, ["red"])
        assert e.value.field == "stac", name


def test_the_confinement_refusal_names_the_asset(tmp_path):
    item = _item(tmp_path, {"B4": _asset("/elsewhere/B4.tif", "red")})

    def confine(p):
        raise ValueError("path is outside the allowed roots")

    with pytest.raises(StacItemError) as e:
        band_files(item, ["red"], confine=confine)
    assert e.value.field == "bands.0" and e.value.message == "asset 'B4' (B4.tif): path is outside the allowed roots"


# ---- the job spec's STAC scene ------------------------------------------------------------------------

def _predict(tmp_path, scene: dict) -> dict:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    return {"type": "predict", "bundle": str(bundle), "classes": [{"id": 1, "name": "a", "color": "#ff0000"}],
            "target": {"scenes": [scene]}, "output": str(tmp_path / "out")}


def test_a_stac_scene_loads_as_its_files_and_survives_the_round_trip(tmp_path):
    item, _ = write_stac_scene(tmp_path / "s", ("blue", "green", "red", "nir"), form="1.1")
    spec = load_job_spec(_predict(tmp_path, {"stac": str(item), "bands": ["red", "green", "blue"]}))
    scene = spec.target.scenes[0]
    assert scene.paths == [tmp_path / "s" / n for n in ("B3.tif", "B2.tif", "B1.tif")]
    assert scene.stac.item == item and scene.stac.bands == ["red", "green", "blue"]
    stored = spec.to_jsonable()  # what the service stores and the worker loads again
    assert load_job_spec(stored).target.scenes[0].paths == scene.paths
    # the loaded form alone ({item, bands}) resolves too
    again = load_job_spec(_predict(tmp_path, {"stac": {"item": str(item), "bands": ["nir"]}}))
    assert again.target.scenes[0].paths == [tmp_path / "s" / "B4.tif"]
    # an item whose assets changed since: the stored files are refused, not silently swapped
    doc = json.loads(item.read_text())
    doc["assets"]["B1"]["href"], doc["assets"]["B3"]["href"] = "./B3.tif", "./B1.tif"
    item.write_text(json.dumps(doc))
    with pytest.raises(SpecError) as e:
        load_job_spec(stored)
    assert e.value.field == "target.scenes.0.bands" and "not the files" in e.value.problems[0]["message"]


def test_without_file_checks_the_item_is_kept_for_the_server_to_read(tmp_path):
    spec = load_job_spec(_predict(tmp_path, {"stac": "elsewhere/item.json", "bands": ["red"]}), check_files=False,
                         base_dir=tmp_path)
    scene = spec.to_jsonable()["target"]["scenes"][0]
    assert scene["stac"] == {"item": str(tmp_path / "elsewhere" / "item.json"), "bands": ["red"]}
    assert scene["bands"] is None


@pytest.mark.parametrize("scene, field, words", [
    ({"bands": ["red", "swir22"]}, "target.scenes.0.bands.1", "common names: blue, green, nir, red"),
    ({"bands": "red"}, "target.scenes.0.bands", "common names"),
    ({"bands": ["Red band"]}, "target.scenes.0.bands", "not a band common name"),
    ({"bands": ["red"], "image": "x.tif"}, "target.scenes.0.image", "not both"),
    ({"stac": {"item": "nope.json", "bands": ["red"]}}, "target.scenes.0.stac.item", "file not found"),
    ({"stac": {"item": "ITEM", "bands": ["tir"]}}, "target.scenes.0.stac.bands.0", "no asset with common name"),
])
def test_stac_scene_errors_name_the_field(tmp_path, scene, field, words):
    item, _ = write_stac_scene(tmp_path / "s", ("blue", "green", "red", "nir"))
    scene = {"stac": str(item), **scene}
    if isinstance(scene["stac"], dict):
        scene["stac"] = {**scene["stac"], "item": str(item) if scene["stac"]["item"] == "ITEM" else
                         str(tmp_path / scene["stac"]["item"])}
    with pytest.raises(SpecError) as e:
        load_job_spec(_predict(tmp_path, scene))
    assert e.value.field == field and words in str(e.value), e.value.problems
