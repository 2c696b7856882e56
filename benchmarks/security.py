"""`geoadapt bench security`: a live `geoadapt serve` under schemathesis, then under load.

    prepare(folder)        -> state folder: tokens, a tiny scene under an allowed root, a finished job
                              whose output holds a class COG (for tiles), written through the job store
    start_server(world)    -> `python -m cli serve --no-worker` (embedded SQLite store + queue)
    submit_status_load()   -> N clients, each with its own token: submit a job, read its status and
                              the job list, again, for a bounded time; every answer must be 2xx
    lost_jobs()            -> every 201 is a job row of its token and one message in the queue
    tile_load()            -> N clients reading PNG tiles of the finished job's COG
    run_schemathesis()     -> the schemathesis CLI on /openapi.json with ids of real objects to aim at

The pytest tests (tests/service/test_trust_load.py, test_schemathesis.py) run the same code for a few
seconds; the bench runs it longer and writes report.json. Torch-free: it only drives the HTTP API.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import free_port, latency_summary

#: the classes of the tiny scene and of the COG served as tiles
CLASSES = [{"id": 1, "name": "water", "color": "#1f77b4"}, {"id": 2, "name": "forest", "color": "#2ca02c"},
           {"id": 3, "name": "urban", "color": "#d62728"}]
COG_NAME = "predictions--scene"
TMS = "WebMercatorQuad"


@dataclass
class World:
    """What the server is started on and what the clients aim at."""

    folder: Path
    data_dir: Path
    root: Path
    image: Path
    labels: Path
    tokens: list[str]  # one per load client, plus the last one for schemathesis and tiles
    admin: str
    job_id: str  # a finished job with a class COG
    dataset_id: str
    tiles: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def result_id(self) -> str:
        return f"{self.job_id}.{COG_NAME}"

    def spec(self, seed: int = 0) -> dict:
        return train_spec(self.image, self.labels, seed)



def _run_async(main) -> None:
    """asyncio.run in a thread of its own: the caller's thread may already run an event loop
    (a test session that drove a browser through Playwright's sync API does)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result()

def train_spec(image: Path, labels: Path, seed: int = 0) -> dict:
    """A small valid train job on the tiny scene (the output is the server's choice)."""
    return {"type": "train", "method": "source-only", "model": "segformer-tiny", "classes": CLASSES,
            "source": {"scenes": [{"image": str(image), "labels": str(labels)}]},
            "params": {"iterations": 2, "batch_size": 2, "crop": 16, "seed": seed}}


def token_id(plain: str) -> str:
    """The public part of a token (ga_<id>_<secret>), which is what the job store records as owner."""
    return plain.split("_", 2)[1]


# ---- the data the server starts with ---------------------------------------------------------------

def write_scene(folder: Path, size: int = 32) -> tuple[Path, Path]:
    """A small georeferenced 3-band image and its labels (real GeoTIFFs)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    prof = dict(driver="GTiff", width=size, height=size, transform=from_origin(600000.0, 4000000.0, 30.0, 30.0),
                crs="EPSG:32617")
    img, lab = folder / "image.tif", folder / "labels.tif"
    with rasterio.open(img, "w", count=3, dtype="float32", **prof) as ds:
        ds.write(rng.random((3, size, size), dtype=np.float32) * 100)
    with rasterio.open(lab, "w", count=1, dtype="uint8", **prof) as ds:
        ds.write(rng.choice(np.array([c["id"] for c in CLASSES], dtype=np.uint8), size=(1, size, size)))
    return img, lab


def write_class_cog(path: Path, size: int = 2048) -> Path:
    """A class COG (classes in bands of 64 px, a nodata corner) on a 10 m UTM grid, via core's COG writer."""
    import numpy as np
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    from core.raster.cog import class_cog_writer
    from core.raster.grid import Grid

    grid = Grid(crs=CRS.from_epsg(32617), transform=Affine(10.0, 0, 600000.0, 0, -10.0, 4000000.0),
                width=size, height=size)
    rows, cols = np.mgrid[0:size, 0:size]
    ids = np.array([c["id"] for c in CLASSES], dtype=np.uint8)[((rows // 64) + (cols // 64)) % len(CLASSES)]
    ids[: size // 8, : size // 8] = 255
    with class_cog_writer(path, grid, CLASSES) as w:
        w.write(ids, Window(0, 0, size, size))
    return path


def tiles_of(cog: Path, zooms: tuple[int, ...] = (12, 13, 14)) -> list[tuple[int, int, int]]:
    import morecantile
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(cog) as ds:
        bounds = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
    tms = morecantile.tms.get(TMS)
    return [(t.z, t.x, t.y) for t in tms.tiles(*bounds, zooms=list(zooms))]


def prepare(folder: Path, clients: int = 50) -> World:
    """A state folder with tokens, a dataset and a finished job holding a class COG."""
    from core.jobspec import load_job_spec
    from service.settings import Settings
    from service.store import datasets as dataset_store
    from service.store import jobs as job_store
    from service.store import tokens
    from service.store.db import init_db, make_engine, session_factory, session_scope

    folder = Path(folder).resolve()
    shutil.rmtree(folder, ignore_errors=True)
    root = folder / "data"
    img, lab = write_scene(root / "scene")
    settings = Settings(data_dir=folder / "state", allowed_roots=[root])
    settings.ensure_dirs()
    engine = make_engine(settings.database_url)
    init_db(engine)
    sessions = session_factory(engine)
    with session_scope(sessions) as s:
        plain = [tokens.create_token(s, name=f"client-{i}")[1] for i in range(clients + 1)]
        admin = tokens.create_token(s, name="admin", admin=True)[1]
        owner = token_id(plain[-1])
        job_id = uuid.uuid4()
        spec = load_job_spec({**train_spec(img, lab), "output": str(settings.job_dir(job_id) / "output")}).to_jsonable()
        job_store.create_job(s, job_id=job_id, owner_id=owner, spec=spec, queue="gpu")
        ds = dataset_store.create_dataset(s, dataset_id=uuid.uuid4(), owner_id=owner, name="scene", kind="path",
                                          paths={"image": str(img), "labels": str(lab)})
        ds_id = ds.id
    cog = write_class_cog(settings.job_dir(job_id) / "output" / "predictions" / "scene.tif")
    with session_scope(sessions) as s:  # finished the way a worker finishes it
        job_store.claim(s, job_id, "bench", previous_run_dead=lambda j: True)
        job_store.finish(s, job_id, "bench", {"note": "written by geoadapt bench security"})
    engine.dispose()
    return World(folder, settings.data_dir, root, img, lab, plain, admin, str(job_id), str(ds_id), tiles_of(cog))


# ---- the server ------------------------------------------------------------------------------------

def start_server(world: World, port: int, *, log: Path, env: dict | None = None,
                 log_level: str = "warning") -> subprocess.Popen:
    """`geoadapt serve --no-worker` on the world's state folder; returns once /health answers."""
    import httpx

    e = {**os.environ, "GEOADAPT_DATA_DIR": str(world.data_dir), "GEOADAPT_ALLOWED_ROOTS": str(world.root),
         "GEOADAPT_RATE_LIMIT_PER_MINUTE": "0", **(env or {})}
    fh = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--no-worker", "--port", str(port),
                             "--log-level", log_level], env=e, stdout=fh, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code in (200, 503):
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"the server did not answer within 60 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---- load ------------------------------------------------------------------------------------------

def summary(latencies: list[float]) -> dict:
    """Latencies in seconds -> their summary in milliseconds."""
    return latency_summary([x * 1000 for x in latencies])


async def _submit_status_client(base: str, token: str, spec_of, until: float, out: dict) -> None:
    import httpx

    h = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=h, timeout=60) as c:
        n = 0
        while time.monotonic() < until:
            n += 1
            t = time.monotonic()
            try:
                r = await c.post("/v1/jobs", json=spec_of(n), headers={"Idempotency-Key": f"{token[-8:]}-{n}"})
            except httpx.HTTPError as e:
                out["errors"].append(f"submit: {type(e).__name__}")
                continue
            out["submit"].append(time.monotonic() - t)
            if r.status_code != 201:
                out["errors"].append(f"submit: {r.status_code} {r.text[:200]}")
                continue
            jid = r.json()["id"]
            out["accepted"].append((token, jid))
            for path in (f"/v1/jobs/{jid}", "/v1/jobs?limit=20", f"/v1/jobs/{jid}"):
                t = time.monotonic()
                try:
                    s = await c.get(path)
                except httpx.HTTPError as e:
                    out["errors"].append(f"status: {type(e).__name__}")
                    continue
                out["status"].append(time.monotonic() - t)
                if s.status_code != 200:
                    out["errors"].append(f"status: {s.status_code} {s.text[:200]}")


def submit_status_load(base: str, world: World, *, clients: int = 50, seconds: float = 10.0) -> dict:
    """`clients` concurrent clients (one token each) submitting and polling for `seconds`."""
    out: dict = {"submit": [], "status": [], "errors": [], "accepted": []}
    until = time.monotonic() + seconds

    async def main():
        await asyncio.gather(*[
            _submit_status_client(base, world.tokens[i], lambda n, i=i: world.spec(seed=i * 100000 + n), until, out)
            for i in range(clients)])

    t0 = time.monotonic()
    _run_async(main)
    wall = time.monotonic() - t0
    return {"clients": clients, "seconds": round(wall, 2), "submits": summary(out["submit"]),
            "status_reads": summary(out["status"]), "errors": len(out["errors"]), "error_samples": out["errors"][:5],
            "accepted": out["accepted"], "submits_per_s": round(len(out["submit"]) / wall, 1)}


def lost_jobs(world: World, accepted: list[tuple[str, str]]) -> dict:
    """Every accepted job must be a row owned by its token and exactly one message in the embedded queue."""
    db = sqlite3.connect(world.data_dir / "geoadapt.db")
    owners = {str(uuid.UUID(str(k))): v for k, v in db.execute("SELECT id, owner_id FROM jobs")}
    db.close()
    broker = sqlite3.connect(world.data_dir / "broker.db")
    messages: dict[str, int] = {}
    for (payload,) in broker.execute("SELECT payload FROM kombu_message"):
        for jid in set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", payload)):
            messages[jid] = messages.get(jid, 0) + 1
    broker.close()
    missing_rows = [j for tok, j in accepted if owners.get(j) != token_id(tok)]
    not_queued = [j for _, j in accepted if messages.get(j, 0) == 0]
    queued_twice = [j for _, j in accepted if messages.get(j, 0) > 1]
    return {"accepted": len(accepted), "rows": len(owners), "missing_rows": missing_rows, "not_queued": not_queued,
            "queued_twice": queued_twice, "lost": len(set(missing_rows) | set(not_queued))}


async def _tile_client(base: str, token: str, urls: list[str], offset: int, until: float, out: dict) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        i = offset
        while time.monotonic() < until:
            url = urls[i % len(urls)]
            i += 1
            t = time.monotonic()
            try:
                r = await c.get(url)
            except httpx.HTTPError as e:
                out["errors"].append(f"{url}: {type(e).__name__}")
                continue
            out["lat"].append(time.monotonic() - t)
            if r.status_code != 200 or not r.content.startswith(b"\x89PNG"):
                out["errors"].append(f"{url}: {r.status_code} {r.text[:100] if r.status_code != 200 else ''}")
            else:
                out["bytes"] += len(r.content)


def tile_load(base: str, world: World, *, clients: int = 50, seconds: float = 10.0) -> dict:
    """`clients` concurrent clients reading the finished job's tiles (each starting at another tile)."""
    urls = [f"/v1/results/{world.result_id}/tiles/{TMS}/{z}/{x}/{y}.png" for z, x, y in world.tiles]
    out: dict = {"lat": [], "errors": [], "bytes": 0}
    until = time.monotonic() + seconds

    async def main():
        await asyncio.gather(*[_tile_client(base, world.tokens[-1], urls, i * 7, until, out) for i in range(clients)])

    t0 = time.monotonic()
    _run_async(main)
    wall = time.monotonic() - t0
    return {"clients": clients, "seconds": round(wall, 2), "tiles": summary(out["lat"]), "distinct_tiles": len(urls),
            "errors": len(out["errors"]), "error_samples": out["errors"][:5],
            "tiles_per_s": round(len(out["lat"]) / wall, 1), "mb": round(out["bytes"] / 1e6, 2)}


# ---- schemathesis ----------------------------------------------------------------------------------

def schemathesis_config(world: World, path: Path) -> Path:
    """Ids of real objects for schemathesis to aim at part of the time (else nearly every call is a 404)."""
    path.write_text(f"""
[dictionaries.jobs]
values = ["{world.job_id}"]
[dictionaries.datasets]
values = ["{world.dataset_id}"]
[dictionaries.results]
values = ["{world.result_id}"]
[dictionaries.tms]
values = ["{TMS}"]
[parameters]
"path.job_id" = {{ dictionary = "jobs", probability = 0.6 }}
"path.model_id" = {{ dictionary = "jobs", probability = 0.3 }}
"path.dataset_id" = {{ dictionary = "datasets", probability = 0.6 }}
"path.result_id" = {{ dictionary = "results", probability = 0.7 }}
"path.tileMatrixSetId" = {{ dictionary = "tms", probability = 0.7 }}
"query.dataset" = {{ dictionary = "datasets", probability = 0.5 }}
""")
    return path


def schemathesis_bin() -> str | None:
    exe = Path(sys.executable).with_name("schemathesis")
    return str(exe) if exe.exists() else shutil.which("schemathesis")


def run_schemathesis(base: str, world: World, *, max_examples: int, max_time: int | None, log: Path,
                     workers: int = 2) -> dict:
    """The schemathesis CLI with the not_a_server_error check; returns rc, the counts it printed, 5xx lines."""
    exe = schemathesis_bin()
    if exe is None:
        raise RuntimeError("schemathesis is not installed (pip install -e '.[test]')")
    cfg = schemathesis_config(world, world.folder / "schemathesis.toml")
    cmd = [exe, "--config-file", str(cfg), "run", f"{base}/openapi.json", "-H",
           f"Authorization: Bearer {world.tokens[-1]}", "--checks", "not_a_server_error", "--max-examples",
           str(max_examples), "--workers", str(workers), "--suppress-health-check", "all", "--no-color"]
    if max_time:
        cmd += ["--max-time", str(max_time)]
    t0 = time.monotonic()
    # the hooks aim part of the requests at input that once made 500s (long names, deep nesting, empty
    # headers), some of it grafted onto a valid request of this world
    fuzz_world = world.folder / "fuzz-world.json"
    fuzz_world.write_text(json.dumps({"root": str(world.root), "image": str(world.image), "spec": world.spec()}))
    here = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "service.schemathesis_hooks",
           "GEOADAPT_FUZZ_WORLD": str(fuzz_world),
           "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    text = log.read_text(errors="replace")
    m = re.search(r"(\d+) generated", text)
    server_errors = [line for line in text.splitlines() if re.search(r"Server error|\[5\d\d\]", line)]
    last = next((line.strip("= ") for line in reversed(text.splitlines()) if line.startswith("====")), "")
    return {"rc": rc, "seconds": round(time.monotonic() - t0, 1), "cases": int(m.group(1)) if m else None,
            "server_error_lines": server_errors[:10], "summary": last, "log": str(log)}


# ---- the whole bench -------------------------------------------------------------------------------

def run(out: Path, *, clients: int = 50, seconds: float = 30.0, st_examples: int = 100, st_max_time: int | None = 300,
        say=print) -> dict:
    """Schemathesis, then submission+status load, then tile load, on one live server; report.json in `out`."""
    out = Path(out).resolve()
    world = prepare(out / "work", clients=clients)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(world, port, log=out / "serve.log")
    report: dict = {"clients": clients, "seconds": seconds, "cpus": os.cpu_count(), "load": os.getloadavg()}
    try:
        say(f"schemathesis: up to {st_examples} examples per operation" + (f", {st_max_time} s" if st_max_time else ""))
        report["schemathesis"] = run_schemathesis(base, world, max_examples=st_examples, max_time=st_max_time,
                                                  log=out / "schemathesis.log")
        say(f"submission + status: {clients} clients for {seconds:.0f} s")
        load = submit_status_load(base, world, clients=clients, seconds=seconds)
        accepted = load.pop("accepted")
        load["lost"] = lost_jobs(world, accepted)
        report["submit_status"] = load
        say(f"tiles: {clients} clients for {seconds:.0f} s")
        report["tiles"] = tile_load(base, world, clients=clients, seconds=seconds)
    finally:
        stop_server(proc)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def format_report(r: dict) -> list[str]:
    lines = []
    st = r.get("schemathesis")
    if st:
        lines.append(f"schemathesis: rc {st['rc']}, {st['cases']} cases in {st['seconds']} s, "
                     f"server-error lines {len(st['server_error_lines'])} | {st['summary']}")
    ss = r.get("submit_status")
    if ss:
        sub, stat = ss["submits"], ss["status_reads"]
        lines.append(f"submit+status ({ss['clients']} clients, {ss['seconds']} s): {sub['n']} submits "
                     f"({ss['submits_per_s']}/s) p50 {_ms(sub['p50_ms'])} p99 {_ms(sub['p99_ms'])}; {stat['n']} status "
                     f"reads p50 {_ms(stat['p50_ms'])} p99 {_ms(stat['p99_ms'])}; errors {ss['errors']}; "
                     f"lost jobs {ss['lost']['lost']} of {ss['lost']['accepted']}")
    t = r.get("tiles")
    if t:
        lines.append(f"tiles ({t['clients']} clients, {t['seconds']} s): {t['tiles']['n']} tiles ({t['tiles_per_s']}/s, "
                     f"{t['distinct_tiles']} distinct) p50 {_ms(t['tiles']['p50_ms'])} p99 {_ms(t['tiles']['p99_ms'])}; "
                     f"errors {t['errors']}")
    return lines


def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f} ms"
