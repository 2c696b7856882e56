"""The `geoadapt` command: one Typer app, each command group in its own module.

Command modules import heavy parts (torch, models, workers) inside the command body only, so
`geoadapt --help` and the service commands stay fast.
"""
from __future__ import annotations

import inspect
import sys

import typer

from core.errors import GeoadaptError
from cli import (bench_cmd, data_cmd, demo_cmd, example_cmd, export_cmd, labels_cmd, local_cmd, predict_cmd,
                         service_cmd, weights_cmd)

app = typer.Typer(
    name="geoadapt",
    help="Cross-domain semantic segmentation of remote-sensing imagery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(weights_cmd.app, name="weights")
app.add_typer(labels_cmd.app, name="labels")  # suggest windows to label; consensus of several annotators
local_cmd.register(app)
predict_cmd.register(app)
export_cmd.register(app)  # a bundle's network as ONNX
demo_cmd.register(app)
example_cmd.register(app)  # ready specs for the fetched data
service_cmd.register(app)  # serve, worker, token, submit/status/wait/dismiss/delete/results/jobs/usage


def _paragraphs(doc: str) -> list[str]:
    """A docstring's paragraphs, each on one line: the source's line breaks are not the terminal's."""
    return [" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n") if p.strip()]


def unwrap_help(typer_app: typer.Typer) -> None:
    """Help from docstrings re-flowed: the command list shows each command's first paragraph on one row
    (Typer kept the docstring's line breaks there, splitting sentences across rows), `--help` all of them."""
    for info in typer_app.registered_commands:
        doc = info.help or inspect.getdoc(info.callback) or ""
        paragraphs = _paragraphs(doc)
        if paragraphs:
            info.help = "\n\n".join(paragraphs)
            info.short_help = info.short_help or paragraphs[0]
    for group in typer_app.registered_groups:
        unwrap_help(group.typer_instance)


unwrap_help(app)

#: exit status for input a user can fix (bad spec, bad raster); 1 stays for unexpected failures
EXIT_BAD_INPUT = 2


def main() -> None:
    try:
        app()
    except GeoadaptError as e:
        typer.secho(f"error ({e.code}): {e}", err=True, fg="red")
        sys.exit(EXIT_BAD_INPUT)
