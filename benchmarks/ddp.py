"""`geoadapt bench ddp`: training through the distributed path (``params.devices``) against the plain path.

The issue's measure: with one device, ``devices: 1`` (torch.distributed with one rank: every gradient
all-reduce, buffer broadcast, q gather and loss reduction done) against the plain path (``devices``
absent): the same loss curve, and a speed within 5 %. ``--devices 2`` (and more) adds runs on several
devices (GPUs, or CPU processes) for their speed; their loss curves differ by design (other batches).

Call flow of ``run_ddp_benchmark``::

    NC case of Benchmark A (source + shifted target, cached) -> one adapt job spec per variant
    for each round: for each variant (plain, devices: 1, devices: N ...): run_job, timing every iteration
    per variant: loss curve (first round), seconds per iteration (median after the warm-up iterations,
        the best round) -> report.json: curve difference to plain, speed ratio, verdicts
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from core.data.demo import benchmark_a_domains, ensure_shifted_target, shifted_target_path
from core.data.fetch import fetch
from core.data.nc import NC_CLASSES
from core.files import write_json
from core.jobspec import load_job_spec
from models.training.callbacks import Callback
from workers.pipelines.dispatch import run_job

#: the issue's bound on the distributed path's cost with one device
SPEED_TOLERANCE = 0.05
#: the largest relative difference per iteration between two loss curves still called the same (or twice the
#: plain path's own run-to-run difference, when that is larger: nondeterministic GPU kernels)
CURVE_TOLERANCE = 1e-4
PLAIN = "plain"


@dataclass
class DdpBenchSettings:
    iterations: int = 200
    warmup: int = 20               # iterations left out of the timing (start-up, allocator, cudnn autotune)
    batch_size: int = 8
    crop: int = 64
    config: str = "segformer-tiny"
    method: str = "st-dasegnet"    # the heaviest synchronisation: two optimisers, the q gather
    device: str | None = None      # cpu | cuda; None: cuda when there is one
    devices: list[int] = field(default_factory=lambda: [1])
    rounds: int = 2                # variants run in turn this many times; each variant's best round counts
    seed: int = 0
    threads: int = 1               # torch CPU threads of a CPU run (shared out among its ranks)


class IterationClock(Callback):
    """Wall time of every iteration (the loop reports after the step, whose losses it has read: synchronised)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.losses: list[dict[str, float]] = []
        self._last: float | None = None

    def on_start(self, iteration: int, total: int) -> None:
        self._last = time.perf_counter()

    def on_progress(self, progress) -> None:
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now
        self.losses.append(dict(progress.losses))


def _spec(s: DdpBenchSettings, domains: dict, out: Path, devices: int | None):
    params = {"iterations": s.iterations, "batch_size": s.batch_size, "crop": s.crop, "seed": s.seed,
              "predict_targets": False}
    if devices is not None:
        params["devices"] = devices
    body = {"type": "adapt", "method": s.method, "model": s.config, "classes": NC_CLASSES,
            "source": domains["source"], "target": domains["target"], "params": params, "output": str(out)}
    if s.method == "source-only":  # a train job: no target
        body.update(type="train")
        body.pop("target")
    return load_job_spec(body)


def curve_difference(a: list[dict], b: list[dict], key: str = "loss") -> dict:
    """How far loss curve ``b`` is from ``a``: the largest absolute and relative differences per iteration."""
    pairs = [(x[key], y[key]) for x, y in zip(a, b)]
    absd = [abs(x - y) for x, y in pairs]
    rel = [d / max(abs(x), 1e-12) for d, (x, _) in zip(absd, pairs)]
    return {"iterations": len(pairs), "max_abs": max(absd, default=0.0), "max_rel": max(rel, default=0.0),
            "identical": all(x == y for x, y in pairs)}


def run_ddp_benchmark(out: Path, s: DdpBenchSettings, *, log: Callable[[str], None] = print) -> dict:
    out = Path(out)
    device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
    files = fetch("nc-landsat", log=log)
    domains = benchmark_a_domains(files, ensure_shifted_target(files, shifted_target_path(None, 0), 0))
    variants: dict[str, int | None] = {PLAIN: None, **{f"devices-{n}": n for n in s.devices}}
    runs: dict[str, list[IterationClock]] = {name: [] for name in variants}
    load_at_start = os.getloadavg()
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(s.threads)
    try:
        for r in range(s.rounds):
            for name, n in variants.items():
                clock = IterationClock()
                log(f"round {r + 1}/{s.rounds}: {name} ({s.method}, {s.config}, {s.iterations} iterations, batch "
                    f"{s.batch_size}, crop {s.crop}, {device})")
                res = run_job(_spec(s, domains, out / "runs" / f"{name}-{r}", n), [clock], resume=False,
                              device=device)
                if res["status"] != "finished":
                    raise RuntimeError(f"{name}: the job ended {res['status']}")
                runs[name].append(clock)
    finally:
        torch.set_num_threads(threads)
    report = {"settings": {**asdict(s), "device": device,
                           "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None},
              "machine": {"cpus": os.cpu_count(), "load_at_start": load_at_start, "load_at_end": os.getloadavg()},
              "variants": {}}
    def spi(clock: IterationClock) -> float:
        return statistics.median(clock.times[s.warmup:] or clock.times)

    plain, plain_spi = runs[PLAIN][0].losses, min(spi(c) for c in runs[PLAIN])
    for name, clocks in runs.items():
        per_round = [spi(c) for c in clocks]
        entry = {"devices": variants[name], "sec_per_iter": min(per_round), "sec_per_iter_rounds": per_round,
                 "final_loss": clocks[0].losses[-1]["loss"]}
        if name != PLAIN:
            entry["curve_vs_plain"] = curve_difference(plain, clocks[0].losses)
            entry["speed_vs_plain"] = entry["sec_per_iter"] / plain_spi - 1.0  # > 0: slower
        report["variants"][name] = entry
    # the plain path against itself: on a GPU, kernels with atomic adds make two runs differ a little, and a
    # curve no further from plain than plain is from itself is the same curve
    floor = curve_difference(plain, runs[PLAIN][1].losses) if len(runs[PLAIN]) > 1 else None
    report["plain_rerun"] = floor
    one = report["variants"].get("devices-1")
    if one is not None:
        bound = max(CURVE_TOLERANCE, 2 * floor["max_rel"] if floor else 0.0)
        report["verdict"] = {
            "same_loss_curve": one["curve_vs_plain"]["max_rel"] <= bound,
            "speed_within_5pct": abs(one["speed_vs_plain"]) <= SPEED_TOLERANCE,
        }
    write_json(out / "report.json", report)
    return report

