"""Confinement of client paths: allowed roots, plus the caller's own job and dataset folders.

A path is accepted when it is absolute (or `jobs/<id>/...`, `datasets/<id>/...`: relative to the state
folder, as the API shows those), has no '..' part, and its real location (symlinks
resolved) lies under an allowed root, or under `<data_dir>/jobs/<id>` / `<data_dir>/datasets/<id>`
of a job/dataset the caller owns (so a predict job can use the bundle of an earlier train job,
and a job can read an uploaded dataset). The service's state (the data folder and the store's
files) is refused outside those owned folders whatever the roots say: a root that covers the data
folder must not let one token read another's jobs, uploads or the job store. The check happens
before any existence test, so the answer does not reveal whether a file outside the roots exists.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

from core.jobspec import check_path_length

#: (kind, id) -> whether the caller owns that job ("jobs") or dataset ("datasets")
OwnsFn = Callable[[str, uuid.UUID], bool]


class PathPolicy:
    def __init__(self, roots: list[Path], data_dir: Path | None = None, owns: OwnsFn | None = None,
                 extra: list[Path] | None = None, state_files: list[Path] | None = None):
        """``state_files``: files of the service's state outside ``data_dir`` (a SQLite store elsewhere)."""
        self.roots = [Path(r).resolve() for r in roots]
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.owns = owns
        self.extra = [Path(p).resolve() for p in (extra or [])]
        self.state = [p for p in [self.data_dir, *(Path(f).resolve() for f in state_files or [])] if p is not None]

    def _owned_area(self, real: Path) -> bool:
        if self.data_dir is None or self.owns is None:
            return False
        for kind in ("jobs", "datasets"):
            base = self.data_dir / kind
            if real.is_relative_to(base) and real != base:
                part = real.relative_to(base).parts[0]
                try:
                    ident = uuid.UUID(part)
                except ValueError:
                    return False
                return str(ident) == part and self.owns(kind, ident)
        return False

    def resolve(self, path: str | Path) -> Path:
        """The real path if allowed; ValueError (which the spec loader turns into a field error)."""
        check_path_length(path)
        p = Path(path)
        if not p.is_absolute() and self.data_dir is not None and p.parts[:1] in (("jobs",), ("datasets",)):
            p = self.data_dir / p  # as the API shows a job's or an upload's files (service/api/server_paths.py)
        if not p.is_absolute():
            raise ValueError("paths must be absolute (a folder under an allowed root), or jobs/<id>/... or "
                             "datasets/<id>/... as the API shows them")
        if ".." in p.parts:
            raise ValueError("'..' is not allowed in paths")
        try:
            real = p.resolve(strict=False)  # follows symlinks: a link out of a root is refused
        except (OSError, RuntimeError, ValueError):
            raise ValueError("cannot resolve this path") from None
        if any(real.is_relative_to(e) for e in self.extra) or self._owned_area(real):
            return real
        if any(real.is_relative_to(s) for s in self.state):
            raise ValueError("path is inside the service's state folder (jobs, uploads, job store), where only "
                             "the folders of your own jobs and uploads may be named")
        if any(real.is_relative_to(r) for r in self.roots):
            return real
        raise ValueError("path is outside the allowed roots")

    __call__ = resolve
