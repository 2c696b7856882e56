"""Large-raster prediction: windowed read -> normalise -> batch -> forward -> blend -> COG, in bounded memory.

Call flow (three threads joined by bounded queues, so reading and writing overlap the model; torch,
numpy and GDAL release the GIL in their heavy parts):

    reader thread                       main thread                        writer thread
    WindowPlan, row-major               WindowModel(batch):                StreamingBlender.add(window)
    Scene.read(window) -> data, valid   forward (+ flips), softmax         -> finished pieces:
    all nodata? skip (counted)          -> probs (B, K, h, w)              argmax -> class ids,
    normalise, stack a batch  --q_in--> progress, cancel       --q_out-->  nodata where invalid,
                                                                           CogWriter.write (tiled temp)
    after the last window: CogWriter.close() -> GDAL COG driver (overviews, mode) -> atomic rename

Peak memory is the model plus ``prefetch`` batches on each queue plus the blender's overlap strip
(K x overlap x width floats); GDAL's block cache is capped while predicting. The model only ever
sees windows with at least one valid pixel; the predictor never knows how the model was trained
(it calls ``segmentor.predict_logits``, which for ST-DASegNet is the two-branch ensemble).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from core.errors import BandCountMismatchError, ConfigError
from core.raster.cog import (
    PROB_NODATA,
    PROB_SCALE,
    class_cog_writer,
    class_encoding,
    gdal_cache_limit,
    probability_cog_writer,
)
from core.raster.scene import Scene
from core.raster.stats import BandStats, compute_stats, normalize
from core.raster.tiling import PredictOptions, StreamingBlender, WindowPlan, aoi_mask, resolve_region


class PredictionCancelled(Exception):
    """Raised when ``should_stop`` asked the predictor to stop; nothing is left at the output path."""


@dataclass
class PredictionResult:
    """What a prediction wrote and how it went (windows, pixels, time spent per stage)."""

    output: Path
    probabilities: Path | None
    windows: int  # windows in the plan
    predicted: int  # windows passed to the model
    skipped: int  # windows that were entirely nodata (never passed to the model)
    pixels: int  # output pixels
    valid_pixels: int  # output pixels with a class
    stats: str  # which statistics normalised the input
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["output"] = str(self.output)
        d["probabilities"] = str(self.probabilities) if self.probabilities else None
        return d


class WindowModel:
    """A segmentor as a function from normalised windows (numpy) to class probabilities (numpy).

    Works with anything that has ``predict_logits(x) -> (N, K, H, W)`` or is itself such a callable.
    """

    def __init__(
        self,
        segmentor: Any,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        tta: bool = False,
        pad_multiple: int = 32,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {precision!r}", field="precision")
        if precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU does not support bf16; use precision fp32", field="precision")
        self.precision = precision
        self.tta = tta
        self.pad_multiple = max(1, int(pad_multiple))
        if isinstance(segmentor, torch.nn.Module):
            segmentor = segmentor.to(self.device).eval()
        self.segmentor = segmentor
        self._fn = getattr(segmentor, "predict_logits", segmentor)

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(B, C, h, w) float32 normalised -> (B, K, h, w) float32 probabilities."""
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)
        h, w = t.shape[-2:]
        ph, pw = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        if ph or pw:  # only windows of a raster smaller than the window size get here
            mode = "reflect" if h > ph and w > pw else "replicate"
            t = F.pad(t, (0, pw, 0, ph), mode=mode)
        probs = self._probs(t)
        if self.tta:
            for dims in ((3,), (2,), (2, 3)):
                probs += self._probs(t.flip(dims)).flip(dims)
            probs /= 4.0
        return probs[..., :h, :w].float().cpu().numpy()

    def _probs(self, t: torch.Tensor) -> torch.Tensor:
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                logits = self._fn(t)
        else:
            logits = self._fn(t)
        return torch.softmax(logits.float(), dim=1)


@dataclass
class _Batch:
    indices: list[int]  # plan indices this item accounts for, in order (predicted and skipped)
    run: list[int]  # the indices among them that have data, in order
    x: np.ndarray | None  # (len(run), C, h, w) normalised
    valid: list[np.ndarray]  # (h, w) per run window


class _Pipeline:
    """Shared state of one prediction's threads: stop flag, first failure, busy time per stage."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.busy: dict[str, float] = {"read": 0.0, "forward": 0.0, "write": 0.0, "wait_input": 0.0}
        self.skipped = 0
        self.valid_pixels = 0

    def fail(self, e: BaseException) -> None:
        if self.failure is None:
            self.failure = e
        self.stop.set()

    def put(self, q: queue.Queue, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue) -> Any:
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    raise _Stopped() from None


class _Stopped(Exception):
    pass


_DONE = object()


def predict_raster(
    bundle: Any,
    input: Any,
    output: str | Path,
    options: PredictOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **overrides: Any,
) -> PredictionResult:
    """Predict a raster of any size to a class COG (and optionally a probability COG).

    ``bundle``: a bundle path (or a job output folder holding ``bundle/``), a loaded Bundle, or any
    object with ``segmentor`` (``predict_logits``), ``classes`` (ClassSpec-like: id, name, color) and
    ``stats`` ({"source": BandStats, "target": ...}). ``input``: a raster path, a list of single-band
    files stacked in order, a SceneSpec or a Scene. Options: :class:`PredictOptions` fields, given as
    ``options`` and/or keyword overrides. ``progress(done, total)`` is called from this thread after
    each batch; ``should_stop()`` returning True stops the run with :class:`PredictionCancelled`.
    """
    t0 = time.perf_counter()
    opts = replace(options or PredictOptions(), **overrides).validate()
    bundle = _resolve_bundle(bundle)
    classes = list(bundle.classes)
    output = Path(output)
    probs_path = _probability_path(output, opts.probabilities)
    open_scene = _scene_opener(input, opts.nodata)

    with gdal_cache_limit(opts.cache_mb):
        with open_scene() as scene:
            expected = getattr(bundle, "band_count", None)
            if expected is not None and scene.count != expected:
                raise BandCountMismatchError(
                    f"{scene.name} has {scene.count} bands but the model was trained on {expected}"
                )
            region, geoms = resolve_region(scene.grid, opts.region)
            stats, stats_name = _choose_stats(bundle, opts.stats, scene, region)
            out_grid = scene.grid.window(region)
        plan = WindowPlan(int(region.height), int(region.width), opts.window, opts.overlap, opts.blend)
        model = WindowModel(
            bundle.segmentor, device=opts.device, precision=opts.precision, tta=opts.tta,
            pad_multiple=opts.pad_multiple,
        )
        lut = np.array([c.id for c in classes], dtype=class_encoding([c.id for c in classes])[0])
        nodata = class_encoding([c.id for c in classes])[1]
        writer = class_cog_writer(output, out_grid, classes, blocksize=opts.blocksize, compress=opts.compress)
        pwriter = None
        try:
            if probs_path is not None:
                pwriter = probability_cog_writer(
                    probs_path, out_grid, classes, blocksize=opts.blocksize, compress=opts.compress
                )
            pipe = _Pipeline()
            q_in: queue.Queue = queue.Queue(maxsize=opts.prefetch)
            q_out: queue.Queue = queue.Queue(maxsize=opts.prefetch)
            reader = threading.Thread(
                target=_read_windows, name="predict-reader", daemon=True,
                args=(pipe, q_in, open_scene, plan, region, geoms, stats, opts.batch_size),
            )
            sink = threading.Thread(
                target=_write_windows, name="predict-writer", daemon=True,
                args=(pipe, q_out, plan, len(classes), lut, nodata, writer, pwriter),
            )
            reader.start()
            sink.start()
            predicted = 0
            try:
                predicted = _run_model(pipe, q_in, q_out, model, len(plan), progress, should_stop)
            finally:
                if pipe.failure is not None or pipe.stop.is_set():
                    pipe.stop.set()
                reader.join()
                sink.join()
            if pipe.failure is not None:
                raise pipe.failure
            t_cog = time.perf_counter()
            writer.close()
            if pwriter is not None:
                pwriter.close()
            pipe.busy["cog"] = time.perf_counter() - t_cog
        except BaseException:
            writer.abort()
            if pwriter is not None:
                pwriter.abort()
            raise

    seconds = time.perf_counter() - t0
    return PredictionResult(
        output=output, probabilities=probs_path, windows=len(plan), predicted=predicted,
        skipped=pipe.skipped, pixels=int(region.width) * int(region.height), valid_pixels=pipe.valid_pixels,
        stats=stats_name, seconds=seconds, timings={k: round(v, 3) for k, v in pipe.busy.items()},
        options=opts.as_dict(),
    )


def _run_model(pipe: _Pipeline, q_in, q_out, model: WindowModel, total: int, progress, should_stop) -> int:
    """Main thread: batches from the reader through the model to the writer; progress and cancel."""
    done = predicted = 0
    try:
        while True:
            t = time.perf_counter()
            item = pipe.get(q_in)
            pipe.busy["wait_input"] += time.perf_counter() - t
            if item is _DONE:
                break
            probs = None
            if item.x is not None:
                t = time.perf_counter()
                probs = model(item.x)
                pipe.busy["forward"] += time.perf_counter() - t
                predicted += len(item.run)
            if not pipe.put(q_out, (item, probs)):
                break
            done += len(item.indices)
            if progress is not None:
                progress(done, total)
            if should_stop is not None and should_stop():
                raise PredictionCancelled(f"stopped after {done} of {total} windows")
        pipe.put(q_out, _DONE)
    except _Stopped:
        pass
    except BaseException as e:
        pipe.fail(e)
    return predicted


def _read_windows(pipe: _Pipeline, q_in, open_scene, plan: WindowPlan, region: Window, geoms, stats, batch: int):
    """Reader thread: read, mask, skip all-nodata windows, normalise and stack batches."""
    try:
        with open_scene() as scene:
            indices: list[int] = []
            run: list[int] = []
            xs: list[np.ndarray] = []
            valids: list[np.ndarray] = []
            c0, r0 = int(region.col_off), int(region.row_off)
            for pw in plan:
                if pipe.stop.is_set():
                    return
                t = time.perf_counter()
                w = pw.window
                rw = scene.read(Window(c0 + w.col_off, r0 + w.row_off, w.width, w.height))
                valid = rw.valid
                if geoms is not None:
                    valid &= aoi_mask(geoms, rw.grid)
                indices.append(pw.index)
                if not valid.any():
                    pipe.skipped += 1
                else:
                    xs.append(normalize(rw.data, stats, valid))
                    valids.append(valid)
                    run.append(pw.index)
                pipe.busy["read"] += time.perf_counter() - t
                if len(run) == batch:
                    if not pipe.put(q_in, _Batch(indices, run, np.stack(xs), valids)):
                        return
                    indices, run, xs, valids = [], [], [], []
            if indices and not pipe.put(q_in, _Batch(indices, run, np.stack(xs) if xs else None, valids)):
                return
            pipe.put(q_in, _DONE)
    except BaseException as e:
        pipe.fail(e)


def _write_windows(pipe: _Pipeline, q_out, plan: WindowPlan, k: int, lut, nodata, writer, pwriter):
    """Writer thread: blend windows into finished pieces; class ids (nodata where invalid) to the COG."""
    try:
        blender = StreamingBlender(plan, k)
        while True:
            got = pipe.get(q_out)
            if got is _DONE:
                break
            item, probs = got
            t = time.perf_counter()
            pos = 0
            for idx in item.indices:
                if pos < len(item.run) and item.run[pos] == idx:
                    p, v = probs[pos], item.valid[pos]
                    pos += 1
                else:
                    p = v = None
                for piece in blender.add(idx, p, v):
                    _write_piece(pipe, piece, lut, nodata, writer, pwriter)
            pipe.busy["write"] += time.perf_counter() - t
        if not blender.done:
            raise RuntimeError(f"the writer saw {blender._next} of {len(plan)} windows")
    except _Stopped:
        pass
    except BaseException as e:
        pipe.fail(e)


def _write_piece(pipe: _Pipeline, piece, lut, nodata, writer, pwriter) -> None:
    valid = piece.valid
    n = int(valid.sum())
    if n == 0:  # unwritten tiles of the sparse temporary file read back as nodata
        return
    pipe.valid_pixels += n
    cls = lut[piece.probs.argmax(axis=0)]
    if n < valid.size:
        cls[~valid] = nodata
    writer.write(cls, piece.window)
    if pwriter is not None:
        q = np.rint(piece.probs * PROB_SCALE).astype(np.uint8)
        if n < valid.size:
            q[:, ~valid] = PROB_NODATA
        pwriter.write(q, piece.window)


# inputs ------------------------------------------------------------------------------------------
def _resolve_bundle(bundle: Any) -> Any:
    if isinstance(bundle, (str, os.PathLike)):
        from models.bundle import load_bundle

        return load_bundle(bundle)
    return bundle


def _scene_opener(input: Any, nodata: float | None) -> Callable[[], Scene]:
    """Each thread opens its own handle: GDAL datasets must not be shared between threads."""
    if isinstance(input, Scene):
        paths = list(input.paths)
        return lambda: Scene.open(paths, nodata=nodata)
    if isinstance(input, Sequence) and not isinstance(input, (str, bytes)):
        paths = [Path(p) for p in input]
        return lambda: Scene.open(paths, nodata=nodata)
    return lambda: Scene.open(input, nodata=nodata)


def _probability_path(output: Path, probabilities: Any) -> Path | None:
    if not probabilities:
        return None
    if isinstance(probabilities, (str, os.PathLike)):
        return Path(probabilities)
    return output.with_name(f"{output.stem}_probs{output.suffix or '.tif'}")


def _choose_stats(bundle: Any, choice: Any, scene: Scene, region: Window) -> tuple[BandStats, str]:
    """The statistics that normalise the input, and their name for the record."""
    if not isinstance(choice, str):
        return (choice if hasattr(choice, "mean") else BandStats.from_dict(choice)), "custom"
    if choice == "input":  # a streaming pass over the input's valid pixels in the region
        return compute_stats([scene], [region]), "input"
    have = dict(getattr(bundle, "stats", None) or {})
    if choice == "auto":  # the bundle's own default, else target statistics when it has them
        default = getattr(bundle, "default_stats", None)
        choice = default if default in have else ("target" if "target" in have else "source")
    if choice not in have:
        raise ConfigError(
            f"the model bundle has no {choice} statistics (it has: {', '.join(have) or 'none'}); "
            "use stats=input to normalise with the input's own",
            field="stats",
        )
    s = have[choice]
    return (s if hasattr(s, "mean") else BandStats.from_dict(s)), choice
