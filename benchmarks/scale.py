"""Benchmark B, extended (issue #25): one large prediction split across the service's job workers.

    the raster and the model: benchmarks.predict's (the NC scene tiled to size x size x 6; segformer-tiny,
    random weights), each prediction a predict job over REST to a `geoadapt serve` of its own:

      serve --workers 1  (1 worker x 2 threads: its predict runs 2 streams)   shards 1   small | size
      serve --workers 2  (2 workers x 1 thread: a core each)                  shards N   small | size
                          then the same job, one job worker SIGKILLed mid-shard          size
      (each size's job the first of a served instance of its own: fresh workers, symmetric cold starts)

    e2e: job created -> finished (the service's own timestamps: queue, load, predict, COG with overviews).
    ratio = e2e(1 x 2) / e2e(2 x 1 sharded): >= 0.9 means sharding costs little.
    outputs: class and probability COGs of each sharded run against the 1 x 2 run's, every pixel.
    peak RSS per worker: VmHWM of each job worker's process tree (its pool process runs the jobs) during
    the small job and during the large one, each in fresh workers (peaks reset after start-up).

Writes report.json and report.md.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

GOALS = {"e2e_ratio": 0.9, "rss_growth": 0.10}
FINAL = ("successful", "failed", "dismissed")


@dataclass
class ScaleSettings:
    size: int = 16384  # side of the large raster
    small: int | None = None  # side of the second raster for peak RSS (default size // 2)
    shards: int = 4  # shards of a sharded run
    workers: int = 2  # job workers of the sharded runs
    kill_after: float = 0.4  # the kill run: a job worker goes at this fraction of the sharded run's e2e,
    #                          once a shard is running
    probabilities: bool = True  # the jobs also write probability COGs (a predict job's default)
    timeout_s: float = 7200.0  # per job


# a served instance -----------------------------------------------------------------------------------
class Served:
    """`geoadapt serve --workers N` in a state folder of its own, with a token; stopped by ``close``."""

    def __init__(self, root: Path, workers: int, roots: list[Path], log: Callable[[str], None]):
        import httpx

        from benchmarks.common import free_port

        self.root, self.workers, self.say = root, workers, log
        state = root / "state"
        self.env = {**os.environ, "GEOADAPT_DATA_DIR": str(state),
                    "GEOADAPT_ALLOWED_ROOTS": os.pathsep.join(str(r) for r in roots),
                    "GEOADAPT_HEARTBEAT_INTERVAL_S": "2"}
        tok = subprocess.run([sys.executable, "-m", "cli", "token", "create", "--name", "bench"], env=self.env,
                             capture_output=True, text=True, check=True).stdout.split()[-1]
        self.headers = {"Authorization": f"Bearer {tok}"}
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = root / "serve.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", self.url.rsplit(":", 1)[1], "--workers", str(workers),
             "--log-level", "warning"],
            env=self.env, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=30)
        t0 = time.monotonic()
        while len(self.job_workers()) < workers or not self._healthy():
            if self.proc.poll() is not None or time.monotonic() - t0 > 300:
                raise RuntimeError(f"serve --workers {workers} did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.5)

    def _healthy(self) -> bool:
        try:
            return bool(self.http.get("/health").json()["workers"]["ok"])
        except Exception:
            return False

    def job_workers(self) -> list[int]:
        """pids of serve's job worker children (each its own process; the tile worker is not one)."""
        return [pid for pid, cmd in _children(self.proc.pid) if "worker" in cmd and "tiles" not in cmd]

    def predict(self, bundle: Path, image: Path, shards: int, probabilities: bool, timeout_s: float,
                during: Callable[[str, dict], None] | None = None) -> dict:
        spec = {"type": "predict", "classes": _classes(), "bundle": str(bundle),
                "target": {"scenes": [{"image": str(image)}]},
                "params": {"shards": shards, "predict_probabilities": probabilities}}
        r = self.http.post("/v1/jobs", json=spec)
        if r.status_code != 201:
            raise RuntimeError(f"predict job refused: {r.status_code} {r.text[:500]}")
        jid = r.json()["id"]
        t0 = time.monotonic()
        while True:
            j = self.http.get(f"/v1/jobs/{jid}").json()
            if j["status"] in FINAL:
                break
            if during is not None:
                during(jid, j)
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"job {jid} still {j['status']} after {timeout_s:.0f} s")
            time.sleep(0.2)
        if j["status"] != "successful":
            raise RuntimeError(f"job {jid} ended {j['status']}: {j.get('error')}\n{self.log_path.read_text()[-3000:]}")
        out = self.root / "state" / "jobs" / jid / "output"
        pred = json.loads((out / "predictions.json").read_text())["predictions"][0]
        return {"job": jid, "e2e_s": _seconds(j["created_at"], j["finished_at"]),
                "run_s": _seconds(j["started_at"], j["finished_at"]), "attempts": j["attempts"],
                "path": pred["path"], "shards": pred.get("shards"), "windows": pred["windows"],
                "predicted": pred["predicted"]}

    def _trees(self) -> list[list[int]]:
        return [[pid, *(c for c, _ in _children(pid))] for pid in sorted(self.job_workers())]

    def reset_peaks(self) -> bool:
        """Start every job worker's peak RSS afresh from its current RSS (Linux: clear_refs 5), so that the
        next reading is the next job's own peak; False where the kernel refuses (peaks then accumulate)."""
        ok = True
        for tree in self._trees():
            for pid in tree:
                try:
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
                except OSError:
                    ok = False
        return ok

    def peak_rss_mb(self) -> dict[str, float]:
        """Per job worker: the largest VmHWM in its process tree (its pool process runs the jobs)."""
        return {f"worker{k + 1}": round(max(_vmhwm_mb(p) for p in tree), 1) for k, tree in enumerate(self._trees())}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.http.close()


def _classes() -> list[dict]:
    from core.data.nc import NC_CLASSES

    return NC_CLASSES


def _seconds(a: str, b: str) -> float:
    from datetime import datetime

    return round((datetime.fromisoformat(b.replace("Z", "+00:00"))
                  - datetime.fromisoformat(a.replace("Z", "+00:00"))).total_seconds(), 2)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every child of ``pid`` (from any of its threads)."""
    kids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError, IndexError):
            pass
    return kids


def _vmhwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def same_rasters(a: str | Path, b: str | Path, rows: int = 512) -> bool:
    """Whether two rasters hold the same values everywhere (read in strips: bounded memory)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(a) as x, rasterio.open(b) as y:
        if (x.width, x.height, x.count) != (y.width, y.height, y.count):
            return False
        for r in range(0, x.height, rows):
            win = Window(0, r, x.width, min(rows, x.height - r))
            if not np.array_equal(x.read(window=win), y.read(window=win)):
                return False
    return True


def _probs(path: str | Path) -> Path:
    from core.job_layout import probability_path_for

    return probability_path_for(path)


# the benchmark -----------------------------------------------------------------------------------------
def run_scale_benchmark(out: str | Path, s: ScaleSettings | None = None, *, data_dir: Path | None = None,
                        log: Callable[[str], None] = print) -> dict:
    """Run the sharded-prediction benchmark and write report.json + report.md into ``out``."""
    from benchmarks.predict import _loadavg, build_mosaic, make_bundle
    from core.raster.cog import gdal_cache_limit

    s = s or ScaleSettings()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    small = s.small or max(512, s.size // 2)
    log(f"building {s.size} and {small} px mosaics of the NC scene ...")
    with gdal_cache_limit():
        big = build_mosaic(s.size, out / "data" / f"nc-mosaic-{s.size}.tif", data_dir)
        little = build_mosaic(small, out / "data" / f"nc-mosaic-{small}.tif", data_dir)
    bundle = make_bundle(out / "bundle", data_dir)
    roots = [out / "data", out / "bundle"]
    load_before = _loadavg()
    t0 = time.perf_counter()
    runs: dict[str, dict] = {}
    rss: dict[str, dict] = {}

    def job(served: Served, name: str, image: Path, shards: int, during=None) -> dict:
        log(f"{name}: predict job over {image.name} in {shards} shard(s) ...")
        r = served.predict(bundle, image, shards, s.probabilities, s.timeout_s, during)
        r["peak_rss_mb_per_worker"] = served.peak_rss_mb()
        r["peaks_reset"] = served.reset_peaks()  # the next job's peaks are its own
        runs[name] = r
        log(f"  {name}: {r['e2e_s']} s end to end" + (
            f", {r['shards']['reruns']} shard(s) re-run" if r.get("shards") else ""))
        return r

    def fresh(workers: int, name: str, image: Path, shards: int, then=None):
        """A job as the first of a served instance of its own (its peak RSS is that job's alone); ``then``:
        more work on the same instance before it stops."""
        served = Served(out / f"serve-{name}", workers, roots, log)
        try:
            served.reset_peaks()  # not start-up's (imports, the catalogue): the job's
            r = job(served, name, image, shards)
            return r, (then(served, r) if then else None)
        finally:
            served.close()

    # 1 worker x 2 threads: the single path, its predict on 2 streams
    single = "1 worker x 2 threads"
    small_ref, _ = fresh(1, f"1x_single_{small}", little, 1)
    ref, _ = fresh(1, f"1x_single_{s.size}", big, 1)
    rss[single] = {str(small): small_ref["peak_rss_mb_per_worker"], str(s.size): ref["peak_rss_mb_per_worker"]}

    # N workers x 1 thread: shards; then the same job with a job worker SIGKILLed mid-shard
    killed: dict = {}

    def with_a_kill(many: Served, sharded: dict) -> dict:
        kill_at = s.kill_after * sharded["e2e_s"]
        t_sub = [None]

        def kill_one(jid: str, j: dict) -> None:
            if killed or j["status"] != "running":
                return
            t_sub[0] = t_sub[0] or time.monotonic()
            if time.monotonic() - t_sub[0] < kill_at:
                return
            running = [w for w in _shard_workers(many, jid) if w in many.job_workers()]
            if not running:
                return
            victim = running[0]  # a worker mid-shard: the kill loses work
            coordinator = _coordinator_worker(many, j)
            os.kill(victim, signal.SIGKILL)
            killed.update(pid=victim, coordinator=victim == coordinator, after_s=round(time.monotonic() - t_sub[0], 1))
            log(f"  killed job worker {victim} ({'the coordinator' if killed['coordinator'] else 'a helper'}) "
                f"after {killed['after_s']} s")

        return job(many, f"{s.workers}x_sharded_{s.size}_worker_killed", big, s.shards, during=kill_one)

    many = f"{s.workers} workers x 1 thread"
    small_sharded, _ = fresh(s.workers, f"{s.workers}x_sharded_{small}", little, s.shards)
    sharded, with_kill = fresh(s.workers, f"{s.workers}x_sharded_{s.size}", big, s.shards, then=with_a_kill)
    rss[many] = {str(small): small_sharded["peak_rss_mb_per_worker"], str(s.size): sharded["peak_rss_mb_per_worker"]}

    def same(a: dict, b: dict) -> dict:
        d = {"classes": same_rasters(a["path"], b["path"])}
        if s.probabilities:
            d["probabilities"] = same_rasters(_probs(a["path"]), _probs(b["path"]))
        return d

    identical = {"sharded": same(sharded, ref), "sharded_worker_killed": same(with_kill, ref)}
    ratio = round(ref["e2e_s"] / sharded["e2e_s"], 3)
    growth = {}
    for name, by_size in rss.items():
        a, b = by_size[str(small)], by_size[str(s.size)]
        growth[name] = round(max(b.values()) / max(a.values()) - 1, 3)  # the largest worker at each size
    pixels = s.size * s.size
    report = {
        "benchmark": "B (extended): one large prediction across job workers",
        "size": s.size, "sizes": [small, s.size],
        "raster": {"width": s.size, "height": s.size, "bands": 6, "dtype": "float32",
                   "source": "the NC Landsat-7 scene (6 bands, nodata border kept) tiled to size"},
        "settings": {**asdict(s), "small": small, "cpus": len(os.sched_getaffinity(0)),
                     "model": "segformer-tiny (the project's default network), random weights",
                     "predict": "a predict job's defaults (window 256, overlap 32, hann, batch 4)"},
        "e2e_seconds": {"1 worker x 2 threads": ref["e2e_s"], f"{s.workers} workers x 1 thread": sharded["e2e_s"],
                        f"{s.workers} workers x 1 thread, one killed": with_kill["e2e_s"]},
        "e2e_mpx_s": {"1 worker x 2 threads": round(pixels / ref["e2e_s"] / 1e6, 4),
                      f"{s.workers} workers x 1 thread": round(pixels / sharded["e2e_s"] / 1e6, 4)},
        "e2e_ratio": ratio,
        "identical_outputs": identical,
        "worker_killed": {**killed, "reruns": (with_kill.get("shards") or {}).get("reruns"),
                          "attempts": with_kill["attempts"], "job": with_kill["job"]},
        "peak_rss_mb_per_worker": rss,
        "peak_rss_growth": growth,
        "runs": runs,
        "seconds_total": round(time.perf_counter() - t0, 1),
        "loadavg": {"before": load_before, "after": _loadavg(), "cpus": os.cpu_count()},
        "definitions": {
            "e2e": "job created -> finished by the service's timestamps: queue, model load, predict (all shards), "
                   "the COGs with overviews",
            "e2e_ratio": "e2e of 1 worker x 2 threads / e2e of the sharded run (>= 0.9: sharding costs little)",
            "peak_rss_mb_per_worker": "VmHWM of each job worker's process tree during the small job and during the "
                                      "large one, each the first job of fresh workers (peaks reset after start-up)",
            "peak_rss_growth": "largest worker's peak at the large size / largest worker's at the small size - 1",
        },
    }
    report["goals"] = {
        "e2e ratio >= 0.9": ratio >= GOALS["e2e_ratio"],
        "outputs identical": all(all(v.values()) for v in identical.values()),
        "a killed worker's job succeeds, shards re-run": bool(killed) and (report["worker_killed"]["reruns"] or 0) >= 1,
        "peak RSS per worker within 10% across sizes": all(g <= GOALS["rss_growth"] for g in growth.values()),
    }
    for r in runs.values():  # the COGs were checked; they need not stay on disk
        for p in (Path(r["path"]), _probs(r["path"])):
            p.unlink(missing_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(format_report(report))
    return report


def _store_session(served: Served):
    from service.settings import Settings
    from service.store.db import make_engine, session_factory

    engine = make_engine(Settings(data_dir=served.root / "state").database_url)
    return engine, session_factory(engine)()


def _shard_workers(served: Served, jid: str) -> list[int]:
    """The serve children whose pool processes run a shard of the job now (the kill lands mid-shard)."""
    from service.store.tables import JobShard

    engine, session = _store_session(served)
    try:
        idents = [r.worker for r in session.query(JobShard).filter(JobShard.job_id == uuid.UUID(jid),
                                                                    JobShard.status == "running")]
    finally:
        session.close()
        engine.dispose()
    out = []
    for ident in idents:
        try:
            pid = int(ident.rsplit(":", 2)[1])
            out.append(int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]))
        except (OSError, ValueError, AttributeError, IndexError):
            pass
    return out


def _coordinator_worker(served: Served, job: dict) -> int | None:
    """The serve child whose pool process coordinates the job (None when it cannot be told)."""
    from service.store.tables import Job

    engine, session = _store_session(served)
    try:
        ident = session.get(Job, uuid.UUID(job["id"])).worker
        pid = int(ident.rsplit(":", 2)[1])
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, AttributeError, IndexError):
        return None
    finally:
        session.close()
        engine.dispose()


def format_report(r: dict) -> str:
    w = r["settings"]["workers"]
    lines = [
        "# Benchmark B (extended): one large prediction across job workers",
        "",
        f"Raster {r['size']} x {r['size']} x 6 float32 (the NC scene tiled); {r['settings']['model']}; "
        f"{r['settings']['predict']}; {r['settings']['shards']} shards; {r['settings']['cpus']} CPU cores.",
        "",
        "| run | e2e (s) |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in r["e2e_seconds"].items()),
        "",
        f"- e2e ratio (1 worker x 2 threads / {w} workers x 1 thread): **{r['e2e_ratio']}** (goal >= 0.9)",
        f"- identical outputs: {r['identical_outputs']}",
        f"- worker killed: {r['worker_killed']}",
        f"- peak RSS per worker (MB), by raster size: {r['peak_rss_mb_per_worker']}; growth {r['peak_rss_growth']} "
        "(goal: within 10%)",
        f"- goals: {r['goals']}",
        f"- load average before/after: {r['loadavg']}",
        "",
    ]
    return "\n".join(lines)
