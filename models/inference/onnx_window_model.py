"""The onnxruntime engine of the windowed predictor: the same contract as WindowModel (normalised windows in,
class probabilities out, padding and flips alike), on an ONNX export of the bundle (models.onnx_export).

The windowed predictor runs several batches at once on the CPU (streams); one session serves them all
(``InferenceSession.run`` is thread-safe and releases the GIL), each run on ``threads`` intra-op threads.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_PAD_MODES = {"reflect": "reflect", "replicate": "edge"}  # torch's F.pad modes in numpy's words


class OnnxWindowModel:
    """An ONNX segmentor (input ``image``, output ``probabilities``) as a function from normalised windows
    (B, C, h, w) to class probabilities (B, K, h, w), on onnxruntime's CPU provider."""

    #: the windowed predictor picks streams and threads by device
    device = torch.device("cpu")

    def __init__(self, path: str | Path, *, threads: int = 1, tta: bool = False, pad_multiple: int = 32):
        import onnxruntime as ort

        from models.onnx_export import INPUT, OUTPUT

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input, self.output = INPUT, OUTPUT
        self.tta = tta
        self.pad_multiple = max(1, int(pad_multiple))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(B, C, h, w) float32 normalised -> (B, K, h, w) float32 probabilities."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        if ph or pw:  # as WindowModel: reflect when the window is large enough, else replicate
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=_PAD_MODES[mode])
        probs = self._probs(x)
        if self.tta:
            for axes in ((3,), (2,), (2, 3)):
                probs += np.flip(self._probs(np.ascontiguousarray(np.flip(x, axes))), axes)
            probs /= 4.0
        return np.ascontiguousarray(probs[..., :h, :w])

    def _probs(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: x})[0]


def onnx_model_of(bundle: Any) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """The ONNX file of a loaded bundle: its own ``model.onnx``; when it has none, the network is exported there
    once (the same file its download serves), or into a temporary folder where the bundle's folder is
    read-only or the bundle is no folder (returned too, so that the caller keeps it alive while predicting)."""
    from models.onnx_export import bundle_onnx_path, export_onnx

    path = bundle_onnx_path(bundle.path) if getattr(bundle, "path", None) else None
    if path is not None and path.is_file():
        return path, None
    if path is not None:
        try:
            return export_onnx(bundle, path).path, None
        except PermissionError:
            pass
    tmp = tempfile.TemporaryDirectory(prefix="geoadapt-onnx-")
    return export_onnx(bundle, Path(tmp.name) / "model.onnx").path, tmp
