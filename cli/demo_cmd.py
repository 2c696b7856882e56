"""`geoadapt demo`: the README's run command, the most complete real flow that exists.

    fetch NC Landsat-7 (source, labelled) -> build Benchmark A's shifted target -> validate both,
        print their band statistics
    fetch Olinda Landsat-7 (a real unlabelled target: same sensor, another continent)
    start the embedded service (`geoadapt serve`: API + worker, SQLite store and queue) on a
        state folder of its own, create a token
    submit an ST-DASegNet adapt job NC -> Olinda over REST, follow its progress
    print the results: bundle, the Olinda class COG with its tile URLs, the console URL
    keep serving (interactive) or stop (scripted; --exit)
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    dir: Optional[Path] = typer.Option(None, "--dir", help="folder for the demo's data (default: the geoadapt data cache)"),
    state: Optional[Path] = typer.Option(None, "--state", help="the demo service's state folder (default: <cache>/demo-service)"),
    port: int = typer.Option(0, "--port", help="port for the demo service (0: a free one)"),
    iterations: int = typer.Option(200, "--iterations", min=1, help="adaptation iterations (EfficientNet-Lite0 from ImageNet weights: ~1 a second on a laptop CPU)"),
    seed: int = typer.Option(0, "--seed", help="seed of Benchmark A's simulated shift and of training"),
    keep_serving: Optional[bool] = typer.Option(
        None, "--keep-serving/--exit",
        help="after the job, keep the service running for the console (default: when run from a terminal)"),
) -> None:
    """Run the main flow on real data, end to end through the embedded service."""
    from core.data.demo import format_table, prepare_demo
    from core.data.fetch import cache_root, fetch

    data = prepare_demo(dir, seed=seed, data_dir=dir, log=_say)
    typer.echo("\nSource: NC Landsat-7 ETM+ (2000), six band files stacked; labels: strata.tif (7 classes)")
    typer.echo(f"Benchmark A target (simulated sensor + atmosphere shift): {data['paths']['target']}")
    for name, report in data["validation"].items():
        scene = report["scenes"][0]
        typer.echo(f"  {name}: valid, {scene['bands']} bands, {scene['width']}x{scene['height']} px, "
                   f"{scene['crs']}, {scene['valid_fraction']:.0%} valid pixels")
    typer.echo("\nPer-band statistics over valid pixels (DN):")
    typer.echo(format_table(data["table"]))

    _say("fetching the Olinda (Brazil) Landsat-7 scene: the real target domain")
    olinda = fetch("olinda", None, log=_say)["l7_etms"]

    state_dir = (state or cache_root() / "demo-service").expanduser().resolve()
    roots = sorted({str(Path(p).resolve().parent) for p in [*data["paths"]["source_bands"], olinda]})
    env = {**os.environ, "GEOADAPT_DATA_DIR": str(state_dir), "GEOADAPT_ALLOWED_ROOTS": os.pathsep.join(roots)}
    token = _create_token(state_dir)
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    _say(f"starting the embedded service at {url} (state in {state_dir})")
    log_path = state_dir / "demo-serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(port), "--log-level", "warning"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(url, server, log_path)
        job = _submit(url, token, data, olinda, iterations, seed)
        final = _follow(url, token, job["id"])
        if final["status"] != "successful":
            err = final.get("error") or {}
            typer.secho(f"the demo job ended {final['status']}: {err.get('type')}: {err.get('message')}",
                        err=True, fg="red")
            raise typer.Exit(1)
        _print_results(url, token, final)
        interactive = sys.stdout.isatty() if keep_serving is None else keep_serving
        if interactive:
            typer.secho(f"\nServing at {url} until Ctrl-C (log: {log_path}).", fg="green")
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def _say(msg: str) -> None:
    typer.secho(f"[demo] {msg}", fg="cyan", err=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _create_token(state_dir: Path) -> str:
    from service.settings import Settings
    from service.store import tokens
    from service.store.db import init_db, make_engine, session_factory, session_scope

    settings = Settings(data_dir=state_dir)
    settings.ensure_dirs()
    engine = make_engine(settings.database_url)
    init_db(engine)
    with session_scope(session_factory(engine)) as s:
        _, plain = tokens.create_token(s, name="demo", admin=False)
    engine.dispose()
    return plain


def _wait_healthy(url: str, server: subprocess.Popen, log_path: Path, timeout_s: float = 120.0) -> None:
    from service.client import Client, ServerError

    client = Client(url, None, timeout=5.0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if server.poll() is not None:
            raise typer.Exit(_fail(f"the service exited ({server.returncode}); see {log_path}"))
        try:
            health = client.health()
            if health.get("status") == "ok":  # store, broker and a live worker
                return
        except (ServerError, OSError):
            pass
        time.sleep(1.0)
    raise typer.Exit(_fail(f"the service did not become healthy in {timeout_s:.0f} s; see {log_path}"))


def _fail(msg: str) -> int:
    typer.secho(msg, err=True, fg="red")
    return 1


def _submit(url: str, token: str, data: dict, olinda: Path, iterations: int, seed: int) -> dict:
    from core.data.nc import LANDSAT7_BAND_ROLES
    from service.client import Client

    source = data["domains"]["source"]["scenes"][0]
    spec = {
        "type": "adapt",
        "method": "st-dasegnet",
        # ImageNet weights: Landsat-7 ETM+ bands 1-5, 7 map onto the RGB stem by role (the rest: mean filter)
        "model": {"config": "efficientnet-lite0", "band_roles": list(LANDSAT7_BAND_ROLES)},
        "classes": data["classes"],
        "source": {"scenes": [{"bands": [str(p) for p in source["bands"]], "labels": str(source["labels"])}]},
        "target": {"scenes": [{"image": str(olinda)}]},
        "params": {"iterations": iterations, "batch_size": 4, "crop": 128, "seed": seed},
    }
    job = Client(url, token).submit(spec, idempotency_key=f"demo-{iterations}-{seed}-{time.time_ns()}")
    _say(f"submitted adapt job {job['id']}: ST-DASegNet, NC Landsat-7 -> Olinda Landsat-7, {iterations} iterations")
    return job


def _follow(url: str, token: str, job_id: str) -> dict:
    from tqdm import tqdm

    from service.client import Client

    client = Client(url, token)
    with tqdm(total=100.0, desc="adapt", unit="%", dynamic_ncols=True,
              bar_format="{desc} {percentage:3.0f}%|{bar}| {postfix}") as bar:
        shown = None
        while True:
            j = client.job(job_id)
            step = f" {j['done']}/{j['total']}" if j.get("total") else ""
            now = (float(j.get("progress") or 0), f"{j['status']} {j.get('stage') or ''}{step}")
            if now != shown:  # redraw only on change: logs of scripted runs stay short
                bar.n = now[0]
                eta = f" eta {j['eta_s']:.0f}s" if j.get("eta_s") is not None else ""
                bar.set_postfix_str(now[1] + eta)
                shown = now
            if j["status"] in ("successful", "failed", "dismissed"):
                return j
            time.sleep(2.0)


def _print_results(url: str, token: str, job: dict) -> None:
    from service.client import Client

    res = Client(url, token).results(job["id"])
    typer.echo(f"\nJob {job['id']} successful.")
    bundle = res.get("bundle") or {}
    if bundle:
        typer.echo(f"Model bundle: {(bundle.get('links') or {}).get('model') or bundle.get('path')}")
    training = ((res.get("metrics") or {}).get("training") or {})
    if training.get("final_losses"):
        losses = ", ".join(f"{k} {v:.3f}" for k, v in training["final_losses"].items())
        typer.echo(f"Final training losses: {losses}")
    for p in res.get("predictions") or []:
        links = p.get("links") or p
        what = "class map" if p.get("kind", "classes") == "classes" else "class probabilities"
        typer.echo(f"\nOlinda {what} (COG): {p.get('name') or p.get('path')}")
        for key in ("download", "info", "statistics", "tilejson", "tiles", "tilejson_signed"):
            if links.get(key):
                typer.echo(f"  {key:<10} {links[key]}")
        if links.get("tilejson_signed"):
            typer.echo("  (tilejson_signed opens in QGIS, Leaflet or GDAL with no header, until its exp)")
    typer.echo(f"\nConsole:   {url}/#/jobs/{job['id']}  (paste the token below once)")
    typer.echo(f"API docs:  {url}/docs")
    typer.echo(f"Token:     {token}")
