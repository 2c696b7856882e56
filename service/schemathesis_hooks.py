"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS): a share of the generated requests carries the input
that once made 500s here, so the fuzz run keeps that class closed: path components over 255 bytes, objects
nested 500 levels deep, empty headers.

Generated bodies rarely get past the spec's first checks, and these inputs broke code that runs after them;
so part of the requests graft them onto a valid request of the bench world (GEOADAPT_FUZZ_WORLD, a JSON file
that `run_schemathesis` writes). Which requests are changed follows from their content, so a case replays
the same.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import zlib
from typing import Any

import schemathesis

LONG_NAME = "a" * 300  # over Linux's 255-byte limit for one name
DEEP = 500


@functools.cache
def _world() -> dict:
    """root (an allowed root), spec (a valid job spec), image and labels (files under root)."""
    path = os.environ.get("GEOADAPT_FUZZ_WORLD")
    return json.loads(open(path).read()) if path else {"root": "/data", "spec": None}


def _long_path() -> str:
    return f"{_world()['root']}/{LONG_NAME}/x.tif"


def _pick(value: Any, kinds: int) -> int:
    return zlib.crc32(json.dumps(value, sort_keys=True, default=repr).encode()) % kinds


def _deep(levels: int = DEEP) -> dict:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def _long_strings(value: Any) -> Any:
    if isinstance(value, str):
        return _long_path()
    if isinstance(value, dict):
        return {k: _long_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_long_strings(v) for v in value]
    return value


def _deep_leaf_objects(value: Any) -> Any:
    """Every object that holds no object (model.overrides, a GeoJSON geometry, ...) nested DEEP levels."""
    if isinstance(value, dict):
        if not any(isinstance(v, (dict, list)) for v in value.values()):
            return _deep()
        return {k: _deep_leaf_objects(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_leaf_objects(v) for v in value]
    return value


def _grafted_job(choice: int) -> tuple[dict, dict]:
    """(body, headers): the world's valid spec with one hostile part, or as it is with an empty key."""
    spec = copy.deepcopy(_world()["spec"])
    scene = spec["source"]["scenes"][0]
    headers: dict = {}
    if choice == 0:
        scene["image"] = _long_path()
    elif choice == 1:
        scene["labels"] = _long_path()
    elif choice == 2:
        spec["model"] = {"config": "segformer-tiny", "overrides": {"model": _deep()}}
    elif choice == 3:
        spec["source"]["region"] = {"aoi": {"type": "Polygon", "coordinates": _deep()}}
    else:  # a valid job, sent with an empty Idempotency-Key (twice or more over a run)
        headers = {"Idempotency-Key": ""}
    return spec, headers


def _grafted_dataset(choice: int) -> dict:
    w = _world()
    return {"name": "fuzz", "image": _long_path()} if choice % 2 else {
        "name": "fuzz", "image": w["image"], "labels": _long_path()}


@schemathesis.hook
def map_case(context, case):
    op = f"{case.method.upper()} {case.path}"
    body = case.body if isinstance(case.body, (dict, list)) else None
    kind = _pick([op, body, case.query, case.path_parameters, dict(case.headers or {})], 6)
    if kind == 1:  # long names in every string of the body, the query and the path
        if body is not None:
            case.body = _long_strings(body)
        case.query = _long_strings(case.query) if case.query else case.query
        case.path_parameters = _long_strings(case.path_parameters) if case.path_parameters else case.path_parameters
    elif kind == 2 and body is not None:
        case.body = _deep_leaf_objects(body)
    elif kind == 3:  # every header the operation declares, empty
        case.headers = {**{k: "" for k in (case.headers or {}) if k.lower() != "authorization"},
                        "Idempotency-Key": ""}
    elif kind in (4, 5) and _world()["spec"] is not None:
        choice = _pick([kind, body], 5)
        if op == "POST /v1/jobs":
            case.body, headers = _grafted_job(choice)
            case.headers = {**dict(case.headers or {}), **headers}
        elif op == "POST /v1/datasets":
            case.body = _grafted_dataset(choice)
    return case
