"""Benchmark B: large-raster prediction speed and memory, in one run, on one machine, with one model and
one set of window settings (shared design benchmarks.md).

    build_mosaic(size)          a size x size x 6 float32 GeoTIFF tiled from the real NC Landsat-7
                                scene, its nodata border kept (cached under <out>/data)
    each measurement in a fresh interpreter (so a peak RSS is that run's own):
      model   forward throughput on in-memory batches of real windows, with the streams/threads
              predict uses (the practical limit); also one stream with torch's default threads
      e2e     predict_raster: read, normalise, forward, blend, write the COG with overviews;
              at `size` and again at `small` (peak RSS per size)
      naive   read the whole raster, normalise it, run every window through one forward loop
              (torch's default threads), blend into whole-raster arrays, write the same COG
      engines model and e2e again on onnxruntime (the bundle's ONNX export), side by side with torch's
    report.json / report.md

Throughputs are raster megapixels per second. The model-only figure is converted to the same unit
with the plan's redundancy (window pixels actually forwarded per raster pixel), so
``e2e_over_model`` = (time the model alone needs for the windows predict forwards) / (predict's
wall time): what reading, normalising, blending and writing cost on top of the network.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

GOALS = {"e2e_over_model": 0.85, "e2e_over_naive": 1.5, "rss_growth": 0.10}
NODATA = -9999.0


@dataclass
class BenchSettings:
    size: int = 8192  # side of the large raster
    small: int | None = None  # side of the second raster for peak RSS (default size // 2)
    window: int = 128
    overlap: int = 16
    batch_size: int = 8
    blend: str = "hann"
    precision: str = "fp32"
    streams: int | None = None  # default: predict's (CPU: one per core, up to 4)
    threads: int | None = None
    model_seconds: float = 20.0  # how long each model-only measurement runs
    bundle: str | None = None  # default: the segformer-tiny network with random weights
    device: str | None = None
    engine: str = "torch"  # the engine of one measurement (torch's figures are the benchmark's own)
    engines: tuple[str, ...] = ("torch", "onnxruntime")  # engines compared side by side
    extra: dict = field(default_factory=dict)

    def predict_options(self) -> dict:
        return dict(window=self.window, overlap=self.overlap, batch_size=self.batch_size, blend=self.blend,
                    precision=self.precision, streams=self.streams, threads=self.threads, device=self.device,
                    engine=self.engine)


# the raster ----------------------------------------------------------------------------------------
def build_mosaic(size: int, out: Path, data_dir: Path | None = None) -> Path:
    """A size x size x 6 float32 GeoTIFF (tiled, nodata -9999) tiled from the real NC scene."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from core.data.fetch import fetch
    from core.data.nc import nc_band_paths
    from core.raster.scene import Scene

    out = Path(out)
    if out.exists():
        with rasterio.open(out) as ds:
            if (ds.width, ds.height, ds.count) == (size, size, 6):
                return out
    with Scene.open(nc_band_paths(fetch("nc-landsat", data_dir))) as scene:
        rw = scene.read()
        grid = scene.grid
    tile = np.where(rw.valid, rw.data, np.float32(NODATA)).astype(np.float32)
    _, th, tw = tile.shape
    reps = -(-size // tw)
    row = np.concatenate([tile] * reps, axis=2)[:, :, :size]
    t = grid.transform
    profile = dict(driver="GTiff", width=size, height=size, count=6, dtype="float32", nodata=NODATA,
                   crs=grid.crs, transform=Affine(t.a, t.b, t.c, t.d, t.e, t.f), tiled=True,
                   blockxsize=512, blockysize=512, interleave="pixel", BIGTIFF="IF_SAFER")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    with rasterio.open(tmp, "w", **profile) as ds:
        for r in range(0, size, th):
            h = min(th, size - r)
            ds.write(row[:, :h], window=Window(0, r, size, h))
    os.replace(tmp, out)
    return out


def make_bundle(out: Path, data_dir: Path | None = None) -> Path:
    """The project's default network (segformer-tiny, 6 bands, the 7 NC classes) with random weights.

    Throughput does not depend on the weights; a bundle on disk makes predict load it as users do."""
    import torch

    from core.data.fetch import fetch
    from core.data.nc import nc_band_paths, nc_class_specs
    from core.raster.scene import Scene
    from core.raster.stats import compute_stats
    from models.adaptation import build_method
    from models.bundle import load_bundle, save_bundle
    from models.config import resolve_config

    out = Path(out)
    try:
        load_bundle(out)
        return out
    except Exception:
        pass
    with Scene.open(nc_band_paths(fetch("nc-landsat", data_dir))) as s:
        stats = compute_stats([s])
    torch.manual_seed(0)
    cfg = resolve_config("segformer-tiny", method="source-only", overrides={}, in_channels=6, num_classes=7)
    m = build_method(cfg, total_iters=1)
    return save_bundle(out, m.inference_segmentor(), cfg, nc_class_specs(), {"source": stats},
                       {"note": "benchmark B: random weights"}, inference=m.inference_config())


# measurements (each runs in its own interpreter) ---------------------------------------------------
def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that over
    from the parent across fork and exec, so a child would report at least its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: KB on most systems


def _sample_batches(bundle, path: Path, s: BenchSettings, n: int) -> list[np.ndarray]:
    """n batches of real, normalised windows of the mosaic (only windows with valid data)."""
    from rasterio.windows import Window

    from core.raster.scene import Scene

    normalizer = bundle.normalization.for_prediction("auto")
    xs = []
    with Scene.open(path) as scene:
        step = s.window - s.overlap
        for r in range(0, scene.grid.height - s.window, step):
            for c in range(0, scene.grid.width - s.window, step):
                rw = scene.read(Window(c, r, s.window, s.window))
                if rw.valid.any():
                    xs.append(normalizer(rw.data, rw.valid))
                if len(xs) >= n * s.batch_size:
                    return [np.stack(xs[i : i + s.batch_size]) for i in range(0, len(xs), s.batch_size)]
    return [np.stack(xs[i : i + s.batch_size]) for i in range(0, len(xs), s.batch_size)]


def measure_model(bundle_path: Path, path: Path, s: BenchSettings) -> dict:
    """Window megapixels per second through the network alone, on in-memory batches."""
    import torch

    from core.raster.prediction_windows import PredictOptions
    from models.bundle import load_bundle
    from models.inference.windowed import default_streams, window_model

    bundle = load_bundle(bundle_path)
    opts = PredictOptions(**s.predict_options()).validate()
    model, _ = window_model(bundle, opts)  # the engine predict uses (its threads per stream for onnxruntime)
    streams, threads = default_streams(model.device, s.streams, s.threads)
    batches = _sample_batches(bundle, path, s, 4 * streams)
    default_threads = torch.get_num_threads()

    def run(n_streams: int) -> float:
        done = [0] * n_streams
        stop = time.perf_counter() + s.model_seconds

        def loop(k: int) -> None:
            # at least one batch per stream: on a loaded machine a short budget could end before the first, and
            # the figure would read 0 Mpx/s instead of a slow one
            i = k
            while True:
                model(batches[i % len(batches)])
                done[k] += batches[i % len(batches)].shape[0]
                i += n_streams
                if time.perf_counter() >= stop:
                    break

        model(batches[0])  # warm-up
        t0 = time.perf_counter()
        ts = [threading.Thread(target=loop, args=(k,)) for k in range(n_streams)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(done) * s.window * s.window / (time.perf_counter() - t0) / 1e6

    torch.set_num_threads(threads)
    streamed = run(streams)
    torch.set_num_threads(default_threads)
    if s.engine != "torch":  # onnxruntime fixes its threads per session: one with the default's
        model, _ = window_model(bundle, replace(opts, streams=1, threads=default_threads))
    single = run(1)
    return {"window_mpx_s": streamed, "streams": streams, "threads": threads,
            "single_stream_window_mpx_s": single, "single_stream_threads": default_threads,
            "peak_rss_mb": _peak_rss_mb()}


def measure_e2e(bundle_path: Path, path: Path, s: BenchSettings, out: Path) -> dict:
    from models.bundle import load_bundle
    from models.inference import predict_raster

    bundle = load_bundle(bundle_path)
    r = predict_raster(bundle, path, out, **s.predict_options())
    d = r.to_dict()
    d["peak_rss_mb"] = _peak_rss_mb()
    return d


def naive_predict(bundle, path: Path, out: Path, s: BenchSettings) -> dict:
    """What most tools do: the whole raster in memory, one forward loop over every window (nodata or
    not), whole-raster blending arrays, then one write. Same network, windows, weights and COG."""
    import torch

    from core.raster.cog import class_cog_writer, class_encoding
    from core.raster.scene import Scene
    from core.raster.prediction_windows import WindowPlan
    from models.inference.windowed import WindowModel

    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    with Scene.open(path) as scene:
        rw = scene.read()
        grid = scene.grid
    x = bundle.normalization.for_prediction("auto")(rw.data, rw.valid)
    valid = rw.valid
    del rw
    stages["read_normalise"] = time.perf_counter() - t0
    h, w = valid.shape
    plan = WindowPlan(h, w, s.window, s.overlap, s.blend)
    classes = list(bundle.classes)
    acc = np.zeros((len(classes), h, w), np.float32)
    model = WindowModel(bundle.segmentor, device=s.device, precision=s.precision)
    windows = list(plan)
    stages["forward"] = stages["blend"] = 0.0
    for i in range(0, len(windows), s.batch_size):
        chunk = windows[i : i + s.batch_size]
        sl = [(slice(p.window.row_off, p.window.row_off + p.window.height),
               slice(p.window.col_off, p.window.col_off + p.window.width)) for p in chunk]
        t = time.perf_counter()
        probs = model(np.stack([x[:, r, c] for r, c in sl]))
        t1 = time.perf_counter()
        for p, pw, (r, c) in zip(probs, chunk, sl):
            acc[:, r, c] += p * plan.weights(pw.row, pw.col)
        stages["forward"] += t1 - t
        stages["blend"] += time.perf_counter() - t1
    t = time.perf_counter()
    dtype, nodata = class_encoding([c.id for c in classes])
    lut = np.array([c.id for c in classes], dtype=dtype)
    cls = lut[acc.argmax(axis=0)]  # weights are positive: no need to divide before the argmax
    cls[~valid] = nodata
    from rasterio.windows import Window

    with class_cog_writer(out, grid, classes) as writer:
        writer.write(cls, Window(0, 0, w, h))
    stages["classes_write"] = time.perf_counter() - t
    return {"seconds": time.perf_counter() - t0, "windows": len(windows), "pixels": h * w,
            "threads": torch.get_num_threads(), "stages": {k: round(v, 2) for k, v in stages.items()}}


def measure_naive(bundle_path: Path, path: Path, s: BenchSettings, out: Path) -> dict:
    from models.bundle import load_bundle

    d = naive_predict(load_bundle(bundle_path), path, out, s)
    d["peak_rss_mb"] = _peak_rss_mb()
    return d


def _child(kind: str, bundle: str, raster: str, settings: str, out: str) -> None:
    s = BenchSettings(**json.loads(settings))
    if kind == "model":
        res = measure_model(Path(bundle), Path(raster), s)
    elif kind == "e2e":
        res = measure_e2e(Path(bundle), Path(raster), s, Path(out))
    elif kind == "naive":
        res = measure_naive(Path(bundle), Path(raster), s, Path(out))
    else:
        raise SystemExit(f"unknown measurement {kind}")
    print("RESULT " + json.dumps(res))


def _run_child(kind: str, bundle: Path, raster: Path, s: BenchSettings, out: Path, log) -> dict:
    code = "import sys; from benchmarks.predict import _child; _child(*sys.argv[1:6])"
    args = [sys.executable, "-c", code, kind, str(bundle), str(raster), json.dumps(asdict(s)), str(out)]
    t = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step {kind} failed:\n{proc.stderr[-3000:]}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    res = json.loads(line.removeprefix("RESULT "))
    log(f"  {kind} on {raster.name}: {time.perf_counter() - t:.1f} s in its process")
    return res


def _measure_onnxruntime(bundle: Path, raster: Path, s: BenchSettings, out: Path, log) -> dict:
    """onnxruntime's model-only and end-to-end runs, on the bundle's model.onnx (exported first when it has
    none, so that no measurement pays for the export), with the same settings as torch's."""
    from core.bundle_manifest import bundle_dir_of
    from models.onnx_export import bundle_onnx_path, export_onnx

    onnx_path = bundle_onnx_path(bundle_dir_of(bundle) or bundle)
    if not onnx_path.is_file():
        log("exporting the bundle's network to ONNX ...")
        export_onnx(bundle, onnx_path)
    ort = replace(s, engine="onnxruntime", precision="fp32", device="cpu")
    log("onnxruntime: model alone, on in-memory batches ...")
    model = _run_child("model", bundle, raster, ort, out / "unused.tif", log)
    log(f"onnxruntime: our predict at {s.size} px ...")
    pred = out / f"pred-{s.size}-onnxruntime.tif"
    e2e = _run_child("e2e", bundle, raster, ort, pred, log)
    same = _same_classes(out / f"pred-{s.size}.tif", pred)
    pred.unlink(missing_ok=True)
    return {"model": model, "e2e": e2e, "same_classes_as_torch": same}


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_predict_benchmark(out: str | Path, s: BenchSettings | None = None, *, data_dir: Path | None = None,
                          log: Callable[[str], None] = print) -> dict:
    """Run Benchmark B and write report.json + report.md into ``out``."""
    from core.raster.prediction_windows import WindowPlan

    from core.raster.cog import gdal_cache_limit

    s = s or BenchSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    small = s.small or max(s.window * 2, s.size // 2)
    log(f"building {s.size} and {small} px mosaics of the NC scene ...")
    with gdal_cache_limit():  # writing 1.6 GB through GDAL's default cache would hold ~5% of RAM here
        big_path = build_mosaic(s.size, out / "data" / f"nc-mosaic-{s.size}.tif", data_dir)
        small_path = build_mosaic(small, out / "data" / f"nc-mosaic-{small}.tif", data_dir)
    bundle = Path(s.bundle) if s.bundle else make_bundle(out / "bundle", data_dir)
    load_before = _loadavg()
    t0 = time.perf_counter()
    log("model alone, on in-memory batches ...")
    model = _run_child("model", bundle, big_path, s, out / "unused.tif", log)
    log(f"our predict at {s.size} px ...")
    e2e = _run_child("e2e", bundle, big_path, s, out / f"pred-{s.size}.tif", log)
    engines = {}
    if "onnxruntime" in s.engines:
        engines["onnxruntime"] = _measure_onnxruntime(bundle, big_path, s, out, log)
    # once more after predict: on a shared machine the load drifts, so the limit is the mean of both
    log("model alone again ...")
    model_after = _run_child("model", bundle, big_path, s, out / "unused.tif", log)
    log(f"naive whole-array baseline at {s.size} px ...")
    naive = _run_child("naive", bundle, big_path, s, out / f"naive-{s.size}.tif", log)
    log(f"our predict at {small} px (peak RSS) ...")
    e2e_small = _run_child("e2e", bundle, small_path, s, out / f"pred-{small}.tif", log)
    same = _same_classes(out / f"pred-{s.size}.tif", out / f"naive-{s.size}.tif")
    for p in (out / f"pred-{small}.tif", out / f"naive-{s.size}.tif"):
        p.unlink(missing_ok=True)

    pixels = s.size * s.size
    forwarded = e2e["predicted"] * min(s.window, s.size) ** 2  # window pixels predict sent to the network
    redundancy = forwarded / pixels
    model_window = (model["window_mpx_s"] + model_after["window_mpx_s"]) / 2
    single_window = (model["single_stream_window_mpx_s"] + model_after["single_stream_window_mpx_s"]) / 2
    model_mpx_s = model_window / redundancy
    e2e_mpx_s = pixels / e2e["seconds"] / 1e6
    naive_mpx_s = pixels / naive["seconds"] / 1e6
    rss = {str(small): round(e2e_small["peak_rss_mb"], 1), str(s.size): round(e2e["peak_rss_mb"], 1)}
    plan = WindowPlan(s.size, s.size, s.window, s.overlap, s.blend)
    report = {
        "benchmark": "B: large-raster prediction",
        "size": s.size,
        "sizes": [small, s.size],
        "raster": {"width": s.size, "height": s.size, "bands": 6, "dtype": "float32",
                   "source": "the NC Landsat-7 scene (6 bands, nodata border kept) tiled to size"},
        "settings": {**asdict(s), "streams": e2e["options"]["streams"], "threads": e2e["options"]["threads"],
                     "device": e2e["options"]["device"],
                     "model": s.bundle or "segformer-tiny (the project's default network), random weights"},
        "model_window_mpx_s": round(model_window, 4),
        "model_window_mpx_s_before_after": [round(model["window_mpx_s"], 4), round(model_after["window_mpx_s"], 4)],
        "model_mpx_s": round(model_mpx_s, 4),
        "model_single_stream_window_mpx_s": round(single_window, 4),
        "model_single_stream_threads": model["single_stream_threads"],
        "e2e_mpx_s": round(e2e_mpx_s, 4),
        "naive_mpx_s": round(naive_mpx_s, 4),
        "e2e_over_model": round(e2e_mpx_s / model_mpx_s, 3),
        "e2e_over_naive": round(e2e_mpx_s / naive_mpx_s, 3),
        # the naive loop's own forward rate next to the same loop on in-memory batches: where they
        # differ, torch's threads in one forward pass lost time to other load on the machine
        "naive_forward_window_mpx_s": round(
            naive["windows"] * min(s.window, s.size) ** 2 / max(naive["stages"]["forward"], 1e-9) / 1e6, 4),
        "peak_rss_mb": rss,
        "naive_peak_rss_mb": round(naive["peak_rss_mb"], 1),
        "model_only_peak_rss_mb": round(model["peak_rss_mb"], 1),
        "windows": {"plan": len(plan), "predicted": e2e["predicted"], "skipped_all_nodata": e2e["skipped"],
                    "naive_predicted": naive["windows"], "forwarded_px_per_raster_px": round(redundancy, 4)},
        "seconds": {"e2e": round(e2e["seconds"], 2), "naive": round(naive["seconds"], 2),
                    "e2e_small": round(e2e_small["seconds"], 2), "total": round(time.perf_counter() - t0, 1)},
        "e2e_stage_busy_seconds": e2e["timings"],
        "naive_stage_seconds": naive["stages"],
        "naive_threads": naive["threads"],
        "same_classes_as_naive": same,
        "loadavg": {"before": load_before, "after": _loadavg(), "cpus": os.cpu_count()},
        "definitions": {
            "model_mpx_s": "raster Mpx/s the network alone allows: window Mpx/s on in-memory batches (same "
                           "streams/threads as predict) divided by the window px forwarded per raster px",
            "e2e_mpx_s": "raster Mpx/s of predict_raster, wall time from the call to the finished COG",
            "naive_mpx_s": "raster Mpx/s of the whole-array baseline (read all, one forward loop with torch's "
                           "default threads over every window, blend in whole-raster arrays, write the COG)",
            "peak_rss_mb": "peak resident set of a fresh process running predict at each raster size",
        },
    }
    report["engines"] = {"torch": {"model_mpx_s": report["model_mpx_s"], "e2e_mpx_s": report["e2e_mpx_s"],
                                   "model_window_mpx_s": report["model_window_mpx_s"],
                                   "e2e_seconds": report["seconds"]["e2e"]}}
    for name, m in engines.items():
        report["engines"][name] = {
            "model_mpx_s": round(m["model"]["window_mpx_s"] / redundancy, 4),
            "e2e_mpx_s": round(pixels / m["e2e"]["seconds"] / 1e6, 4),
            "model_window_mpx_s": round(m["model"]["window_mpx_s"], 4),
            "e2e_seconds": round(m["e2e"]["seconds"], 2),
            "same_classes_as_torch": m["same_classes_as_torch"],
            "peak_rss_mb": round(m["e2e"]["peak_rss_mb"], 1),
        }
    flat = max(rss.values()) <= (1 + GOALS["rss_growth"]) * min(rss.values())
    report["goals"] = {
        "e2e_over_model >= 0.85": report["e2e_over_model"] >= GOALS["e2e_over_model"],
        "e2e_over_naive >= 1.5": report["e2e_over_naive"] >= GOALS["e2e_over_naive"],
        "peak RSS within 10% across sizes": flat,
    }
    if "onnxruntime" in report["engines"]:
        ort = report["engines"]["onnxruntime"]
        report["onnxruntime_e2e_over_torch_e2e"] = round(ort["e2e_mpx_s"] / report["e2e_mpx_s"], 3)
        report["goals"]["onnxruntime e2e >= torch e2e"] = report["onnxruntime_e2e_over_torch_e2e"] >= 1.0
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(format_report(report))
    return report


def _same_classes(a: Path, b: Path) -> float | None:
    """Fraction of pixels where our output and the naive one agree (they should, up to float ties)."""
    import rasterio
    from rasterio.windows import Window

    try:
        with rasterio.open(a) as da, rasterio.open(b) as db:
            agree = total = 0
            for r in range(0, da.height, 1024):
                win = Window(0, r, da.width, min(1024, da.height - r))
                x, y = da.read(1, window=win), db.read(1, window=win)
                agree += int((x == y).sum())
                total += x.size
        return round(agree / total, 6)
    except Exception:
        return None


def format_report(r: dict) -> str:
    lines = [
        "# Benchmark B: large-raster prediction",
        "",
        f"Raster {r['size']} x {r['size']} x 6 float32 (the NC scene tiled); window {r['settings']['window']}, "
        f"overlap {r['settings']['overlap']}, batch {r['settings']['batch_size']}, blend {r['settings']['blend']}, "
        f"{r['settings']['precision']}, device {r['settings']['device']}, {r['settings']['streams']} stream(s) x "
        f"{r['settings']['threads']} thread(s); model: {r['settings']['model']}.",
        "",
        "| measure | raster Mpx/s |",
        "|---|---|",
        f"| model alone (in-memory batches) | {r['model_mpx_s']:.4f} |",
        f"| our predict, end to end | {r['e2e_mpx_s']:.4f} |",
        f"| naive whole-array baseline | {r['naive_mpx_s']:.4f} |",
        "",
        f"- e2e / model: **{r['e2e_over_model']}** (goal >= 0.85)",
        f"- e2e / naive: **{r['e2e_over_naive']}** (goal >= 1.5); the naive loop forwarded "
        f"{r['naive_forward_window_mpx_s']} window Mpx/s, the same loop on in-memory batches "
        f"{r['model_single_stream_window_mpx_s']}",
        f"- peak RSS of predict by raster size (MB): {r['peak_rss_mb']} (goal: within 10%); naive: "
        f"{r['naive_peak_rss_mb']} MB",
        f"- windows: {r['windows']}",
        f"- one stream with {r['model_single_stream_threads']} torch threads: "
        f"{r['model_single_stream_window_mpx_s']} window Mpx/s; streams: {r['model_window_mpx_s']}",
        f"- load average before/after: {r['loadavg']}",
        "",
    ]
    if len(r.get("engines", {})) > 1:
        lines += ["| engine | model alone, raster Mpx/s | end to end, raster Mpx/s | classes as torch's |",
                  "|---|---|---|---|"]
        for name, e in r["engines"].items():
            same = e.get("same_classes_as_torch", 1.0)
            lines.append(f"| {name} | {e['model_mpx_s']:.4f} | {e['e2e_mpx_s']:.4f} | {same} |")
        lines += ["", f"- onnxruntime e2e / torch e2e: **{r['onnxruntime_e2e_over_torch_e2e']}** (goal >= 1.0)", ""]
    return "\n".join(lines)
