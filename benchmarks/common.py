"""Set-up the benchmarks share: a free local port for the servers they start, and latency summaries."""
from __future__ import annotations

import socket

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
