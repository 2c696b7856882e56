"""`geoadapt example [NAME] [--out DIR] [--json]`: a ready job spec for the data `geoadapt data fetch` brings."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def example(
        name: Annotated[Optional[str], typer.Argument(help="nc-to-shifted-nc | nc-to-olinda | nc-feature-regression; "
                                                           "none: list them")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", help="write NAME.yaml (or .json) in this folder")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON, the body of POST /v1/jobs (for curl)")] = False,
    ) -> None:
        """Fetch the data an example needs if missing, then print (or write) its job spec with absolute file paths."""
        from core.data.examples import (EXAMPLES, example_paths, example_spec, example_yaml, fetch_example_data,
                                        get_example)

        if name is None:
            for ex in EXAMPLES.values():
                typer.echo(f"{ex.name}\t{ex.about}")
            return
        get_example(name)  # an unknown name: exit 2 naming the known ones, before any download
        root = fetch_example_data(name, log=lambda m: typer.echo(m, err=True))
        paths = example_paths(root.resolve())
        text = json.dumps(example_spec(name, paths), indent=2) + "\n" if as_json else example_yaml(name, paths)
        if out is None:
            typer.echo(text, nl=False)
            return
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{name}.{'json' if as_json else 'yaml'}"
        path.write_text(text)
        typer.echo(str(path))
