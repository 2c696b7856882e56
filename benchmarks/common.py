"""Set-up the benchmarks share: a free local port for the servers they start, latency summaries, report plots."""
from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latency_summary(ms: list[float]) -> dict:
    """n, p50, p99, mean and max of latencies in milliseconds (None for each figure when there are none)."""
    a = np.asarray(ms, dtype=np.float64)
    if not len(a):
        return {"n": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    return {"n": int(len(a)), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "mean_ms": round(float(a.mean()), 2),
            "max_ms": round(float(a.max()), 2)}


@contextmanager
def saved_figure(path: str | Path, *subplots, dpi: int = 120, **subplots_kw) -> Iterator[tuple]:
    """``(fig, axes)`` of ``plt.subplots(*subplots, **subplots_kw)`` on the Agg backend (no screen here), laid out,
    written to ``path`` and closed when the block ends (closed without writing when it raises)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*subplots, **subplots_kw)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
