"""Pretrained weights from a local mmseg-format checkpoint file (never downloaded).

Accepted: a backbone checkpoint (keys without prefix, e.g. a converted ``mit_b5.pth``) or a full
mmseg segmentor checkpoint (``backbone.*``, ``decode_head.*``, optionally under ``state_dict``).
Every student backbone gets the backbone weights (ST-DASegNet's two backbones start identical);
decoders get ``decode_head.*`` weights whose shapes fit (a different class count does not).
A first convolution trained on 3 bands is adapted to the job's band count: the mean filter over
the input channels, repeated and rescaled by 3 / bands, so activations keep their scale.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.errors import ConfigError


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"pretrained checkpoint not found: {path}", field="model.checkpoint") from None
    except Exception as e:  # unpickling errors come in many types
        raise ConfigError(f"cannot read pretrained checkpoint {path}: {str(e)[:200]}", field="model.checkpoint") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"{path} holds no state dict of tensors", field="model.checkpoint")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _only_input_dim_differs(own: torch.Tensor, v: torch.Tensor) -> bool:
    return (own.dim() == v.dim() and own.dim() in (2, 4) and own.shape[0] == v.shape[0]
            and own.shape[2:] == v.shape[2:] and own.shape[1] != v.shape[1])


def _fit(module: nn.Module, state: dict[str, torch.Tensor], report: dict, *, bands: int | None = None) -> None:
    """Copy fitting tensors. Two mismatches are bridged: a backbone's first convolution trained on other
    bands (``bands``: the job's count) is adapted as the module docstring says; a decoder input widened
    by the DDM keeps the checkpoint's weights on the old channels and starts the new ones at zero."""
    own = module.state_dict()
    fitted = {}
    for k, v in state.items():
        if k not in own:
            continue
        o = own[k]
        if o.shape == v.shape:
            fitted[k] = v
        elif _only_input_dim_differs(o, v) and bands is not None and o.shape[1] == bands and v.dim() == 4:
            fitted[k] = v.mean(dim=1, keepdim=True).repeat(1, bands, 1, 1) * (v.shape[1] / bands)
            report["adapted"].append(k)
        elif _only_input_dim_differs(o, v) and bands is None and o.shape[1] > v.shape[1]:
            w = torch.zeros_like(o)
            w[:, : v.shape[1]] = v
            fitted[k] = w
            report["widened"].append(k)
        else:
            report["skipped"].append(k)
    missing = [k for k in own if k not in fitted]
    module.load_state_dict({**own, **fitted})
    report["loaded"] += len(fitted)
    report["missing"] += len(missing)


def load_pretrained(method, path: str | Path) -> dict:
    """Load ``path`` into the method's backbones (and decoders when present); returns a report."""
    state = _load_state(Path(path))
    has_prefix = any(k.startswith(("backbone.", "decode_head.")) for k in state)
    if has_prefix:
        bb = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        head = {k[len("decode_head."):]: v for k, v in state.items() if k.startswith("decode_head.")}
    else:
        bb, head = state, {}
    report = {"path": str(path), "loaded": 0, "missing": 0, "adapted": [], "widened": [], "skipped": []}
    bands = int(method.cfg["model"]["backbone"].get("in_channels", 3))
    for b in method.backbones():
        _fit(b, bb, report, bands=bands)
    if report["loaded"] == 0:
        raise ConfigError(f"{path}: no tensor fits the model's backbone (is it for this architecture?)",
                          field="model.checkpoint")
    for d in method.decoders() if head else []:
        _fit(d, head, report)
    method.after_pretrained()
    for key in ("adapted", "widened", "skipped"):
        report[key] = sorted(set(report[key]))
    return report
