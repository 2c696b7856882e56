"""Benchmark C's own arithmetic: which tiles it asks for, its percentiles, and how figures meet goals."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import morecantile

from benchmarks.common import latency_summary
from benchmarks.service import GOALS, _finish, load_test, sample_tiles

WM = morecantile.tms.get("WebMercatorQuad")


def test_sample_tiles_stay_on_the_layer_and_span_zooms():
    bounds = (-78.77, 35.69, -78.61, 35.81)
    tiles = sample_tiles(bounds, 10, 12, 150, seed=0)
    assert len(tiles) == 150
    assert {z for z, _, _ in tiles} == {11, 12, 13, 14}  # around the native zoom, and deeper
    for z, x, y in tiles:
        b = WM.bounds(morecantile.Tile(x, y, z))
        assert b.left < bounds[2] and b.right > bounds[0] and b.bottom < bounds[3] and b.top > bounds[1]
    assert sample_tiles(bounds, 10, 12, 150, seed=0) == tiles  # the same requests for both servers, every run


def test_percentiles():
    p = latency_summary([float(i) for i in range(1, 101)])
    assert p["n"] == 100 and p["p50_ms"] == 50.5 and p["p99_ms"] == 99.01 and p["max_ms"] == 100
    assert latency_summary([]) == {"n": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}


def test_figures_against_goals_are_written_even_for_a_partial_run(tmp_path):
    report = {"tile_p50_ratio": 0.5, "live_tiles": {"hits": {"p50_ms": 12.0}},
              "load": {"submit_status": {"p99_ms": 20.0}}}
    _finish(report, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["figures"] == {"tile_p50_ratio": 0.5, "cache_hit_p50_ms": 12.0, "submit_status_p99_ms": 20.0,
                                "lost_jobs": None}
    assert saved["met"] == {"tile_p50_ratio": True, "cache_hit_p50_ms": False, "submit_status_p99_ms": True,
                            "lost_jobs": False}  # no restart phase ran: nothing shows no job was lost
    assert set(GOALS) == set(saved["met"])


class _InstantJobs(BaseHTTPRequestHandler):
    """Answers a submit and a status read at once, and notes when each request arrived: any latency
    the load test reports is its own."""

    arrivals: list[float] = []

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        self.arrivals.append(time.monotonic())
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._json(201, {"id": "j1"})

    def do_GET(self):
        self._json(200, {"id": "j1", "status": "accepted"})

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # the default 5 drops simultaneous connects, which the client retries 1 s later


def _run_load(**kw) -> tuple[dict, list[float]]:
    _InstantJobs.arrivals = []
    server = _Server(("127.0.0.1", 0), _InstantJobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = load_test(f"http://127.0.0.1:{server.server_port}", ["t"], {"type": "predict"}, **kw)
    finally:
        server.shutdown()
    return r, sorted(_InstantJobs.arrivals)


def test_load_test_times_requests_not_the_clients_pauses():
    r, _ = _run_load(jobs=4, clients=2, think_s=0.3)
    assert r["jobs"] == 4 and r["errors"] == 0
    assert r["seconds"] >= 2 * 2 * 0.15  # each client paused >= think/2 after each submit and status read
    assert r["submit"]["max_ms"] < 150 and r["status"]["max_ms"] < 150  # the pauses are not in them


def test_paced_clients_do_not_fire_in_step_and_back_to_back_ones_do():
    # the clients' first submits: spread over the first think period when paced, all at once when not
    _, paced = _run_load(jobs=8, clients=8, think_s=0.4)
    _, burst = _run_load(jobs=8, clients=8, think_s=0.0)
    assert paced[-1] - paced[0] > 0.1
    assert burst[-1] - burst[0] < 0.1


def test_queue_pickup_measures_both_transports_on_one_broker_file(tmp_path):
    """The benchmark's pickup step on a real SQLite broker: every message reaches its idle consumer, on each
    transport, and both are summarised (the figures themselves are the benchmark's to print, not a test's)."""
    from benchmarks.service import measure_queue_pickup

    r = measure_queue_pickup(tmp_path / "broker.db", 3)
    assert r["messages"] == 3
    for key in ("stock_sql_transport", "workers_transport"):
        assert r[key]["n"] == 3 and 0 < r[key]["p50_ms"] <= r[key]["max_ms"], r
        assert 0 < r[key]["cpu_share"] < 1, r  # the consumer polled (some CPU), and idled (less than a core)
    assert r["ratio_p50"] is not None

