"""`dataset: ID` in a job spec: a scene named by a registered dataset, resolved for the submitting token into
that dataset's files (its image or band files; its labels too in source and validation scenes when the
scene names none), before the spec is validated, so the usual path checks apply to what it resolves to."""
from __future__ import annotations

from typing import Callable

from core.errors import SpecError
from service.errors import NotFoundError

#: the domains whose scenes take their dataset's labels (a target scene is unlabelled by definition, but in a
#: semi job, which learns from the labels on part of the target)
LABELLED_ROLES = ("source", "validation")


def resolve_scene_datasets(body: dict, lookup: Callable[[str], dict]) -> dict:
    """A copy of `body` with every scene's `dataset` replaced by the dataset's files; `lookup(id)` returns
    the caller's dataset paths or raises NotFoundError (unknown, or another token's: the same answer)."""
    out = dict(body)
    for role in ("source", "target", "validation"):
        domain = body.get(role)
        if not isinstance(domain, dict) or not isinstance(domain.get("scenes"), list):
            continue
        scenes = []
        for i, scene in enumerate(domain["scenes"]):
            if isinstance(scene, dict) and scene.get("dataset") is not None:
                labelled = role in LABELLED_ROLES or (role == "target" and body.get("method") == "semi")
                scene = _resolve(scene, labelled, f"{role}.scenes.{i}", lookup)
            scenes.append(scene)
        out[role] = {**domain, "scenes": scenes}
    return out


def _resolve(scene: dict, labelled: bool, where: str, lookup: Callable[[str], dict]) -> dict:
    ident = scene["dataset"]
    if any(scene.get(k) is not None for k in ("image", "bands", "stac")):
        raise SpecError("give either 'dataset' or 'image'/'bands'/'stac', not both", field=f"{where}.dataset")
    if not isinstance(ident, str):
        raise SpecError("must be the id of a registered dataset (a string)", field=f"{where}.dataset")
    try:
        paths = lookup(ident)
    except NotFoundError:
        raise SpecError(f"no registered dataset {ident!r} (GET /v1/datasets lists yours)",
                        field=f"{where}.dataset") from None
    out = {k: v for k, v in scene.items() if k not in ("dataset", "image", "bands", "stac")}
    if paths.get("image"):
        out["image"] = paths["image"]
    else:
        out["bands"] = list(paths.get("bands") or [])
    if labelled and out.get("labels") is None and paths.get("labels"):
        out["labels"] = paths["labels"]
    return out
