"""One extra rank of a training job on several devices: ``python -m workers.peer_rank SPEC --rank R ...``.

Started by rank 0 (workers.distributed) right before its training loop; runs the job's pipeline as rank R
(its own share of every batch, no callbacks, no checkpoints, no bundle) until the loop ends, then exits.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from core.jobspec import load_job_spec
from workers.distributed import die_with_parent
from workers.pipelines.run_options import RunOptions
from workers.pipelines.train import run_training


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers.peer_rank", description=__doc__.splitlines()[0])
    p.add_argument("spec", type=Path, help="the job spec (JSON) rank 0 wrote")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--init-method", required=True, help="where the ranks meet (tcp://host:port)")
    p.add_argument("--device", choices=("cpu", "cuda"), required=True)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="rank 0's process, which this one dies with (default: the parent process now)")
    args = p.parse_args(argv)
    die_with_parent(args.parent_pid or os.getppid())
    if args.rank < 1:
        p.error("--rank: rank 0 is the job's own process")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    def say(msg: str) -> None:
        print(f"[rank {args.rank}] {msg}", flush=True)

    say(f"process {os.getpid()}")
    spec = load_job_spec(json.loads(args.spec.read_text()))
    opts = RunOptions.of(device=args.device, resume=not args.no_resume, log=say).as_rank(args.rank, args.init_method)
    result = run_training(spec, opts)
    say(f"done: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
