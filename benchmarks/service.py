"""Benchmark C: the embedded service under load, in one run, on one machine, over HTTP only.

    data      the NC scene (fetched), a cog_size x cog_size mosaic of it in its own CRS (NAD83(HARN)
              State Plane) and the same mosaic warped to UTM 17N, a 64 x 64 crop for the queued jobs
    service   `geoadapt serve --no-worker` + a job worker and a tiles worker started here (so that this
              run can kill and restart them); TiTiler (titiler.core, `bench` extra) beside it
    1 jobs    a train job (segformer-tiny on NC), then a predict job writing both mosaics' class COGs
    2 tiles   the same tiles of each COG from our /v1/results/.../tiles and from TiTiler's
              /cog/tiles, requests interleaved one by one (one keep-alive client each): p50/p99
    3 live    live tile inference on NC: 2x2 tiles (misses), then the same tiles again (cache hits)
    4 load    the job worker stopped, `clients` concurrent clients submit `jobs` small predict jobs
              (each submit followed by a status read), pausing between requests as this project's
              clients do: submit and status p50/p99 (the goal); then the same clients send
              `saturation_jobs` more back to back: the requests/s the service sustains, and latency there
    5 restart the job worker started; once `restart_after` of all queued jobs are finished it is SIGKILLed
              (with its pool) and a new one started; every job must still end: lost = not final
    6 pickup  embedded mode: messages sent to an empty queue after a pause, one idle consumer with kombu's
              stock SQL transport and one with the workers' (polled every 0.1 s): wait p50/max of each, and
              the share of a core each consumer used meanwhile (the polling's idle cost)
    report.json (figures, goals, which are met)

Latencies are wall times seen by the client (HTTP included). Both tile servers are one uvicorn process
on the same machine as the client, as are the API and the workers: on a small machine they compete
for the same cores, which this run reports (CPU count and load) rather than hides.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.common import free_port, latency_summary

GOALS = {"tile_p50_ratio": 1.0, "cache_hit_p50_ms": 10.0, "submit_status_p99_ms": 50.0, "lost_jobs": 0}
TMS = "WebMercatorQuad"


@dataclass
class BenchSettings:
    jobs: int = 1000  # small predict jobs queued across the worker restart
    clients: int = 50  # concurrent clients submitting them
    #: mean pause of each client between its requests, as this project's own clients pause (the CLI's
    #: `wait` polls every 2 s, the console every 1.5-2 s); 0: back to back (see ``load_test``)
    think_s: float = 1.0
    saturation_jobs: int = 200  # then submitted back to back by the same clients: capacity, not a goal
    tiles: int = 200  # tile requests per COG and server
    hits: int = 200  # cache-hit requests of live tiles
    cog_size: int = 1536  # side of the mosaics predicted to the COGs
    train_iterations: int = 60
    job_concurrency: int = 2  # processes of the job worker
    restart_after: float = 0.3  # fraction of the jobs finished when the worker is killed
    #: embedded mode: messages sent to an idle consumer of each transport (measure_queue_pickup; 0: none)
    pickup_messages: int = 20
    deadline_s: float = 3600.0  # for all jobs to end after the restart
    seed: int = 0
    #: production mode: a Redis broker and an empty PostgreSQL database (default: the embedded SQLite ones)
    broker_url: str | None = None
    database_url: str | None = None


# ---- processes -------------------------------------------------------------------------------------

class Procs:
    """Child processes of this run, each in its own process group (killing one kills its pool too)."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        fh = open(self.logs / f"{name}.log", "ab")
        p = subprocess.Popen([sys.executable, *args], env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                             start_new_session=True)
        fh.close()
        self.procs[name] = p
        return p

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def tail(self, name: str, n: int = 2000) -> str:
        f = self.logs / f"{name}.log"
        return f.read_text(errors="replace")[-n:] if f.exists() else ""


def _cli(*args: str) -> list[str]:
    return ["-m", "cli", *args]


def _wait_http(url: str, timeout: float, what: str, procs: Procs, name: str) -> None:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        p = procs.procs.get(name)
        if p is not None and p.poll() is not None:
            raise RuntimeError(f"{what} exited with {p.returncode}:\n{procs.tail(name)}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s:\n{procs.tail(name)}")


# ---- data ------------------------------------------------------------------------------------------

def _warp_to_utm(src: Path, dst: Path) -> Path:
    """The mosaic warped to UTM 17N (WGS84), bilinear, same pixel size: a CRS PROJ relates cheaply."""
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    if dst.exists():
        return dst
    with rasterio.open(src) as ds:
        t, w, h = calculate_default_transform(ds.crs, "EPSG:32617", ds.width, ds.height, *ds.bounds,
                                              resolution=ds.res[0])
        prof = ds.profile | dict(crs="EPSG:32617", transform=t, width=w, height=h)
        tmp = dst.with_name(f".{dst.name}.part")
        with rasterio.open(tmp, "w", **prof) as out:
            for b in range(1, ds.count + 1):
                reproject(rasterio.band(ds, b), rasterio.band(out, b), resampling=Resampling.bilinear,
                          src_nodata=ds.nodata, dst_nodata=ds.nodata)
    os.replace(tmp, dst)
    return dst


def _crop(src: Path, dst: Path, size: int = 64) -> Path:
    """A small piece of the scene, for jobs that are quick to run (the load test measures the queue)."""
    import rasterio
    from rasterio.windows import Window

    if dst.exists():
        return dst
    with rasterio.open(src) as ds:
        win = Window(ds.width // 3, ds.height // 3, size, size)
        prof = ds.profile | dict(width=size, height=size, transform=ds.window_transform(win), blockxsize=64,
                                 blockysize=64)
        data = ds.read(window=win)
    with rasterio.open(dst, "w", **prof) as out:
        out.write(data)
    return dst


def prepare_data(out: Path, cog_size: int, log: Callable[[str], None]) -> dict:
    from core.data.fetch import fetch
    from core.data.nc import nc_band_paths
    from benchmarks.predict import build_mosaic

    data = out / "data"
    nc = fetch("nc-landsat")
    log(f"mosaic {cog_size} x {cog_size} px of the NC scene, and its UTM 17N warp")
    mosaic = build_mosaic(cog_size, data / "mosaic_nc.tif")
    utm = _warp_to_utm(mosaic, data / "mosaic_utm.tif")
    small = _crop(utm, data / "small.tif")
    return {"bands": [str(p) for p in nc_band_paths(nc)], "labels": str(nc["strata"]), "nc_dir": str(Path(nc["b10"]).parent),
            "mosaic_nc": str(mosaic), "mosaic_utm": str(utm), "small": str(small)}


# ---- measurements ----------------------------------------------------------------------------------

def _png_colours(png: bytes) -> set[tuple[int, int, int]]:
    import io

    from PIL import Image

    rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    return {tuple(int(c) for c in v) for v in np.unique(rgba[rgba[..., 3] > 0][:, :3], axis=0)}


def sample_tiles(bounds, minzoom: int, maxzoom: int, n: int, seed: int) -> list[tuple[int, int, int]]:
    import morecantile

    tms = morecantile.tms.get(TMS)
    pool = [(t.z, t.x, t.y) for z in range(max(minzoom, maxzoom - 1), maxzoom + 3)
            for t in tms.tiles(*bounds, zooms=[z])]
    random.Random(seed).shuffle(pool)
    return (pool * (n // max(1, len(pool)) + 1))[:n]


def measure_tiles(ours: str, ours_headers: dict, ref: str, tiles: list, warm: int = 10) -> dict:
    """The same tiles from both servers, interleaved request by request (alternating who goes first)."""
    import httpx

    times = {"ours": [], "titiler": []}
    sizes = {"ours": [], "titiler": []}
    bad = {"ours": 0, "titiler": 0}
    colours = {"ours": set(), "titiler": set()}
    with httpx.Client(headers=ours_headers, timeout=60) as a, httpx.Client(timeout=60) as b:
        clients = {"ours": (a, ours), "titiler": (b, ref)}
        for i, (z, x, y) in enumerate(tiles[:warm] + tiles):
            order = ("ours", "titiler") if i % 2 == 0 else ("titiler", "ours")
            for who in order:
                c, tmpl = clients[who]
                url = tmpl.format(z=z, x=x, y=y)
                t0 = time.perf_counter()
                r = c.get(url)
                dt = (time.perf_counter() - t0) * 1000
                if i < warm:
                    continue
                if r.status_code != 200:
                    bad[who] += 1
                    continue
                times[who].append(dt)
                sizes[who].append(len(r.content))
                if i % 25 == 0:
                    colours[who] |= _png_colours(r.content)
    out = {who: {**latency_summary(times[who]), "errors": bad[who],
                 "mean_bytes": int(np.mean(sizes[who])) if sizes[who] else 0,
                 "colours": sorted(colours[who])} for who in times}
    p50o, p50r = out["ours"].get("p50_ms"), out["titiler"].get("p50_ms")
    out["ratio_p50"] = round(p50o / p50r, 3) if p50o and p50r else None
    return out


class Api:
    def __init__(self, base: str, token: str):
        import httpx

        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.http = httpx.Client(base_url=base, headers=self.headers, timeout=60)

    def call(self, method: str, path: str, ok=(200, 201), **kw):
        r = self.http.request(method, path, **kw)
        if r.status_code not in ok:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.content

    def submit(self, spec: dict, key: str) -> str:
        return self.call("POST", "/v1/jobs", json=spec, headers={"Idempotency-Key": key})["id"]

    def wait(self, job_id: str, timeout: float, what: str) -> dict:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            j = self.call("GET", f"/v1/jobs/{job_id}")
            if j["status"] in ("successful", "failed", "dismissed"):
                if j["status"] != "successful":
                    raise RuntimeError(f"{what} ended {j['status']}: {j.get('error')}")
                return j
            time.sleep(1.0)
        raise RuntimeError(f"{what} did not finish in {timeout:.0f} s")


def load_test(base: str, tokens: list[str], spec: dict, jobs: int, clients: int, think_s: float = 0.0, *,
              seed: int = 0, key_prefix: str = "bench-c") -> dict:
    """`clients` threads submit `jobs` jobs in all, each submit followed by a status read of that job;
    latencies in ms, as each client sees them.

    With ``think_s`` > 0 a client behaves like the ones this project ships (`geoadapt wait` polls every
    2 s, the console every 1.5-2 s): it pauses between its requests for a time drawn uniformly from
    [0.5, 1.5] x ``think_s`` and starts at a random moment in its first ``think_s``, so that 50 clients do
    not stay in lock-step and fire 50 requests in the same millisecond again and again. With
    ``think_s`` = 0 all start together and send back to back: a closed loop at saturation, where by
    Little's law the mean latency is clients / throughput whatever the server does.
    """
    import httpx

    per = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]
    submit_ms: list[float] = []
    status_ms: list[float] = []
    ids: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        rng = random.Random(seed * 100_003 + i)

        def pause() -> None:
            if think_s:
                time.sleep(rng.uniform(0.5 * think_s, 1.5 * think_s))

        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"},
                          timeout=60) as c:
            start.wait()
            if think_s:
                time.sleep(rng.uniform(0.0, think_s))
            for j in range(per[i]):
                t0 = time.perf_counter()
                r = c.post("/v1/jobs", json=spec, headers={"Idempotency-Key": f"{key_prefix}-{i}-{j}"})
                t1 = time.perf_counter()
                if r.status_code not in (200, 201):
                    with lock:
                        errors.append(f"submit {r.status_code}: {r.text[:200]}")
                    continue
                jid = r.json()["id"]
                pause()
                t2 = time.perf_counter()  # after the pause: it is the client's, not the server's
                s = c.get(f"/v1/jobs/{jid}")
                t3 = time.perf_counter()
                with lock:
                    submit_ms.append((t1 - t0) * 1000)
                    if s.status_code == 200:
                        status_ms.append((t3 - t2) * 1000)
                    else:
                        errors.append(f"status {s.status_code}")
                    ids.append(jid)
                pause()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    both = submit_ms + status_ms
    return {"clients": clients, "think_s": think_s, "jobs": len(ids), "seconds": round(seconds, 2),
            "requests_per_s": round(len(both) / seconds, 1), "submit": latency_summary(submit_ms),
            "status": latency_summary(status_ms), "submit_status": latency_summary(both), "errors": len(errors), "error_samples": errors[:5], "ids": ids}


def _final_counts(api: Api, ids: list[str]) -> dict:
    counts: dict[str, int] = {}
    for jid in ids:
        st = api.call("GET", f"/v1/jobs/{jid}", ok=(200, 404)).get("status", "missing")
        counts[st] = counts.get(st, 0) + 1
    return counts


def _finished(api: Api) -> int:
    n = 0
    for st in ("successful", "failed", "dismissed"):
        n += api.call("GET", f"/v1/jobs?status={st}&limit=1")["total"]
    return n


# ---- the run ---------------------------------------------------------------------------------------

def run_service_benchmark(out: Path, s: BenchSettings | None = None, *, log: Callable[[str], None] = print) -> dict:
    s = s or BenchSettings()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state = out / "state"
    if state.exists():
        shutil.rmtree(state)  # a fresh store and queue: figures of this run only
    data = prepare_data(out, s.cog_size, log)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOADAPT_")}
    env.update({"GEOADAPT_DATA_DIR": str(state), "GEOADAPT_ALLOWED_ROOTS": f"{out}:{data['nc_dir']}",
                # the load test measures latency, not the per-token write limit
                "GEOADAPT_RATE_LIMIT_PER_MINUTE": "0", "GEOADAPT_HEARTBEAT_INTERVAL_S": "2",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    if s.broker_url:
        env["GEOADAPT_BROKER_URL"] = s.broker_url
    if s.database_url:
        env["GEOADAPT_DATABASE_URL"] = s.database_url
    procs = Procs(env, out / "logs")
    mode = "production (Redis broker, PostgreSQL store)" if s.broker_url or s.database_url else "embedded (SQLite)"
    report: dict = {"settings": {k: v for k, v in asdict(s).items() if not k.endswith("_url")}, "mode": mode,
                    "machine": {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()}, "goals": GOALS}
    # SIGTERM (a timeout, Ctrl-C's cousin) must still stop the servers and workers started here
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        procs.start("api", _cli("serve", "--no-worker", "--port", str(port), "--data-dir", str(state),
                                "--log-level", "warning"))
        _wait_http(f"{base}/health", 90, "the API", procs, "api")
        def token(name: str, admin: bool = False) -> str:
            r = subprocess.run([sys.executable, *_cli("token", "create", "--name", name, *(["--admin"] if admin else []),
                                                      "--data-dir", str(state))],
                               env=env, capture_output=True, text=True, check=True)
            return r.stdout.strip().split()[-1]

        api = Api(base, token("bench-admin", admin=True))  # set-up and counting every client's jobs
        tokens = [token(f"bench-client-{i}") for i in range(5)]
        procs.start("tiles-worker", _cli("worker", "--queues", "tiles", "--pool", "solo", "--hostname", "tiles@%h"))
        worker_args = _cli("worker", "--queues", "gpu,cpu", "--concurrency", str(s.job_concurrency))
        procs.start("job-worker", worker_args + ["--hostname", "jobs1@%h"])

        # 1 jobs: a bundle, and both mosaics predicted to class COGs, through the API ------------------
        from core.data.nc import NC_CLASSES

        classes = [dict(c) for c in NC_CLASSES]
        log(f"train job: segformer-tiny on NC, {s.train_iterations} iterations")
        t0 = time.monotonic()
        train = api.submit({"type": "train", "method": "source-only", "model": "segformer-tiny", "classes": classes,
                            "source": {"scenes": [{"bands": data["bands"], "labels": data["labels"]}]},
                            "params": {"iterations": s.train_iterations, "batch_size": 4, "crop": 64, "seed": s.seed}},
                           "bench-c-train")
        api.wait(train, 1800, "the train job")
        bundle_out = state / "jobs" / train / "output"
        log(f"predict job: both mosaics to COGs (train took {time.monotonic() - t0:.0f} s)")
        t0 = time.monotonic()
        pred = api.submit({"type": "predict", "classes": classes, "bundle": str(bundle_out),
                           "target": {"scenes": [{"image": data["mosaic_nc"]}, {"image": data["mosaic_utm"]}]}},
                          "bench-c-predict")
        api.wait(pred, 3600, "the predict job")
        report["jobs"] = {"train_job": train, "predict_job": pred, "predict_s": round(time.monotonic() - t0, 1)}
        results = api.call("GET", f"/v1/jobs/{pred}/results")

        # 2 tiles: ours vs TiTiler on the same COGs --------------------------------------------------
        report["tiles"] = {}
        ref_port = free_port()
        ref = f"http://127.0.0.1:{ref_port}"
        procs.start("titiler", ["-m", "uvicorn", "--factory", "benchmarks.titiler_reference:create_app", "--host",
                                "127.0.0.1", "--port", str(ref_port), "--log-level", "warning"])
        _wait_http(f"{ref}/docs", 60, "TiTiler (pip install '.[bench]')", procs, "titiler")
        for p in (p for p in results["predictions"] if p["kind"] == "classes"):
            tj = api.call("GET", p["links"]["tilejson"])
            cog = state / "jobs" / pred / "output" / p["path"]
            tiles = sample_tiles(tj["bounds"], tj["minzoom"], tj["maxzoom"], s.tiles, s.seed)
            from urllib.parse import quote

            ref_tmpl = f"{ref}/cog/tiles/{TMS}/{{z}}/{{x}}/{{y}}.png?url={quote(str(cog))}"
            log(f"tiles of {p['name']}: {len(tiles)} requests to each server")
            m = measure_tiles(tj["tiles"][0], api.headers, ref_tmpl, tiles)
            import rasterio

            with rasterio.open(cog) as ds:
                m["cog"] = {"crs": ds.crs.to_string(), "width": ds.width, "height": ds.height,
                            "overviews": ds.overviews(1)}
            m["zooms"] = [tj["minzoom"], tj["maxzoom"]]
            report["tiles"][p["name"]] = m
        ratios = [m["ratio_p50"] for m in report["tiles"].values()]
        report["tile_p50_ratio"] = max(ratios) if ratios and None not in ratios else None
        procs.kill("titiler", signal.SIGTERM)

        # 3 live tile inference: misses, then cache hits ----------------------------------------------
        ds = api.call("POST", "/v1/datasets", json={"name": "nc", "bands": data["bands"]})
        tj = api.call("GET", f"/v1/models/{train}/{TMS}/tilejson.json?dataset={ds['id']}")
        import morecantile

        wm = morecantile.tms.get(TMS)
        c = wm.tile(tj["center"][0], tj["center"][1], tj["maxzoom"])
        live = [(c.z, c.x + i, c.y + j) for j in (0, 1) for i in (0, 1)]
        misses = []
        for z, x, y in live:
            t0 = time.perf_counter()
            api.call("GET", tj["tiles"][0].format(z=z, x=x, y=y))
            misses.append(round(time.perf_counter() - t0, 3))
        hits = []
        for i in range(s.hits):
            z, x, y = live[i % len(live)]
            t0 = time.perf_counter()
            api.call("GET", tj["tiles"][0].format(z=z, x=x, y=y))
            hits.append((time.perf_counter() - t0) * 1000)
        report["live_tiles"] = {"misses_s": misses, "hits": latency_summary(hits)}
        log(f"live tiles: misses {misses} s, cache hit p50 {report['live_tiles']['hits']['p50_ms']} ms")

        # 4 load: queued jobs submitted by concurrent clients -----------------------------------------
        procs.kill("job-worker", signal.SIGTERM)
        small_bundle = out / "data" / "bundle"
        if small_bundle.exists():
            shutil.rmtree(small_bundle)
        shutil.copytree(bundle_out / "bundle", small_bundle)  # under an allowed root: every token may use it
        spec = {"type": "predict", "classes": classes, "bundle": str(small_bundle),
                "target": {"scenes": [{"image": data["small"]}]}}
        done_before = _finished(api)
        log(f"load: {s.clients} clients submit {s.jobs} jobs, {s.think_s} s apart on average (the job worker "
            f"stopped: they queue)")
        load = load_test(base, tokens, spec, s.jobs, s.clients, s.think_s, seed=s.seed)
        ids = load.pop("ids")
        report["load"] = load
        log(f"submit p50 {load['submit'].get('p50_ms')} p99 {load['submit'].get('p99_ms')} ms, status p50 "
            f"{load['status'].get('p50_ms')} p99 {load['status'].get('p99_ms')} ms, {load['errors']} errors")
        if s.saturation_jobs:
            log(f"saturation: the same clients submit {s.saturation_jobs} more jobs back to back")
            sat = load_test(base, tokens, spec, s.saturation_jobs, s.clients, 0.0, key_prefix="bench-c-sat")
            ids += sat.pop("ids")
            report["saturation"] = sat
            log(f"{sat['requests_per_s']} requests/s; submit/status p50 {sat['submit_status'].get('p50_ms')} p99 "
                f"{sat['submit_status'].get('p99_ms')} ms, {sat['errors']} errors")

        # 5 restart: run them, kill the worker part way, start another, every job must end ----------
        t_run = time.monotonic()
        procs.start("job-worker", worker_args + ["--hostname", "jobs2@%h"])
        killed_at = None
        last_log = 0.0
        while time.monotonic() - t_run < s.deadline_s:
            finished = _finished(api) - done_before
            if killed_at is None and finished >= s.restart_after * len(ids):
                procs.kill("job-worker", signal.SIGKILL)
                killed_at = finished
                log(f"restart: worker SIGKILLed with {finished}/{len(ids)} jobs finished; starting another")
                procs.start("job-worker", worker_args + ["--hostname", "jobs3@%h"])
            if finished >= len(ids):
                break
            if time.monotonic() - last_log > 30:
                log(f"  {finished}/{len(ids)} jobs finished")
                last_log = time.monotonic()
            time.sleep(1.0)
        seconds = time.monotonic() - t_run
        counts = _final_counts(api, ids)
        final = sum(counts.get(k, 0) for k in ("successful", "failed", "dismissed"))
        report["restart"] = {"jobs": len(ids), "killed_with_finished": killed_at, "seconds": round(seconds, 1),
                             "jobs_per_s": round(final / seconds, 2) if seconds else None, "statuses": counts,
                             "lost": len(ids) - final, "failed": counts.get("failed", 0)}
        log(f"restart: {counts} in {seconds:.0f} s")

        # 6 queue pickup: an idle consumer of the embedded broker, stock transport vs the workers' -----------
        if not s.broker_url and s.pickup_messages:
            log(f"queue pickup: {s.pickup_messages} messages to an idle consumer of each SQL transport")
            pickup = measure_queue_pickup(out / "pickup-broker.db", s.pickup_messages, seed=s.seed)
            report["queue_pickup"] = pickup
            log(f"queue pickup p50 / max: stock {pickup['stock_sql_transport']['p50_ms']} / "
                f"{pickup['stock_sql_transport']['max_ms']} ms, workers' {pickup['workers_transport']['p50_ms']} / "
                f"{pickup['workers_transport']['max_ms']} ms (ratio {pickup['ratio_p50']}); consumer CPU share: "
                f"stock {pickup['stock_sql_transport']['cpu_share']}, workers' {pickup['workers_transport']['cpu_share']}")
    finally:
        procs.stop_all()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        report["machine"]["load_at_end"] = os.getloadavg()
        _finish(report, out)
    return report


def measure_queue_pickup(broker_db: Path, messages: int, *, seed: int = 0) -> dict:
    """How long a message sent to an empty queue waits before an idle consumer has it, with kombu's stock SQL
    transport (the API's) and with the workers' (workers.embedded_broker), side by side on one SQLite file: each
    message sent after a pause of 0.2-1.2 s, while the consumer waits. Latencies in ms; beside them the share of a
    core the consuming thread used meanwhile (``cpu_share``: its CPU time over the wall time; it is idle but for
    the polling)."""
    from kombu import Connection

    from workers.embedded_broker import worker_broker

    url = f"sqla+sqlite:///{broker_db}"
    rng = random.Random(seed)
    pauses = [rng.uniform(0.2, 1.2) for _ in range(messages)]

    def waits(connection: dict, queue: str) -> dict:
        got: list[float] = []
        cpu: dict = {}

        def consume() -> None:
            with Connection(**connection) as conn:
                q = conn.SimpleQueue(queue)
                cpu_0, wall_0 = time.thread_time(), time.perf_counter()
                for _ in range(messages):
                    m = q.get(timeout=30)
                    got.append((time.time() - m.payload["sent"]) * 1000)
                    m.ack()
                cpu["cpu_share"] = round((time.thread_time() - cpu_0) / (time.perf_counter() - wall_0), 4)

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        with Connection(url) as producer:
            q = producer.SimpleQueue(queue)
            for pause in pauses:
                time.sleep(pause)  # the queue empty, the consumer waiting on it
                q.put({"sent": time.time()})
        consumer.join(60)
        return {**latency_summary(got), **cpu}

    workers = worker_broker(url)
    stock = waits({"hostname": url}, "pickup-stock")
    ours = waits({"hostname": workers["broker_url"], "transport": workers["broker_transport"]}, "pickup-workers")
    ratio = round(ours["p50_ms"] / stock["p50_ms"], 3) if ours["p50_ms"] and stock["p50_ms"] else None
    return {"messages": messages, "stock_sql_transport": stock, "workers_transport": ours, "ratio_p50": ratio}


def _finish(report: dict, out: Path) -> None:
    """Figures against goals, written to report.json (also after a failure part way, with what ran)."""
    lost = report.get("restart", {}).get("lost")
    figures = {
        "tile_p50_ratio": report.get("tile_p50_ratio"),
        "cache_hit_p50_ms": report.get("live_tiles", {}).get("hits", {}).get("p50_ms"),
        "submit_status_p99_ms": report.get("load", {}).get("submit_status", {}).get("p99_ms"),
        "lost_jobs": lost,
    }
    report["figures"] = figures
    report["met"] = {
        "tile_p50_ratio": figures["tile_p50_ratio"] is not None and figures["tile_p50_ratio"] <= GOALS["tile_p50_ratio"],
        "cache_hit_p50_ms": figures["cache_hit_p50_ms"] is not None and figures["cache_hit_p50_ms"] < GOALS["cache_hit_p50_ms"],
        "submit_status_p99_ms": (figures["submit_status_p99_ms"] is not None
                                 and figures["submit_status_p99_ms"] < GOALS["submit_status_p99_ms"]),
        "lost_jobs": lost == 0,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
