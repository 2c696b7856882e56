"""The one rule for which statistics normalise which windows, and the normaliser that applies them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.bundle_manifest import BundleManifest
from core.errors import BandCountMismatchError, BundleError, ConfigError
from core.jobspec import ClassSpec
from core.raster.stats import BandStats
from models.normalization import (MissingStatisticsError, Normalization, Normalizer, prediction_choice,
                                  stats_for)

SRC = BandStats(mean=[10.0, 20.0], std=[2.0, 4.0], count=1)
TGT = BandStats(mean=[30.0, 40.0], std=[5.0, 0.0], count=1)
OWN = BandStats(mean=[50.0, 60.0], std=[1.0, 1.0], count=1)
BOTH = {"source": SRC, "target": TGT}


@pytest.mark.parametrize("case, role, normalization, available, own, want", [
    ("train job: source windows", "source", "per-domain", {"source"}, False, "source"),
    ("train job: validation, no target", "validation", "per-domain", {"source"}, False, "source"),
    ("adapt per-domain: source windows", "source", "per-domain", BOTH, False, "source"),
    ("adapt per-domain: target windows", "target", "per-domain", BOTH, False, "target"),
    ("adapt per-domain: validation", "validation", "per-domain", BOTH, False, "target"),
    ("adapt source: target windows", "target", "source", BOTH, False, "source"),
    ("adapt source: validation", "validation", "source", BOTH, False, "source"),
    ("evaluate: source scenes", "source", "per-domain", BOTH, True, "source"),
    ("evaluate: target scenes, bundle with target", "target", "per-domain", BOTH, True, "target"),
    ("evaluate: validation, bundle without target", "validation", "per-domain", {"source"}, True, "own"),
    ("evaluate: normalization source", "validation", "source", BOTH, True, "source"),
])
def test_the_rule_by_role(case, role, normalization, available, own, want):
    assert stats_for(role, normalization, available, own=own) == want, case


def test_the_rule_refuses_unknown_roles_and_choices():
    with pytest.raises(ValueError):
        stats_for("test", "per-domain", BOTH)
    with pytest.raises(ValueError):
        stats_for("target", "per-band", BOTH)
    with pytest.raises(ValueError):
        prediction_choice("test")


@pytest.mark.parametrize("stats, normalization, default", [
    ({"source": SRC}, "per-domain", "source"),  # train job
    (BOTH, "per-domain", "target"),  # adapt, per-domain
    (BOTH, "source", "source"),  # adapt, normalization source (target statistics kept, not used)
])
def test_default_is_what_target_windows_get_in_training(stats, normalization, default):
    n = Normalization(stats, normalization)
    assert n.default == default
    assert n.for_domain("target").name == n.for_domain("validation").name == default
    assert n.for_domain("source").name == "source"


def test_for_domain_with_a_jobs_own_choice_and_own_statistics():
    n = Normalization({"source": SRC})
    got = n.for_domain("validation", own=lambda: OWN)
    assert got.name == "own" and got.stats is OWN
    assert n.for_domain("validation").stats is SRC  # training: no own statistics, the source's
    both = Normalization(BOTH)
    assert both.for_domain("target", normalization="source", own=lambda: OWN).stats is SRC


@pytest.mark.parametrize("case, stats, default, choice, want, want_stats", [
    ("auto, bundle with target", BOTH, None, "auto", "target", TGT),
    ("auto, bundle without target", {"source": SRC}, None, "auto", "source", SRC),
    ("auto, bundle trained with source statistics", BOTH, "source", None, "source", SRC),
    ("named source", BOTH, None, "source", "source", SRC),
    ("named target", BOTH, None, "target", "target", TGT),
    ("input", BOTH, None, "input", "input", OWN),
    ("own (evaluate)", BOTH, None, "own", "own", OWN),
    ("custom BandStats", BOTH, None, OWN, "custom", OWN),
])
def test_prediction_choices(case, stats, default, choice, want, want_stats):
    got = Normalization(stats, default=default).for_prediction(choice, input_stats=lambda: OWN)
    assert got.name == want, case
    assert got.stats.mean == want_stats.mean, case


def test_prediction_choices_that_cannot_be_met():
    n = Normalization({"source": SRC})
    custom = n.for_prediction(OWN.to_dict())
    assert custom.name == "custom" and custom.stats.mean == OWN.mean
    with pytest.raises(MissingStatisticsError) as e:
        n.for_prediction("target")
    assert isinstance(e.value, ConfigError) and isinstance(e.value, BundleError) and e.value.field == "stats"
    with pytest.raises(ConfigError):
        n.for_prediction("input")  # nobody said how to get the input's statistics
    with pytest.raises(BandCountMismatchError):
        n.for_prediction(BandStats(mean=[1.0], std=[1.0], count=1))


def test_prediction_choice_per_role():
    assert prediction_choice("source") == "source"
    assert prediction_choice("target") == prediction_choice("validation") == "auto"


def test_a_model_needs_source_statistics_and_a_default_it_has():
    with pytest.raises(BundleError):
        Normalization({"target": TGT})
    with pytest.raises(BundleError):
        Normalization({"source": SRC}, default="target")


def test_manifest_round_trip_and_bundles_without_a_default():
    n = Normalization(BOTH, "source")
    saved = BundleManifest.create(classes=[ClassSpec(id=1, name="a", color="#00ff00")], stats=n.stats, default_stats=n.default,
                                  inference={}, method="source-only")
    back = Normalization.of_bundle(BundleManifest(json.loads(json.dumps(saved.data))))  # as written and read
    assert back.default == "source" and back.stats["target"].mean == TGT.mean
    assert back.for_domain("target").name == "source"  # consistent with the stored default
    old = Normalization.of_bundle(BundleManifest({"stats": {"source": SRC.to_dict(), "target": TGT.to_dict()}}))
    assert old.default == "source" and old.for_prediction().stats.mean == SRC.mean


def test_normalizer_numerics_and_nodata():
    raw = np.array([[[12.0, 8.0], [10.0, 0.0]], [[24.0, 16.0], [20.0, 0.0]]], np.float32)
    valid = np.array([[True, True], [True, False]])
    x = Normalizer(SRC)(raw, valid)
    assert x.dtype == np.float32 and x.shape == (2, 2, 2)
    np.testing.assert_array_equal(x[:, 0, 0], [1.0, 1.0])
    np.testing.assert_array_equal(x[:, 0, 1], [-1.0, -1.0])
    np.testing.assert_array_equal(x[:, 1, 1], [0.0, 0.0])  # invalid pixels are 0
    # a zero standard deviation is floored, not divided by; batches (N, B, H, W) alike
    y = Normalizer(TGT)(np.stack([raw, raw]), np.stack([valid, valid]))
    assert y.shape == (2, 2, 2, 2) and np.isfinite(y).all()
    np.testing.assert_allclose(y[0, 1, 0, 0], (24.0 - 40.0) / 1e-6, rtol=1e-6)
    with pytest.raises(BandCountMismatchError):
        Normalizer(SRC)(raw[:1])
