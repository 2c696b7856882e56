"""Large-raster prediction: windowed read -> normalise -> batch -> forward -> blend -> COG, in bounded memory.

Call flow (threads joined by bounded queues, so reading and writing overlap the model; torch, numpy
and GDAL release the GIL in their heavy parts):

    reader thread                       model threads (streams)            writer thread
    WindowPlan, row-major, read in      WindowModel(batch):                batches back in plan order,
    chunks of a window row, sliced      forward (+ flips), softmax         StreamingBlender.add(window)
    all nodata? skip (counted)          -> probs (B, K, h, w)              -> finished pieces: argmax ->
    normalise, stack a batch  --q_in-->                        --q_out-->  class ids, nodata where
                                                                           invalid -> CogWriter.write
    calling thread: progress(done, total), should_stop()                   (a tiled temporary GeoTIFF)
    after the last window: CogWriter.close() -> GDAL COG driver (overviews, mode) -> atomic rename

The engine (``opts.engine``) runs the network: torch (:class:`WindowModel`), or onnxruntime on the bundle's
ONNX export (models.inference.onnx_window_model), with the same contract and the same normalisation.

Peak memory is the model's activations for ``streams`` batches, plus the batches queued between the
threads, plus one read chunk (READ_CHUNK_BYTES of raw values), plus the blender's overlap strip
(K x overlap x width floats); GDAL's block cache is capped while predicting. None of it depends on
the raster's size. The model only ever sees windows with at least one valid pixel; the predictor
never knows how the model was trained (it calls ``segmentor.predict_logits``, which for ST-DASegNet
is the two-branch ensemble).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window

from core.errors import BandCountMismatchError, ConfigError
from core.job_layout import probability_path_for
from core.raster.cog import (
    PROB_NODATA,
    PROB_SCALE,
    class_cog_writer,
    class_encoding,
    close_together,
    gdal_cache_limit,
    probability_cog_writer,
)
from core.raster.scene import Scene
from core.raster.stats import compute_stats
from core.raster.prediction_windows import (
    PredictOptions,
    StreamingBlender,
    WindowPlan,
    aoi_mask,
    clip_piece,
    resolve_region,
)
from models.normalization import Normalizer


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
        if ph or pw:  # a raster smaller than the window, or a window size off the multiple
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
    seq: int  # order of this batch in the plan
    indices: list[int]  # plan indices this item accounts for, in order (predicted and skipped)
    run: list[int]  # the indices among them that have data, in order
    x: np.ndarray | None  # (len(run), C, h, w) normalised
    valid: list[np.ndarray]  # (h, w) per run window


class _Pipeline:
    """Shared state of one prediction's threads: stop flag, first failure, counters, busy time per stage."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.lock = threading.Lock()
        # GDAL's block cache is process-wide: a read in one thread may flush another dataset's dirty
        # block while that dataset's thread rewrites it, and the rewrite is lost (GDAL #2011; seen
        # here as pieces of windows left nodata, about one fresh process in ten). Reads and writes
        # take turns; both still overlap the model.
        self.gdal = threading.Lock()
        self.busy: dict[str, float] = {"read": 0.0, "forward": 0.0, "write": 0.0, "wait_input": 0.0}
        self.skipped = 0
        self.predicted = 0
        self.done = 0  # windows blended and written
        self.valid_pixels = 0

    def fail(self, e: BaseException) -> None:
        with self.lock:
            if self.failure is None:
                self.failure = e
        self.stop.set()

    def add(self, key: str, seconds: float) -> None:
        with self.lock:
            self.busy[key] += seconds

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


def window_model(bundle: Any, opts: PredictOptions) -> tuple[Any, Any]:
    """The engine that runs the bundle's network on windows (opts.engine), and what must stay alive with it.

    torch: :class:`WindowModel` on the bundle's segmentor. onnxruntime: :class:`OnnxWindowModel` on the
    bundle's model.onnx (exported to a temporary folder when the bundle has none, returned second), with
    the intra-op threads of one stream.
    """
    if opts.engine != "onnxruntime":
        model = WindowModel(bundle.segmentor, device=opts.device, precision=opts.precision, tta=opts.tta,
                            pad_multiple=opts.pad_multiple)
        return model, None
    from models.inference.onnx_window_model import OnnxWindowModel, onnx_model_of

    path, tmp = onnx_model_of(bundle)
    _, threads = default_streams(OnnxWindowModel.device, opts.streams, opts.threads)
    return OnnxWindowModel(path, threads=threads, tta=opts.tta, pad_multiple=opts.pad_multiple), tmp


def default_streams(device: torch.device, streams: int | None, threads: int | None,
                    cores: int | None = None) -> tuple[int, int]:
    """(batches in the model at once, torch threads each), on ``cores`` CPU cores (default: every core this
    process may run on).

    On a CPU, small segmentation networks scale poorly across the threads of one forward pass
    (each op is short, and the threads wait at every op's barrier, worse still when reading and
    writing threads share the cores), while independent forward passes on one core each scale
    almost linearly; so several streams of one thread each. On a GPU one stream keeps it busy.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type != "cpu":
        return int(streams or 1), int(threads or torch.get_num_threads())
    n = int(streams or min(cores, 4))
    return n, int(threads or max(1, cores // n))


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
    ``normalization`` (a models.normalization.Normalization: the statistics the ``stats`` option chooses
    among). ``input``: a raster path, a list of single-band files stacked in order, a SceneSpec or a
    Scene. Options: :class:`PredictOptions` fields, given as ``options`` and/or keyword overrides.
    ``progress(done, total)`` (windows) is called from the calling thread; ``should_stop()`` returning
    True stops the run with :class:`PredictionCancelled` and leaves nothing at the output paths.
    """
    t0 = time.perf_counter()
    opts = replace(options or PredictOptions(), **overrides).validate()
    bundle = _resolve_bundle(bundle)
    classes = list(bundle.classes)
    output = Path(output)
    probs_path = _probability_path(output, opts.probabilities)
    open_scene = _scene_opener(input, opts.nodata)
    _refuse_overwriting_input(input, [output, probs_path])

    with gdal_cache_limit(opts.cache_mb):
        setup = prepare_prediction(bundle, open_scene, opts)
        writer = class_cog_writer(output, setup.out_grid, classes, blocksize=opts.blocksize, compress=opts.compress)
        pwriter = None
        try:
            if probs_path is not None:
                pwriter = probability_cog_writer(
                    probs_path, setup.out_grid, classes, blocksize=opts.blocksize, compress=opts.compress
                )
            pipe, engine = run_windows(bundle, open_scene, setup, opts, writer, pwriter,
                                       progress=progress, should_stop=should_stop)
            t_cog = time.perf_counter()
            close_together([writer, pwriter])
            pipe.busy["cog"] = time.perf_counter() - t_cog
        except BaseException:
            writer.abort()
            if pwriter is not None:
                pwriter.abort()
            raise

    region, plan = setup.region, setup.plan
    seconds = time.perf_counter() - t0
    return PredictionResult(
        output=output, probabilities=probs_path, windows=len(plan), predicted=pipe.predicted,
        skipped=pipe.skipped, pixels=int(region.width) * int(region.height), valid_pixels=pipe.valid_pixels,
        stats=setup.normalizer.name, seconds=seconds, timings={k: round(v, 3) for k, v in pipe.busy.items()},
        options={**opts.as_dict(), **engine},
    )


@dataclass
class PredictionSetup:
    """What a prediction settles before any window runs: where it reads, how it normalises, what it writes."""

    region: Window  # the input's pixels predicted
    geoms: list[dict] | None  # an AOI's geometries in the raster's CRS (pixels outside are nodata)
    normalizer: Normalizer
    out_grid: Any  # the output's grid (the region's)
    plan: WindowPlan  # windows over the whole region (a shard runs some of its rows)


def prepare_prediction(bundle: Any, open_scene: Callable[[], Scene], opts: PredictOptions) -> PredictionSetup:
    """Check the input against the model and resolve the region, the statistics and the window plan."""
    with open_scene() as scene:
        expected = getattr(bundle, "band_count", None)
        if expected is not None and scene.count != expected:
            raise BandCountMismatchError(
                f"{scene.name} has {scene.count} bands but the model was trained on {expected}"
            )
        region, geoms = resolve_region(scene.grid, opts.region)
        # a streaming pass over the input's valid pixels in the region, only if asked for
        normalizer = bundle.normalization.for_prediction(
            opts.stats, input_stats=lambda: compute_stats([scene], [region]))
        out_grid = scene.grid.window(region)
    plan = WindowPlan(int(region.height), int(region.width), opts.window, opts.overlap, opts.blend)
    return PredictionSetup(region, geoms, normalizer, out_grid, plan)


def run_windows(
    bundle: Any,
    open_scene: Callable[[], Scene],
    setup: PredictionSetup,
    opts: PredictOptions,
    writer: Any,
    pwriter: Any | None,
    *,
    window_rows: tuple[int, int] | None = None,
    rows: tuple[int, int] | None = None,
    record: Callable[[int, np.ndarray | None, np.ndarray | None], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[_Pipeline, dict]:
    """Run the plan's windows (only ``window_rows`` [first, stop) of them when given) through the reader,
    model and writer threads; class ids (and probabilities) go to ``writer`` (``pwriter``), each piece cut
    to the output ``rows`` [first, stop) when given; ``record(index, probs, valid)`` sees every window's
    probabilities before they are blended (None for a skipped window). Returns the pipeline's counters and
    the engine's streams/threads/device. Raises :class:`PredictionCancelled` when ``should_stop`` said so."""
    classes = list(bundle.classes)
    plan = setup.plan
    window_rows = window_rows or (0, plan.n_rows)
    model, onnx_tmp = window_model(bundle, opts)
    n_streams, n_threads = default_streams(model.device, opts.streams, opts.threads)
    dtype, nodata = class_encoding([c.id for c in classes])
    lut = np.array([c.id for c in classes], dtype=dtype)
    pipe = _Pipeline()
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(n_threads)
        q_in: queue.Queue = queue.Queue(maxsize=opts.prefetch + n_streams)
        q_out: queue.Queue = queue.Queue(maxsize=opts.prefetch + n_streams)
        workers = [
            threading.Thread(
                target=_read_windows, name="predict-reader", daemon=True,
                args=(pipe, q_in, open_scene, plan, setup.region, setup.geoms, setup.normalizer, opts.batch_size,
                      window_rows),
            ),
            *(
                threading.Thread(target=_forward, name=f"predict-model-{i}", daemon=True,
                                 args=(pipe, q_in, q_out, model))
                for i in range(n_streams)
            ),
        ]
        sink = threading.Thread(
            target=_write_windows, name="predict-writer", daemon=True,
            args=(pipe, q_out, plan, len(classes), lut, nodata, writer, pwriter, window_rows, rows, record),
        )
        for t in (*workers, sink):
            t.start()
        try:
            _watch(pipe, sink, (window_rows[1] - window_rows[0]) * plan.n_cols, progress, should_stop)
        except BaseException as e:  # Ctrl-C in the calling thread: stop the others, clean up
            pipe.fail(e)
        pipe.stop.set()  # the writer is done (or failed): release anything still waiting
        for t in (*workers, sink):
            t.join()
        if pipe.failure is not None:
            raise pipe.failure
    finally:
        torch.set_num_threads(threads_before)
        if onnx_tmp is not None:
            onnx_tmp.cleanup()
    return pipe, {"streams": n_streams, "threads": n_threads, "device": str(model.device)}


def _watch(pipe: _Pipeline, sink: threading.Thread, total: int, progress, should_stop) -> None:
    """Calling thread: report progress and honour cancel until the writer has finished."""
    last = -1
    while True:
        # asked before each wait, not after: a stop asked before a short run ends must still stop it
        if should_stop is not None and not pipe.stop.is_set() and sink.is_alive() and should_stop():
            pipe.fail(PredictionCancelled(f"stopped after {pipe.done} of {total} windows"))
        sink.join(timeout=0.2)
        running = sink.is_alive()
        if progress is not None and pipe.done != last:
            last = pipe.done
            progress(last, total)
        if not running:
            return


#: raw bytes read at once by the reader: a run of neighbouring windows in one window row is read as one
#: chunk and sliced, so each of the input's blocks is decoded once per window row rather than once per
#: window; per-window reads thrash GDAL's capped block cache as soon as one row of the input's blocks
#: outgrows it (measured on an 8192 px, 6-band raster with 64 MB: 8.3 s of reads per-window, 3.4 s chunked)
READ_CHUNK_BYTES = 4 << 20


def read_chunks(plan: WindowPlan, bands: int, chunk_bytes: int = READ_CHUNK_BYTES,
                window_rows: tuple[int, int] | None = None) -> Iterator[tuple[Window, list]]:
    """The plan as (chunk window, its windows), in plan order: each chunk is a run of neighbouring
    windows of one window row, as wide as ``chunk_bytes`` of float32 allows (at least one window).
    ``window_rows``: only the window rows [first, stop)."""
    max_width = max(plan.win_w, chunk_bytes // (4 * max(1, bands) * plan.win_h))
    first, stop = window_rows or (0, plan.n_rows)
    run: list = []
    for pw in plan:
        if not first <= pw.row < stop:
            continue
        w = pw.window
        if run and (w.row_off != run[0].window.row_off or w.col_off + w.width - run[0].window.col_off > max_width):
            yield _span(run), run
            run = []
        run.append(pw)
    if run:
        yield _span(run), run


def _span(run: list) -> Window:
    first, last = run[0].window, run[-1].window
    return Window(first.col_off, first.row_off, last.col_off + last.width - first.col_off, first.height)


def _read_windows(pipe: _Pipeline, q_in, open_scene, plan: WindowPlan, region: Window, geoms,
                  normalizer: Normalizer, batch: int, window_rows: tuple[int, int]):
    """Reader thread: read chunks of windows, mask, skip all-nodata windows, normalise and stack batches.

    A batch never spans two window rows: a network's output for one window can differ in its last bits
    with the batch around it (CPU kernels pick their path by batch size), so batches start afresh at each
    window row, and a shard that runs some rows of the plan forwards each window in the same batch as a
    run of the whole plan does: its pixels come out the same, bit for bit.
    """
    try:
        with pipe.gdal:
            scene = open_scene()
    except BaseException as e:
        pipe.fail(e)
        return
    try:
        with _closing(scene, pipe.gdal):
            seq = 0
            indices: list[int] = []
            run: list[int] = []
            xs: list[np.ndarray] = []
            valids: list[np.ndarray] = []
            c0, r0 = int(region.col_off), int(region.row_off)
            batch_row = None
            for span, windows in read_chunks(plan, scene.count, window_rows=window_rows):
                if pipe.stop.is_set():
                    return
                if indices and windows[0].row != batch_row:  # a new window row: the last one's batch goes
                    if not pipe.put(q_in, _Batch(seq, indices, run, np.stack(xs) if xs else None, valids)):
                        return
                    seq += 1
                    indices, run, xs, valids = [], [], [], []
                batch_row = windows[0].row
                t = time.perf_counter()
                with pipe.gdal:
                    chunk = scene.read(Window(c0 + span.col_off, r0 + span.row_off, span.width, span.height))
                chunk_valid = chunk.valid
                if geoms is not None:
                    chunk_valid &= aoi_mask(geoms, chunk.grid)
                x_chunk = normalizer(chunk.data, chunk_valid)
                del chunk
                pipe.add("read", time.perf_counter() - t)
                for pw in windows:
                    t = time.perf_counter()
                    cols = slice(int(pw.window.col_off - span.col_off), int(pw.window.col_off - span.col_off + pw.window.width))
                    valid = chunk_valid[:, cols]
                    indices.append(pw.index)
                    if not valid.any():
                        pipe.skipped += 1
                    else:
                        xs.append(x_chunk[:, :, cols])  # a view: np.stack copies it into the batch
                        valids.append(valid.copy())  # a copy, so the chunk's mask is not kept alive
                        run.append(pw.index)
                    full = len(run) == batch
                    x = np.stack(xs) if full else None
                    pipe.add("read", time.perf_counter() - t)
                    if full:
                        if not pipe.put(q_in, _Batch(seq, indices, run, x, valids)):
                            return
                        seq += 1
                        indices, run, xs, valids = [], [], [], []
            if indices:
                if not pipe.put(q_in, _Batch(seq, indices, run, np.stack(xs) if xs else None, valids)):
                    return
            pipe.put(q_in, _DONE)
    except BaseException as e:
        pipe.fail(e)


@contextmanager
def _closing(scene: Scene, lock: threading.Lock):
    try:
        yield scene
    finally:
        with lock:
            scene.close()


def _forward(pipe: _Pipeline, q_in, q_out, model: WindowModel) -> None:
    """Model thread (one per stream): normalised batches in, class probabilities out."""
    try:
        while True:
            t = time.perf_counter()
            item = pipe.get(q_in)
            pipe.add("wait_input", time.perf_counter() - t)
            if item is _DONE:
                pipe.put(q_in, _DONE)  # for the other streams
                return
            probs = None
            if item.x is not None:
                t = time.perf_counter()
                probs = model(item.x)
                pipe.add("forward", time.perf_counter() - t)
                with pipe.lock:
                    pipe.predicted += len(item.run)
            if not pipe.put(q_out, (item, probs)):
                return
    except _Stopped:
        pass
    except BaseException as e:
        pipe.fail(e)


def _write_windows(pipe: _Pipeline, q_out, plan: WindowPlan, k: int, lut, nodata, writer, pwriter,
                   window_rows: tuple[int, int], rows: tuple[int, int] | None, record=None):
    """Writer thread: put batches back in plan order, blend windows into finished pieces, write class ids
    (nodata where invalid) to the temporary file; only the output ``rows`` of each piece when given."""
    try:
        blender = StreamingBlender(plan, k, window_rows=window_rows)
        pending: dict[int, tuple] = {}  # batches that overtook an earlier one in another stream
        next_seq = 0
        while not blender.done:
            item, probs = pipe.get(q_out)
            pending[item.seq] = (item, probs)
            while next_seq in pending:
                item, probs = pending.pop(next_seq)
                next_seq += 1
                t = time.perf_counter()
                pos = 0
                for idx in item.indices:
                    if pos < len(item.run) and item.run[pos] == idx:
                        p, v = probs[pos], item.valid[pos]
                        pos += 1
                    else:
                        p = v = None
                    if record is not None:
                        record(idx, p, v)
                    for piece in blender.add(idx, p, v):
                        if rows is not None:
                            piece = clip_piece(piece, *rows)
                            if piece is None:
                                continue
                        _write_piece(pipe, piece, lut, nodata, writer, pwriter)
                pipe.done += len(item.indices)
                pipe.add("write", time.perf_counter() - t)
    except _Stopped:
        pass
    except BaseException as e:
        pipe.fail(e)


def _write_piece(pipe: _Pipeline, piece, lut, nodata, writer, pwriter) -> None:
    n = int(piece.valid.sum())
    if n == 0:  # unwritten tiles of the sparse temporary file read back as nodata
        return
    pipe.valid_pixels += n
    cls, q = encode_piece(piece, lut, nodata, pwriter is not None)
    with pipe.gdal:
        writer.write(cls, piece.window)
    if q is not None:
        with pipe.gdal:
            pwriter.write(q, piece.window)


def encode_piece(piece, lut: np.ndarray, nodata: int, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A blended piece as stored: class ids (``lut`` of the most probable class; nodata where invalid) and,
    when asked for, probabilities as uint8 (PROB_SCALE; PROB_NODATA where invalid)."""
    valid = piece.valid
    whole = bool(valid.all())
    cls = lut[piece.probs.argmax(axis=0)]
    if not whole:
        cls[~valid] = nodata
    q = None
    if probabilities:
        q = np.rint(piece.probs * PROB_SCALE).astype(np.uint8)
        if not whole:
            q[:, ~valid] = PROB_NODATA
    return cls, q


# inputs ------------------------------------------------------------------------------------------
def _resolve_bundle(bundle: Any) -> Any:
    if isinstance(bundle, (str, os.PathLike)):
        from models.bundle import load_bundle

        return load_bundle(bundle)
    return bundle


def _scene_opener(input: Any, nodata: float | None) -> Callable[[], Scene]:
    """Each thread opens its own handle: GDAL datasets must not be shared between threads."""
    if isinstance(input, Scene):
        spec: Any = list(input.paths)
    elif isinstance(input, Sequence) and not isinstance(input, (str, bytes)):
        spec = [Path(p) for p in input]
    else:
        spec = input
    if nodata is None:
        nodata = _uniform_nodata(spec)
    return lambda: Scene.open(spec, nodata=nodata)


def _refuse_overwriting_input(input: Any, outputs: list[Path | None]) -> None:
    if isinstance(input, Scene) or hasattr(input, "paths"):
        paths = list(input.paths)
    elif isinstance(input, Sequence) and not isinstance(input, (str, bytes)):
        paths = list(input)
    else:
        paths = [input]
    inputs = {Path(p).resolve() for p in paths if isinstance(p, (str, os.PathLike))}
    for out in outputs:
        if out is not None and out.resolve() in inputs:
            raise ConfigError(f"the output {out} is one of the input files; choose another path", field="output")


def _uniform_nodata(spec: Any) -> float | None:
    """The one nodata value of every band when validity comes from nodata alone (no mask, no alpha).

    Passing it on as the scene's nodata gives the same valid pixels (value != nodata, and finite) but
    takes them from the data already read, where GDAL's nodata mask bands would read every band a
    second time (measured: 2.6x the cost of the data read for a pixel-interleaved 6-band file).
    """
    import rasterio
    from rasterio.enums import MaskFlags

    paths = list(spec.paths) if hasattr(spec, "paths") else ([spec] if isinstance(spec, (str, os.PathLike)) else spec)
    values = set()
    try:
        for p in paths:
            with rasterio.open(p) as ds:
                if any(list(f) != [MaskFlags.nodata] for f in ds.mask_flag_enums):
                    return None
                values.update(float(v) for v in ds.nodatavals)
    except Exception:  # unreadable here: Scene.open reports it properly
        return None
    if len(values) != 1:
        return None
    v = values.pop()
    return None if np.isnan(v) else v  # NaN: Scene's mask path handles it (value != NaN is always true)


def _probability_path(output: Path, probabilities: Any) -> Path | None:
    if not probabilities:
        return None
    if isinstance(probabilities, (str, os.PathLike)):
        return Path(probabilities)
    return probability_path_for(output)
