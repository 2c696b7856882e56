"""Service commands: `serve` (API + worker, embedded), `worker`, and the REST client commands
`submit`, `status`, `wait`, `dismiss`, `delete`, `results`, `jobs`, `usage`; `token ...` is registered from
here too.

    geoadapt serve   -> N job worker subprocesses (`python -m cli worker --hostname jobsK@%h`, each
                        restarted if it dies; a sharded prediction uses them all) + a tile worker
                     -> uvicorn(create_app(Settings()))
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli import token_cmd
from core.task_names import JOB_QUEUES, TILES_QUEUE

Url = Annotated[str, typer.Option("--url", envvar="GEOADAPT_URL", help="API base URL")]
Token = Annotated[Optional[str], typer.Option("--token", envvar="GEOADAPT_TOKEN", help="API token",
                                              show_default=False)]
DEFAULT_URL = "http://127.0.0.1:8000"
_FINAL = ("successful", "failed", "dismissed")


# ---- serve / worker --------------------------------------------------------------------------

def _settings(data_dir: Path | None):
    from service.settings import Settings

    if data_dir is not None:
        # the worker subprocess reads the same settings from the environment
        os.environ["GEOADAPT_DATA_DIR"] = str(data_dir.expanduser().resolve())
    settings = Settings()
    settings.ensure_dirs()
    return settings


def _die_with_parent() -> None:
    """In the worker child: a cold shutdown (SIGQUIT) if `serve` dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _exit_without_teardown() -> None:
    """End a worker process that Celery has shut down (exit status 0, as ``worker_main`` gives), skipping the
    interpreter's teardown of the torch and mmseg heap, which every stop of `serve` would wait for. Logs and output
    are flushed first; nothing of ours runs at exit."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing left to flush
            pass
    os._exit(0)


def _cores_per_worker(n: int) -> int | None:
    """Each of ``n`` job workers' share of the cores (GEOADAPT_WORKER_CORES), so that N workers of one stream
    each run side by side rather than N times every core's worth of threads; None for a single worker, or
    when the operator set the share."""
    if n <= 1 or os.environ.get("GEOADAPT_WORKER_CORES"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // n)


class WorkerProcess:
    """The embedded worker: started, restarted after a crash, stopped with the API. ``cores``: the CPU
    cores its jobs use (its prediction streams and torch threads), None for every core."""

    def __init__(self, args: list[str], cores: int | None = None):
        self.cmd = [sys.executable, "-m", "cli", "worker", *args]
        self.cores = cores
        self.proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        env = None
        if self.cores:  # the OS still places it on any core: a busy core elsewhere slows no worker for long
            env = {**os.environ, "GEOADAPT_WORKER_CORES": str(self.cores), "OMP_NUM_THREADS": str(self.cores)}
        self.proc = subprocess.Popen(self.cmd, preexec_fn=_die_with_parent, env=env)

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            rc = self.proc.wait()
            if self._stopping.is_set():
                return
            typer.secho(f"worker exited ({rc}); starting it again in {backoff:.0f} s", err=True, fg="yellow")
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)
            self._spawn()

    def begin_stop(self) -> None:
        self._stopping.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        # a warm shutdown would wait for a running job to end: cold shutdown (SIGQUIT) instead;
        # the job is picked up again from its checkpoint when the service next starts
        self.proc.send_signal(signal.SIGQUIT)

    def wait_stopped(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _wait_for_catalogue(path: Path, *, newer_than: float, timeout: float) -> None:
    """Wait until the embedded worker has written the override catalogue (it imports torch and mmseg
    first: seconds); past ``timeout`` the API starts anyway, and jobs check their overrides when they start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if path.stat().st_mtime >= newer_than - 1:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    typer.secho(f"warning: the worker wrote no {path.name} in {timeout:.0f} s; model overrides are checked when "
                "each job starts", err=True)


def register(app: typer.Typer) -> None:
    """Add the service, worker, token and client commands to the top-level app."""
    token_cmd.register(app)

    @app.command()
    def serve(
        host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
        data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="state folder (GEOADAPT_DATA_DIR)")] = None,
        worker: Annotated[bool, typer.Option(help="also run a worker (embedded mode)")] = True,
        pool: Annotated[str, typer.Option(help="worker pool: prefork (1 process) or solo")] = "prefork",
        log_level: Annotated[str, typer.Option(help="uvicorn/celery log level")] = "info",
        workers: Annotated[int, typer.Option(
            "--workers", min=1, max=64,
            help="job workers, each a process of its own using an even share of the cores; a large prediction "
                 "goes in shards that they all run")] = 1,
    ) -> None:
        """Run the API and its job workers: no servers to install (SQLite store and queue by default)."""
        import uvicorn

        from service.app import create_app
        from service.settings import redact_url

        settings = _settings(data_dir)
        typer.echo(f"geoadapt: data {settings.data_dir}; store {redact_url(settings.database_url)}; "
                   f"broker {redact_url(settings.broker_url)}; allowed roots "
                   f"{':'.join(map(str, settings.allowed_roots)) or '(none: uploads only)'}")
        api = create_app(settings)  # creates the tables before the worker needs them
        # job workers: one process each, with node names of their own (jobs1@host, ...) when there are several
        share = _cores_per_worker(workers)
        wps = [WorkerProcess(["--pool", pool, "--concurrency", "1", "--loglevel", log_level,
                              *(["--hostname", f"jobs{k + 1}@%h"] if workers > 1 else [])], cores=share)
               for k in range(workers)] if worker else []
        if len(wps) > 1:
            typer.echo(f"geoadapt: {len(wps)} job workers" + (f", {share} core(s) each" if share else ""))
        # tile inference in a worker of its own: a long job in the first one must not stall the map
        tw = WorkerProcess(["--queues", TILES_QUEUE, "--pool", "solo", "--hostname", "tiles@%h",
                            "--loglevel", log_level]) if worker else None
        started = time.time()
        for w in (*wps, tw):
            if w:
                w.start()
        if wps:  # so that the first submissions are checked against it (model.overrides) like every later one
            _wait_for_catalogue(settings.override_catalogue, newer_than=started, timeout=120)
        # uvicorn re-raises SIGTERM after its graceful shutdown; as SystemExit it lets the
        # `finally` below stop the worker instead of killing this process on the spot
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            uvicorn.run(api, host=host, port=port, log_level=log_level)
        finally:
            children = [w for w in (*wps, tw) if w]
            for w in children:  # all at once: a cold shutdown takes seconds
                w.begin_stop()
            for w in children:
                w.wait_stopped()

    @app.command("worker")
    def worker_cmd(
        queues: Annotated[str, typer.Option(help="comma-separated queues to consume")] = ",".join(JOB_QUEUES),
        concurrency: Annotated[Optional[int], typer.Option(help="processes (default GEOADAPT_WORKER_CONCURRENCY)")] = None,
        pool: Annotated[str, typer.Option(help="prefork | solo | threads")] = "prefork",
        loglevel: Annotated[str, typer.Option(help="Celery log level")] = "info",
        hostname: Annotated[Optional[str], typer.Option(help="node name (default celery@<host>)")] = None,
        data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="state folder (GEOADAPT_DATA_DIR)")] = None,
    ) -> None:
        """Run a Celery worker for geoadapt jobs (one job at a time per process)."""
        from models.config import write_override_catalogue
        from service.queue import prepare_embedded_broker
        from service.store.for_workers import WorkerJobStore
        from workers.celery_app import app as celery, configure
        from workers.tasks import record_stop

        settings = _settings(data_dir)
        if settings.worker_cores:  # training keeps to this worker's share too (predictions: workers.pipelines)
            import torch

            torch.set_num_threads(settings.worker_cores)
        prepare_embedded_broker(settings)
        configure(celery, settings, WorkerJobStore(settings))
        try:  # the API checks model.overrides at submit with it; without it, jobs still check when they start
            write_override_catalogue(settings.override_catalogue)
        except OSError as e:
            typer.secho(f"warning: cannot write {settings.override_catalogue.name}: {e.strerror}", err=True)
        if TILES_QUEUE in queues.split(","):
            import workers.tile_tasks  # noqa: F401  (registers the tile inference task)
        argv = ["worker", f"--queues={queues}", f"--pool={pool}", f"--loglevel={loglevel}",
                f"--concurrency={concurrency or settings.worker_concurrency}"]
        if hostname:
            argv.append(f"--hostname={hostname}")
        if settings.embedded_broker:
            # the SQL transport has no broadcast: no gossip/mingle/remote control there
            argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        celery.worker_main(argv)  # returns once Celery has shut the worker down: its pool and connections closed
        record_stop()
        _exit_without_teardown()

    # ---- REST client commands ----------------------------------------------------------------

    def client(url: str, token: str | None):
        from service.client import Client

        return Client(url, token)

    def run_client(fn):
        from service.client import ServerError

        try:
            return fn()
        except ServerError as e:
            typer.secho(f"error: {e}", err=True, fg="red")
            raise typer.Exit(1)

    @app.command()
    def submit(
        spec_file: Annotated[Path, typer.Argument(help="job spec (YAML or JSON)", exists=True, dir_okay=False)],
        url: Url = DEFAULT_URL,
        token: Token = None,
        idempotency_key: Annotated[Optional[str], typer.Option("--idempotency-key", help="resubmits return the same job")] = None,
    ) -> None:
        """Submit a job to the service; prints the job id as the last word."""
        import yaml

        from core.errors import SpecError
        from core.jobspec import load_job_spec
        from service.inputs import model_id_of

        try:
            data = yaml.safe_load(spec_file.read_text())
        except yaml.YAMLError as e:
            raise SpecError(f"not valid YAML/JSON: {e}", field="(file)") from None
        if not isinstance(data, dict):
            raise SpecError("a job spec must be a mapping of fields", field="(spec)")
        # the server decides where a job writes; relative paths are made absolute here, where they
        # mean something (the server checks them against its allowed roots)
        data = {**data, "output": data.get("output") or "."}
        spec = load_job_spec(data, base_dir=spec_file.resolve().parent, check_files=False,
                             path_resolver=lambda p: p.resolve())  # "../x" -> the real absolute path
        body = spec.to_jsonable()
        body.pop("output", None)
        if model_id_of(data.get("bundle")) is not None:  # a model id is the server's to resolve, not a path
            body["bundle"] = data["bundle"]
        job = run_client(lambda: client(url, token).submit(body, idempotency_key))
        typer.echo(f"submitted {job['type']} job ({job['status']}): {job['id']}")

    def _line(j: dict) -> str:
        step = f" {j['done']}/{j['total']}" if j.get("total") else ""
        eta = f", eta {j['eta_s']:.0f} s" if j.get("eta_s") is not None else ""
        return f"{j['id']}  {j['status']:<10} {j['progress']:5.1f}%  {j.get('stage') or '-'}{step}{eta}"

    @app.command()
    def status(job_id: str, url: Url = DEFAULT_URL, token: Token = None,
               as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False) -> None:
        """Show a job's state, progress, stage and error."""
        j = run_client(lambda: client(url, token).job(job_id))
        if as_json:
            typer.echo(json.dumps(j, indent=1))
            return
        typer.echo(_line(j))
        if j.get("message"):
            typer.echo(f"  {j['message']}")
        if j.get("error"):
            typer.echo(f"  error ({j['error']['type']}): {j['error']['message']}")

    @app.command()
    def wait(
        job_id: str,
        url: Url = DEFAULT_URL,
        token: Token = None,
        timeout: Annotated[float, typer.Option(help="give up after this many seconds (0: never)")] = 0,
        interval: Annotated[float, typer.Option(help="seconds between polls")] = 2.0,
    ) -> None:
        """Follow a job to its end with a progress bar; exit 0 only if it succeeded."""
        from tqdm import tqdm

        c = client(url, token)
        t0 = time.monotonic()
        with tqdm(total=100.0, desc=job_id[:8], unit="%", dynamic_ncols=True,
                  bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}") as bar:
            while True:
                j = run_client(lambda: c.job(job_id))
                bar.n = float(j.get("progress") or 0)
                step = f" {j['done']}/{j['total']}" if j.get("total") else ""
                eta = f" eta {j['eta_s']:.0f}s" if j.get("eta_s") is not None else ""
                bar.set_postfix_str(f"{j['status']} {j.get('stage') or ''}{step}{eta}")
                if j["status"] in _FINAL:
                    break
                if timeout and time.monotonic() - t0 > timeout:
                    bar.close()
                    typer.secho(f"still {j['status']} after {timeout:.0f} s", err=True, fg="yellow")
                    raise typer.Exit(3)
                time.sleep(interval)
        typer.echo(_line(j))
        if j["status"] != "successful":
            if j.get("error"):
                typer.secho(f"error ({j['error']['type']}): {j['error']['message']}", err=True, fg="red")
            raise typer.Exit(1)

    def dismiss(job_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
        """Dismiss a job: a queued one at once, a running one at its next step (its last checkpoint is kept)."""
        c = client(url, token)
        _must_be(run_client(lambda: c.job(job_id)), ended=False)  # the API's DELETE would delete an ended job
        j = run_client(lambda: c.cancel(job_id))
        what = "dismissed" if j["status"] == "dismissed" else "dismissal requested (stops at its next step)"
        typer.echo(f"{job_id}: {what}")

    # one word for it, as in the API's job status; `cancel` still works for scripts written before
    app.command("dismiss")(dismiss)
    app.command("cancel", hidden=True)(dismiss)

    @app.command()
    def delete(job_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
        """Delete an ended job with its files and its model (refused while another job uses that model)."""
        c = client(url, token)
        _must_be(run_client(lambda: c.job(job_id)), ended=True)  # the API's DELETE would cancel a live job
        run_client(lambda: c.cancel(job_id))
        typer.echo(f"{job_id}: deleted, with its files and its model")

    def _must_be(j: dict, *, ended: bool) -> None:
        from service.errors import ConflictError

        if ended and j["status"] not in _FINAL:
            raise ConflictError(f"job {j['id']} is {j['status']}: cancel it (geoadapt cancel), then delete it "
                                "once it has ended", field="job_id")
        if not ended and j["status"] in _FINAL:
            raise ConflictError(f"job {j['id']} has already ended ({j['status']}); geoadapt delete removes it",
                                field="job_id")

    @app.command()
    def usage(url: Url = DEFAULT_URL, token: Token = None,
              as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False) -> None:
        """Show the storage your jobs and uploads take on the server, and your quota."""
        from service.usage import human

        u = run_client(lambda: client(url, token).usage())
        if as_json:
            typer.echo(json.dumps(u, indent=1))
            return
        quota = u["quota_bytes"]
        of = f" of {human(quota)} ({100 * u['used_bytes'] / quota:.0f} %)" if quota else " (no quota)"
        typer.echo(f"storage: {human(u['used_bytes'])} used{of}")
        typer.echo(f"  jobs: {u['jobs']} ({human(u['jobs_bytes'])}); uploads: {u['uploads']} "
                   f"({human(u['uploads_bytes'])})")

    @app.command()
    def results(job_id: str, url: Url = DEFAULT_URL, token: Token = None) -> None:
        """Print a finished job's results (bundle, metrics, predictions with links) as JSON."""
        typer.echo(json.dumps(run_client(lambda: client(url, token).results(job_id)), indent=1))

    @app.command()
    def jobs(
        url: Url = DEFAULT_URL,
        token: Token = None,
        status: Annotated[Optional[str], typer.Option(help="accepted|running|successful|failed|dismissed")] = None,
        type: Annotated[Optional[str], typer.Option("--type", help="adapt|train|predict|evaluate")] = None,
        limit: int = 20,
        offset: int = 0,
    ) -> None:
        """List your jobs, newest first."""
        page = run_client(lambda: client(url, token).jobs(status=status, type=type, limit=limit, offset=offset))
        for j in page["jobs"]:
            typer.echo(_line(j))
        typer.echo(f"{len(page['jobs'])} of {page['total']} job(s)")
