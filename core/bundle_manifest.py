"""A model bundle's files and its manifest (bundle.json), read and made without torch: the one place
that knows the bundle format, asked by models.bundle (which saves and loads the weights), the
service (which checks a job's bundle at submit and shows its metadata) and the workers.

    bundle/
      bundle.json   format, method, config_name, classes (id, name, colour), band_count, band_map,
                    stats {"source": BandStats, "target": ...}, default_stats, ignore_index,
                    inference (how to rebuild the network), batchnorm_layers (how many; AdaBN needs
                    some), provenance (job, datasets, seed, iterations), metrics
      config.json   the resolved training config (model, optimiser, schedule, adaptation)
      weights.pth   state_dict of the inference segmentor (plain tensors)
      model.onnx    the same network as ONNX with Deepness metadata (models.onnx_export), written by a
                    worker on the first download that asks; model.onnx.failed says why it could not be

A bundle is given as its folder, as a job output folder holding ``bundle/``, or as a zip of either.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from core.errors import BundleError, SpecError
from core.job_layout import BUNDLE, BUNDLE_WEIGHTS
from core.jobspec import IGNORE_INDEX, ClassSpec
from core.raster.stats import BandStats

FORMAT = 1
MANIFEST = "bundle.json"
CONFIG = "config.json"
WEIGHTS = BUNDLE_WEIGHTS
ONNX = "model.onnx"
#: why a worker could not export the network (the download reports it instead of asking again)
ONNX_FAILED = "model.onnx.failed"
#: what a manifest must hold for its bundle to be loaded
_REQUIRED = ("classes", "band_count", "stats", "inference")
#: folders a zip may nest its manifest in: a bundle folder, or a job output folder, zipped with its parent
_ZIP_DEPTH = 2


def check_same_classes(job_ids: list, model_ids: list) -> None:
    """A job that adapts a trained model without training (adabn, label-shift) keeps its classes: the job's
    must be the model's (``model_ids`` empty: a manifest without classes, left to the bundle's own check)."""
    if model_ids and list(model_ids) != list(job_ids):
        raise SpecError(f"the job's classes {job_ids} differ from the model's {model_ids}", field="classes")


def bundle_dir_of(path: str | Path) -> Path | None:
    """The bundle folder of a bundle folder or of a job output folder (``<output>/bundle``); None if neither."""
    p = Path(path)
    for d in (p, p / BUNDLE):
        if (d / MANIFEST).is_file():
            return d
    return None


def manifest_member(names: Iterable[str]) -> str | None:
    """The manifest among a zip's member names: the shortest one at most two folders deep, or None."""
    found = [n for n in names if n.rsplit("/", 1)[-1] == MANIFEST and n.count("/") <= _ZIP_DEPTH]
    return min(found, key=len) if found else None


@dataclass(frozen=True)
class BundleManifest:
    """A bundle's manifest as written (``data``), with typed views of what its readers need."""

    data: dict

    @classmethod
    def create(
        cls,
        *,
        classes: Sequence[ClassSpec],
        stats: Mapping[str, BandStats],
        inference: Mapping,
        method: str,
        config_name: str | None = None,
        band_map: Sequence[Mapping] | None = None,
        default_stats: str | None = None,
        batchnorm_layers: int | None = None,
        provenance: Mapping | None = None,
        metrics: Mapping | None = None,
    ) -> BundleManifest:
        """The manifest of a bundle about to be saved. ``stats``: name -> BandStats, the source's at least;
        ``default_stats``: which of them predictions use unless told ("target" when present, else "source")."""
        if "source" not in stats:
            raise BundleError("a bundle needs at least the source statistics")
        if default_stats is None:
            default_stats = "target" if "target" in stats else "source"
        if default_stats not in stats:
            raise BundleError(f"default_stats {default_stats!r} is not among the statistics {sorted(stats)}")
        band_count = int(next(iter(stats.values())).bands)
        return cls({
            "format": FORMAT,
            "method": method,
            "config_name": config_name,
            "classes": [c.model_dump() for c in classes],
            "band_count": band_count,
            "band_map": list(band_map) if band_map else [{"index": i, "name": f"band {i + 1}"}
                                                         for i in range(band_count)],
            "stats": {k: v.to_dict() for k, v in stats.items()},
            "default_stats": default_stats,
            "ignore_index": IGNORE_INDEX,
            "inference": dict(inference),
            # read without torch by the service, which refuses an AdaBN job on a model that has none
            "batchnorm_layers": batchnorm_layers,
            "provenance": dict(provenance or {}),
            "metrics": dict(metrics or {}),
        })

    @classmethod
    def read(cls, path: str | Path) -> BundleManifest:
        """The manifest of a bundle folder, a job output folder or a zip of either, without unpacking
        anything. Errors name no server path (clients see them) and point at the ``bundle`` field."""
        path = Path(path)
        data = None
        try:
            if path.is_file() and zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as zf:
                    member = manifest_member(zf.namelist())
                    if member is not None:
                        data = json.loads(zf.read(member))
            else:
                d = bundle_dir_of(path)
                if d is not None:
                    data = json.loads((d / MANIFEST).read_text())
        except (OSError, ValueError, zipfile.BadZipFile):
            raise BundleError(f"the model bundle's manifest ({MANIFEST}) is unreadable", field="bundle") from None
        if not isinstance(data, dict):
            raise BundleError(f"no model bundle there (no {MANIFEST} in it or in its {BUNDLE}/ folder)",
                              field="bundle")
        return cls(data)

    def check_loadable(self) -> None:
        """Refuse a manifest of another format, or one that lacks what loading the bundle needs."""
        if self.data.get("format") != FORMAT:
            raise BundleError(f"bundle format {self.data.get('format')!r} is not supported (expected {FORMAT})")
        for key in _REQUIRED:
            if key not in self.data:
                raise BundleError(f"bundle manifest lacks {key!r}")

    @property
    def band_count(self) -> int:
        """The number of bands the model takes."""
        try:
            return int(self.data["band_count"])
        except (KeyError, TypeError, ValueError):
            raise BundleError("the model bundle's manifest has no band count", field="bundle") from None

    @property
    def classes(self) -> list[ClassSpec]:
        return [ClassSpec.model_validate(c) for c in self.data["classes"]]

    @property
    def class_ids(self) -> list:
        """The class ids as written, without validating the classes (whatever a client's file holds)."""
        return [c.get("id") for c in self.data.get("classes") or [] if isinstance(c, dict)]

    @property
    def stats(self) -> dict[str, BandStats]:
        """name ("source", "target") -> BandStats."""
        return {k: BandStats.from_dict(v) for k, v in self.data["stats"].items()}

    @property
    def default_stats(self) -> str:
        return self.data.get("default_stats", "source")

    @property
    def method(self) -> str | None:
        return self.data.get("method")

    @property
    def config_name(self) -> str | None:
        return self.data.get("config_name")

    @property
    def inference(self) -> dict:
        """How to rebuild the network: the registered inference segmentor's config."""
        return self.data["inference"]

    @property
    def batchnorm_layers(self) -> int | None:
        """How many batch-norm layers the network has; None for bundles written before it was counted."""
        return self.data.get("batchnorm_layers")

    @property
    def band_map(self) -> list:
        return self.data.get("band_map", [])

    @property
    def provenance(self) -> dict:
        return self.data.get("provenance", {})

    @property
    def metrics(self) -> dict:
        return self.data.get("metrics", {})
