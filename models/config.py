"""Model configs by name: list the leaves of configs/, load one (mmengine Config), apply overrides, fit to a job.

A leaf (``configs/<name>.py``) composes ``_base_/models``, ``_base_/schedules`` and optionally
``_base_/adaptation``. The adaptation block actually used is chosen by the job's method: the
method's base block (``_base_/adaptation/<method>.py``) with the leaf's block merged on top when
the leaf's block is for the same method (or names no method).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Mapping

from mmengine.config import Config, ConfigDict

from core import overrides as core_overrides
from core.errors import ConfigError
from core.files import write_json

#: keys a resolved config always has
REQUIRED_KEYS = ("model", "optim", "lr_schedule")


def config_dir() -> Path:
    """The configs/ folder shipped with the package."""
    import configs

    # __path__ rather than __file__: an editable install may expose configs as a namespace package
    return Path(next(iter(configs.__path__))).resolve()


def list_configs() -> list[str]:
    """Names of the leaf configs (what a job's ``model.config`` may name)."""
    return sorted(p.stem for p in config_dir().glob("*.py") if not p.name.startswith("_"))


def describe_config(name: str) -> str:
    """First comment line of a leaf: a one-line description for ``geoadapt configs``."""
    path = config_dir() / f"{name}.py"
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def config_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".py" and p.exists():
        return p
    leaf = config_dir() / f"{name_or_path}.py"
    if re.fullmatch(r"[A-Za-z0-9_.\-]+", str(name_or_path)) and leaf.exists():
        return leaf
    raise ConfigError(f"unknown model config {str(name_or_path)!r}; known: {', '.join(list_configs())}",
                      field="model.config")


def _plain(obj: Any) -> Any:
    if isinstance(obj, (Config, ConfigDict, Mapping)):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def load_config(name_or_path: str | Path) -> dict:
    """A leaf config as a plain dict (``_base_`` resolved), plus ``name``."""
    path = config_path(name_or_path)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as e:  # mmengine raises many types for a broken file
        raise ConfigError(f"cannot read config {path.name}: {e}", field="model.config") from None
    out = _plain(cfg.to_dict())
    out["name"] = path.stem
    return out


def apply_overrides(cfg: dict, overrides: Mapping[str, Any] | None) -> dict:
    """Apply ``{"a.b.c": value}`` or nested ``{"a": {"b": ...}}`` overrides; a key must be one the config
    has, or an argument of the module its section builds (core/overrides.py, with the live registry)."""
    from models.overrides import module_arguments

    return core_overrides.apply_overrides(cfg, overrides, module_arguments())


def select_adaptation(cfg: dict, method: str) -> dict:
    """Put the adaptation block for ``method`` in place (see module docstring)."""
    return _select_block(cfg, "adaptation", method)


def select_pretraining(cfg: dict, method: str) -> dict:
    """Put the pretraining block for ``method`` (``_base_/pretraining/<method>.py``, the leaf's block merged on
    top when it is for the same method) in place of any adaptation block: a pretrain job adapts nothing."""
    out = _select_block(cfg, "pretraining", method)
    out.pop("adaptation", None)
    return out


def _select_block(cfg: dict, kind: str, method: str) -> dict:
    """``cfg`` with its ``kind`` block (adaptation or pretraining) for ``method``: the method's base block
    with the leaf's merged on top when the leaf's is for the same method (or names none)."""
    out = copy.deepcopy(cfg)
    base_file = config_dir() / "_base_" / kind / f"{method}.py"
    block: dict = {"type": method}
    if base_file.exists():
        block = _plain(Config.fromfile(str(base_file)).to_dict()).get(kind, block)
    leaf_block = cfg.get(kind) or {}
    if leaf_block.get("type", method) == method:
        block = core_overrides.merge(block, {k: v for k, v in leaf_block.items() if k != "type"})
    block["type"] = method
    out[kind] = block
    return out


def resolve_config(
    name_or_path: str | Path | Mapping,
    *,
    method: str = "source-only",
    overrides: Mapping[str, Any] | None = None,
    in_channels: int | None = None,
    num_classes: int | None = None,
    checkpoint: str | Path | None = None,
    band_roles: list[str] | None = None,
    pretraining: str | None = None,
) -> dict:
    """Load (or copy) a config, choose the method's adaptation block (or, with ``pretraining``, that pretraining
    method's block instead), apply overrides, fit the bands and classes of a job, and check the result.
    Returns a plain dict."""
    cfg = copy.deepcopy(dict(name_or_path)) if isinstance(name_or_path, Mapping) else load_config(name_or_path)
    cfg = select_pretraining(cfg, pretraining) if pretraining else select_adaptation(cfg, method)
    cfg = apply_overrides(cfg, overrides)
    for key in REQUIRED_KEYS:
        if key not in cfg:
            raise ConfigError(f"config {cfg.get('name')!r} has no {key!r} section", field="model.config")
    model = cfg["model"]
    if in_channels is not None:
        model["backbone"]["in_channels"] = int(in_channels)
    if num_classes is not None:
        model["decode_head"]["num_classes"] = int(num_classes)
    _fit_band_roles(cfg, band_roles)
    k = int(model["decode_head"]["num_classes"])
    _check_class_weights(cfg, k)
    _check_augment(cfg)
    if checkpoint is not None:
        cfg["checkpoint"] = str(checkpoint)
    fit_head_to_backbone(cfg)
    return cfg


#: backbones that take ``band_roles`` themselves (to map each band onto the pretrained input distribution)
_ROLE_AWARE_BACKBONES = ("EfficientNetLite",)


def default_band_roles(bands: int) -> list[str] | None:
    """Roles assumed when a job names none: RGB for 3 bands, panchromatic for 1; otherwise unknown."""
    from core.jobspec import RGB_ROLES

    return {3: list(RGB_ROLES), 1: ["pan"]}.get(bands)


def _fit_band_roles(cfg: dict, band_roles: list[str] | None) -> None:
    """Record the job's band roles (or the default for its band count) where the pretrained loader and a
    role-aware backbone read them; a count that does not fit the bands is refused."""
    backbone = cfg["model"]["backbone"]
    bands = int(backbone.get("in_channels", 3))
    # a config taken from a bundle keeps the roles its model was trained with
    roles = band_roles if band_roles is not None else cfg.get("band_roles")
    if roles is not None and len(roles) != bands:
        raise ConfigError(f"model.band_roles names {len(roles)} bands but the job's imagery has {bands}",
                          field="model.band_roles")
    roles = list(roles) if roles is not None else default_band_roles(bands)
    cfg["band_roles"] = roles
    if backbone.get("type") in _ROLE_AWARE_BACKBONES:
        backbone["band_roles"] = roles


def _check_class_weights(cfg: dict, k: int) -> None:
    from models.class_weights import AUTO, weight_slots

    for field, holder, key in weight_slots(cfg):
        cw = holder.get(key)
        if cw is None or cw == AUTO:
            continue
        if isinstance(cw, str) or not isinstance(cw, (list, tuple)):
            raise ConfigError(f"{field} must be a list of {k} weights, 'auto' or null, not {cw!r}",
                              field=f"model.overrides.{field}")
        if len(cw) != k:
            raise ConfigError(
                f"{field} has {len(cw)} weights but the job has {k} classes; override it "
                f"(model.overrides: {{'{field}': [...]}}), set it to 'auto' (from the training labels) or null",
                field=f"model.overrides.{field}")


def _check_augment(cfg: dict) -> None:
    from models.sampling.photometric import photometric_of
    from models.sampling.rescale import rescale_of

    for name, read in (("photometric", photometric_of), ("resize", rescale_of)):
        try:
            read(cfg)
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e), field=f"model.overrides.augment.{name}") from None


def fit_head_to_backbone(cfg: dict) -> None:
    """Set the decode head's in_channels from the backbone's real level widths (found by probing),
    so overriding a backbone width never leaves a mismatched head."""
    from models.segmentor import build_module, probe_channels

    model = cfg["model"]
    if model.get("neck"):
        return  # a neck decides the head's inputs; trust the config
    backbone = build_module(model["backbone"], "backbone")
    levels = probe_channels(backbone, int(model["backbone"].get("in_channels", 3)))
    head = model["decode_head"]
    idx = head.get("in_index", len(levels) - 1)
    head["in_channels"] = [levels[i] for i in idx] if isinstance(idx, (list, tuple)) else levels[idx]
    cfg["level_channels"] = levels


def train_settings(cfg: Mapping, explicit: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """iterations / batch_size / crop: a job's explicitly set params, else the config's ``train``
    block, else the job schema defaults."""
    out = dict(defaults)
    out.update({k: v for k, v in (cfg.get("train") or {}).items() if k in defaults})
    out.update({k: v for k, v in explicit.items() if k in defaults})
    return out


def override_catalogue() -> dict:
    """What the API needs to judge overrides at submit: module arguments and each config per method that
    builds a model from it (the registered adaptation wrappers and pretraining methods; adabn re-estimates a
    bundle's model)."""
    from models.adaptation import METHODS
    from models.overrides import module_arguments
    from models.pretraining import PRETRAINING

    configs = {}
    for name in list_configs():
        cfg = load_config(name)
        configs[name] = {method: select_adaptation(cfg, method) for method in sorted(METHODS)}
        configs[name].update({method: select_pretraining(cfg, method) for method in sorted(PRETRAINING)})
    return {"modules": module_arguments(), "configs": configs}


def write_override_catalogue(path: Path) -> Path:
    """Written whole or not at all (the API may read it at any moment)."""
    return write_json(path, override_catalogue())
