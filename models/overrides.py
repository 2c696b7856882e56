"""The model registry's side of core/overrides.py: the arguments of every registered module and optimiser,
and the catalogue (those plus every shipped config, per method) that workers write for the API."""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

from core.files import write_json
from core.overrides import OPTIMIZER_KEYS, OPTIMIZERS

#: methods whose adaptation block a config is resolved with (models.config.select_adaptation)
METHODS = ("source-only", "st-dasegnet", "feature-regression")


@functools.cache
def module_arguments() -> dict[str, list[str]]:
    """name -> argument names, for every module in mmseg's model registry and the registries above it
    (names only: mmengine's ``get`` would also import any dotted path), and for the optimisers we build."""
    import torch
    from mmseg.registry import MODELS

    import models.ddm  # noqa: F401  (registers our modules)
    import models.discriminator  # noqa: F401
    import models.segmentor  # noqa: F401  (imports mmseg.models, which registers mmseg's)

    out: dict[str, list[str]] = {}
    registry = MODELS
    while registry is not None:
        for name, obj in registry.module_dict.items():
            out.setdefault(name, init_arguments(obj))
        registry = registry.parent
    for name in OPTIMIZERS:
        out[name] = sorted({*init_arguments(getattr(torch.optim, name)), *OPTIMIZER_KEYS})
    return out


def init_arguments(obj) -> list[str]:
    """Keyword arguments a class (its ``__init__``, walking up the MRO past ``**kwargs``) or function takes."""
    names: list[str] = []
    for klass in (obj.__mro__ if inspect.isclass(obj) else [obj]):
        init = klass.__dict__.get("__init__") if inspect.isclass(obj) else klass
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return sorted(set(names))


def catalogue() -> dict:
    """What the API needs to judge overrides at submit: module arguments and each config per method."""
    from models.config import list_configs, load_config, select_adaptation

    configs = {}
    for name in list_configs():
        cfg = load_config(name)
        configs[name] = {method: select_adaptation(cfg, method) for method in METHODS}
    return {"modules": module_arguments(), "configs": configs}


def write_catalogue(path: Path) -> Path:
    """Written whole or not at all (the API may read it at any moment)."""
    return write_json(path, catalogue())
