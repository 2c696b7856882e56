"""`geoadapt token create|revoke|list`: API tokens, written straight into the job store."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="API tokens (stored hashed; shown once at creation).", no_args_is_help=True)

DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="state folder (default GEOADAPT_DATA_DIR)")]


def _sessions(data_dir: Path | None):
    from service.settings import Settings
    from service.store.db import init_db, make_engine, session_factory

    settings = Settings(data_dir=data_dir) if data_dir else Settings()
    settings.ensure_dirs()
    engine = make_engine(settings.database_url)
    init_db(engine)
    return session_factory(engine)


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="who or what uses it")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="sees and manages every job")] = False,
    data_dir: DataDir = None,
) -> None:
    """Create a token; it is printed once, as the last word of the last line."""
    from service.store import tokens
    from service.store.db import session_scope

    with session_scope(_sessions(data_dir)) as s:
        rec, plain = tokens.create_token(s, name=name, admin=admin)
        tid = rec.id
    typer.echo(f"created {'admin ' if admin else ''}token {tid}{f' ({name})' if name else ''}; "
               "it is not stored in plain text and will not be shown again")
    typer.echo(f"token: {plain}")


@app.command("revoke")
def revoke(token: Annotated[str, typer.Argument(help="the token or its id (the part after 'ga_')")],
           data_dir: DataDir = None) -> None:
    """Revoke a token: requests with it get 401 from now on."""
    from service.store import tokens
    from service.store.db import session_scope

    with session_scope(_sessions(data_dir)) as s:
        rec = tokens.revoke_token(s, token)
        tid = rec.id
    typer.echo(f"revoked token {tid}")


@app.command("list")
def list_(data_dir: DataDir = None) -> None:
    """List tokens (ids and names only)."""
    from service.store import tokens

    with _sessions(data_dir)() as s:
        for t in tokens.list_tokens(s):
            flags = ",".join(f for f, on in (("admin", t.admin), ("revoked", t.revoked)) if on) or "-"
            typer.echo(f"{t.id}\t{flags}\t{t.created_at:%Y-%m-%d %H:%M}\t{t.name}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="token")
