"""Class weights computed from the training labels: ``"auto"`` in place of a weight list.

Remote-sensing label maps are dominated by a few classes (Benchmark A's source: forest 56 %,
sediment 0.08 %), and mIoU counts every class present alike, so a cross entropy that weighs all
pixels alike learns to ignore the rare ones. ``"auto"`` gives SegNet's median-frequency balancing
softened by a square root, w_c = sqrt(median(f) / f_c) over the classes present in the labelled
training region (the full ratio gives a class at 0.08 % a weight over 100, which swamps the loss).
Classes absent from the labels get 1. The weights are computed once per job, from the labelled
domain the job trains on, and written into the resolved config, so the bundle records the numbers.

Where: ``model.decode_head.loss_decode.class_weight`` (the CE of every method),
``adaptation.target_class_weight`` and ``adaptation.pseudo_class_weight`` (ST-DASegNet's cw).
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np

from core.errors import ConfigError

AUTO = "auto"


def balanced_class_weights(counts: Sequence[float]) -> list[float]:
    """sqrt(median f / f_c) over the classes with pixels; 1 for classes without."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    if not present.any():
        raise ConfigError("class_weight 'auto' needs labelled pixels, and the training labels hold none",
                          field="model.overrides")
    f = counts / counts.sum()
    w = np.ones_like(f)
    w[present] = np.sqrt(np.median(f[present]) / f[present])
    return [round(float(x), 4) for x in w]


def _loss_decode(cfg: dict) -> dict | None:
    loss = (cfg["model"].get("decode_head") or {}).get("loss_decode")
    if isinstance(loss, (list, tuple)):  # mmseg allows a list of losses; the first is the CE
        loss = loss[0] if loss else None
    return loss if isinstance(loss, dict) else None


def weight_slots(cfg: dict) -> list[tuple[str, dict, str]]:
    """(field name, the dict holding it, key) of every place a class weight list may sit."""
    out = []
    loss = _loss_decode(cfg)
    if loss is not None:
        out.append(("model.decode_head.loss_decode.class_weight", loss, "class_weight"))
    a = cfg.get("adaptation")
    if isinstance(a, dict):
        out += [(f"adaptation.{k}", a, k) for k in ("target_class_weight", "pseudo_class_weight")]
    return out


def auto_fields(cfg: dict) -> list[str]:
    """The fields of a resolved config set to ``"auto"``."""
    return [name for name, holder, key in weight_slots(cfg) if holder.get(key) == AUTO]


def fill_auto_class_weights(cfg: dict, counts: Callable[[], Sequence[float]] | None = None, *,
                            weights: Sequence[float] | None = None) -> dict:
    """A copy of ``cfg`` with each ``"auto"`` replaced by ``balanced_class_weights(counts())``.

    ``counts`` (per-class pixel counts of the labelled training region) is only called when a field
    asks for it. A job that trains on no labels passes the ``weights`` already computed for the model
    it starts from (feature regression: its teacher's); with neither, ``"auto"`` is an error."""
    fields = auto_fields(cfg)
    if not fields:
        return cfg
    if weights is None:
        if counts is None:
            raise ConfigError(f"{fields[0]} 'auto' needs labelled training scenes, and this job trains on none",
                              field=f"model.overrides.{fields[0]}")
        weights = balanced_class_weights(counts())
    out = copy.deepcopy(cfg)
    for _name, holder, key in weight_slots(out):
        if holder.get(key) == AUTO:
            holder[key] = [float(w) for w in weights]
    return out
