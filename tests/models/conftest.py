"""Fixtures for the models tests: one CPU thread, tiny deterministic configs, synthetic batches."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def source(nc_bands, nc_data, nc_classes):
    """The real NC scene with its labels, region = the western 60 % of columns (Benchmark A's train)."""
    from core.jobspec import DomainSpec
    from core.raster.domain import Domain

    spec = DomainSpec.model_validate(
        {"scenes": [{"bands": [str(p) for p in nc_bands], "labels": str(nc_data["strata"])}],
         "region": {"columns": [0.0, 0.6]}})
    with Domain.open(spec, nc_classes) as dom:
        yield dom


def tiny_cfg(method: str = "source-only", *, bands: int = 4, classes: int = 3, **overrides):
    """The segformer-tiny config fitted to a job, with dropout off so forward passes repeat exactly."""
    from models.config import resolve_config

    ov = {"model.decode_head.dropout_ratio": 0.0}
    ov.update(overrides)
    return resolve_config("segformer-tiny", method=method, overrides=ov, in_channels=bands, num_classes=classes)


def synthetic_batch(bands: int = 4, classes: int = 3, b: int = 2, crop: int = 32, seed: int = 0, target=True):
    g = torch.Generator().manual_seed(seed)
    batch = {"source": {"img": torch.randn(b, bands, crop, crop, generator=g),
                        "label": torch.randint(0, classes, (b, crop, crop), generator=g),
                        "valid": torch.ones(b, crop, crop, dtype=torch.bool)}}
    batch["source"]["label"][:, :2] = 255  # a nodata strip
    if target:
        valid = torch.ones(b, crop, crop, dtype=torch.bool)
        valid[:, -3:] = False
        batch["target"] = {"img": torch.randn(b, bands, crop, crop, generator=g) * 1.5 + 0.3, "valid": valid}
    return batch


class SyntheticBatches:
    """A resumable batch source with its own generator (stands in for the samplers in loop tests)."""

    def __init__(self, seed: int = 0, **kw):
        self.kw = kw
        self.g = torch.Generator().manual_seed(seed)

    def next(self, iteration: int) -> dict:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.g))
        return synthetic_batch(seed=seed, **self.kw)

    def state_dict(self):
        return {"g": self.g.get_state()}

    def load_state_dict(self, s):
        self.g.set_state(s["g"])


@pytest.fixture
def tiny():
    """tiny_cfg(method, bands=, classes=, **overrides) -> resolved config dict."""
    return tiny_cfg


@pytest.fixture
def make_batch():
    """synthetic_batch(bands=, classes=, b=, crop=, seed=, target=) -> batch dict."""
    return synthetic_batch


@pytest.fixture
def batch_source():
    """SyntheticBatches(seed=, **synthetic_batch kwargs): a resumable batch source."""
    return SyntheticBatches
