"""What a training process shares with the other processes of its job when it trains on several devices.

One process per device (a *rank*); every rank runs the same loop on its own share of each batch. They stay
identical because, every iteration,

    gradients   averaged over the ranks before each optimiser step (one explicit all-reduce per
                optimiser, bucketed): exact, and clearer than wrapping ST-DASegNet's several modules and
                two optimisers in DistributedDataParallel, whose hooks dislike modules that are frozen and
                thawed within a step (the discriminators) or run twice per step (the backbones)
    buffers     broadcast from rank 0 after the step (DDP's ``broadcast_buffers``): batch-norm running
                statistics, which on CPU (no SyncBatchNorm there) each rank would otherwise keep its own
    batch facts whole-batch statistics gathered (ST-DASegNet's pseudo-label quality q)
    logged      losses averaged over the ranks, so progress, ``late_losses`` and the history are the job's
    stop        rank 0's decision (its callbacks: a user's cancel) broadcast, so every rank stops together

:data:`SOLO` is the single process: every operation is the identity, so the plain path runs the same code
with no torch.distributed at all. :func:`join` makes a :class:`GroupCollective` of a torch.distributed
process group (gloo on CPU, nccl on CUDA; control messages always over gloo), met through a TCP store
that rank 0 hosts (:func:`rendezvous`). Who launches the ranks is the
worker's business (workers/distributed.py); this module only knows torch.
"""
from __future__ import annotations

import datetime
import socket
import time
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

#: elements per gradient all-reduce: a bounded extra buffer, however large the model
BUCKET_ELEMENTS = 1 << 24
#: how long a rank waits for the others in one collective: rank 0 alone validates and writes checkpoints,
#: so the others may wait that long (a dead peer is noticed at once by gloo; this only bounds a hang)
DEFAULT_TIMEOUT_S = 2 * 3600


class Collective:
    """The single process (:data:`SOLO`): nothing to share, every operation is the identity."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the job's own process (callbacks, validation, checkpoints, bundle)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return False

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Each parameter's gradient <- its mean over the ranks (before an optimiser step)."""

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """Scalars (logged losses) averaged over the ranks; the same keys on every rank."""
        return dict(values)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor (same shape on each) concatenated along dim 0 in rank order: the whole batch."""
        return tensor

    def broadcast_state(self, module: nn.Module, *, parameters: bool = True) -> None:
        """Rank 0's buffers (and parameters) into every rank's ``module``."""

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a stop decision taken by rank 0's callbacks)."""
        return bool(flag)

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's picklable ``obj`` in rank order on rank 0; None on the others."""
        return [obj]

    def describe(self) -> str:
        return "one process"


SOLO = Collective()


def _tensors_by_kind(tensors: Iterable[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


def _buckets(tensors: list[torch.Tensor], limit: int = BUCKET_ELEMENTS) -> Iterable[list[torch.Tensor]]:
    bucket, size = [], 0
    for t in tensors:
        if bucket and size + t.numel() > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


class GroupCollective(Collective):
    """A rank of a torch.distributed process group (already initialised: :func:`join`)."""

    def __init__(self, *, device: torch.device, control: Any = None):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = torch.device(device)
        self.backend = dist.get_backend()
        #: small control messages (stop flag, logged losses, RNG states) always over gloo, on the CPU
        self.control = control

    @property
    def distributed(self) -> bool:
        return True

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} ({self.backend})"

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        params = [p for p in params if p.requires_grad]
        with torch.no_grad():
            for kind in _tensors_by_kind(params).values():
                for bucket in _buckets(kind):
                    self._average_bucket(bucket)

    def _average_bucket(self, bucket: list[nn.Parameter]) -> None:
        """One all-reduce of the bucket's gradients followed by one flag per parameter (1 where this rank has
        a gradient): a parameter without a gradient on some rank (a branch its share skipped) counts as zero
        there; one without a gradient on any rank keeps none, so the optimiser skips it as one process would."""
        ref = bucket[0]
        flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else ref.new_zeros(p.numel()) for p in bucket]
                         + [torch.tensor([p.grad is not None for p in bucket], dtype=ref.dtype, device=ref.device)])
        dist.all_reduce(flat)
        flags = flat[-len(bucket):].tolist()
        flat /= self.world_size
        offset = 0
        for p, flag in zip(bucket, flags):
            n = p.numel()
            if flag == 0:
                p.grad = None
            elif p.grad is None:
                p.grad = flat[offset:offset + n].view_as(p).clone()
            else:
                p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t, group=self.control)
        t /= self.world_size
        return dict(zip(keys, t.tolist()))

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    def broadcast_state(self, module: nn.Module, *, parameters: bool = True) -> None:
        # after a step the integer buffers (batch norm's num_batches_tracked) agree already: every rank counts
        # the same steps; one broadcast of the floating-point ones is enough
        tensors = [b for b in module.buffers() if parameters or b.is_floating_point()]
        if parameters:
            tensors += [p.data for p in module.parameters()]
        with torch.no_grad():
            for kind in _tensors_by_kind(tensors).values():
                for bucket in _buckets(kind):
                    flat = torch.cat([t.reshape(-1) for t in bucket])
                    dist.broadcast(flat, src=0)
                    offset = 0
                    for t in bucket:
                        t.copy_(flat[offset:offset + t.numel()].view_as(t))
                        offset += t.numel()

    def agree(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.broadcast(t, src=0, group=self.control)
        return bool(t.item())

    def gather_objects(self, obj: Any) -> list[Any] | None:
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self.control)
        return out


def backend_for(device: torch.device | str) -> str:
    """nccl between GPUs, gloo between CPU processes."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now on ``host`` (the rendezvous of a job's ranks, all on one machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def host_store(world_size: int, *, host: str = "127.0.0.1", timeout_s: float = DEFAULT_TIMEOUT_S) -> dist.TCPStore:
    """Rank 0's key-value store on a port the OS picks (no race for a "free" port); its address for the other
    ranks is ``tcp://{host}:{store.port}``."""
    return dist.TCPStore(host, 0, world_size, is_master=True, timeout=datetime.timedelta(seconds=timeout_s),
                         wait_for_workers=False)


def rendezvous(address: str | dist.TCPStore, *, rank: int, world_size: int, timeout_s: float = DEFAULT_TIMEOUT_S,
               alive: Callable[[], None] | None = None) -> dist.Store:
    """The job's key-value store: rank 0 hosts it (``address`` may be the store :func:`host_store` opened) and
    waits until every other rank has checked in, calling ``alive()`` meanwhile (it raises when a rank it
    started has died: a rank that fails while it prepares must fail the job, not leave rank 0 waiting for
    it); the others connect to ``address`` (``tcp://host:port``) and check in."""
    if isinstance(address, dist.TCPStore):
        store = address
    else:
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        store = dist.TCPStore(host, int(port), world_size, is_master=rank == 0,
                              timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
    if rank != 0:
        store.set(f"checked-in/{rank}", "1")
        return store
    others = [f"checked-in/{r}" for r in range(1, world_size)]
    deadline = time.monotonic() + timeout_s
    while others and not store.check(others):
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other training ranks did not check in within {timeout_s:.0f} s")
        time.sleep(0.05)
    return store


def join(address: str | dist.TCPStore, *, rank: int, world_size: int, device: torch.device | str,
         timeout_s: float = DEFAULT_TIMEOUT_S, alive: Callable[[], None] | None = None) -> GroupCollective:
    """Join the job's process group (after :func:`rendezvous`); :func:`leave` when done."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = rendezvous(address, rank=rank, world_size=world_size, timeout_s=timeout_s, alive=alive)
    timeout = datetime.timedelta(seconds=timeout_s)
    backend = backend_for(device)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    return GroupCollective(device=device, control=control)


def leave() -> None:
    """Tear the process group down (a job's process runs later jobs, which may form their own)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def use_sync_batchnorm(net: nn.ModuleDict, collective: Collective) -> bool:
    """Batch norm over the whole batch: SyncBatchNorm in place of every BatchNorm when several CUDA ranks
    train. On CPU torch has no SyncBatchNorm: each rank normalises with its own share's statistics (the
    running statistics stay rank 0's, broadcast each iteration). Parameters are kept (the optimisers hold
    them); returns whether anything was converted."""
    if not collective.distributed or collective.world_size < 2 or getattr(collective, "device", None) is None \
            or collective.device.type != "cuda":
        return False
    converted = False
    for name in list(net.keys()):
        before = net[name]
        after = nn.SyncBatchNorm.convert_sync_batchnorm(before)
        if after is not before:
            net[name] = after
        converted = converted or any(isinstance(m, nn.SyncBatchNorm) for m in after.modules())
    return converted
