"""Atomic file writes: temp file in the same folder, fsync, then rename, so nothing is half-written."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import IO, Any, Iterator
from contextlib import contextmanager


@contextmanager
def atomic_writer(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a file handle; on success the file appears at `path` whole, on error not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> Path:
    with atomic_writer(path, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
    return Path(path)
