"""A model's input normalisation: which band statistics normalise which windows (one rule), and the normaliser
that turns a raw window and its valid mask into the model's input.

A model keeps the statistics it was trained with, by name (``source``, and ``target`` when its job had a
target), and which of them its target-like windows got (``default``); a bundle's manifest stores both
(``stats``, ``default_stats``). Everyone who feeds the model (samplers, evaluation, label-free signals,
prediction, live tiles, benchmarks) asks this module for a :class:`Normalizer` and hands it raw windows.

The rule (:func:`stats_for`), by the role of the domain the windows come from::

    role                   normalization "per-domain"                        normalization "source"
    source                 source                                            source
    target, validation     target, when the model has target statistics;     source
                           else the windows' own when they can be computed
                           (evaluating a bundle), else source

Prediction (:meth:`Normalization.for_prediction`): ``auto`` (or None) -> the model's default; ``source`` /
``target`` by name; ``input`` (``own``) -> the input's own statistics; band statistics given -> ``custom``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from core.errors import BandCountMismatchError, BundleError, ConfigError
from core.raster.stats import BandStats, normalize

SOURCE, TARGET = "source", "target"
#: roles of the domains a job reads; validation scenes are labelled target-like scenes
ROLES = (SOURCE, TARGET, "validation")
NORMALIZATIONS = ("per-domain", "source")
#: names of statistics computed on the windows' own scenes (``input`` when predicting, ``own`` when evaluating)
OWN_CHOICES = ("input", "own")
CUSTOM = "custom"


class MissingStatisticsError(ConfigError, BundleError):
    """A choice of statistics the model does not have: a bad option and a limit of the bundle alike."""


def prediction_choice(role: str) -> str:
    """The prediction option (``stats``) that normalises a domain's scenes as the model's training did:
    source scenes with the source statistics, target-like scenes with the model's default."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return SOURCE if role == SOURCE else "auto"


def stats_for(role: str, normalization: str, available, *, own: bool = False) -> str:
    """The name of the statistics that normalise windows of a domain with ``role`` (see the module's table).

    ``available``: the names of the model's statistics; ``own``: whether the windows' own statistics
    can stand in for missing target statistics (the name returned is then ``own``).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {normalization!r}")
    if role == SOURCE or normalization == SOURCE:
        return SOURCE
    if TARGET in available:
        return TARGET
    return "own" if own else SOURCE


@dataclass(frozen=True)
class Normalizer:
    """One set of band statistics applied to raw windows: (..., C, H, W) -> float32 (x - mean) / std,
    invalid pixels 0. ``name`` says which statistics these are, for the record."""

    stats: BandStats
    name: str = CUSTOM

    def __call__(self, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        return normalize(data, self.stats, valid)


class Normalization:
    """The statistics a model was trained with, by name, and which windows get which of them.

    ``normalization``: the training job's choice (``per-domain`` or ``source``); it decides ``default``, the
    statistics of target-like windows, unless ``default`` is given (a bundle's stored ``default_stats``).
    """

    def __init__(self, stats: Mapping[str, Any], normalization: str = "per-domain", default: str | None = None):
        if SOURCE not in stats:
            raise BundleError("a model needs at least the source statistics")
        self.stats = dict(stats)
        self.normalization = normalization
        self.default = default or stats_for(TARGET, normalization, self.stats)
        if self.default not in self.stats:
            raise BundleError(f"default_stats {self.default!r} is not among the statistics {sorted(self.stats)}")

    @classmethod
    def of_bundle(cls, manifest: Any) -> "Normalization":
        """A saved bundle's normalisation, from its manifest (core.bundle_manifest.BundleManifest: ``stats``
        and ``default_stats``, which is the source's for bundles saved without one)."""
        stats, default = manifest.stats, manifest.default_stats
        # the training choice that gives this default, so windows by role get what the bundle's default says
        normalization = SOURCE if default == SOURCE and TARGET in stats else "per-domain"
        return cls(stats, normalization, default)

    @property
    def band_count(self) -> int:
        return int(self.stats[SOURCE].bands)

    def named(self, name: str) -> Normalizer:
        if name not in self.stats:
            raise MissingStatisticsError(
                f"the model bundle has no {name} statistics (it has: {', '.join(self.stats) or 'none'}); "
                "use stats=input to normalise with the input's own", field="stats")
        return Normalizer(self.stats[name], name)

    def for_domain(self, role: str, *, normalization: str | None = None,
                   own: Callable[[], BandStats] | None = None) -> Normalizer:
        """The normaliser of windows from a domain with ``role`` (source, target, validation).

        ``normalization``: a job's own choice over the model's (an evaluate job's); ``own``: computes the
        windows' own statistics, which then stand in for missing target statistics.
        """
        name = stats_for(role, normalization or self.normalization, self.stats, own=own is not None)
        return Normalizer(own(), name) if name == "own" else self.named(name)

    def for_prediction(self, choice: Any = None, *, input_stats: Callable[[], BandStats] | None = None
                       ) -> Normalizer:
        """The normaliser a prediction asked for: None or ``auto`` (the model's default), ``source``,
        ``target``, ``input`` / ``own`` (``input_stats()``, the input's own), or band statistics (a
        BandStats, anything with mean/std/bands, or their dict)."""
        if choice is not None and not isinstance(choice, str):
            normalizer = Normalizer(choice if hasattr(choice, "mean") else BandStats.from_dict(choice), CUSTOM)
        elif choice in OWN_CHOICES:
            if input_stats is None:
                raise ConfigError(f"stats={choice} needs the input's own statistics; pass them as band statistics",
                                  field="stats")
            normalizer = Normalizer(input_stats(), choice)
        elif choice in (None, "auto"):
            normalizer = self.named(self.default)
        else:
            normalizer = self.named(choice)
        if normalizer.stats.bands != self.band_count:
            raise BandCountMismatchError(
                f"statistics for {normalizer.stats.bands} bands, the model takes {self.band_count}")
        return normalizer
