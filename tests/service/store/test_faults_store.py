"""Faults at submit: the job store (PostgreSQL behind a TCP proxy the test cuts) going away and coming back,
the broker unreachable, the disk under the jobs folder full. Each answer is a 503 with Retry-After (never a
500, never a connection detail), nothing half-made stays (no row, no folder), and the next submit works."""
from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.store import tokens
from service.store.db import session_scope

from tests.helpers import fill, train_spec, write_tiny_scene


class TcpProxy:
    """127.0.0.1:<port> -> upstream; stop() closes the port and cuts every open connection, start() reopens it."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(32)
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, up]
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone would leave the port listening
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def scene(tmp_path):
    root = tmp_path / "root"
    return root, *write_tiny_scene(root / "scene")


def _jobs_in_db(url: str) -> int:
    from sqlalchemy import text

    from service.store.db import make_engine

    engine = make_engine(url)
    with engine.connect() as c:
        n = c.execute(text("SELECT count(*) FROM jobs")).scalar()
    engine.dispose()
    return int(n)


def test_job_store_going_away_and_back(tmp_path, scene, pg_schema_url):
    """Down at start (503), up (201), cut mid-life (503 on reads and submits, nothing stored), back (201)."""
    from urllib.parse import urlsplit

    root, img, lab = scene
    u = urlsplit(pg_schema_url)
    proxy = TcpProxy((u.hostname, u.port or 5432))
    url = pg_schema_url.replace(f"{u.hostname}:{u.port or 5432}", f"127.0.0.1:{proxy.port}", 1)
    settings = Settings(data_dir=tmp_path / "state", allowed_roots=[root], database_url=url, broker_url="memory://",
                        rate_limit_per_minute=0, retry_after_s=7)
    app = create_app(settings)  # the store is down: the API starts all the same
    c = TestClient(app)
    fake = {"Authorization": "Bearer ga_00000000_x"}
    try:
        r = c.post("/v1/jobs", json=train_spec(img, lab), headers=fake)
        assert r.status_code == 503 and r.headers["retry-after"] == "7", r.text
        assert c.get("/health").status_code == 503
        proxy.start()
        with session_scope(app.state.sessions) as s:
            _, plain = tokens.create_token(s)
        auth = {"Authorization": f"Bearer {plain}"}
        assert c.post("/v1/jobs", json=train_spec(img, lab), headers=auth).status_code == 201
        proxy.stop()  # cut: the pooled connections die, new ones are refused
        for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/datasets"), ("GET", "/health")):
            t0 = time.monotonic()
            r = c.request(method, path, headers=auth, json=train_spec(img, lab, params={"seed": 9})
                          if method == "POST" else None)
            assert r.status_code == 503, (method, path, r.status_code, r.text)
            assert int(r.headers["retry-after"]) > 0 and time.monotonic() - t0 < 15
            assert str(proxy.port) not in r.text and "postgres" not in r.text.lower()
        proxy.start()
        r = c.post("/v1/jobs", json=train_spec(img, lab, params={"seed": 2}), headers=auth)
        assert r.status_code == 201, r.text
        assert _jobs_in_db(url) == 2  # the refused submit stored nothing
        assert len(list(settings.jobs_dir.iterdir())) == 2
    finally:
        c.close()
        app.state.engine.dispose()
        proxy.stop()


def test_broker_down_at_submit_leaves_no_row_and_no_folder(tmp_path, scene):
    root, img, lab = scene
    settings = Settings(data_dir=tmp_path / "state", allowed_roots=[root], broker_url="redis://127.0.0.1:1/0",
                        rate_limit_per_minute=0)
    app = create_app(settings)
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s)
    with TestClient(app) as c:
        r = c.post("/v1/jobs", json=train_spec(img, lab), headers={"Authorization": f"Bearer {plain}",
                                                                   "Idempotency-Key": "k"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0 and "broker" in r.text
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {plain}"}).json()["total"] == 0
        assert list(settings.jobs_dir.iterdir()) == []


def test_full_disk_under_the_jobs_folder_at_submit(tmp_path, scene):
    root, img, lab = scene
    settings = Settings(data_dir=tmp_path / "state", allowed_roots=[root], broker_url="memory://",
                        rate_limit_per_minute=0)
    settings.ensure_dirs()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(settings.jobs_dir)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        app = create_app(settings)
        with session_scope(app.state.sessions) as s:
            _, plain = tokens.create_token(s)
        auth = {"Authorization": f"Bearer {plain}"}
        with TestClient(app) as c:
            ballast = fill(settings.jobs_dir, leave=0)
            r = c.post("/v1/jobs", json=train_spec(img, lab), headers=auth)
            assert r.status_code == 503 and "disk full" in r.text and int(r.headers["retry-after"]) > 0, r.text
            assert c.get("/v1/jobs", headers=auth).json()["total"] == 0
            assert [p.name for p in settings.jobs_dir.iterdir()] == ["ballast"]
            ballast.unlink()
            assert c.post("/v1/jobs", json=train_spec(img, lab), headers=auth).status_code == 201
        app.state.engine.dispose()
    finally:
        subprocess.run(["umount", "-l", str(settings.jobs_dir)], check=False)


def test_a_process_forked_mid_transaction_can_still_write_the_sqlite_store(tmp_path):
    """Celery forks a new pool process when one dies, at any moment, while the worker's main process writes
    its heartbeat to the store. SQLite's lock state is process memory: a child forked mid-transaction could
    never write ("database is locked" for its whole life, so every job it took stayed 'running'). The
    worker's store holds off forks while a session is open; forty forks under a busy writer must all write."""
    import os

    from service.store import workers as worker_store
    from service.store.for_workers import WorkerJobStore

    store = WorkerJobStore(Settings(data_dir=tmp_path, broker_url="memory://"))
    stop = threading.Event()

    def heartbeat():  # the main process's beat thread, writing all the time
        while not stop.is_set():
            with session_scope(store.sessions) as s:
                worker_store.beat(s, "main", queues="", pid=1)
                time.sleep(0.005)

    t = threading.Thread(target=heartbeat)
    t.start()
    failed = 0
    try:
        for i in range(40):
            time.sleep(0.01)
            pid = os.fork()
            if pid == 0:  # the new pool process: what worker_process_init does, then a write
                code = 1
                try:
                    store.after_fork()
                    with session_scope(store.sessions) as s:
                        s.connection().exec_driver_sql("PRAGMA busy_timeout=2000")
                        worker_store.beat(s, f"child-{i}", queues="", pid=os.getpid())
                    code = 0
                finally:
                    os._exit(code)
            failed += os.waitpid(pid, 0)[1] != 0
    finally:
        stop.set()
        t.join()
    assert failed == 0, f"{failed} of 40 forked processes could not write the store"
