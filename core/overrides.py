"""What a job's ``model.overrides`` may say (only keys that some part of the model reads), and applying them.

A key may be one the config already has, or a new argument of the module its section names by ``type``
(an mmseg kwarg the config leaves at its default; an optimiser's torch kwarg). Anything else
(``custom_imports``, a typo, a made-up key) is refused with the keys that exist there, instead of being
written into the bundle and ignored. A ``type`` must be a registered module name (never a dotted import
path: mmengine's registry would import and call it), an optimiser we build, or (where the config's own
type is neither) a plain name its reader checks; never the adaptation method (the job's ``method``
decides that).

The judgement needs what only a process with the model registry knows: each registered module's
arguments (``modules``: name -> argument names). models/overrides.py supplies it live; workers also write
it, with the configs, to a catalogue that the API reads (service/inputs.py), so submit refuses what a
worker would.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from core.errors import ConfigError

#: optimisers a config's optim block may name, and the keys the optimiser builder reads besides torch's own
OPTIMIZERS = ("AdamW", "Adam", "SGD")
OPTIMIZER_KEYS = ("lr_mult", "no_decay_keys", "norm_decay")

Modules = Mapping[str, list]


def apply_overrides(cfg: dict, overrides: Mapping[str, Any] | None, modules: Modules) -> dict:
    """Apply ``{"a.b.c": value}`` or nested ``{"a": {"b": ...}}`` overrides, each checked (see above)
    against the config as the ones before it left it."""
    out = copy.deepcopy(cfg)
    for key, value in (overrides or {}).items():
        check_override(out, str(key), value, modules)
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node[part]
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = merge(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return out


def merge(base: dict, extra: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def check_override(cfg: Mapping, key: str, value: Any, modules: Modules) -> None:
    """ConfigError naming `key` if applying ``{key: value}`` to `cfg` would set something nothing reads."""
    parts = str(key).split(".")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, Mapping) or not isinstance(node.get(part), Mapping):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{where!r} is not a section of config {cfg.get('name')!r}; "
                              f"{_keys_there(node, parts[:i], modules)}", field=f"model.overrides.{key}")
        node = node[part]
    _check_entry(node, parts[:-1], parts[-1], value, key, modules)


def _check_entry(section: Mapping, path: list[str], name: str, value: Any, key: str, modules: Modules) -> None:
    """`section[name] = value` (merged when both are sections), where `section` sits at `path`."""
    field = f"model.overrides.{key}"
    if name == "type":
        _check_type(path, section.get("type"), value, field, modules)
    elif name not in section and name not in _arguments(section, modules):
        raise ConfigError(f"no part of the model reads {'.'.join([*path, name])!r}; "
                          f"{_keys_there(section, path, modules)}", field=field)
    if not isinstance(value, Mapping):
        return
    current = section.get(name)
    if not isinstance(current, Mapping) and "type" not in value:
        return  # a plain mapping where the config has a value (augment.photometric): its reader checks it
    current = dict(current) if isinstance(current, Mapping) else {}  # {} for a new typed section (a neck)
    if "type" in value:
        _check_type([*path, name], current.get("type"), value["type"], f"{field}.type", modules)
        current["type"] = value["type"]  # the keys that follow are the new module's
    for k, v in value.items():  # merged into what is there: each key checked the same way
        if k != "type":
            _check_entry(current, [*path, name], str(k), v, f"{key}.{k}", modules)


def _check_type(path: list[str], old: Any, new: Any, field: str, modules: Modules) -> None:
    where = ".".join([*path, "type"])
    if path in (["adaptation"], ["pretraining"]):
        raise ConfigError(f"{where} is the job's method; set 'method' instead", field=field)
    if old in OPTIMIZERS:
        if new not in OPTIMIZERS:
            raise ConfigError(f"{where} must be one of {', '.join(OPTIMIZERS)}, not {new!r}", field=field)
        return
    if isinstance(old, str) and old not in modules and isinstance(new, str) and "." not in new:
        return  # a kind our own code reads (adaptation.tolerance.type: none|shift|pool), checked where read
    if not isinstance(new, str) or "." in new or new in OPTIMIZERS or new not in modules:
        was = f" (the config has {old!r})" if old else ""
        raise ConfigError(f"{where} {new!r} is not a registered module name{was}; a dotted path is never imported",
                          field=field)


def _arguments(section: Mapping, modules: Modules) -> list[str]:
    """Argument names of what the section's ``type`` builds; [] for an untyped section."""
    kind = section.get("type")
    return list(modules.get(kind) or []) if isinstance(kind, str) and "." not in kind else []


def _keys_there(section: Any, path: list[str], modules: Modules) -> str:
    where = ".".join(path) or "the top level"
    keys = sorted(str(k) for k in section) if isinstance(section, Mapping) else []
    args = [a for a in _arguments(section, modules) if a not in keys] if isinstance(section, Mapping) else []
    text = f"{where} has {', '.join(keys) or 'no keys'}"
    if args:
        text += f"; {section['type']} also takes {', '.join(args)}"
    return text
