"""Photometric distortion of training crops: mmseg's ``PhotoMetricDistortion`` (the ST-DASegNet
spec's augmentation of source crops and target images) for any band count and value range.

mmseg works on 8-bit images. Each step applies with probability 0.5 and clips to 0-255:
brightness adds U(-32, 32); contrast multiplies by U(0.5, 1.5) and runs second or last at random;
a 3-band image also gets saturation (S x U(0.5, 1.5)) and hue (+- 18 of OpenCV's 180) in HSV.
Here each band's observed range [min, max] in the domain's statistics plays the part of 0-255, so a
uint8 band that spans 0-255 is distorted as mmseg would (without its uint8 rounding), and other
dtypes and ranges get the same relative change. Saturation and hue need exactly three bands
(multispectral imagery has no hue); other band counts get brightness and contrast only.

The draws come from the distortion's own generator, saved with the sampler's state, so a resumed
run distorts the same crops the same way and the crop positions do not depend on this option.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.raster.stats import BandStats


@dataclass(frozen=True)
class PhotometricSettings:
    """mmseg's defaults; ``augment.photometric`` in a config may override any of them."""

    brightness_delta: float = 32.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    @classmethod
    def from_config(cls, value: bool | dict | None) -> "PhotometricSettings | None":
        """``augment.photometric``: False/None (off), True (mmseg's defaults) or a dict of fields."""
        if not value:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"augment.photometric must be true, false or a dict, not {value!r}")
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"augment.photometric: unknown field(s) {sorted(unknown)}; "
                             f"known: {sorted(cls.__dataclass_fields__)}")
        fields = dict(value)
        for key in ("contrast_range", "saturation_range"):
            if key in fields:
                fields[key] = tuple(float(v) for v in fields[key])
        return cls(**fields)


def photometric_of(cfg: dict) -> PhotometricSettings | None:
    """The resolved config's ``augment.photometric`` as settings (None: off)."""
    return PhotometricSettings.from_config((cfg.get("augment") or {}).get("photometric"))


class PhotometricDistortion:
    """Distorts one raw (C, H, W) crop at a time; returns float32 in the input's units."""

    def __init__(self, stats: BandStats, settings: PhotometricSettings, *, seed: int):
        self.settings = settings
        if len(stats.min) == stats.bands and len(stats.max) == stats.bands:
            lo, hi = np.asarray(stats.min, np.float64), np.asarray(stats.max, np.float64)
        else:  # statistics written without a range: mean +- 3 std stands in for it
            mean, std = np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64)
            lo, hi = mean - 3 * std, mean + 3 * std
        self.lo = lo.astype(np.float32).reshape(-1, 1, 1)
        self.span = np.maximum(hi - lo, 1e-6).astype(np.float32).reshape(-1, 1, 1)
        self.rng = np.random.Generator(np.random.PCG64(int(seed)))

    def __call__(self, data: np.ndarray) -> np.ndarray:
        s, rng = self.settings, self.rng
        x = np.clip((data.astype(np.float32) - self.lo) * (255.0 / self.span), 0.0, 255.0)
        if rng.integers(2):
            x = np.clip(x + np.float32(rng.uniform(-s.brightness_delta, s.brightness_delta)), 0.0, 255.0)
        contrast_last = rng.integers(2) == 0  # mmseg's "mode"
        if not contrast_last:
            x = self._contrast(x)
        if x.shape[0] == 3:
            x = self._saturation_and_hue(x)
        if contrast_last:
            x = self._contrast(x)
        return (x * (self.span / 255.0) + self.lo).astype(np.float32)

    def _contrast(self, x: np.ndarray) -> np.ndarray:
        if self.rng.integers(2):
            lo, hi = self.settings.contrast_range
            return np.clip(x * np.float32(self.rng.uniform(lo, hi)), 0.0, 255.0)
        return x

    def _saturation_and_hue(self, x: np.ndarray) -> np.ndarray:
        import cv2  # comes with mmcv; only 3-band crops need it

        s, rng = self.settings, self.rng
        sat = rng.uniform(*s.saturation_range) if rng.integers(2) else None
        hue = int(rng.integers(-s.hue_delta, s.hue_delta, endpoint=True)) if rng.integers(2) else None
        if sat is None and hue is None:
            return x
        hsv = cv2.cvtColor(np.ascontiguousarray(x.transpose(1, 2, 0)) / 255.0, cv2.COLOR_RGB2HSV)
        if sat is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0.0, 1.0)
        if hue is not None:  # OpenCV's 8-bit hue unit is 2 degrees
            hsv[..., 0] = (hsv[..., 0] + 2.0 * hue) % 360.0
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
        return np.clip(rgb, 0.0, 255.0).transpose(2, 0, 1).astype(np.float32)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
