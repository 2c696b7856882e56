"""Settings come from GEOADAPT_* env vars, derive embedded defaults and refuse unsafe values."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings, redact_url, sqlalchemy_url


def test_env_prefix_and_colon_separated_roots(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.setenv("GEOADAPT_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GEOADAPT_ALLOWED_ROOTS", f"{a}:{b}")
    s = Settings()
    assert s.data_dir == (tmp_path / "state").resolve()
    assert s.allowed_roots == [a.resolve(), b.resolve()]
    # embedded defaults live under the data dir
    assert s.database_url == f"sqlite:///{s.data_dir / 'geoadapt.db'}"
    assert s.broker_url == f"sqla+sqlite:///{s.data_dir / 'broker.db'}"
    assert s.embedded_broker
    assert s.result_backend_url is None


def test_filesystem_root_and_relative_roots_are_refused(tmp_path):
    with pytest.raises(ValidationError, match="filesystem root"):
        Settings(data_dir=tmp_path, allowed_roots="/")
    with pytest.raises(ValidationError, match="absolute"):
        Settings(data_dir=tmp_path, allowed_roots="relative/dir")


def test_visibility_timeout_outlasts_the_longest_job(tmp_path):
    s = Settings(data_dir=tmp_path, job_soft_time_limit_s=100, job_hard_time_limit_s=200)
    assert s.visibility_timeout_s > s.job_hard_time_limit_s
    with pytest.raises(ValidationError, match="visibility_timeout_s"):
        Settings(data_dir=tmp_path, job_soft_time_limit_s=100, job_hard_time_limit_s=200, visibility_timeout_s=150)
    with pytest.raises(ValidationError, match="hard time limit|soft"):
        Settings(data_dir=tmp_path, job_soft_time_limit_s=300, job_hard_time_limit_s=200)


def test_urls_are_redacted_and_postgres_means_psycopg3():
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert sqlalchemy_url("postgresql://postgres@127.0.0.1/test") == "postgresql+psycopg://postgres@127.0.0.1/test"
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite:///x.db"
