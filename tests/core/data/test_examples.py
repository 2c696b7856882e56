"""The shipped example specs (examples/*.yaml) and `geoadapt example`: each loads as a job spec over the real
fetched data, with the NC class names, and the shipped files are what the code writes (they cannot drift)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.data.examples import EXAMPLES, PORTABLE_ROOT, example_paths, example_yaml, fetch_example_data
from core.data.fetch import cache_root
from core.errors import SpecError
from core.jobspec import load_job_spec

SHIPPED = Path(__file__).resolve().parents[3] / "examples"
NAMES = ("nc-to-shifted-nc", "nc-to-olinda", "nc-feature-regression")


def test_the_shipped_examples_are_the_three_pairs_the_code_writes():
    assert set(EXAMPLES) == set(NAMES)
    assert {p.stem for p in SHIPPED.glob("*.yaml")} == set(NAMES)
    for name in NAMES:
        assert (SHIPPED / f"{name}.yaml").read_text() == example_yaml(name, example_paths(PORTABLE_ROOT)), name


@pytest.mark.parametrize("name", NAMES)
def test_each_example_loads_over_the_real_fetched_data(name, tmp_path, nc_data):
    root = fetch_example_data(name)
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(example_yaml(name, example_paths(root)))
    spec = load_job_spec(spec_file, check_files=True)  # every file exists
    assert [c.name for c in spec.classes] == ["developed", "agriculture", "herbaceous", "shrubland", "forest",
                                              "water", "sediment"]
    assert spec.type == "adapt" and spec.method == EXAMPLES[name].method
    assert spec.source.scenes[0].paths == [Path(nc_data[k]) for k in ("b10", "b20", "b30", "b40", "b50", "b70")]
    assert spec.source.scenes[0].labels == Path(nc_data["strata"])
    target = spec.target.scenes[0].image
    assert target.is_file() and ("olinda" in target.parts) == (name == "nc-to-olinda")
    assert spec.output == tmp_path / "out" / name  # beside the spec, for `geoadapt run`
    if EXAMPLES[name].target == "shifted":  # scored on the part of the scene it did not adapt on
        assert spec.validation.region.columns == (0.6, 1.0) and spec.target.region.columns == (0.0, 0.6)
    # the shipped file itself names the default cache, so it loads as it is when the cache is there
    if cache_root() == Path.home() / ".cache" / "geoadapt":
        shipped = load_job_spec(SHIPPED / f"{name}.yaml", check_files=True)
        assert shipped.target.scenes[0].image == target


def test_an_unknown_example_names_the_known_ones():
    with pytest.raises(SpecError) as e:
        fetch_example_data("nc-to-mars")
    assert e.value.field == "NAME" and "nc-to-olinda" in str(e.value)
    assert yaml.safe_load((SHIPPED / "nc-to-olinda.yaml").read_text())["target"]["scenes"][0]["image"].startswith("~/")
