"""The server's own folders stay out of what clients read: a path under the state folder is shown relative
to it (`jobs/<id>/output/bundle`, `datasets/<id>/image.tif`), which specs may name in turn (service/paths.py).

Paths a client named under an allowed root are the client's and are shown as given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def hide(value: Any, data_dir: Path) -> Any:
    """`value` (text, or JSON-like data holding text) with every path under `data_dir` made relative to it."""
    prefixes = sorted({f"{Path(data_dir)}/", f"{Path(data_dir).resolve()}/"}, key=len, reverse=True)

    def text(s: str) -> str:
        for prefix in prefixes:
            s = s.replace(prefix, "")
        return s

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            return text(v)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    return walk(value)
