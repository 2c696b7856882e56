"""The model registry's side of core/overrides.py: the arguments of every registered module and optimiser
(models.config writes them, with every shipped config per method, into the catalogue the API reads)."""
from __future__ import annotations

import functools
import inspect

from core.overrides import OPTIMIZER_KEYS, OPTIMIZERS


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
