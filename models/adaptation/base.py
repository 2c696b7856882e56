"""Base class and registry of adaptation methods: wrappers that train plain segmentors.

A method owns its networks (``self.net``, a ModuleDict), its optimisers and lr schedules, and
knows how to do one training iteration. Inference is always delegated to a plain segmentor
(``inference_segmentor()``), rebuilt from ``inference_config()`` when a bundle is loaded.

Batch contract for ``train_step`` (tensors from the data layer's samplers, already normalised):
``{"source": {"img": (B,C,h,w) float, "label": (B,h,w) int64 (255 ignore), "valid": (B,h,w) bool},
   "target": {"img": ..., "valid": ...}}`` -- "target" only for methods with ``needs_target``; methods with
``needs_target_labels`` also get ``"target_labelled": {"img", "label", "valid"}`` (crops of labelled target windows).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, ClassVar, Mapping

import torch
from mmengine.config import Config, ConfigDict
from torch import nn

from core.errors import ConfigError
from models.class_weights import auto_fields
from models.segmentor import build_segmentor
from models.training.distributed import SOLO, Collective, use_sync_batchnorm
from models.training.schedules import PolySchedule, build_optimizer, build_schedule
from models.weight_average import WEIGHT_AVERAGE, averaging_start, weight_average

#: method name (as in the job spec) -> class
METHODS: dict[str, type["AdaptationMethod"]] = {}


def register_method(name: str):
    """Class decorator: make a method buildable by its job-spec name."""

    def wrap(cls: type[AdaptationMethod]) -> type[AdaptationMethod]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def build_method(cfg: Config | Mapping, *, total_iters: int, method: str | None = None) -> "AdaptationMethod":
    """Build the method named by ``method`` (or ``cfg.adaptation.type``) from a resolved config."""
    name = method or (cfg.get("adaptation") or {}).get("type", "source-only")
    if name not in METHODS:
        raise ConfigError(f"unknown adaptation method {name!r}; known: {sorted(METHODS)}", field="method")
    unfilled = auto_fields(to_plain(cfg))
    if unfilled:  # mmseg's loss would read "auto" as a weights file
        raise ConfigError(f"{unfilled[0]} is 'auto': fill it from the training labels first "
                          "(models.class_weights.fill_auto_class_weights)", field=f"model.overrides.{unfilled[0]}")
    method = METHODS[name](cfg, total_iters=total_iters)
    method.keep_weight_average()
    return method


def to_plain(obj: Any) -> Any:
    """ConfigDict/Config -> plain dicts and lists, so configs can be stored and deep-copied freely."""
    if isinstance(obj, (Config, ConfigDict, Mapping)):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return obj


class AdaptationMethod:
    """One way of training a segmentor. Subclasses set ``needs_target`` and implement the hooks."""

    name: ClassVar[str] = "base"
    #: whether train_step needs unlabelled target images in the batch
    needs_target: ClassVar[bool] = False
    #: whether it also needs labelled target windows (``batch["target_labelled"]``: img, label, valid)
    needs_target_labels: ClassVar[bool] = False

    def __init__(self, cfg: Config | Mapping, *, total_iters: int):
        self.cfg = to_plain(cfg)
        self.total_iters = int(total_iters)
        self.net = nn.ModuleDict()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedules: dict[str, PolySchedule] = {}
        #: the ranks this process trains with (models.training.distributed); SOLO: a single process
        self.collective: Collective = SOLO
        #: the first iteration whose delivered network enters its weight average (``adaptation.average_weights``)
        self.average_from: int | None = None

    # -- construction helpers ---------------------------------------------------------------
    def add_optimizer(self, name: str, modules: Mapping[str, nn.Module], optim_cfg: Mapping,
                      schedule_cfg: Mapping | None) -> None:
        opt = build_optimizer(modules, optim_cfg)
        self.optimizers[name] = opt
        self.schedules[name] = build_schedule(opt, self.total_iters, schedule_cfg)

    def set_lr(self, iteration: int) -> None:
        for sched in self.schedules.values():
            sched.step(iteration)

    def step(self, name: str) -> None:
        """Optimiser ``name``'s step, on gradients averaged over the ranks when several train together (every
        method steps through here, so each optimiser of each method is synchronised the same way)."""
        opt = self.optimizers[name]
        self.collective.average_gradients(p for g in opt.param_groups for p in g["params"])
        opt.step()

    def distribute(self, collective: Collective) -> None:
        """Train as one rank of ``collective``: SyncBatchNorm between CUDA ranks, and every rank starts from
        rank 0's weights and buffers (called by the loop, after a resume has loaded them)."""
        self.collective = collective
        if collective.distributed:
            use_sync_batchnorm(self.net, collective)
            collective.broadcast_state(self.net)

    def after_step(self) -> None:
        """Called by the loop after each iteration: rank 0's buffers (batch-norm running statistics) on every
        rank, as DistributedDataParallel's broadcast_buffers does, so the ranks never drift apart."""
        if self.collective.distributed:
            self.collective.broadcast_state(self.net, parameters=False)

    def keep_weight_average(self) -> None:
        """With ``adaptation.average_weights`` (a fraction of the budget): the delivered network is averaged over that
        last part of the run (models.weight_average). Called once the networks are built (``build_method``)."""
        self.average_from = averaging_start((self.cfg.get("adaptation") or {}).get("average_weights"),
                                            self.total_iters)
        if self.average_from is not None:
            self.net[WEIGHT_AVERAGE] = weight_average(self.inference_segmentor())

    @torch.no_grad()
    def update_weight_average(self, iteration: int) -> None:
        """After an iteration's steps: its delivered network enters the average once the averaged part of the budget
        has begun, and after the last iteration becomes it. Every ``train_step`` calls this."""
        if self.average_from is None or iteration < self.average_from:
            return
        average = self.net[WEIGHT_AVERAGE]
        average.update_parameters(self.inference_segmentor())
        if iteration == self.total_iters - 1:
            self.inference_segmentor().load_state_dict(average.module.state_dict())

    # -- the contract -------------------------------------------------------------------------
    def train_step(self, batch: Mapping[str, Mapping[str, torch.Tensor]], iteration: int) -> dict[str, float]:
        """One optimisation iteration; returns the loss terms as floats (``loss``: the total)."""
        raise NotImplementedError

    def inference_config(self) -> dict:
        """dict(type=<registered segmentor>, ...) that rebuilds :meth:`inference_segmentor`."""
        raise NotImplementedError

    def inference_segmentor(self) -> nn.Module:
        """The module that predicts (``predict_logits``), sharing weights with the students."""
        raise NotImplementedError

    def backbones(self) -> list[nn.Module]:
        """Every student backbone (pretrained weights go into each)."""
        raise NotImplementedError

    def decoders(self) -> list[nn.Module]:
        """Every student decoder (a full mmseg segmentor checkpoint may carry decode_head weights)."""
        raise NotImplementedError

    def after_pretrained(self, loaded: dict) -> None:
        """Hook run after pretrained weights were loaded (e.g. re-copy teachers); ``loaded``: what
        ``models.pretrained.load_pretrained`` reports (it may add to it)."""

    def training_record(self) -> dict:
        """What the method learnt besides weights, for the job's ``metrics.training`` (JSON-ready). With a weight
        average: the iteration it starts at and how many states it holds."""
        if self.average_from is None:
            return {}
        return {"weight_average": {"from_iteration": self.average_from,
                                   "states": int(self.net[WEIGHT_AVERAGE].n_averaged)}}

    def source_statistics(self) -> contextlib.AbstractContextManager:
        """A context in which the networks see the source as training showed it to them: the same as outside
        for most methods (ST-DASegNet with ``norm_eval: per-domain`` normalises it with statistics of its own)."""
        return contextlib.nullcontext()

    # -- state ----------------------------------------------------------------------------------
    def lr(self) -> dict[str, float]:
        """Current base lr (first group) of each optimiser, for progress reports."""
        return {k: float(o.param_groups[0]["lr"]) for k, o in self.optimizers.items()}

    def train(self, mode: bool = True) -> "AdaptationMethod":
        self.net.train(mode)
        return self

    def eval(self) -> "AdaptationMethod":
        return self.train(False)

    def to(self, device: torch.device | str) -> "AdaptationMethod":
        self.net.to(device)
        for opt in self.optimizers.values():  # optimiser state follows its parameters
            for st in opt.state.values():
                for k, v in st.items():
                    if torch.is_tensor(v) and k != "step":
                        st[k] = v.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def state_dict(self) -> dict:
        """Everything needed to continue training exactly: networks (incl. teachers and
        discriminators), optimisers and schedules."""
        return {
            "method": self.name,
            "net": self.net.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedules": {k: s.state_dict() for k, s in self.schedules.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("method") != self.name:
            raise ConfigError(f"checkpoint is for method {state.get('method')!r}, not {self.name!r}")
        self.net.load_state_dict(state["net"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedules.items():
            s.load_state_dict(state["schedules"][k])

    def build_inference_copy(self) -> nn.Module:
        """A detached copy of the inference segmentor, built from config as a bundle would be."""
        seg = build_segmentor(copy.deepcopy(self.inference_config()))
        seg.load_state_dict(self.inference_segmentor().state_dict())
        return seg.eval()


class SingleOptimizerMethod(AdaptationMethod):
    """A method with one optimiser (``student``) and one loss: subclasses implement :meth:`losses`."""

    def losses(self, batch: Mapping) -> dict[str, torch.Tensor]:
        """The loss terms of one batch as tensors; ``loss`` is the total that is back-propagated."""
        raise NotImplementedError

    def train_step(self, batch: Mapping, iteration: int) -> dict[str, float]:
        self.set_lr(iteration)
        opt = self.optimizers["student"]
        opt.zero_grad(set_to_none=True)
        losses = self.losses(batch)
        losses["loss"].backward()
        self.step("student")
        self.update_weight_average(iteration)
        return {k: float(v.detach()) for k, v in losses.items()}
