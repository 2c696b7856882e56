"""The callback interface between the training loop and whoever runs it (CLI, Celery worker, benchmark).

The loop calls, in order: ``on_start``; per iteration ``on_progress``; after a validation
``on_validation``; after writing a checkpoint ``on_checkpoint``; ``on_end`` with the result.
After every iteration it asks ``should_stop()``; if any callback says yes, the loop writes a
checkpoint and returns (cooperative cancel: the job can later resume from that checkpoint).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence


@dataclass
class Progress:
    iteration: int                  # iterations completed
    total: int
    losses: dict[str, float]
    lr: dict[str, float]
    elapsed_s: float
    eta_s: float | None             # None until a few iterations have been timed
    sec_per_iter: float | None = None
    stage: str = "training"         # what the iterations are (an adabn job's are batches of statistics)

    @property
    def fraction(self) -> float:
        return self.iteration / self.total if self.total else 1.0


@dataclass
class LoopResult:
    iterations_done: int
    total: int
    stopped: bool                   # True when a callback asked to stop before the end
    last_checkpoint: Path | None
    best: dict | None               # {"iteration", "metric", "value", "path"} when validated
    validations: list[dict] = field(default_factory=list)
    final_losses: dict[str, float] = field(default_factory=dict)
    late_losses: dict[str, float] = field(default_factory=dict)  # each loss's mean over the last tenth
    elapsed_s: float = 0.0          # training time of the job, summed over the runs of a resumed one
    code: list[dict] = field(default_factory=list)  # core.code_version of each run that trained it, in order

    @property
    def finished(self) -> bool:
        return self.iterations_done >= self.total


class Callback:
    """Override what you need; every hook is optional."""

    def on_start(self, iteration: int, total: int) -> None: ...

    def on_progress(self, progress: Progress) -> None: ...

    def on_validation(self, iteration: int, metrics: dict, is_best: bool) -> None: ...

    def on_checkpoint(self, iteration: int, path: Path, kind: str) -> None: ...  # kind: "last" | "best"

    def should_stop(self) -> bool:
        return False

    def on_end(self, result: LoopResult) -> None: ...

    # stages after the loop (predicting target scenes): windows done of total, total None at start
    def on_stage(self, stage: str, done: int | None = None, total: int | None = None) -> None: ...


class CallbackList(Callback):
    def __init__(self, callbacks: Iterable[Callback] | None = None):
        self.callbacks: list[Callback] = [c for c in (callbacks or []) if c is not None]

    def on_start(self, iteration, total):
        for c in self.callbacks:
            c.on_start(iteration, total)

    def on_progress(self, progress):
        for c in self.callbacks:
            c.on_progress(progress)

    def on_validation(self, iteration, metrics, is_best):
        for c in self.callbacks:
            c.on_validation(iteration, metrics, is_best)

    def on_checkpoint(self, iteration, path, kind):
        for c in self.callbacks:
            c.on_checkpoint(iteration, path, kind)

    def should_stop(self) -> bool:
        return any(c.should_stop() for c in self.callbacks)

    def on_end(self, result):
        for c in self.callbacks:
            c.on_end(result)


class StopFlag(Callback):
    """Cooperative stop from another thread or a signal handler: call ``set()``."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def should_stop(self) -> bool:
        return self._event.is_set()


class StopAfter(Callback):
    """Stop once ``iterations`` have been completed (tests, time-boxed runs)."""

    def __init__(self, iterations: int):
        self.iterations = iterations
        self._done = 0

    def on_progress(self, progress: Progress) -> None:
        self._done = progress.iteration

    def should_stop(self) -> bool:
        return self._done >= self.iterations


class History(Callback):
    """Keeps every progress report and validation in memory (tests, benchmark curves)."""

    def __init__(self) -> None:
        self.progress: list[Progress] = []
        self.validations: list[tuple[int, dict]] = []

    def on_progress(self, progress: Progress) -> None:
        self.progress.append(progress)

    def on_validation(self, iteration: int, metrics: dict, is_best: bool) -> None:
        self.validations.append((iteration, metrics))

    def losses(self, key: str = "loss") -> list[float]:
        return [p.losses[key] for p in self.progress if key in p.losses]


class HistoryFile(Callback):
    """Appends the loss curve and validations to a JSON-lines file beside the job's outputs
    (``<output>/history.jsonl``), which the console plots while the job runs.

    One line per ``every`` iterations: {"iteration", "losses", "lr"}; one per validation:
    {"iteration", "validation": {"miou", "oa", "mf1"}}. On resume, lines past the checkpoint's
    iteration are dropped, since those iterations run again.
    """

    def __init__(self, path: Path, every: int | None = None) -> None:
        self.path = Path(path)
        self.every = every

    def on_start(self, iteration: int, total: int) -> None:
        import json

        if self.every is None:
            self.every = max(1, total // 500)  # at most ~500 points whatever the schedule
        kept = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("iteration", 0) <= iteration:
                        kept.append(line)
                except ValueError:
                    continue  # a line cut by a crash
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(k + "\n" for k in kept))

    def _append(self, record: dict) -> None:
        import json

        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_progress(self, progress: Progress) -> None:
        if progress.iteration % (self.every or 1) == 0 or progress.iteration == progress.total:
            self._append({"iteration": progress.iteration,
                          "losses": {k: round(float(v), 6) for k, v in progress.losses.items()},
                          "lr": {k: float(v) for k, v in progress.lr.items()}})

    def on_validation(self, iteration: int, metrics: dict, is_best: bool) -> None:
        summary = {k: metrics.get(k) for k in ("miou", "oa", "mf1")}
        self._append({"iteration": iteration, "validation": summary, "best": bool(is_best)})


class TqdmProgress(Callback):
    """A terminal progress bar showing the main losses, lr and ETA."""

    def __init__(self, desc: str = "training", keys: Sequence[str] = ("loss",), **tqdm_kwargs):
        self.desc, self.keys, self.kwargs = desc, tuple(keys), tqdm_kwargs
        self.bar = None

    def on_start(self, iteration: int, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=iteration, desc=self.desc, dynamic_ncols=True, **self.kwargs)

    def on_progress(self, progress: Progress) -> None:
        if self.bar is None:
            return
        self.bar.n = progress.iteration
        post = {k: f"{progress.losses[k]:.3f}" for k in self.keys if k in progress.losses}
        if progress.lr:
            post["lr"] = f"{next(iter(progress.lr.values())):.2e}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def on_validation(self, iteration: int, metrics: dict, is_best: bool) -> None:
        if self.bar is not None and metrics.get("miou") is not None:
            self.bar.write(f"iteration {iteration}: validation mIoU {metrics['miou']:.4f}{' (best)' if is_best else ''}")

    def on_end(self, result: LoopResult) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
