"""Service settings: one object per process, read from GEOADAPT_* env vars by the entry point.

Created by the app factory (`create_app`), the worker entry point and the CLI commands; never at
import. The defaults are the embedded mode (SQLite job store, Celery over SQLAlchemy/SQLite, state
under one data folder); production points `database_url` at PostgreSQL and `broker_url` at Redis.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.task_names import EMBEDDED_BROKER_POLL_S


def default_data_dir() -> Path:
    """~/.local/share/geoadapt (XDG), or ./.geoadapt when there is no usable home folder."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    try:
        probe = base
        while not probe.exists() and probe != probe.parent:  # first existing ancestor
            probe = probe.parent
        if os.access(probe, os.W_OK):
            return base / "geoadapt"
    except (RuntimeError, OSError):  # no home directory at all (some containers)
        pass
    return Path.cwd() / ".geoadapt"


class Settings(BaseSettings):
    """Every knob of the API, the job store and the workers."""

    model_config = SettingsConfigDict(env_prefix="GEOADAPT_", extra="ignore", validate_default=True)

    data_dir: Path = Field(default_factory=default_data_dir, description="jobs, uploads, SQLite files")
    #: folders clients may name input paths under (env: colon-separated); empty = uploads only
    allowed_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    #: job store; default sqlite:///<data_dir>/geoadapt.db
    database_url: str | None = None
    #: Celery broker; default the SQLAlchemy transport on sqlite:///<data_dir>/broker.db
    broker_url: str | None = None
    #: Celery result backend: the job store is the source of truth, so none by default
    result_backend: Literal["none", "db"] = "none"

    # limits -----------------------------------------------------------------------------------
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1)
    max_json_bytes: int = Field(default=1024**2, ge=1024, description="largest JSON request body")
    rate_limit_per_minute: int = Field(
        default=60, ge=0, description="writes (submit, upload, register) per token per minute; 0 = off"
    )
    max_page_size: int = Field(default=200, ge=1)
    #: bytes each token's jobs and uploads may take on disk; 0 = no quota (service/usage.py)
    storage_quota_bytes: int = Field(default=0, ge=0)

    # workers ----------------------------------------------------------------------------------
    job_soft_time_limit_s: int = Field(default=24 * 3600, ge=10)
    job_hard_time_limit_s: int = Field(default=24 * 3600 + 600, ge=20)
    #: Redis redelivers an unacknowledged job after this; longer than any job, so never while it runs
    visibility_timeout_s: int | None = None
    #: a running job whose worker has not written a heartbeat for this long is started again
    orphan_after_s: int = Field(default=300, ge=10)
    heartbeat_interval_s: float = Field(default=15.0, gt=0)
    #: a job whose worker is lost this many times (OOM, kill, hard time limit) fails for good
    max_attempts: int = Field(default=5, ge=1)
    worker_concurrency: int = Field(default=1, ge=1)
    #: seconds between a worker's looks at the embedded broker's empty queues: the wait of work queued on an idle
    #: worker against a few SQLite reads per look (workers.embedded_broker); Redis needs none
    broker_poll_s: float = Field(default=EMBEDDED_BROKER_POLL_S, ge=0.01, le=5.0)
    #: CPU cores one job worker's predictions use (streams x torch threads); default: every core it may run on.
    #: `serve --workers N` gives each of its job workers cores / N
    worker_cores: int | None = Field(default=None, ge=1)
    #: a prediction over more output pixels than this goes in shards (one per this many pixels) that every
    #: worker helps with; a job's params.shards decides instead when given. 0: only on request
    shard_pixels: int = Field(default=64 * 1024 * 1024, ge=0)
    #: a job that succeeded keeps its resume checkpoints (by default only its bundle and results stay)
    keep_checkpoints: bool = False

    # HTTP -------------------------------------------------------------------------------------
    #: base URL used in links (behind a proxy); default: the URL the request came in on
    public_url: str | None = None
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After on 503")
    #: how long a signed tile URL (tilejson `tiles`, for clients that cannot send a header) stays valid
    tile_url_ttl: int = Field(default=3600, ge=10, le=7 * 86400, description="seconds")
    #: the HMAC key of signed tile URLs; unset: one generated once and kept in the state folder
    tile_url_secret: SecretStr | None = None
    #: web origins whose pages may call the API from the browser (CORS; env: comma-separated, "*" = any);
    #: empty = none (same-origin only, e.g. the console). Credentials travel as bearer tokens or signed URLs,
    #: never cookies, so no origin is ever sent Allow-Credentials
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, v):
        if isinstance(v, str):
            v = [p for p in v.split(os.pathsep) if p.strip()]
        return v

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v):
        if isinstance(v, str):
            v = [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("cors_origins")
    @classmethod
    def _bare_origins(cls, v: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        for o in v:
            if o == "*":
                continue
            u = urlsplit(o)
            if u.scheme not in ("http", "https") or not u.netloc or u.path not in ("", "/") or u.query:
                raise ValueError(f"CORS origin {o!r} is not an origin like https://maps.example.org (scheme, "
                                 "host and port only) or '*'")
        return [o.rstrip("/") for o in v]

    @field_validator("allowed_roots")
    @classmethod
    def _safe_roots(cls, v: list[Path]) -> list[Path]:
        out = []
        for p in v:
            p = p.expanduser()
            if not p.is_absolute():
                raise ValueError(f"allowed root must be an absolute path, got {str(p)!r}")
            r = p.resolve()
            # fail fast: a root of "/" would let clients read every file the service can
            if r == Path(r.anchor):
                raise ValueError("the filesystem root cannot be an allowed root")
            out.append(r)
        return out

    @field_validator("data_dir")
    @classmethod
    def _abs_data_dir(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _derived(self) -> "Settings":
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'geoadapt.db'}"
        if self.broker_url is None:
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        if self.visibility_timeout_s is None:
            self.visibility_timeout_s = self.job_hard_time_limit_s + 3600
        if self.job_hard_time_limit_s <= self.job_soft_time_limit_s:
            raise ValueError("job_hard_time_limit_s must be longer than job_soft_time_limit_s")
        if self.visibility_timeout_s <= self.job_hard_time_limit_s:
            raise ValueError("visibility_timeout_s must be longer than the hard time limit of a job")
        return self

    # derived paths ----------------------------------------------------------------------------
    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    def job_dir(self, job_id) -> Path:
        return self.jobs_dir / str(job_id)

    def dataset_dir(self, dataset_id) -> Path:
        return self.datasets_dir / str(dataset_id)

    @property
    def override_catalogue(self) -> Path:
        """Written by each worker at start (models/overrides.py): what submit checks model.overrides against."""
        return self.data_dir / "override-catalogue.json"

    @property
    def result_backend_url(self) -> str | None:
        if self.result_backend == "none":
            return None
        return "db+" + sqlalchemy_url(self.database_url or "")

    @property
    def embedded_broker(self) -> bool:
        return (self.broker_url or "").startswith("sqla+")

    @property
    def broker_transport_options(self) -> dict:
        """Celery's broker_transport_options, the same for the API's producers and the workers."""
        if self.embedded_broker:
            # the SQL transport hands these to create_engine: wait on SQLite's lock, do not fail
            return {"connect_args": {"timeout": 30}}
        # Redis: an unacknowledged job is redelivered after the visibility timeout, so it must outlast
        # the longest job or a running job would start twice
        return {"visibility_timeout": self.visibility_timeout_s}

    @property
    def tile_result_backend_url(self) -> str:
        """Where tile workers put their short statuses and the API polls for them (one rule for both):
        the broker itself when it is Redis; a SQLite file of its own under the data dir with the
        embedded broker; else the jobs' result database, or that SQLite file when there is none."""
        broker = self.broker_url or ""
        sqlite = f"db+sqlite:///{self.data_dir / 'tile-results.db'}"
        if broker.startswith(("redis://", "rediss://", "redis+socket://")):
            return broker
        if self.embedded_broker:
            return sqlite
        return self.result_backend_url or sqlite

    @property
    def state_files(self) -> list[Path]:
        """The SQLite files of the store, the embedded broker and the tile results, with their journals:
        state like the data folder, wherever the URLs put them (clients may never name them)."""
        files = []
        for url in (self.database_url, self.broker_url, self.tile_result_backend_url):
            _, sqlite, rest = (url or "").partition("sqlite:///")
            path = rest.split("?", 1)[0]
            if sqlite and path:
                db = Path(path)
                files += [db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal"))]
        return files

    def roots_over_state(self) -> list[Path]:
        """Allowed roots that contain the data folder or lie inside it (paths there are refused all the same)."""
        return [r for r in self.allowed_roots if self.data_dir.is_relative_to(r) or r.is_relative_to(self.data_dir)]

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.jobs_dir, self.datasets_dir):
            d.mkdir(parents=True, exist_ok=True)

    def redacted(self) -> dict:
        """For logs and /health: no passwords in URLs."""
        d = self.model_dump(mode="json")
        for k in ("database_url", "broker_url"):
            d[k] = redact_url(d[k])
        return d


def sqlalchemy_url(url: str) -> str:
    """Plain postgresql:// URLs mean psycopg 3 (the driver we install), not psycopg2."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def redact_url(url: str | None) -> str | None:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"
