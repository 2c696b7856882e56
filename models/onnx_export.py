"""A bundle's inference segmentor as an ONNX model: normalised windows in, class probabilities out, with the
metadata the QGIS Deepness plugin reads.

    export_onnx(bundle, out)
      segmentor.predict_logits -> softmax   (ST-DASegNet: both students, the DDM, the mean of both decoders)
      torch.onnx.export: the dynamo exporter first, the TorchScript exporter if it fails; dynamic batch,
        height and width (sides a multiple of 32, as the windowed predictor pads them)
      checked: onnxruntime against torch at a size other than the traced one (a shape the exporter froze
        into the graph shows up there), else the next exporter, else ExportError
      metadata (Deepness keys, values JSON): model_type, class_names {index: name}, class_colors,
        resolution (cm/px), tile_size, tiles_overlap (% of the tile), standardization_mean/std
        (Deepness divides its 0-255 input by 255 first, so these are the bundle's default statistics / 255)
        and geoadapt's own: class_ids, the statistics in the input's units, band_count, method

The graph takes what :class:`models.normalization.Normalizer` produces, so geoadapt's onnxruntime engine
(models.inference.onnx_window_model) normalises exactly as the torch engine does.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.bundle_manifest import ONNX, ONNX_FAILED
from core.errors import GeoadaptError

INPUT, OUTPUT = "image", "probabilities"
OPSET = 18
#: the windowed predictor's defaults (core.raster.prediction_windows.PredictOptions), unless told
TILE_SIZE, TILE_OVERLAP = 256, 32
#: largest probability difference between onnxruntime and torch that counts as the same network
TOLERANCE = 1e-3
EXPORTERS = ("dynamo", "torchscript")


class ExportError(GeoadaptError):
    code = "onnx_export_failed"


class ProbabilityNet(nn.Module):
    """The inference segmentor and its softmax as one module: what Deepness and the predictor consume."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.segmentor.predict_logits(x), dim=1)


@dataclass
class ExportResult:
    path: Path
    exporter: str  # which exporter made the file
    max_abs_diff: float  # onnxruntime vs torch on the check input
    metadata: dict


def deepness_metadata(bundle: Any, *, tile_size: int = TILE_SIZE, overlap: int = TILE_OVERLAP,
                      resolution_cm: float | None = None) -> dict[str, str]:
    """The ONNX metadata of a bundle: Deepness's keys, and geoadapt's (each value JSON, as Deepness reads it)."""
    norm = bundle.normalization.named(bundle.normalization.default)
    mean = np.asarray(norm.stats.mean, np.float64)
    std = np.maximum(np.asarray(norm.stats.std, np.float64), 1e-6)  # the floor core.raster.stats.normalize uses
    classes = list(bundle.classes)
    meta: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): c.name for i, c in enumerate(classes)},
        "class_colors": {str(i): c.color for i, c in enumerate(classes)},
        "tile_size": int(tile_size),
        "tiles_overlap": int(round(100 * overlap / tile_size)),
        "standardization_mean": (mean / 255.0).tolist(),
        "standardization_std": (std / 255.0).tolist(),
        "class_ids": {str(i): c.id for i, c in enumerate(classes)},
        "geoadapt_statistics": {"name": norm.name, "mean": mean.tolist(), "std": std.tolist()},
        "band_count": int(bundle.band_count),
        "geoadapt_method": getattr(bundle, "method", None),
    }
    if resolution_cm is not None:
        meta["resolution"] = float(resolution_cm)
    return {k: json.dumps(v) for k, v in meta.items()}


def training_resolution_cm(bundle: Any) -> float | None:
    """The ground resolution the model was trained at, in cm/px: the first source scene's pixel size, when its
    CRS is projected in metres and the file is still readable (None otherwise)."""
    prov = getattr(bundle, "provenance", None) or {}
    scenes = ((prov.get("datasets") or {}).get("source") or {}).get("scenes") or []
    if not scenes:
        return None
    first = scenes[0].get("image") or (scenes[0].get("bands") or [None])[0]
    if not first:
        return None
    try:
        import rasterio

        with rasterio.open(first) as ds:
            if ds.crs is None or not ds.crs.is_projected or (ds.crs.linear_units or "").lower() not in ("metre", "meter"):
                return None
            return round(abs(float(ds.res[0])) * 100, 3)
    except Exception:  # moved or unreadable: the metadata goes without a resolution
        return None


def export_onnx(bundle: Any, out: str | Path, *, tile_size: int = TILE_SIZE, overlap: int = TILE_OVERLAP,
                static_size: int | None = None, resolution_cm: float | None = None,
                exporters: tuple[str, ...] = EXPORTERS) -> ExportResult:
    """Write ``bundle``'s (a path or a loaded Bundle) network as ONNX to ``out`` (atomically) and return how.

    ``static_size``: fixed height and width (for tools that need a square input of one size); the batch
    stays dynamic. ``resolution_cm``: the metadata's resolution; default: :func:`training_resolution_cm`.
    """
    from models.bundle import load_bundle

    if isinstance(bundle, (str, os.PathLike)):
        bundle = load_bundle(bundle)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = ProbabilityNet(bundle.segmentor).cpu().eval()
    c = int(bundle.band_count)
    trace = static_size or 64
    check = static_size or 96  # another size than the traced one: frozen shapes show up
    if trace % 32 or check % 32:
        raise ExportError(f"the ONNX input size must be a multiple of 32, got {static_size}")
    gen = torch.Generator().manual_seed(0)
    x_trace = torch.randn(2, c, trace, trace, generator=gen)
    x_check = torch.randn(3, c, check, check + (0 if static_size else 32), generator=gen)
    with torch.no_grad():
        expected = net(x_check).numpy()
    if resolution_cm is None:
        resolution_cm = training_resolution_cm(bundle)
    metadata = deepness_metadata(bundle, tile_size=tile_size, overlap=overlap, resolution_cm=resolution_cm)
    failures = []
    for exporter in exporters:
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}-", suffix=".onnx")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _export(net, x_trace, tmp, exporter, dynamic_sides=static_size is None)
            _add_metadata(tmp, metadata)
            diff = _max_abs_diff(tmp, x_check.numpy(), expected)
            if not diff <= TOLERANCE:
                raise ExportError(f"onnxruntime differs from torch by {diff:.2g} at {tuple(x_check.shape)}")
            os.replace(tmp, out)
            return ExportResult(out, exporter, diff, {k: json.loads(v) for k, v in metadata.items()})
        except Exception as e:  # the next exporter may handle what this one could not
            failures.append(f"{exporter}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
        finally:
            tmp.unlink(missing_ok=True)
    raise ExportError("the network could not be exported to ONNX (" + "; ".join(failures) + ")")


def _export(net: nn.Module, x: torch.Tensor, path: Path, exporter: str, *, dynamic_sides: bool) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and exporter chatter; the check below judges the result
        if exporter == "dynamo":
            dim = torch.export.Dim
            batch = dim("batch", min=1, max=4096)
            shape = {0: batch}
            if dynamic_sides:  # sides are multiples of 32: say so, so that the exporter can reason about strides
                shape.update({2: 32 * dim("height32", min=1, max=512), 3: 32 * dim("width32", min=1, max=512)})
            prog = torch.onnx.export(net, (x,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                     dynamic_shapes={"x": shape}, opset_version=OPSET, external_data=False, optimize=False,
                                     verbose=False)
            prog.save(str(path))
        elif exporter == "torchscript":
            axes = {0: "batch", 2: "height", 3: "width"} if dynamic_sides else {0: "batch"}
            torch.onnx.export(net, (x,), str(path), dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: axes, OUTPUT: axes}, opset_version=OPSET)
        else:
            raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "geoadapt"
    onnx.save(model, str(path))


def _max_abs_diff(path: Path, x: np.ndarray, expected: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT], {INPUT: x.astype(np.float32)})[0]
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max())


def bundle_onnx_path(bundle_dir: str | Path) -> Path:
    """Where a bundle folder keeps its network as ONNX."""
    return Path(bundle_dir) / ONNX


def write_bundle_onnx(bundle_dir: str | Path) -> ExportResult | None:
    """Export a saved bundle's network into the bundle folder itself, beside its weights; when it cannot be
    exported, write why to model.onnx.failed instead (the model's download reports it) and return None."""
    bundle_dir = Path(bundle_dir)
    failed = bundle_dir / ONNX_FAILED
    try:
        result = export_onnx(bundle_dir, bundle_onnx_path(bundle_dir))
    except Exception as e:  # noqa: BLE001  (any failure is the answer the download gives)
        from core.files import atomic_writer

        with atomic_writer(failed, "w") as fh:
            fh.write(str(e) or type(e).__name__)
        return None
    failed.unlink(missing_ok=True)
    return result
