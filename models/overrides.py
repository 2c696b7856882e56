"""What a job's ``model.overrides`` may say: only keys that some part of the model reads.

A key may be one the resolved config already has, or a new argument of the module its section names by
``type`` (an mmseg kwarg the config leaves at its default; an optimiser's torch kwarg). Anything else
(``custom_imports``, a typo, a made-up key) is refused with the keys that exist there, instead of being
written into the bundle and ignored. A ``type`` must be a name registered in the model registry (never a
dotted import path: mmengine would import and call it), an optimiser we build, and never the adaptation
method (the job's ``method`` decides that).
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from core.errors import ConfigError


def check_override(cfg: Mapping, key: str, value: Any) -> None:
    """ConfigError naming `key` if applying ``{key: value}`` to `cfg` would set something nothing reads."""
    parts = str(key).split(".")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, Mapping) or not isinstance(node.get(part), Mapping):
            break
        node = node[part]
    else:
        _check_entry(node, parts[:-1], parts[-1], value, key)
        return
    where = ".".join(parts[: i + 1])
    raise ConfigError(f"{where!r} is not a section of the config; {_keys_there(node, parts[:i])}",
                      field=f"model.overrides.{key}")


def _check_entry(section: Mapping, path: list[str], name: str, value: Any, key: str) -> None:
    """`section[name] = value` (merged when both are sections), where `section` sits at `path`."""
    field = f"model.overrides.{key}"
    if name == "type":
        _check_type(path, section.get("type"), value, field)
    elif name not in section and name not in _arguments(section):
        raise ConfigError(f"no part of the model reads {'.'.join([*path, name])!r}; {_keys_there(section, path)}",
                          field=field)
    if not isinstance(value, Mapping):
        return
    current = section.get(name)
    if not isinstance(current, Mapping) and "type" not in value:
        return  # a plain mapping where the config has a value (augment.photometric): its reader checks it
    current = dict(current) if isinstance(current, Mapping) else {}  # {} for a new typed section (a neck)
    if "type" in value:
        _check_type([*path, name], current.get("type"), value["type"], f"{field}.type")
        current["type"] = value["type"]  # the keys that follow are the new module's
    for k, v in value.items():  # merged into what is there: each key checked the same way
        if k != "type":
            _check_entry(current, [*path, name], str(k), v, f"{key}.{k}")


def _check_type(path: list[str], old: Any, new: Any, field: str) -> None:
    from models.training.schedules import OPTIMIZERS

    where = ".".join([*path, "type"])
    if path == ["adaptation"]:
        raise ConfigError(f"{where} is the job's method; set 'method' instead", field=field)
    if old in OPTIMIZERS:
        if new not in OPTIMIZERS:
            raise ConfigError(f"{where} must be one of {', '.join(OPTIMIZERS)}, not {new!r}", field=field)
        return
    if not isinstance(new, str) or _registered(new) is None:
        was = f" (the config has {old!r})" if old else ""
        raise ConfigError(f"{where} {new!r} is not a registered module name{was}; a dotted path is never imported",
                          field=field)


def _registered(name: str):
    """The class registered under `name` in mmseg's model registry or a registry above it; never an import."""
    from mmseg.registry import MODELS

    import models.ddm  # noqa: F401  (registers our modules)
    import models.discriminator  # noqa: F401
    import models.segmentor  # noqa: F401  (imports mmseg.models, which registers mmseg's)

    if "." in name:
        return None
    registry = MODELS
    while registry is not None:
        found = registry.module_dict.get(name)
        if found is not None:
            return found
        registry = registry.parent
    return None


def _arguments(section: Mapping) -> list[str]:
    """Argument names of what the section's ``type`` builds (walking up past ``**kwargs``); [] if untyped."""
    from models.training.schedules import OPTIMIZER_KEYS, OPTIMIZERS

    kind = section.get("type")
    if not isinstance(kind, str):
        return []
    if kind in OPTIMIZERS:
        import torch

        return [*_init_arguments(getattr(torch.optim, kind)), *OPTIMIZER_KEYS]
    cls = _registered(kind)
    return _init_arguments(cls) if cls is not None else []


def _init_arguments(cls) -> list[str]:
    names: list[str] = []
    for klass in (cls.__mro__ if inspect.isclass(cls) else [cls]):
        init = klass.__dict__.get("__init__") if inspect.isclass(cls) else klass
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return sorted(set(names))


def _keys_there(section: Any, path: list[str]) -> str:
    where = ".".join(path) or "the top level"
    keys = sorted(str(k) for k in section) if isinstance(section, Mapping) else []
    args = [a for a in _arguments(section) if a not in keys] if isinstance(section, Mapping) else []
    text = f"{where} has {', '.join(keys) or 'no keys'}"
    if args:
        text += f"; {section['type']} also takes {', '.join(args)}"
    return text
