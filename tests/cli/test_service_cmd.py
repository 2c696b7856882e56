"""The embedded default from the outside: `geoadapt token create`, `geoadapt serve`, and the client
commands submit / status / wait / jobs / results / usage / cancel / delete, on a real NC training job."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from tests.helpers import wait_until_workers_ok

pytestmark = pytest.mark.integration


def _ga(*args, env, timeout=120, check=True):
    r = subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"geoadapt {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path, nc_data):
    port = _free_port()
    env = {**os.environ, "GEOADAPT_DATA_DIR": str(tmp_path / "state"),
           "GEOADAPT_ALLOWED_ROOTS": f"{tmp_path}:{nc_data['strata'].parent}",
           "GEOADAPT_HEARTBEAT_INTERVAL_S": "1", "OMP_NUM_THREADS": "1"}
    token = _ga("token", "create", "--name", "cli", env=env).stdout.strip().splitlines()[-1].split()[-1]
    env.update(GEOADAPT_URL=f"http://127.0.0.1:{port}", GEOADAPT_TOKEN=token)
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = env["GEOADAPT_URL"]
    wait_until_workers_ok(url, proc, tmp_path / "serve.log")
    yield env, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _write_spec(path, nc_data, nc_bands, nc_classes, iterations):
    spec = {"type": "train", "model": "segformer-tiny",
            "classes": [json.loads(c.model_dump_json()) for c in nc_classes],
            "source": {"scenes": [{"bands": [os.path.relpath(p, path.parent) for p in nc_bands],
                                   "labels": os.path.relpath(nc_data["strata"], path.parent)}],
                       "region": {"columns": [0.0, 0.5]}},
            "params": {"iterations": iterations, "batch_size": 2, "crop": 32}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def test_token_create_prints_the_token_last_and_revoke_works(tmp_path):
    env = {**os.environ, "GEOADAPT_DATA_DIR": str(tmp_path / "state")}
    out = _ga("token", "create", "--admin", "--name", "ops", env=env).stdout
    token = out.strip().splitlines()[-1].split()[-1]
    assert token.startswith("ga_") and "admin" in out
    listed = _ga("token", "list", env=env).stdout
    assert "ops" in listed and token not in listed
    _ga("token", "revoke", token.split("_")[1], env=env)
    assert "revoked" in _ga("token", "list", env=env).stdout
    assert _ga("token", "revoke", "nope", env=env, check=False).returncode == 2


@pytest.mark.slow
def test_serve_submit_wait_results_cancel_stop(served, tmp_path, nc_data, nc_bands, nc_classes):
    env, proc = served
    # relative paths in the YAML mean "next to the spec file"; the client makes them absolute
    spec = _write_spec(tmp_path / "specs" / "job.yaml", nc_data, nc_bands, nc_classes, iterations=20)
    jid = _ga("submit", str(spec), "--idempotency-key", "k", env=env).stdout.split()[-1]
    assert _ga("submit", str(spec), "--idempotency-key", "k", env=env).stdout.split()[-1] == jid
    w = _ga("wait", jid, "--interval", "0.5", "--timeout", "120", env=env, timeout=150)
    assert "successful" in w.stdout
    res = json.loads(_ga("results", jid, env=env).stdout)
    assert res["bundle"]["metadata"]["band_count"] == 6
    assert jid in _ga("jobs", env=env).stdout
    assert "successful" in _ga("status", jid, env=env).stdout
    used = _ga("usage", env=env).stdout
    assert "used (no quota)" in used and "jobs: 1 (" in used and "uploads: 0 (0 B)" in used, used
    assert json.loads(_ga("usage", "--json", env=env).stdout)["jobs_bytes"] > 0
    # dismiss (or its old name, cancel) does not reach an ended job (the API's DELETE would delete it)
    r = _ga("cancel", jid, env=env, check=False)
    assert r.returncode == 2 and "already ended (successful)" in r.stderr and "geoadapt delete" in r.stderr

    # an adabn job from that model named by its id: the client leaves a model id for the server to resolve
    adabn = yaml.safe_load(spec.read_text())
    target = {**adabn.pop("source"), "region": {"columns": [0.5, 1.0]}}
    adabn.update(type="adapt", method="adabn", bundle=jid, target=target,
                 params={"batches": 3, "batch_size": 2, "crop": 32})
    del adabn["model"]
    (tmp_path / "specs" / "adabn.yaml").write_text(yaml.safe_dump(adabn))
    aid = _ga("submit", str(tmp_path / "specs" / "adabn.yaml"), env=env).stdout.split()[-1]
    assert "successful" in _ga("wait", aid, "--interval", "0.5", "--timeout", "120", env=env, timeout=150).stdout
    meta = json.loads(_ga("results", aid, env=env).stdout)["bundle"]["metadata"]
    assert meta["method"] == "adabn" and meta["provenance"]["batches"] == 3

    long = _write_spec(tmp_path / "specs" / "long.yaml", nc_data, nc_bands, nc_classes, iterations=20000)
    lid = _ga("submit", str(long), env=env).stdout.split()[-1]
    for _ in range(120):
        if json.loads(_ga("status", lid, "--json", env=env).stdout).get("done"):
            break
        time.sleep(0.5)
    r = _ga("delete", lid, env=env, check=False)  # delete does not dismiss a running job
    assert r.returncode == 2 and "is running" in r.stderr, r.stderr
    assert "dismissal requested" in _ga("dismiss", lid, env=env).stdout
    r = _ga("wait", lid, "--interval", "0.5", "--timeout", "60", env=env, check=False, timeout=90)
    assert r.returncode == 1 and "dismissed" in r.stdout
    shown = _ga("status", lid, env=env).stdout
    assert "dismissed" in shown and "cancel" not in shown  # the API's word, in the status and its message
    assert "deleted" in _ga("delete", lid, env=env).stdout
    assert lid not in _ga("jobs", env=env).stdout and jid in _ga("jobs", env=env).stdout
    assert _ga("status", lid, env=env, check=False).returncode == 2
    assert "jobs: 2 (" in _ga("usage", env=env).stdout  # the training job and the adabn job from its model

    # a bad spec is refused before it leaves the client; a path outside the roots by the server
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"type": "train", "classes": [], "output": "x"}))
    assert _ga("submit", str(bad), env=env, check=False).returncode == 2
    esc = yaml.safe_load(spec.read_text())
    esc["source"]["scenes"][0]["labels"] = "/etc/hostname"
    (tmp_path / "esc.yaml").write_text(yaml.safe_dump(esc))
    r = _ga("submit", str(tmp_path / "esc.yaml"), env=env, check=False)
    assert r.returncode == 2 and "source.scenes.0.labels" in r.stderr

    # stopping serve stops its worker too
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
        children = [int(p) for p in fh.read().split()]
    assert children, "serve runs a worker process"
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_serve_checks_model_overrides_from_its_first_request(tmp_path, nc_data, nc_bands, nc_classes):
    """The embedded worker writes the catalogue of keys a model reads; `serve` opens the API only once it is
    there, so a submission made the moment /health answers is checked like any later one (it was accepted
    then, and failed only when the job ran)."""
    port = _free_port()
    env = {**os.environ, "GEOADAPT_DATA_DIR": str(tmp_path / "state"),
           "GEOADAPT_ALLOWED_ROOTS": f"{tmp_path}:{nc_data['strata'].parent}", "OMP_NUM_THREADS": "1"}
    token = _ga("token", "create", "--name", "first", env=env).stdout.strip().splitlines()[-1].split()[-1]
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port), "--log-level",
                             "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        spec = yaml.safe_load(_write_spec(tmp_path / "job.yaml", nc_data, nc_bands, nc_classes, 2).read_text())
        spec["source"]["scenes"][0].update(bands=[str(p) for p in nc_bands], labels=str(nc_data["strata"]))
        spec["model"] = {"config": "segformer-tiny", "overrides": {"no_such_key_anywhere": 1}}
        r = httpx.post(f"{url}/v1/jobs", json=spec, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert r.status_code == 422 and "no_such_key_anywhere" in r.text, r.text
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
