"""A large prediction in shards that any worker may run (models.inference.windowed does the windows):
a manifest that settles everything once, one shard's run, and the assembly of the parts into the COG.

    plan_shards(bundle, input, n)      region, statistics, window plan -> ShardManifest (JSON: every
                                       shard reads the same, so none re-resolves anything)
    predict_shard(bundle, m, i, dir)   run_windows over shard i's window rows, keep its output rows
                                       -> <dir>/shard-000i-classes.tif (+ -probabilities), and what its
                                       windows predicted over the seams at its edges (-edge-top/bottom.npz),
                                       each published once
    assemble_shards(bundle, m, dir, out)  each seam blended from its two edge files -> seam-000k-*.tif;
                                       CogWriter over the parts and seams (a VRT, no copy) -> the class COG
                                       (+ probability COG) with overviews, as predict_raster writes them

The assembled COG equals predict_raster's on the same input and options, pixel for pixel (see
core.raster.prediction_shards for why), when every shard runs with the same threads per stream as the
single run does.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from core.files import write_json
from core.raster.cog import (
    PROB_NODATA, class_cog_writer, class_encoding, close_together, gdal_cache_limit, probability_cog_writer,
)
from core.raster.prediction_shards import (
    EdgeRecorder, PartWriter, Shard, blend_seam, edge_path, part_path, remove_part_temporaries, seam_part_path, seams,
    shard_edges, split_plan,
)
from core.raster.prediction_windows import PredictOptions, WindowPlan
from core.raster.scene import Scene
from core.raster.stats import BandStats
from models.inference.windowed import (
    PredictionResult,
    PredictionSetup,
    _probability_path,
    _refuse_overwriting_input,
    _resolve_bundle,
    _uniform_nodata,
    encode_piece,
    prepare_prediction,
    run_windows,
)
from models.normalization import Normalizer

#: how shards split a plan: 2, each window row in one shard and seams blended at assembly (1, before:
#: a shard re-ran the window row above its own; its folder holds no edge files, so it is planned anew)
SHARD_LAYOUT = 2
#: PredictOptions fields the manifest settles elsewhere (resolved once by the coordinator)
_RESOLVED = ("region", "stats", "nodata", "probabilities")


@dataclass
class ShardManifest:
    """Everything a shard needs, resolved once: the input's files, the region (and an AOI's geometries),
    the statistics, the options, the window plan's shape and the shards."""

    paths: list[str]  # the scene's files (one multi-band image, or single bands stacked in order)
    nodata: float | None  # the input's nodata as the single run resolves it
    region: tuple[int, int, int, int]  # col_off, row_off, width, height in the input
    geoms: list[dict] | None  # an AOI's geometries in the input's CRS
    stats_name: str
    stats: dict  # BandStats.to_dict()
    options: dict  # the remaining PredictOptions fields
    probabilities: bool
    shards: list[Shard]
    windows: int = 0  # windows in the whole plan
    bundle: str | None = None  # the model bundle's folder, for shards run by other processes
    layout: int = SHARD_LAYOUT  # how shards split the plan (a manifest saved without one: layout 1)

    def predict_options(self) -> PredictOptions:
        return PredictOptions(**self.options, region=Window(*self.region), nodata=self.nodata).validate()

    def plan(self) -> WindowPlan:
        o = self.options
        return WindowPlan(int(self.region[3]), int(self.region[2]), o["window"], o["overlap"], o["blend"])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shards"] = [s.to_dict() for s in self.shards]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShardManifest":
        d = {"layout": 1, **d}
        d["shards"] = [Shard.from_dict(s) for s in d["shards"]]
        d["region"] = tuple(d["region"])
        return cls(**d)

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ShardManifest":
        import json

        return cls.from_dict(json.loads(Path(path).read_text()))


def scene_paths(input: Any) -> list[str]:
    """The files of a prediction's input (a path, a list of band files, a SceneSpec or a Scene)."""
    if hasattr(input, "paths"):
        return [str(p) for p in input.paths]
    if isinstance(input, (str, os.PathLike)):
        return [str(input)]
    return [str(p) for p in input]


def plan_shards(bundle: Any, input: Any, shards: int, options: PredictOptions | None = None,
                **overrides: Any) -> ShardManifest:
    """Settle a prediction of ``input`` once (region, statistics, window plan) and cut it in ``shards``."""
    opts = replace(options or PredictOptions(), **overrides).validate()
    bundle = _resolve_bundle(bundle)
    paths = scene_paths(input)
    nodata = opts.nodata if opts.nodata is not None else _uniform_nodata(paths)
    with gdal_cache_limit(opts.cache_mb):
        setup = prepare_prediction(bundle, lambda: Scene.open(paths, nodata=nodata), opts)
    r = setup.region
    rest = {f.name: getattr(opts, f.name) for f in fields(PredictOptions) if f.name not in _RESOLVED}
    return ShardManifest(
        paths=paths, nodata=nodata, region=(int(r.col_off), int(r.row_off), int(r.width), int(r.height)),
        geoms=setup.geoms, stats_name=setup.normalizer.name, stats=setup.normalizer.stats.to_dict(),
        options=rest, probabilities=bool(opts.probabilities), shards=split_plan(setup.plan, shards),
        windows=len(setup.plan), bundle=str(getattr(bundle, "path", "")) or None,
    )


def prediction_pixels(input: Any, region: Any = None) -> int:
    """How many output pixels a prediction of ``input`` over ``region`` (the ``region`` option) writes."""
    from core.raster.prediction_windows import resolve_region

    with Scene.open(scene_paths(input)) as scene:
        win, _ = resolve_region(scene.grid, region)
    return int(win.width) * int(win.height)


def _setup(manifest: ShardManifest, open_scene: Callable[[], Scene]) -> PredictionSetup:
    region = Window(*manifest.region)
    with open_scene() as scene:
        out_grid = scene.grid.window(region)
    normalizer = Normalizer(BandStats.from_dict(manifest.stats), manifest.stats_name)
    return PredictionSetup(region, manifest.geoms, normalizer, out_grid, manifest.plan())


@dataclass
class ShardResult:
    """What one run of one shard did."""

    index: int
    published: bool  # False: its part was already there (another run wrote it), this run's was dropped
    windows: int  # windows run: its window rows (no other shard runs them)
    predicted: int  # of them, passed to the model
    skipped: int  # of them, entirely nodata
    valid_pixels: int  # in its own rows
    seconds: float
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def predict_shard(
    bundle: Any,
    manifest: ShardManifest,
    index: int,
    folder: str | Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **overrides: Any,
) -> ShardResult:
    """Run shard ``index`` of ``manifest`` into its part files in ``folder``. ``overrides``: options that do
    not change the result (streams, threads, device). A part already in ``folder`` is left as it is.
    Raises models.inference.windowed.PredictionCancelled when ``should_stop`` says so (nothing published)."""
    t0 = time.perf_counter()
    allowed = {"streams", "threads", "device", "prefetch", "cache_mb"}
    if set(overrides) - allowed:
        raise ValueError(f"a shard may only override {sorted(allowed)}, not {sorted(set(overrides) - allowed)}")
    bundle = _resolve_bundle(bundle)
    opts = replace(manifest.predict_options(), **overrides).validate()
    shard = manifest.shards[index]
    folder = Path(folder)
    remove_part_temporaries(folder, index)
    open_scene = lambda: Scene.open(manifest.paths, nodata=manifest.nodata)  # noqa: E731
    with gdal_cache_limit(opts.cache_mb):
        setup = _setup(manifest, open_scene)
        edges = EdgeRecorder(setup.plan, shard_edges(setup.plan, manifest.shards, index))
        writers = _part_writers(setup.out_grid, shard.rows, list(bundle.classes), opts.blocksize,
                                part_path(folder, index, "classes"),
                                part_path(folder, index, "probabilities") if manifest.probabilities else None)
        try:
            pipe, engine = run_windows(bundle, open_scene, setup, opts, *writers,
                                       window_rows=shard.window_rows, rows=shard.rows, record=edges.add,
                                       progress=progress, should_stop=should_stop)
            # the edges and probabilities first: the class part's presence is what says the shard is done
            published = edges.publish(folder, index)
            published = all([w.close() for w in reversed(writers) if w is not None]) and published
        except BaseException:
            _abort(writers)
            raise
    first, stop = shard.window_rows
    return ShardResult(index=index, published=published, windows=(stop - first) * setup.plan.n_cols,
                       predicted=pipe.predicted, skipped=pipe.skipped, valid_pixels=pipe.valid_pixels,
                       seconds=round(time.perf_counter() - t0, 3), options=engine)


def shard_done(manifest: ShardManifest, folder: str | Path, index: int) -> bool:
    """Whether shard ``index``'s parts and edge files are all published in ``folder``."""
    kinds = ("classes", "probabilities") if manifest.probabilities else ("classes",)
    edges = shard_edges(manifest.plan(), manifest.shards, index)
    return (all(part_path(folder, index, k).is_file() for k in kinds)
            and all(edge_path(folder, index, e).is_file() for e in edges))


def assemble_shards(
    bundle: Any,
    manifest: ShardManifest,
    folder: str | Path,
    output: str | Path,
    *,
    results: Sequence[dict] = (),
) -> PredictionResult:
    """The class COG (and probability COG) at ``output`` from the shards' parts in ``folder``, with overviews,
    as predict_raster writes them. ``results``: the shards' ShardResult dicts, summed into the figures."""
    t0 = time.perf_counter()
    bundle = _resolve_bundle(bundle)
    classes = list(bundle.classes)
    output = Path(output)
    opts = manifest.predict_options()
    probs_path = _probability_path(output, manifest.probabilities)
    _refuse_overwriting_input(manifest.paths, [output, probs_path])
    missing = [s.index for s in manifest.shards if not shard_done(manifest, folder, s.index)]
    if missing:
        raise FileNotFoundError(f"shards {missing} have not written all their files (parts, edges) in {folder}")
    with gdal_cache_limit(opts.cache_mb):
        setup = _setup(manifest, lambda: Scene.open(manifest.paths, nodata=manifest.nodata))
        seam_rows, seam_valid = _write_seams(setup, manifest, classes, folder, opts.blocksize)
        kw = dict(blocksize=opts.blocksize, compress=opts.compress)

        def parts(kind: str) -> list[tuple[Path, int]]:
            return ([(part_path(folder, s.index, kind), s.rows[0]) for s in manifest.shards]
                    + [(seam_part_path(folder, k, kind), row) for k, row in seam_rows])

        writer = class_cog_writer(output, setup.out_grid, classes, parts=parts("classes"), **kw)
        pwriter = None
        try:
            if probs_path is not None:
                pwriter = probability_cog_writer(probs_path, setup.out_grid, classes, parts=parts("probabilities"),
                                                 **kw)
            close_together([writer, pwriter])
        except BaseException:
            writer.abort()  # a writer already closed ignores it
            if pwriter is not None:
                pwriter.abort()
            raise
    by_index = {int(r["index"]): r for r in results}
    total = lambda key: sum(int(r.get(key, 0)) for r in by_index.values())  # noqa: E731
    r = setup.region
    return PredictionResult(
        output=output, probabilities=probs_path, windows=manifest.windows, predicted=total("predicted"),
        skipped=total("skipped"), pixels=int(r.width) * int(r.height), valid_pixels=total("valid_pixels") + seam_valid,
        stats=manifest.stats_name, seconds=round(sum(float(x.get("seconds", 0)) for x in by_index.values())
                                                 + time.perf_counter() - t0, 3),
        timings={"assemble": round(time.perf_counter() - t0, 3)},
        options={**opts.as_dict(), "shards": len(manifest.shards)},
    )


def _write_seams(setup: PredictionSetup, manifest: ShardManifest, classes: list, folder: str | Path,
                 blocksize: int) -> tuple[list[tuple[int, int]], int]:
    """Blend every seam from its two shards' edge files into seam parts (published once, like the shards'
    parts). Returns each written seam's (index, first row) and the valid pixels in the seams."""
    folder = Path(folder)
    dtype, nodata = class_encoding([c.id for c in classes])
    lut = np.array([c.id for c in classes], dtype=dtype)
    written, valid = [], 0
    for seam in seams(setup.plan, manifest.shards):
        if not seam:
            continue
        above, below = edge_path(folder, seam.index, "bottom"), edge_path(folder, seam.index + 1, "top")
        writer, pwriter = _part_writers(
            setup.out_grid, seam.rows, classes, blocksize, seam_part_path(folder, seam.index, "classes"),
            seam_part_path(folder, seam.index, "probabilities") if manifest.probabilities else None)
        try:
            for piece in blend_seam(setup.plan, len(classes), seam, above, below):
                n = int(piece.valid.sum())
                if n == 0:
                    continue
                valid += n
                cls, q = encode_piece(piece, lut, nodata, pwriter is not None)
                writer.write(cls, piece.window)
                if pwriter is not None:
                    pwriter.write(q, piece.window)
            if pwriter is not None:
                pwriter.close()  # an assembly run again finds the seam written: the same rows, kept
            writer.close()
        except BaseException:
            _abort((writer, pwriter))
            raise
        written.append((seam.index, seam.rows[0]))
    return written, valid


def _part_writers(grid: Any, rows: tuple[int, int], classes: list, blocksize: int, classes_path: Path,
                  probabilities_path: Path | None) -> tuple[PartWriter, PartWriter | None]:
    """The writers of one band of rows (a shard's or a seam's): class ids, and probabilities when a path is
    given, encoded as the single run's COGs store them."""
    dtype, nodata = class_encoding([c.id for c in classes])
    writer = PartWriter(classes_path, grid, rows, count=1, dtype=dtype, nodata=nodata, blocksize=blocksize)
    if probabilities_path is None:
        return writer, None
    try:
        return writer, PartWriter(probabilities_path, grid, rows, count=len(classes), dtype="uint8",
                                  nodata=PROB_NODATA, blocksize=blocksize)
    except BaseException:
        writer.abort()
        raise


def _abort(writers: Sequence[PartWriter | None]) -> None:
    for w in writers:
        if w is not None:
            w.abort()
