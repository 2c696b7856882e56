"""Random rescaling of source crops: mmseg's ``RandomResize(ratio_range=(0.5, 2.0))`` followed by a
crop, as the ST-DASegNet spec's source pipeline has it ("random resize 0.5-2x, crop").

mmseg resizes the whole image by a ratio r drawn uniformly from the range, then crops ``crop`` px.
A large raster is never resized whole here; the same crop comes from reading a window of
``round(crop / r)`` px of ground (inside the region, centred on the window the sampler drew) and
resizing it to ``crop`` px: r = 2 reads half the ground and enlarges it, r = 0.5 reads twice the
ground and shrinks it. Image values are resized bilinearly (mmseg's default, no antialiasing),
labels and the valid mask by nearest neighbour.

Target images are not rescaled (the spec resizes them to the crop size, which a window already is).
The ratios come from the rescaler's own generator, saved with the sampler's state, so a resumed run
rescales the same crops the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window


@dataclass(frozen=True)
class RescaleSettings:
    """``augment.resize`` in a config: the ratio range of mmseg's RandomResize."""

    ratio_range: tuple[float, float] = (0.5, 2.0)

    @classmethod
    def from_config(cls, value) -> "RescaleSettings | None":
        """False/None (off), True (0.5-2x), a [low, high] pair or ``{"ratio_range": [low, high]}``."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, dict):
            unknown = set(value) - {"ratio_range"}
            if unknown:
                raise ValueError(f"augment.resize: unknown field(s) {sorted(unknown)}; known: ['ratio_range']")
            value = value.get("ratio_range", cls.ratio_range)
        if not isinstance(value, (list, tuple)) or len(value) != 2 or isinstance(value, str):
            raise ValueError(f"augment.resize must be true, false or a [low, high] ratio pair, not {value!r}")
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"augment.resize ratios must be numbers, not {value!r}") from None
        if not 0 < lo <= hi:
            raise ValueError(f"augment.resize needs 0 < low <= high, not {value!r}")
        return cls((lo, hi))


def rescale_of(cfg: dict) -> RescaleSettings | None:
    """The resolved config's ``augment.resize`` as settings (None: off)."""
    return RescaleSettings.from_config((cfg.get("augment") or {}).get("resize"))


class RandomRescale:
    """Chooses the ground window of each rescaled crop and resizes what was read to ``crop`` px."""

    def __init__(self, settings: RescaleSettings, crop: int, *, seed: int):
        self.settings, self.crop = settings, int(crop)
        self.rng = np.random.Generator(np.random.PCG64(int(seed)))

    def window_around(self, win: Window, bounds: tuple[int, int, int, int]) -> Window:
        """A square window of ``round(crop / r)`` px with ``win``'s centre, moved (and if need be
        shrunk) to lie inside ``bounds`` = (row_off, col_off, height, width) of the region."""
        r0, c0, h, w = bounds
        ratio = float(self.rng.uniform(*self.settings.ratio_range))
        size = int(min(max(round(self.crop / ratio), 1), h, w))
        cr = win.row_off + win.height / 2.0
        cc = win.col_off + win.width / 2.0
        row = int(min(max(round(cr - size / 2.0), r0), r0 + h - size))
        col = int(min(max(round(cc - size / 2.0), c0), c0 + w - size))
        return Window(col, row, size, size)

    def resize(self, img: np.ndarray, valid: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
        """(C, s, s) normalised image, (s, s) valid mask and labels -> the same at ``crop`` px.
        Invalid pixels of the image are 0 after resizing, as ``normalize`` leaves them."""
        if img.shape[-1] == self.crop and img.shape[-2] == self.crop:
            return img, valid, labels
        size = (self.crop, self.crop)
        x = F.interpolate(torch.from_numpy(np.ascontiguousarray(img))[None], size=size, mode="bilinear",
                          align_corners=False)[0].numpy()
        near = torch.from_numpy(np.stack([valid.astype(np.uint8), labels.astype(np.uint8)]))[None]
        v, lab = F.interpolate(near, size=size, mode="nearest")[0].numpy()
        v = v.astype(bool)
        return np.where(v[None], x, np.float32(0.0)).astype(np.float32), v, lab.astype(labels.dtype)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
