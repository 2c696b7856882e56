"""What a finished job left in its folder: bundle (or a pretrain job's weights), metrics, report, predicted COGs,
other files.

Where each lies is core.job_layout's to say. Read from disk, so results written by any worker on a
shared artefact store are seen the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

from core.bundle_manifest import MANIFEST
from core.job_layout import (BUNDLE, METRICS, PRETRAINED, PRETRAINED_RECORD, REPORTS, is_intermediate, is_prediction,
                              output_dir, prediction_kind)

_MAX_JSON = 4 * 1024 * 1024
_MAX_FILES = 1000
#: the bundle's metadata shown with the results: its manifest, or the metadata file of a bundle made elsewhere
_BUNDLE_METADATA = ("metadata.json", MANIFEST, "meta.json")


def _read_json(p: Path) -> dict | None:
    try:
        if p.is_file() and p.stat().st_size <= _MAX_JSON:
            data = json.loads(p.read_text())
            return data if isinstance(data, dict) else {"value": data}
    except (OSError, ValueError):
        return None
    return None


def _files(out: Path) -> list[Path]:
    found = []
    for p in sorted(out.rglob("*")):
        if is_intermediate(p.relative_to(out)):
            continue
        if p.is_file():
            found.append(p)
            if len(found) >= _MAX_FILES:
                break
    return found


def prediction_name(rel: Path) -> str:
    """A URL-safe id of a COG within its job: its path under output/, '/' as '--', no suffix."""
    return "--".join(rel.with_suffix("").parts)


def prediction_files(job_dir: Path) -> dict[str, Path]:
    """name -> COG path, for every predicted raster outside the bundle (also used by tile routes)."""
    out = output_dir(job_dir)
    if not out.is_dir():
        return {}
    preds = {}
    for p in _files(out):
        rel = p.relative_to(out)
        if is_prediction(rel):
            preds[prediction_name(rel)] = p
    return preds


def describe(job_dir: Path) -> dict:
    """Plain description (relative paths, no URLs); the API adds links."""
    out = output_dir(job_dir)
    res: dict = {"bundle": None, "pretrained": None, "metrics": None, "report": None, "predictions": [], "files": []}
    if not out.is_dir():
        return res
    bundle = out / BUNDLE
    if bundle.is_dir():
        res["bundle"] = {"path": BUNDLE, "metadata": _bundle_metadata(bundle)}
    if (out / PRETRAINED).is_file():  # a pretrain job's weights: what model.checkpoint of a later job names
        res["pretrained"] = {"path": PRETRAINED, "record": _read_json(out / PRETRAINED_RECORD)}
    res["metrics"] = _read_json(out / METRICS)
    for name in REPORTS:
        if (out / name).is_file():
            res["report"] = {"path": name, "content": _read_json(out / name) if name.endswith(".json") else None}
            break
    for name, p in prediction_files(job_dir).items():
        rel = p.relative_to(out).as_posix()
        res["predictions"].append({"name": name, "path": rel, "kind": prediction_kind(p)})
    res["files"] = [{"path": p.relative_to(out).as_posix(), "size": p.stat().st_size} for p in _files(out)]
    return res


def _bundle_metadata(bundle: Path) -> dict | None:
    for name in _BUNDLE_METADATA:
        data = _read_json(bundle / name)
        if data is not None:
            return data
    return None


def safe_file(job_dir: Path, relpath: str) -> Path | None:
    """A file under the job's output folder, or None (no escape through '..' or symlinks)."""
    out = output_dir(job_dir).resolve()
    try:
        p = (out / relpath).resolve()
        if not p.is_relative_to(out) or not p.is_file():  # is_file raises on a name too long
            return None
    except (OSError, RuntimeError, ValueError):
        return None
    return None if is_intermediate(p.relative_to(out)) else p
