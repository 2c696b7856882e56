"""Ready job specs for the data `geoadapt data fetch` brings (NC -> shifted NC, NC -> Olinda, and the
feature-regression pair): the shipped examples/*.yaml and `geoadapt example NAME` both come from here.

    example_paths(data root) -> where fetch and shift put each file -> example_spec(name, paths) -> a spec dict
    example_yaml: the spec as YAML under a comment that says what it is and what it needs
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from core.data.demo import TEST_COLUMNS, TRAIN_COLUMNS, shifted_target_path
from core.data.fetch import DATASETS, NC_BANDS, cache_root
from core.data.nc import LANDSAT7_BAND_ROLES, NC_CLASSES
from core.errors import SpecError

#: how the shipped examples/*.yaml name the default data cache (the loader expands ~)
PORTABLE_ROOT = "~/.cache/geoadapt/data"
#: training length of the examples: minutes on a CPU; raise it for quality
ITERATIONS = 200
#: the examples start from ImageNet weights, Landsat-7's bands mapped onto the RGB stem by role
MODEL = {"config": "efficientnet-lite0", "band_roles": list(LANDSAT7_BAND_ROLES)}


@dataclass(frozen=True)
class Example:
    name: str
    about: str
    method: str
    target: str  # "shifted": Benchmark A's target built from NC; "olinda": the Olinda scene
    needs: str   # the commands that bring its data


EXAMPLES: dict[str, Example] = {e.name: e for e in (
    Example("nc-to-shifted-nc", "ST-DASegNet: NC Landsat-7 (labelled, western 60 %) -> the same scene through a "
            "simulated sensor + atmosphere shift (Benchmark A's target), scored on its eastern 40 %",
            "st-dasegnet", "shifted", "geoadapt data fetch nc-landsat && geoadapt data shift"),
    Example("nc-to-olinda", "ST-DASegNet: NC Landsat-7 (labelled) -> Olinda, Brazil, Landsat-7 (same sensor, "
            "another continent, no labels); the job maps Olinda", "st-dasegnet", "olinda",
            "geoadapt data fetch nc-landsat && geoadapt data fetch olinda"),
    Example("nc-feature-regression", "Feature regression: the same NC ground seen by the original and the shifted "
            "sensor, paired by georeferencing; the teacher is trained first from the labelled source",
            "feature-regression", "shifted", "geoadapt data fetch nc-landsat && geoadapt data shift"),
)}


def get_example(name: str) -> Example:
    try:
        return EXAMPLES[name]
    except KeyError:
        raise SpecError(f"no example {name!r}; examples: {', '.join(EXAMPLES)}", field="NAME") from None


def example_paths(root: str | Path) -> dict:
    """Where `geoadapt data fetch` and `geoadapt data shift` put the files, under the data root (as strings)."""
    root = str(root).rstrip("/")

    def member(dataset: str, key: str) -> str:
        return f"{root}/{dataset}/{Path(DATASETS[dataset].files[key][0]).name}"

    shifted = shifted_target_path(None)  # its file name; the folder is the data root's
    return {"bands": [member("nc-landsat", k) for k in NC_BANDS], "labels": member("nc-landsat", "strata"),
            "shifted": f"{root}/nc-landsat-shifted/{shifted.name}", "olinda": member("olinda", "l7_etms")}


def fetch_example_data(name: str, log=None) -> Path:
    """Fetch (or find cached) the data an example needs, build the shifted target if it needs it; the data root."""
    from core.data.demo import ensure_shifted_target
    from core.data.fetch import fetch

    ex = get_example(name)
    nc = fetch("nc-landsat", log=log)
    if ex.target == "shifted":
        ensure_shifted_target(nc, shifted_target_path(None))
    else:
        fetch("olinda", log=log)
    return cache_root() / "data"


def example_spec(name: str, paths: dict) -> dict:
    """The job spec of an example over these file paths (see example_paths)."""
    ex = get_example(name)
    source: dict = {"scenes": [{"bands": list(paths["bands"]), "labels": paths["labels"]}]}
    spec: dict = {"type": "adapt", "method": ex.method, "model": dict(MODEL, band_roles=list(MODEL["band_roles"])),
                  "classes": [dict(c) for c in NC_CLASSES], "source": source}
    if ex.target == "shifted":
        train, test = list(TRAIN_COLUMNS), list(TEST_COLUMNS)
        source["region"] = {"columns": train}
        spec["target"] = {"scenes": [{"image": paths["shifted"]}], "region": {"columns": train}}
        # the shifted scene is the NC ground, so strata.tif labels it: scores only, never training
        spec["validation"] = {"scenes": [{"image": paths["shifted"], "labels": paths["labels"]}],
                              "region": {"columns": test}}
    else:
        spec["target"] = {"scenes": [{"image": paths["olinda"]}]}
    spec["params"] = {"iterations": ITERATIONS, "batch_size": 4, "crop": 128, "seed": 0}
    spec["output"] = f"out/{name}"
    return spec


class _Dumper(yaml.SafeDumper):
    """Block style, but a class or a number pair on one line; no anchors (a reader sees every value)."""

    def ignore_aliases(self, data) -> bool:
        return True


def _short_flow(dumper: yaml.SafeDumper, data):
    if isinstance(data, dict):
        flow = "color" in data or all(not isinstance(v, (dict, list)) for v in data.values()) and len(data) > 1
        return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow)
    flow = all(isinstance(v, (int, float)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(dict, _short_flow)
_Dumper.add_representer(list, _short_flow)


def example_yaml(name: str, paths: dict) -> str:
    ex = get_example(name)
    head = (f"# {ex.about}.\n# Data: {ex.needs}\n"
            "# Run here: geoadapt run THIS.yaml (output: out/ beside it). Submit: geoadapt submit THIS.yaml\n"
            "# (the service chooses the output folder; its GEOADAPT_ALLOWED_ROOTS must hold the data folder).\n")
    return head + yaml.dump(example_spec(name, paths), Dumper=_Dumper, sort_keys=False, width=120)
