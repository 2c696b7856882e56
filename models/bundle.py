"""Model bundle: everything needed to predict with a trained model, in one directory (or zip).

The files and the manifest (bundle.json) are core.bundle_manifest's: this module saves and loads the
weights around them. ``load_bundle(path)`` accepts the bundle folder, a job output folder holding
``bundle/``, or a zip of either; the returned :class:`Bundle` predicts on raw arrays with its own
normalisation (:attr:`Bundle.normalization`, from the manifest's ``stats`` and ``default_stats``) and knows
nothing of how the model was trained.
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
from core.bundle_manifest import CONFIG, MANIFEST, WEIGHTS, BundleManifest, bundle_dir_of, manifest_member
from core.errors import BandCountMismatchError, BundleError
from core.job_layout import BUNDLE
from core.jobspec import IGNORE_INDEX, ClassSpec
from core.raster.stats import BandStats
from models.batchnorm_statistics import batchnorm_layers
from models.normalization import Normalization
from models.segmentor import build_segmentor


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
    normalization = Normalization(stats, default=default_stats)  # checks the statistics and the default
    manifest = BundleManifest.create(
        classes=classes, stats=normalization.stats, inference=inference, default_stats=normalization.default,
        band_map=band_map, method=method or (config.get("adaptation") or {}).get("type", "source-only"),
        config_name=config.get("name"), batchnorm_layers=len(batchnorm_layers(segmentor)),
        provenance=provenance, metrics=metrics,
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in segmentor.state_dict().items()}
        torch.save(state, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(_jsonable(config), indent=1))
        (tmp / MANIFEST).write_text(json.dumps(_jsonable(manifest.data), indent=1))
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


class Bundle:
    """A loaded model bundle. ``predict`` takes a raw (C, H, W) window, returns class ids and probabilities."""

    def __init__(self, path: Path, manifest: BundleManifest, config: dict, segmentor: nn.Module, *,
                 device: str = "cpu", _tmp: tempfile.TemporaryDirectory | None = None):
        self.path = path
        self.metadata = manifest.data
        self.config = config
        self.classes = manifest.classes
        self.band_count = manifest.band_count
        self.band_map = manifest.band_map
        self.normalization = Normalization.of_bundle(manifest)
        self.method = manifest.method
        self.provenance = manifest.provenance
        self.metrics = manifest.metrics
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
            names = zf.namelist()
            for name in names:  # refuse entries that would land outside the folder
                if not (root / name).resolve().is_relative_to(root):
                    raise BundleError(f"unsafe path in bundle zip: {name}")
            member = manifest_member(names)
            if member is None:
                raise BundleError(f"{path}: the zip holds no {MANIFEST}")
            zf.extractall(root)
        p = root / Path(member).parent
    elif not p.exists():
        raise BundleError(f"no model bundle at {path}")
    d = bundle_dir_of(p)
    if d is None:
        raise BundleError(f"no model bundle at {path} (expected {MANIFEST} there or in {Path(path) / BUNDLE})")
    try:
        manifest = BundleManifest.read(d)
        manifest.check_loadable()
        config = json.loads((d / CONFIG).read_text()) if (d / CONFIG).exists() else {}
    except BundleError as e:
        raise BundleError(f"{d}: {e.message}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{d}: unreadable bundle config: {e}") from None
    segmentor = build_segmentor(manifest.inference)
    try:
        state = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
        segmentor.load_state_dict(state)
    except FileNotFoundError:
        raise BundleError(f"{d}: missing {WEIGHTS}") from None
    except (RuntimeError, KeyError) as e:
        raise BundleError(f"{d}: weights do not match the bundle's network: {str(e)[:300]}") from None
    segmentor.to(device)
    return Bundle(d, manifest, config, segmentor, device=str(device), _tmp=tmp)
