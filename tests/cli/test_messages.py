"""What the `geoadapt` command says, run as a user runs it (a subprocess) against a live API: how to fix a 401,
one word ("dismissed") for a dismissed job, bad specs named once per field, help rows that read as text."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from service.store import tokens
from service.store.db import session_scope

from tests.helpers import memory_app, served_in_thread, train_spec, write_tiny_scene


def geoadapt(*args, env: dict, columns: int | None = None) -> subprocess.CompletedProcess:
    """The command with `env` as its only GEOADAPT_ settings."""
    e = {**{k: v for k, v in os.environ.items() if not k.startswith("GEOADAPT_")}, **env}
    if columns:
        e["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "cli", *args], env=e, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The API under uvicorn in a thread (memory broker, no worker), a token and a tiny scene."""
    tmp = tmp_path_factory.mktemp("cli")
    app, root, img, lab = memory_app(tmp)
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s, name="cli")
    with served_in_thread(app) as port:
        yield dict(url=f"http://127.0.0.1:{port}", token=plain, tmp=tmp, img=img, lab=lab)


@pytest.mark.parametrize("token", [None, "ga_not_a_token"], ids=["no-token", "unknown-token"])
def test_a_401_says_how_to_give_a_token(live, token):
    env = {"GEOADAPT_URL": live["url"], **({"GEOADAPT_TOKEN": token} if token else {})}
    r = geoadapt("jobs", env=env)
    assert r.returncode == 2, r.stderr
    assert "HTTP 401" in r.stderr and "GEOADAPT_TOKEN" in r.stderr and "geoadapt token create" in r.stderr, r.stderr


def test_a_dismissed_job_is_dismissed_in_every_word_the_cli_prints(live):
    env = {"GEOADAPT_URL": live["url"], "GEOADAPT_TOKEN": live["token"]}
    spec = live["tmp"] / "job.yaml"
    spec.write_text(yaml.safe_dump(train_spec(live["img"], live["lab"])))
    job_id = geoadapt("submit", str(spec), env=env).stdout.split()[-1]
    said = geoadapt("dismiss", job_id, env=env).stdout  # queued (no worker): dismissed at once
    assert said.strip() == f"{job_id}: dismissed"
    shown = geoadapt("status", job_id, env=env).stdout
    assert "dismissed" in shown and "cancel" not in shown, shown
    assert "dismissed" in geoadapt("jobs", "--status", "dismissed", env=env).stdout
    # the old command name still works, and says the same
    again = geoadapt("cancel", job_id, env=env)
    assert again.returncode == 2 and "already ended (dismissed)" in again.stderr


def test_a_bad_spec_names_each_field_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"type": "train", "classes": [], "params": {"iterations": "30"}, "output": "x"}))
    r = geoadapt("run", str(bad), env={})
    assert r.returncode == 2
    assert "classes: List should have at least 1 item" in r.stderr and "classes: classes" not in r.stderr, r.stderr
    assert "params.iterations: Input should be a valid integer" in r.stderr, r.stderr


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_method_the_job_type_does_not_take_is_exit_2_naming_it(tmp_path, command):
    img, lab = write_tiny_scene(tmp_path / "scene")
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({**train_spec(img, lab, method="st-dasegnet"), "output": str(tmp_path / "out")}))
    r = geoadapt(command, str(spec), env={"GEOADAPT_URL": "http://127.0.0.1:9"})  # refused before any request
    assert r.returncode == 2, r.stderr
    assert "method: a train job trains a plain segmentor (source-only); use type 'adapt' for st-dasegnet" in r.stderr
    assert not (tmp_path / "out").exists()


def _rows(help_text: str) -> list[list[str]]:
    """The rows of every Commands panel, each as its lines' text (a row's first line names the command)."""
    rows, inside = [], False
    for line in help_text.splitlines():
        if line.startswith("╭") and "Commands" in line:
            inside = True
        elif line.startswith("╰"):
            inside = False
        elif inside and line.startswith("│"):
            body = line[1:-1]
            if body[1:2].strip():
                rows.append([body])
            elif rows:
                rows[-1].append(body)
    return rows


@pytest.mark.parametrize("group", [[], ["data"], ["bench"], ["token"]], ids=["geoadapt", "data", "bench", "token"])
def test_help_rows_break_only_where_the_next_word_does_not_fit(group):
    text = geoadapt(*group, "--help", env={}, columns=100).stdout
    rows = _rows(text)
    assert len(rows) >= 3, text
    for row in rows:
        for line, following in zip(row, row[1:]):
            free = len(line) - len(line.rstrip()) - 1  # the panel's right padding is no room for text
            next_word = following.split()[0]
            assert free < len(next_word) + 1, f"a row broken early:\n{line}\n{following}"
