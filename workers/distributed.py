"""A training job on several devices (``params.devices``): which rank this process is, its device and share of
the data, and the start of the other ranks.

    rank 0          the job's own process (a Celery pool process, the CLI, a benchmark): it alone reports
                    progress, validates, writes checkpoints, the bundle and the results
    ranks 1..N-1    ``python -m workers.peer_rank`` subprocesses that rank 0 starts right before its loop; each
                    runs the same pipeline (workers.pipelines.train.run_training) up to the loop's end, then
                    exits. Subprocesses, not multiprocessing: a Celery prefork pool process is daemonic and
                    multiprocessing refuses it children, and CUDA must not be initialised in a forked process.
                    They die with rank 0 (PR_SET_PDEATHSIG), so a killed worker leaves no rank holding a GPU.
    rendezvous      a TCP store rank 0 hosts on 127.0.0.1 (a port the OS picks): the ranks of a job share
                    one machine (a multi-GPU host; several machines scale out by running more workers, not by
                    one job spanning them)
    devices         rank r on GPU r of a CUDA worker (more than it has: the job fails, naming
                    params.devices); on a CPU worker N processes with gloo

Each rank takes ``batch_size / devices`` windows of every batch from its own sampler streams (rank 0's are
the seed's, so ``devices: 1`` draws what the plain path draws; rank r's seeds are offset by r x 1,000,003).
``devices`` absent: :data:`models.training.distributed.SOLO`, no torch.distributed at all.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from core.errors import DevicesUnavailableError, SpecError
from core.files import write_json
from core.job_layout import CHECKPOINTS
from core.jobspec import JobSpec
from models.training.distributed import SOLO, Collective, backend_for, host_store, join, leave

#: the module each extra rank runs
PEER_MODULE = "workers.peer_rank"
#: rank r's sampler and RNG seeds: the job's seed + r x this (far beyond the offsets the samplers add)
RANK_SEED_STRIDE = 1_000_003
#: how long rank 0 waits for the other ranks to exit once the loop is over
PEER_EXIT_S = 120.0
#: the folder, under a run's checkpoint folder, with the spec the ranks read and each rank's log
RANKS_DIR = "ranks"


def die_with_parent(parent_pid: int) -> None:
    """Called first thing in a rank's process: SIGKILL when rank 0 dies, however it dies (Linux); and exit at
    once if it is already gone. (Set by the rank itself: a preexec_fn would run between fork and exec in
    rank 0, a threaded process where that is unsafe.)"""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # rank 0 died before the line above: nobody would signal us
        os._exit(1)


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class Ranks:
    """This process's place among a job's training processes."""

    world_size: int | None  # None: one process, no torch.distributed (params.devices absent)
    rank: int
    device: torch.device
    init_method: str | None = None
    _peers: list[tuple[int, subprocess.Popen, Path]] = field(default_factory=list)
    _threads: int | None = None
    _store: object | None = None  # rank 0's TCPStore, hosted before the other ranks start

    @classmethod
    def for_job(cls, spec: JobSpec, device: torch.device, *, rank: int = 0,
                init_method: str | None = None) -> "Ranks":
        n = spec.params.devices
        device = torch.device(device)
        if n is None:
            return cls(None, 0, device)
        if device.type == "cuda":
            have = torch.cuda.device_count()
            if n > have:
                raise DevicesUnavailableError(f"the job asks for {n} GPUs; this worker has {have}",
                                              field="params.devices")
            device = torch.device("cuda", rank)
        return cls(n, rank, device, init_method)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch_size: int) -> int:
        """This rank's part of every batch of ``batch_size`` windows."""
        n = self.world_size or 1
        if batch_size % n:
            raise SpecError(f"batch_size {batch_size} does not split evenly among {n} devices",
                            field="params.devices")
        return batch_size // n

    def seed(self, seed: int) -> int:
        """This rank's seed for its samplers and its random numbers: rank 0's is the job's."""
        return int(seed) + self.rank * RANK_SEED_STRIDE

    def describe(self) -> str:
        if self.world_size is None:
            return str(self.device)
        return f"{self.world_size} x {self.device.type} ({backend_for(self.device)}, rank {self.rank})"

    # -- the group ----------------------------------------------------------------------------------------------
    def group(self, spec: JobSpec, resume: bool, log: Callable[[str], None]) -> "RankGroup":
        """``with ranks.group(...) as collective``: the loop's Collective (rank 0 first starts the others)."""
        return RankGroup(self, spec, resume, log)

    def _start_peers(self, spec: JobSpec, resume: bool, log: Callable[[str], None]) -> None:
        self._store = host_store(int(self.world_size))
        self.init_method = f"tcp://127.0.0.1:{self._store.port}"
        if self.world_size == 1:
            return
        folder = Path(spec.output) / CHECKPOINTS / RANKS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        spec_file = write_json(folder / "spec.json", spec.to_jsonable())
        # the ranks run this process's code, wherever it was imported from (a checkout or an install)
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        for r in range(1, int(self.world_size)):
            log_path = folder / f"rank-{r}.log"
            cmd = [sys.executable, "-m", PEER_MODULE, str(spec_file), "--rank", str(r), "--init-method",
                   self.init_method, "--device", self.device.type, "--threads", str(self._threads or 0),
                   "--parent-pid", str(os.getpid())]
            if not resume:
                cmd.append("--no-resume")
            with open(log_path, "wb") as out:
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self._peers.append((r, proc, log_path))
        log(f"started {len(self._peers)} more training rank(s); their logs: {folder}")

    def _check_peers(self) -> None:
        """Raise if a rank has exited before joining (while rank 0 waits for them to check in)."""
        gone = [f"rank {r} exited with {p.returncode}: {_tail(path)}" for r, p, path in self._peers
                if p.poll() is not None]
        if gone:
            raise RuntimeError("a training rank failed: " + "; ".join(gone))

    def _failed_peers(self) -> list[str]:
        return [f"rank {r} exited with {p.returncode}: {_tail(path)}" for r, p, path in self._peers
                if p.returncode not in (None, 0)]

    def _stop_peers(self, *, ok: bool) -> list[str]:
        """Wait for the other ranks (``ok``: the loop is over, they are finishing) or end them (rank 0 failed:
        they would wait for it until the timeout). Returns what the ranks that failed on their own said."""
        deadline = time.monotonic() + (PEER_EXIT_S if ok else 3.0)
        while time.monotonic() < deadline and any(p.poll() is None for _, p, _ in self._peers):
            time.sleep(0.1)
        failed = self._failed_peers()
        for _, p, _ in self._peers:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        self._peers.clear()
        self._store = None
        return failed


class RankGroup:
    """The context of a job's training loop on its ranks: yields the Collective, tears everything down."""

    def __init__(self, ranks: Ranks, spec: JobSpec, resume: bool, log: Callable[[str], None]):
        self.ranks, self.spec, self.resume, self.log = ranks, spec, resume, log
        self._saved_threads: int | None = None

    def __enter__(self) -> Collective:
        r = self.ranks
        if r.world_size is None:
            return SOLO
        if r.device.type == "cpu" and r.is_main:
            # the machine's cores shared out among its CPU ranks (the others are given their share), not each
            # rank taking them all
            self._saved_threads = torch.get_num_threads()
            r._threads = max(1, self._saved_threads // int(r.world_size))
            torch.set_num_threads(r._threads)
        try:
            if r.is_main:
                r._start_peers(self.spec, self.resume, self.log)
            return join(r._store if r.is_main else r.init_method, rank=r.rank, world_size=int(r.world_size),
                        device=r.device, alive=r._check_peers if r.is_main else None)
        except BaseException:
            self._teardown(ok=False)
            raise

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.ranks.world_size is None:
            return False
        failed = self._teardown(ok=exc is None)
        if failed and (exc is None or isinstance(exc, RuntimeError)):
            # a rank that failed on its own: its error is the job's, not the broken connection rank 0 saw
            raise RuntimeError("a training rank failed: " + "; ".join(failed)) from exc
        return False

    def _teardown(self, *, ok: bool) -> list[str]:
        leave()
        failed = self.ranks._stop_peers(ok=ok) if self.ranks.is_main else []
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
        return failed
