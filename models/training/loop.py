"""The iteration-based training loop: batches -> method.train_step -> progress, validation, checkpoints.

Call flow of ``TrainLoop.run``::

    resume?  load last.pth -> method, batch source, RNG states, loop state (best, validations)
    for it in [start, total):
        batch = batches.next(it)              # source crops (+ target images), on the device
        losses = method.train_step(batch, it) # one optimisation step (per-method call flow)
        callbacks.on_progress(...)
        every val_interval: validate(inference segmentor) -> on_validation; best.pth if improved
        every checkpoint_interval: last.pth -> on_checkpoint
        callbacks.should_stop()? -> last.pth, return (stopped)
    final validation (if any), last.pth, on_end

On several devices (``collective``: models.training.distributed) every rank runs this loop on its share of
each batch: the method steps on gradients averaged over the ranks; the losses reported are averaged over
them; rank 0 alone validates, calls the callbacks and writes checkpoints, into which every rank's sampler
and RNG states go (so each resumes its own stream: exact resume); its stop decision is every rank's.

Besides the last iteration's losses the result carries ``late_losses``, each loss averaged over the
last tenth of the schedule: the state training ended in, without one batch's noise (ST-DASegNet's
pseudo-label quality q and discriminator loss tell from it whether its adaptation terms acted).

The loop never reads rasters: a batch source (``SamplerBatches`` over the data layer's samplers)
hands it tensors; validation is a function of the inference segmentor supplied by the caller.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from core.code_version import code_version
from models.training import checkpoint as ckpt
from models.training.callbacks import Callback, CallbackList, LoopResult, Progress
from models.training.distributed import SOLO, Collective


class TrainableMethod(Protocol):
    """What the loop asks of a method (models.adaptation.base.AdaptationMethod is one). Declared here, not
    imported, since the methods use this package (schedules, ranks): the two packages must not import each other."""

    def distribute(self, collective: Collective) -> None: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def train_step(self, batch: dict, iteration: int) -> dict[str, float]: ...

    def after_step(self) -> None: ...

    def lr(self) -> dict[str, float]: ...

    def inference_segmentor(self) -> nn.Module: ...

    def inference_config(self) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


class BatchSource(Protocol):
    def next(self, iteration: int) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class SamplerBatches:
    """Batches from the data layer's samplers: ``batch_size`` labelled source crops and, when the
    method needs them, as many target crops; optional random flips of the source crops (the spec's
    random resize and photometric distortion happen in the samplers, where the windows are read)."""

    def __init__(self, source: Any, target: Any | None, batch_size: int, *, flip: bool = False, seed: int = 0,
                 device: torch.device | str = "cpu", target_labelled: Any | None = None,
                 labelled_batch_size: int | None = None):
        self.source, self.target = source, target
        #: labelled target windows (methods with needs_target_labels), flipped like the source crops
        self.target_labelled = target_labelled
        self.batch_size = int(batch_size)
        self.labelled_batch_size = int(labelled_batch_size or batch_size)
        self.flip = flip
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(int(seed) + 7919)  # own stream: resume-exact

    def _flip(self, s: dict) -> dict:
        b = s["img"].shape[0]
        h = torch.rand(b, generator=self.generator) < 0.5
        v = torch.rand(b, generator=self.generator) < 0.5
        out = dict(s)
        for key in ("img", "label", "valid"):
            if key not in s:
                continue
            x = s[key].clone()
            x[h] = x[h].flip(-1)
            x[v] = x[v].flip(-2)
            out[key] = x
        return out

    def next(self, iteration: int) -> dict:
        src = self.source.sample(self.batch_size)
        if self.flip:
            src = self._flip(src)
        batch = {"source": {k: v.to(self.device) for k, v in src.items()}}
        if self.target is not None:
            tgt = self.target.sample(self.batch_size)
            batch["target"] = {k: v.to(self.device) for k, v in tgt.items() if k in ("img", "valid")}
        if self.target_labelled is not None:
            tl = self.target_labelled.sample(self.labelled_batch_size)
            if self.flip:
                tl = self._flip(tl)
            batch["target_labelled"] = {k: v.to(self.device) for k, v in tl.items()}
        return batch

    def state_dict(self) -> dict:
        state = {"source": self.source.state_dict(),
                 "target": self.target.state_dict() if self.target is not None else None,
                 "generator": self.generator.get_state()}
        if self.target_labelled is not None:
            state["target_labelled"] = self.target_labelled.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state["source"])
        if self.target is not None and state.get("target") is not None:
            self.target.load_state_dict(state["target"])
        if self.target_labelled is not None and state.get("target_labelled") is not None:
            self.target_labelled.load_state_dict(state["target_labelled"])
        self.generator.set_state(state["generator"])


Validator = Callable[[nn.Module], dict]

#: the share of the schedule, at its end, that ``late_losses`` average over
LATE_FRACTION = 0.1


def late_start(total: int) -> int:
    """The first (0-based) iteration whose losses ``late_losses`` average: the last tenth, at least one."""
    return total - max(1, int(total * LATE_FRACTION))


class LossMeans:
    """Running means of the losses of the iterations added; a plain dict state for checkpoints."""

    def __init__(self, state: dict | None = None):
        self.sums: dict[str, float] = dict((state or {}).get("sums") or {})
        self.counts: dict[str, int] = dict((state or {}).get("counts") or {})

    def add(self, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}


class TrainLoop:
    def __init__(
        self,
        method: TrainableMethod,
        batches: BatchSource,
        *,
        total_iters: int,
        workdir: Path | None = None,
        checkpoint_interval: int | None = None,
        validate: Validator | None = None,
        val_interval: int | None = None,
        callbacks: list[Callback] | None = None,
        best_metric: str = "miou",
        collective: Collective = SOLO,
    ):
        self.method = method
        self.collective = collective
        self.batches = batches
        self.total = int(total_iters)
        self.workdir = Path(workdir) if workdir is not None else None
        self.checkpoint_interval = checkpoint_interval
        self.validate = validate
        self.val_interval = val_interval
        self.callbacks = CallbackList(callbacks)
        self.best_metric = best_metric
        self.best: dict | None = None
        self.validations: list[dict] = []
        self.last_losses: dict[str, float] = {}
        self.late = LossMeans()
        #: training time before this run (earlier runs of a resumed job), and when this run started
        self.elapsed_before, self._t0 = 0.0, None
        #: core.code_version of each run that trained iterations of this job (a resumed job may span code versions)
        self.code: list[dict] = []

    # -- state --
    def _loop_state(self) -> dict:
        return {"best": self.best, "validations": self.validations, "last_losses": self.last_losses,
                "late_losses": self.late.state_dict(), "elapsed_s": self.elapsed(), "code": self.code}

    def elapsed(self) -> float:
        """Training time of the job so far: earlier runs of a resumed job plus this one's."""
        return self.elapsed_before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def save(self, iteration: int) -> Path | None:
        """last.pth, written by rank 0 with every rank's own batch-source and RNG states (a collective call:
        every rank calls it at the same iteration)."""
        if self.workdir is None:
            return None
        ranks = None
        if self.collective.distributed:
            ranks = self.collective.gather_objects(ckpt.rank_state(self.batches.state_dict()))
            if not self.collective.is_main:
                return None
        path = ckpt.save_checkpoint(self.workdir / ckpt.LAST, iteration=iteration,
                                    method_state=self.method.state_dict(),
                                    batches_state=self.batches.state_dict(), loop_state=self._loop_state(),
                                    ranks=ranks)
        self.callbacks.on_checkpoint(iteration, path, "last")
        return path

    def resume(self) -> int:
        path = ckpt.find_resume(self.workdir)
        if path is None:
            return 0
        state = ckpt.load_checkpoint(path)
        self.method.load_state_dict(state["method"])
        mine = ckpt.state_of_rank(state, self.collective.rank, self.collective.world_size)
        if mine.get("batches") is not None:
            self.batches.load_state_dict(mine["batches"])
        loop = state.get("loop") or {}
        self.best = loop.get("best")
        self.validations = list(loop.get("validations") or [])
        self.last_losses = dict(loop.get("last_losses") or {})
        self.late = LossMeans(loop.get("late_losses"))
        self.elapsed_before = float(loop.get("elapsed_s") or 0.0)
        self.code = list(loop.get("code") or [])
        ckpt.restore_rng(mine["rng"])  # last, so nothing above consumes random numbers after it
        return int(state["iteration"])

    # -- validation --
    def _validate(self, iteration: int) -> None:
        if self.validate is None or not self.collective.is_main:
            return
        seg = self.method.inference_segmentor()
        self.method.eval()
        # validation must not perturb training: keep the global RNG as it was
        try:
            with ckpt.rng_kept(), torch.no_grad():
                metrics = self.validate(seg)
        finally:
            self.method.train()
        value = metrics.get(self.best_metric)
        is_best = value is not None and (self.best is None or value > self.best["value"])
        self.validations.append({"iteration": iteration, "metrics": metrics})
        if is_best:
            self.best = {"iteration": iteration, "metric": self.best_metric, "value": float(value), "path": None}
            if self.workdir is not None:
                path = ckpt.atomic_save(
                    {"iteration": iteration, "metrics": metrics, "inference_config": self.method.inference_config(),
                     "state_dict": seg.state_dict()},
                    self.workdir / ckpt.BEST)
                self.best["path"] = str(path)
                self.callbacks.on_checkpoint(iteration, path, "best")
        self.callbacks.on_validation(iteration, metrics, is_best)

    # -- the loop --
    def run(self, *, resume: bool = True) -> LoopResult:
        start = self.resume() if resume else 0
        self.method.distribute(self.collective)  # every rank from rank 0's weights (a no-op in one process)
        self.method.train()
        self.callbacks.on_start(start, self.total)
        if start < self.total and (not self.code or self.code[-1] != code_version()):
            self.code.append(code_version())
        t0 = self._t0 = time.perf_counter()
        times: list[float] = []
        it = start
        stopped = False
        last_path: Path | None = None
        late_from = late_start(self.total)
        while it < self.total:
            t = time.perf_counter()
            batch = self.batches.next(it)
            losses = self.method.train_step(batch, it)
            self.method.after_step()
            losses = self.collective.mean(losses)  # the job's losses, the same on every rank
            self.last_losses = losses
            if not all(math.isfinite(v) for v in losses.values()):
                raise FloatingPointError(f"non-finite loss at iteration {it}: {losses}")
            if it >= late_from:
                self.late.add(losses)
            it += 1
            times.append(time.perf_counter() - t)
            recent = times[-50:]
            spi = sum(recent) / len(recent)
            self.callbacks.on_progress(Progress(
                iteration=it, total=self.total, losses=losses, lr=self.method.lr(),
                elapsed_s=time.perf_counter() - t0, eta_s=spi * (self.total - it) if len(times) >= 3 else None,
                sec_per_iter=spi))
            if self.val_interval and it % self.val_interval == 0 and it < self.total:
                self._validate(it)
            if self.checkpoint_interval and it % self.checkpoint_interval == 0 and it < self.total:
                last_path = self.save(it)
            if it < self.total and self.collective.agree(self.callbacks.should_stop()):
                stopped = True
                break
        if not stopped and self.validate is not None and (not self.validations or self.validations[-1]["iteration"] != it):
            self._validate(it)
        last_path = self.save(it) or last_path
        result = LoopResult(iterations_done=it, total=self.total, stopped=stopped, last_checkpoint=last_path,
                            best=self.best, validations=self.validations, final_losses=self.last_losses,
                            late_losses=self.late.means(), elapsed_s=self.elapsed(), code=list(self.code))
        self.callbacks.on_end(result)
        return result


def load_best_weights(method: TrainableMethod, workdir: Path) -> dict | None:
    """Put the best validated weights into the method's inference segmentor; returns their record."""
    path = Path(workdir) / ckpt.BEST
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    method.inference_segmentor().load_state_dict(state["state_dict"])
    return {"iteration": state["iteration"], "metrics": state["metrics"]}

