"""Model bundle: everything needed to predict with a trained model, in one directory (or zip).

Layout (``FORMAT`` 1)::

    bundle/
      bundle.json   format, method, classes (id, name, colour), band_count, band_map,
                    stats {"source": BandStats, "target": ...}, default_stats, inference (how to
                    rebuild the network), batchnorm_layers (how many; AdaBN needs some),
                    provenance (job, datasets, seed, iterations), metrics
      config.json   the resolved training config (model, optimiser, schedule, adaptation)
      weights.pth   state_dict of the inference segmentor (plain tensors)

``load_bundle(path)`` accepts the bundle folder, a job output folder holding ``bundle/``, or a zip of
either; the returned :class:`Bundle` predicts on raw arrays with its own normalisation
(:attr:`Bundle.normalization`, from the manifest's ``stats`` and ``default_stats``) and knows nothing of how
the model was trained.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

import models.adaptation  # noqa: F401  (registers the inference segmentors of every method)
from core.errors import BandCountMismatchError, BundleError
from core.jobspec import IGNORE_INDEX, ClassSpec
from core.raster.stats import BandStats
from models.batchnorm_statistics import batchnorm_layers
from models.normalization import Normalization
from models.segmentor import build_segmentor

FORMAT = 1
MANIFEST = "bundle.json"
WEIGHTS = "weights.pth"
CONFIG = "config.json"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


def class_output(classes: Sequence[ClassSpec]) -> tuple[np.dtype, int]:
    """dtype and nodata value for class-id rasters: uint8 with 255 unless a class uses 255 or more."""
    ids = [c.id for c in classes]
    if max(ids) < IGNORE_INDEX:
        return np.dtype(np.uint8), IGNORE_INDEX
    if max(ids) < 65535:
        return np.dtype(np.uint16), 65535
    raise BundleError("class id 65535 is reserved for nodata in class rasters")


def save_bundle(
    directory: str | Path,
    segmentor: nn.Module,
    config: Mapping,
    classes: Sequence[ClassSpec | Mapping],
    stats: Mapping[str, BandStats],
    provenance: Mapping | None = None,
    metrics: Mapping | None = None,
    *,
    inference: Mapping | None = None,
    method: str | None = None,
    band_map: Sequence[Mapping] | None = None,
    default_stats: str | None = None,
) -> Path:
    """Write a bundle atomically (temporary folder, then rename) and return its folder.

    ``inference``: dict(type=<registered segmentor>, ...) rebuilding ``segmentor``; defaults to
    ``config["inference"]``. ``default_stats``: which statistics ``predict`` uses unless told
    ("target" when present, else "source"; see models.normalization).
    """
    directory = Path(directory)
    classes = [c if isinstance(c, ClassSpec) else ClassSpec.model_validate(c) for c in classes]
    inference = dict(inference or config.get("inference") or {})
    if not inference:
        raise BundleError("save_bundle needs the inference segmentor's config (inference=...)")
    normalization = Normalization(stats, default=default_stats)
    band_count = int(next(iter(stats.values())).bands)
    manifest = {
        "format": FORMAT,
        "method": method or (config.get("adaptation") or {}).get("type", "source-only"),
        "config_name": config.get("name"),
        "classes": [c.model_dump() for c in classes],
        "band_count": band_count,
        "band_map": list(band_map) if band_map else [{"index": i, "name": f"band {i + 1}"} for i in range(band_count)],
        **normalization.manifest_entries(),
        "ignore_index": IGNORE_INDEX,
        "inference": inference,
        # read without torch by the service, which refuses an AdaBN job on a model that has none
        "batchnorm_layers": len(batchnorm_layers(segmentor)),
        "provenance": dict(provenance or {}),
        "metrics": dict(metrics or {}),
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in segmentor.state_dict().items()}
        torch.save(state, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(_jsonable(config), indent=1))
        (tmp / MANIFEST).write_text(json.dumps(_jsonable(manifest), indent=1))
        if directory.exists():
            old = directory.with_name(f".{directory.name}-old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def find_bundle_dir(path: str | Path) -> Path:
    """The bundle folder for a bundle folder or a job output folder (``<output>/bundle``)."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    if (p / "bundle" / MANIFEST).is_file():
        return p / "bundle"
    raise BundleError(f"no model bundle at {path} (expected {MANIFEST} there or in {Path(path) / 'bundle'})")


class Bundle:
    """A loaded model bundle. ``predict`` takes a raw (C, H, W) window, returns class ids and probabilities."""

    def __init__(self, path: Path, manifest: dict, config: dict, segmentor: nn.Module, *, device: str = "cpu",
                 _tmp: tempfile.TemporaryDirectory | None = None):
        self.path = path
        self.metadata = manifest
        self.config = config
        self.classes = [ClassSpec.model_validate(c) for c in manifest["classes"]]
        self.band_count = int(manifest["band_count"])
        self.band_map = manifest.get("band_map", [])
        self.normalization = Normalization.from_manifest(manifest)
        self.method = manifest.get("method")
        self.provenance = manifest.get("provenance", {})
        self.metrics = manifest.get("metrics", {})
        self.segmentor = segmentor.eval()
        self.device = torch.device(device)
        self.class_dtype, self.class_nodata = class_output(self.classes)
        self._lut = np.array([c.id for c in self.classes], dtype=self.class_dtype)
        self._tmp = _tmp  # keeps an extracted zip alive as long as the bundle

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_ids(self) -> list[int]:
        return [c.id for c in self.classes]

    def to_class_ids(self, train_ids: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Train ids (0..K-1) -> class ids of the class list; nodata where not valid."""
        out = self._lut[np.clip(train_ids, 0, self.num_classes - 1)]
        if valid is not None:
            out = np.where(valid, out, self._lut.dtype.type(self.class_nodata))
        return out

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor, *, pad_to: int = 32) -> torch.Tensor:
        """Logits (N, K, H, W) of normalised inputs; sides are reflect-padded to a multiple of ``pad_to``
        so every backbone sees the sizes it was trained on, then cropped back."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % pad_to, (-w) % pad_to
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
        logits = self.segmentor.predict_logits(x.to(self.device))
        return logits[..., :h, :w]

    def predict_train_ids(self, window: np.ndarray, valid: np.ndarray | None = None,
                          stats: str | BandStats | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(train ids (H, W) uint8, probabilities (K, H, W) float32) of a raw window."""
        window = np.asarray(window)
        if window.ndim != 3:
            raise BandCountMismatchError(f"expected a (bands, height, width) window, got shape {window.shape}")
        if window.shape[0] != self.band_count:
            raise BandCountMismatchError(f"the window has {window.shape[0]} bands, the model takes {self.band_count}")
        if valid is None:
            valid = np.ones(window.shape[1:], dtype=bool)
        x = self.normalization.for_prediction(stats)(window, valid)
        probs = self.predict_logits(torch.from_numpy(x)[None]).softmax(dim=1)[0].cpu().numpy()
        ids = probs.argmax(axis=0).astype(np.uint8)
        ids[~valid] = IGNORE_INDEX
        probs[:, ~valid] = 0.0
        return ids, probs.astype(np.float32, copy=False)

    def predict(self, window: np.ndarray, valid: np.ndarray | None = None,
                stats: str | BandStats | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(class ids (H, W), probabilities (K, H, W) float32) of a raw (C, H, W) window.

        Class ids are the job's (not train ids); invalid pixels get :attr:`class_nodata` and zero
        probabilities. ``stats``: "target", "source" or a BandStats (default: the bundle's default statistics).
        """
        ids, probs = self.predict_train_ids(window, valid, stats)
        valid_out = ids != IGNORE_INDEX
        return self.to_class_ids(ids, valid_out), probs


def load_bundle(path: str | Path, *, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle folder, a job output folder containing ``bundle/``, or a zip of either."""
    p = Path(path)
    tmp = None
    if p.is_file() and zipfile.is_zipfile(p):
        tmp = tempfile.TemporaryDirectory(prefix="geoadapt-bundle-")
        with zipfile.ZipFile(p) as zf:
            root = Path(tmp.name).resolve()
            for name in zf.namelist():  # refuse entries that would land outside the folder
                if not (root / name).resolve().is_relative_to(root):
                    raise BundleError(f"unsafe path in bundle zip: {name}")
            zf.extractall(root)
        candidates = [root] + [d for d in root.iterdir() if d.is_dir()]
        for c in candidates:
            try:
                p = find_bundle_dir(c)
                break
            except BundleError:
                continue
        else:
            raise BundleError(f"{path}: the zip holds no {MANIFEST}")
    elif not p.exists():
        raise BundleError(f"no model bundle at {path}")
    d = find_bundle_dir(p)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        config = json.loads((d / CONFIG).read_text()) if (d / CONFIG).exists() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{d}: unreadable bundle manifest: {e}") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{d}: bundle format {manifest.get('format')!r} is not supported (expected {FORMAT})")
    for key in ("classes", "band_count", "stats", "inference"):
        if key not in manifest:
            raise BundleError(f"{d}: bundle manifest lacks {key!r}")
    segmentor = build_segmentor(manifest["inference"])
    try:
        state = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
        segmentor.load_state_dict(state)
    except FileNotFoundError:
        raise BundleError(f"{d}: missing {WEIGHTS}") from None
    except (RuntimeError, KeyError) as e:
        raise BundleError(f"{d}: weights do not match the bundle's network: {str(e)[:300]}") from None
    segmentor.to(device)
    return Bundle(d, manifest, config, segmentor, device=str(device), _tmp=tmp)
