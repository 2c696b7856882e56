"""Load on a live `geoadapt serve` (embedded SQLite store and queue): 50 concurrent clients, each with its own
token, submitting jobs and reading their status for a few seconds, then 50 reading result tiles. No request
may fail, and every 201 must be a stored job of its token with one message in the queue. The figures are
printed; `geoadapt bench security` runs the same for longer."""
from __future__ import annotations

import httpx
import pytest

from benchmarks.common import free_port
from benchmarks.security import (format_report, lost_jobs, prepare, start_server, stop_server, submit_status_load,
                                 tile_load)

CLIENTS = 50


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("load")
    world = prepare(folder / "w", clients=CLIENTS)
    port = free_port()
    proc = start_server(world, port, log=folder / "serve.log")
    try:
        yield world, f"http://127.0.0.1:{port}", folder / "serve.log"
    finally:
        stop_server(proc)


def test_submission_and_status_under_50_clients_lose_nothing(live):
    world, base, log = live
    r = submit_status_load(base, world, clients=CLIENTS, seconds=4)
    accepted = r.pop("accepted")
    r["lost"] = lost_jobs(world, accepted)
    print("\n" + "\n".join(format_report({"submit_status": r})))
    assert r["errors"] == 0, r["error_samples"]
    assert len(accepted) >= CLIENTS  # every client got at least one job in
    assert r["lost"]["lost"] == 0 and not r["lost"]["queued_twice"], r["lost"]
    # under load, each token still sees exactly its own jobs
    for token in world.tokens[:5]:
        mine = {j for t, j in accepted if t == token}
        got = httpx.get(f"{base}/v1/jobs?limit=200", headers={"Authorization": f"Bearer {token}"}, timeout=30).json()
        assert {j["id"] for j in got["jobs"]} == mine and got["total"] == len(mine)
    assert "Traceback" not in log.read_text(errors="replace")


def test_tiles_under_50_clients(live):
    world, base, log = live
    r = tile_load(base, world, clients=CLIENTS, seconds=4)
    print("\n" + "\n".join(format_report({"tiles": r})))
    assert r["errors"] == 0, r["error_samples"]
    assert r["tiles"]["n"] >= CLIENTS
    assert "Traceback" not in log.read_text(errors="replace")
