"""Schemathesis against a live `geoadapt serve` (create_app under uvicorn): generated and mutated requests
to every operation of the OpenAPI document, aimed part of the time at ids of real objects, and part of the
time carrying what once made 500s (service/schemathesis_hooks.py: path components over 255 bytes, 500-level
nesting, empty headers, some grafted onto a valid job or dataset); none may get a 5xx. A short budget here;
`geoadapt bench security` runs it longer."""
from __future__ import annotations

import pytest

from benchmarks.common import free_port
from benchmarks.security import prepare, run_schemathesis, schemathesis_bin, start_server, stop_server

pytestmark = pytest.mark.slow


def test_schemathesis_finds_no_server_error(tmp_path):
    if schemathesis_bin() is None:
        pytest.fail("schemathesis is part of the test extra: pip install -e '.[test]'")
    world = prepare(tmp_path / "w", clients=1)
    port = free_port()
    proc = start_server(world, port, log=tmp_path / "serve.log")
    try:
        r = run_schemathesis(f"http://127.0.0.1:{port}", world, max_examples=10, max_time=40,
                             log=tmp_path / "schemathesis.log")
    finally:
        stop_server(proc)
    log = (tmp_path / "schemathesis.log").read_text(errors="replace")
    assert r["cases"] and r["cases"] > 200, log[-3000:]
    assert not r["server_error_lines"], "\n".join(r["server_error_lines"]) + "\n" + log[-6000:]
    # a crash of schemathesis itself (an "error") is not the service's; a failed check is
    assert "failure" not in r["summary"], log[-6000:]
    tracebacks = (tmp_path / "serve.log").read_text(errors="replace").count("Traceback")
    assert tracebacks == 0, (tmp_path / "serve.log").read_text(errors="replace")[-4000:]
