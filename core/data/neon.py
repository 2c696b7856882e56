"""The NEON tree-crown set: crown boxes rasterised as tree / not tree on each image's grid, and the NEON case's domains.

deepforest 2.1.0 ships NEON airborne RGB (0.1 m) with hand-drawn tree-crown boxes as Pascal VOC XML
(:data:`core.data.fetch.DATASETS` "neon-crowns"). For every image this module derives, beside the
fetched files, a 3-band uint8 RGB GeoTIFF (``<scene>_rgb.tif``) and a label GeoTIFF on the same grid
(``<scene>_trees.tif``, uint8: 1 = inside any crown box, 0 = not). Boxes overfill crowns: a box's
corners around a round crown, and the gaps between crowns that overlapping boxes bridge, are
labelled tree. SOAP's boxes are named "Alive" or "Dead"; both are trees here.

Grids: the PNGs carry no georeferencing. They keep none (no CRS, as ISPRS-style tiles, which jobs
accept) but get a local 0.1 m transform, so their GSD is the same 0.1 m as OSBS's and a job does not
resample one domain onto the other. OSBS_029 is read from its georeferenced ``.tif`` (EPSG:32617;
same pixels as the PNG, and its XML boxes are in that image's pixels). That file declares nodata
255, but 255 there is saturated bright ground and canopy (2,126 pixels), not fill, so the derived
image declares no nodata.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.windows
from affine import Affine

from core.data.fetch import DATASETS
from core.data.shift import write_geotiff
from core.errors import DataFetchError, RasterError
from core.raster.grid import Grid
from core.raster.scene import open_raster

#: label values of the tree rasters; colours are ours, for maps and RGB labels
NEON_CLASSES: list[dict] = [
    {"id": 0, "name": "not tree", "color": "#d8c99b"},
    {"id": 1, "name": "tree", "color": "#1b7837"},
]
#: NEON's airborne RGB pixel size, given to the PNGs that do not carry it
PIXEL_SIZE_M = 0.1
#: each target is split by columns: the train half (unlabelled for adaptation, labelled for the oracle)
#: and the test half
TRAIN_COLUMNS = (0.0, 0.5)
TEST_COLUMNS = (0.5, 1.0)
#: scene -> (image key, crowns key) in the "neon-crowns" package
NEON_SCENES: dict[str, tuple[str, str]] = {
    "YELL_528000_4978000": ("yell1_image", "yell1_crowns"),
    "YELL_541000_4977000": ("yell2_image", "yell2_crowns"),
    "OSBS_029": ("osbs_image", "osbs_crowns"),
    "SOAP_061": ("soap_image", "soap_crowns"),
}
SOURCE_SCENES = ("YELL_528000_4978000", "YELL_541000_4977000")
TARGET_SCENES = {"osbs": "OSBS_029", "soap": "SOAP_061"}
# bumped when the derived rasters change, so caches built by older code are rebuilt
_DERIVED_VERSION = "1"


def neon_class_specs():
    from core.jobspec import ClassSpec

    return [ClassSpec(**c) for c in NEON_CLASSES]


@dataclass(frozen=True)
class CrownBoxes:
    """The crown boxes of one image: (n, 4) int (xmin, ymin, xmax, ymax) in pixel-edge coordinates."""

    width: int
    height: int
    boxes: np.ndarray


@dataclass(frozen=True)
class NeonScene:
    """One derived scene: its RGB and label GeoTIFFs, size, crown count and the fraction labelled tree."""

    name: str
    image: Path
    labels: Path
    width: int
    height: int
    crowns: int
    tree_fraction: float
    georeferenced: bool


def read_crown_boxes(path: str | Path) -> CrownBoxes:
    """Parse a Pascal VOC annotation: the image size and every object's box.

    Coordinates are taken as pixel edges, the box covering columns xmin..xmax-1 and rows
    ymin..ymax-1: deepforest's boxes reach xmax = image width, which only an edge coordinate can.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        boxes = [
            [int(round(float(o.find("bndbox").findtext(k)))) for k in ("xmin", "ymin", "xmax", "ymax")]
            for o in root.iter("object")
        ]
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise DataFetchError(f"{path.name} is not a Pascal VOC annotation with a size and boxes: {e}") from None
    return CrownBoxes(width, height, np.array(boxes, dtype=np.int64).reshape(-1, 4))


def crown_mask(crowns: CrownBoxes) -> np.ndarray:
    """(height, width) uint8: 1 inside any box (their union), 0 elsewhere; boxes are clipped to the image."""
    out = np.zeros((crowns.height, crowns.width), np.uint8)
    for x0, y0, x1, y1 in crowns.boxes:
        out[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = 1
    return out


def build_scene(name: str, image_src: str | Path, crowns_xml: str | Path, out_dir: str | Path,
                *, version: str = "") -> NeonScene:
    """Derive ``<name>_rgb.tif`` and ``<name>_trees.tif`` in ``out_dir`` unless the ones for this
    ``version`` (a key of the inputs) are there already; each file is written atomically."""
    out_dir = Path(out_dir)
    image, labels = out_dir / f"{name}_rgb.tif", out_dir / f"{name}_trees.tif"
    crowns = read_crown_boxes(crowns_xml)
    key = f"{_DERIVED_VERSION}:{version}"
    done = _derived(name, image, labels, key, len(crowns.boxes))
    if done is not None:
        return done
    with open_raster(image_src, what="NEON image") as ds:
        if (ds.width, ds.height) != (crowns.width, crowns.height):
            raise DataFetchError(
                f"{Path(crowns_xml).name} is for a {crowns.width} x {crowns.height} image but "
                f"{Path(image_src).name} is {ds.width} x {ds.height}"
            )
        if ds.count < 3 or ds.dtypes[0] != "uint8":
            raise DataFetchError(f"{Path(image_src).name} is not 8-bit RGB ({ds.count} bands of {ds.dtypes[0]})")
        rgb = ds.read([1, 2, 3])
        if ds.crs:
            grid = Grid.from_dataset(ds)
        else:  # a local grid: 0.1 m pixels, origin at the bottom-left corner, no CRS
            t = Affine(PIXEL_SIZE_M, 0.0, 0.0, 0.0, -PIXEL_SIZE_M, PIXEL_SIZE_M * ds.height)
            grid = Grid(None, t, ds.width, ds.height)
    trees = crown_mask(crowns)
    fraction = float(trees.mean())
    tags = {"geoadapt_neon": key, "scene": name, "crowns": str(len(crowns.boxes)), "tree_fraction": repr(fraction)}
    # the image last: a reader that finds it with its tag also finds the labels it was written with
    write_geotiff(trees[None], grid, labels, tags=tags)
    write_geotiff(rgb, grid, image, tags={"geoadapt_neon": key, "scene": name})
    return NeonScene(name, image, labels, grid.width, grid.height, len(crowns.boxes), fraction, grid.georeferenced)


def _derived(name: str, image: Path, labels: Path, key: str, crowns: int) -> NeonScene | None:
    """The scene if both derived files exist, were written for ``key`` and share one grid; else None."""
    if not (image.is_file() and labels.is_file()):
        return None
    try:
        with open_raster(image) as im, open_raster(labels) as lab:
            tags = lab.tags()
            if im.tags().get("geoadapt_neon") != key or tags.get("geoadapt_neon") != key:
                return None
            grid = Grid.from_dataset(im)
            if not grid.same_as(Grid.from_dataset(lab)) or tags.get("crowns") != str(crowns):
                return None
            return NeonScene(name, image, labels, grid.width, grid.height, crowns, float(tags["tree_fraction"]),
                             grid.georeferenced)
    except (RasterError, rasterio.errors.RasterioError, KeyError, ValueError):
        return None  # unreadable or foreign leftovers are rebuilt


def prepare_neon(files: dict[str, Path], out_dir: str | Path | None = None) -> dict[str, NeonScene]:
    """The four derived scenes of :func:`core.data.fetch.fetch` ("neon-crowns"), built once.

    ``out_dir``: where the GeoTIFFs go (default: beside the fetched files). Raises
    :class:`DataFetchError` when a file does not match its annotation.
    """
    pins = DATASETS["neon-crowns"].files
    out = {}
    for name, (image_key, crowns_key) in NEON_SCENES.items():
        folder = Path(out_dir) if out_dir is not None else Path(files[image_key]).parent
        # keyed by the pinned digests, so a re-pinned package rebuilds the derived files
        version = f"{pins[image_key][1][:16]}:{pins[crowns_key][1][:16]}"
        try:
            out[name] = build_scene(name, files[image_key], files[crowns_key], folder, version=version)
        except RasterError as e:
            raise DataFetchError(f"NEON scene {name}: {e}") from None
    return out


def _half(scene: NeonScene, columns: tuple[float, float], out_dir: Path) -> dict:
    """A column range of a scene as its own image + labels (a local 0.1 m grid, no CRS), built once."""
    lo, hi = columns
    name = f"{scene.name}_cols{int(lo * 100)}-{int(hi * 100)}"
    image, labels = out_dir / f"{name}_rgb.tif", out_dir / f"{name}_trees.tif"
    if not (image.is_file() and labels.is_file()):
        c0, c1 = int(round(lo * scene.width)), int(round(hi * scene.width))
        window = rasterio.windows.Window(c0, 0, c1 - c0, scene.height)
        with open_raster(scene.image) as im, open_raster(scene.labels) as lab:
            rgb, trees = im.read(window=window), lab.read(window=window)
        t = Affine(PIXEL_SIZE_M, 0.0, 0.0, 0.0, -PIXEL_SIZE_M, PIXEL_SIZE_M * scene.height)
        grid = Grid(None, t, c1 - c0, scene.height)
        write_geotiff(trees, grid, labels, tags={"scene": scene.name, "columns": f"{lo},{hi}"})
        write_geotiff(rgb, grid, image, tags={"scene": scene.name, "columns": f"{lo},{hi}"})
    return {"image": str(image), "labels": str(labels)}


def neon_train_test_halves(scenes: dict[str, NeonScene], out_dir: str | Path | None = None) -> dict:
    """Benchmark A's NEON case with both targets pooled: ``source`` (the Yellowstone scenes), ``target``
    (OSBS's and SOAP's train halves) and ``target_test`` (their test halves), each half written as its own
    file so that one domain can hold whole source scenes beside target halves (a domain's region applies to
    every scene). All on local 0.1 m grids without CRS, like the PNG scenes."""
    folder = Path(out_dir) if out_dir is not None else Path(scenes[SOURCE_SCENES[0]].image).parent / "halves"
    source = [{"image": str(scenes[n].image), "labels": str(scenes[n].labels)} for n in SOURCE_SCENES]
    train = [_half(scenes[n], TRAIN_COLUMNS, folder) for n in TARGET_SCENES.values()]
    test = [_half(scenes[n], TEST_COLUMNS, folder) for n in TARGET_SCENES.values()]
    return {"source": {"scenes": source}, "target": {"scenes": train}, "target_test": {"scenes": test}}
