"""Training on several ranks (torch.distributed, gloo on CPU) gives the update of one process with the whole
batch: two ranks with half the batch each, against one process with all of it.

Formula checks, so the models have no batch norm (GroupNorm in the decode heads; MiT has LayerNorm) and the
optimisers are SGD (Adam's first steps divide by |g| and would magnify float-rounding differences). Every
sample of a batch has the same number of labelled pixels, so the mean of the ranks' mean losses is the
whole batch's mean loss.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.adaptation import build_method
from models.config import resolve_config
from models.training.callbacks import History
from models.training.distributed import SOLO, Collective, free_port, join, leave
from models.training.loop import TrainLoop

WORLD = 2
BATCH = 4  # the whole batch; each rank takes BATCH // WORLD of it
STEPS = 3


def _cfg(method: str) -> dict:
    cfg = resolve_config("segformer-tiny", method=method, overrides={"model.decode_head.dropout_ratio": 0.0},
                         in_channels=4, num_classes=3)
    cfg["model"]["decode_head"]["norm_cfg"] = {"type": "GN", "num_groups": 8, "requires_grad": True}
    cfg["optim"] = {"type": "SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}
    cfg["disc_optim"] = {"type": "SGD", "lr": 0.01, "momentum": 0.9}
    cfg["lr_schedule"] = {"power": 1.0, "min_lr": 0.0}
    if method == "st-dasegnet":
        # random weights give 3-class confidences just above 1/3: a threshold that some pixels reach, so
        # that q lies strictly between 0 and 1 (about 0.45 at the first iteration)
        cfg["adaptation"]["pseudo_threshold"] = 0.345
    return cfg


def _batch(iteration: int) -> dict:
    """The whole batch of an iteration; every sample has the same nodata strip (equal pixel counts)."""
    g = torch.Generator().manual_seed(1000 + iteration)
    label = torch.randint(0, 3, (BATCH, 32, 32), generator=g)
    label[:, :3] = 255
    valid = torch.ones(BATCH, 32, 32, dtype=torch.bool)
    valid[:, :, -4:] = False
    return {"source": {"img": torch.randn(BATCH, 4, 32, 32, generator=g), "label": label,
                       "valid": torch.ones(BATCH, 32, 32, dtype=torch.bool)},
            "target": {"img": torch.randn(BATCH, 4, 32, 32, generator=g) * 1.5 + 0.3, "valid": valid}}


def _share(batch: dict, rank: int, world: int) -> dict:
    n = BATCH // world
    return {dom: {k: v[rank * n:(rank + 1) * n] for k, v in part.items()} for dom, part in batch.items()}


class _Shares:
    """A batch source handing this rank its share of each iteration's whole batch."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def next(self, iteration: int) -> dict:
        return _share(_batch(iteration), self.rank, self.world)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _train(method: str, collective: Collective) -> dict:
    """STEPS iterations through the loop on this rank's share; the weights after the first and the last,
    and the losses the loop reported."""
    torch.manual_seed(7)  # the same initial weights in every process
    m = build_method(_cfg(method), total_iters=10)
    snapshots = []

    class _Snapshot(History):
        def on_progress(self, progress):
            super().on_progress(progress)
            if progress.iteration in (1, STEPS):
                snapshots.append({k: v.clone() for k, v in m.net.state_dict().items()})

    hist = _Snapshot()
    TrainLoop(m, _Shares(collective.rank, collective.world_size), total_iters=STEPS, callbacks=[hist],
              collective=collective).run(resume=False)
    return {"first": snapshots[0], "last": snapshots[1], "losses": [p.losses for p in hist.progress]}


def _gradients_some_ranks_lack(collective: Collective) -> dict:
    """Three parameters: a gradient on every rank, on rank 0 only, on none."""
    everywhere, rank0_only, nowhere = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    everywhere.grad = torch.full((3,), float(collective.rank + 1))  # 1 on rank 0, 2 on rank 1
    if collective.rank == 0:
        rank0_only.grad = torch.tensor([4.0, 6.0, 8.0])
    collective.average_gradients([everywhere, rank0_only, nowhere])
    return {"everywhere": everywhere.grad, "rank0_only": rank0_only.grad, "nowhere": nowhere.grad,
            "q": collective.mean({"q": 0.25 * (collective.rank + 1)}),
            "gathered": collective.gather(torch.full((1, 2), float(collective.rank))),
            "stop": collective.agree(collective.rank == 0)}


def _rank_main(rank: int, world: int, init_method: str, method: str, out: str) -> None:
    torch.set_num_threads(1)
    collective = join(init_method, rank=rank, world_size=world, device="cpu", timeout_s=300)
    try:
        result = _gradients_some_ranks_lack(collective) if method == "gradients" else _train(method, collective)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        leave()


def _on_ranks(method: str, tmp_path: Path) -> list[dict]:
    """Every rank a process of its own running this file (as the workers' ranks are: not forked)."""
    init = f"tcp://127.0.0.1:{free_port()}"
    root = str(Path(__file__).resolve().parents[3])  # this checkout's packages, not an installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(WORLD), init, method, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(WORLD)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{outputs[r][-3000:]}"
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_same_update(ranks: list[dict], whole: dict) -> None:
    for when in ("first", "last"):
        ref = whole[when]
        for k, v in ref.items():
            # the ranks hold one model: bit-identical
            assert torch.equal(ranks[0][when][k], ranks[1][when][k]), (when, k)
            if v.is_floating_point():
                assert torch.allclose(ranks[0][when][k], v, rtol=1e-4, atol=1e-6), \
                    (when, k, float((ranks[0][when][k] - v).abs().max()))
    # and it moved: the comparison is not between untouched initial weights
    moved = [k for k, v in whole["last"].items() if v.is_floating_point() and not torch.equal(v, whole["first"][k])]
    assert len(moved) > 10


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def test_collective_operations_on_two_ranks(tmp_path):
    for r in _on_ranks("gradients", tmp_path):
        assert torch.equal(r["everywhere"], torch.full((3,), 1.5))
        # a rank without a gradient counts as zero in the mean; nobody's gradient stays none (SGD skips it)
        assert torch.equal(r["rank0_only"], torch.tensor([2.0, 3.0, 4.0])) and r["nowhere"] is None
        assert r["q"] == {"q": pytest.approx(0.375)}  # logged scalars: the ranks' mean
        assert torch.equal(r["gathered"], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))  # in rank order
        assert r["stop"] is True  # rank 0's decision on every rank


def test_two_ranks_with_half_the_batch_step_as_one_process_with_all_of_it(tmp_path):
    ranks = _on_ranks("source-only", tmp_path)
    whole = _train("source-only", SOLO)
    _assert_same_update(ranks, whole)
    assert ranks[0]["losses"] == ranks[1]["losses"]  # reduced: every rank reports the job's losses
    for got, ref in zip(ranks[0]["losses"], whole["losses"]):
        assert got == pytest.approx(ref, rel=1e-5)


def test_st_dasegnet_students_discriminators_teachers_and_q_on_two_ranks(tmp_path):
    ranks = _on_ranks("st-dasegnet", tmp_path)
    whole = _train("st-dasegnet", SOLO)
    # students, DDM, discriminators and the EMA teachers (updated from the synchronised students)
    assert any(k.startswith("teacher_s.") for k in whole["last"]) and any(k.startswith("disc_src.") for k in whole["last"])
    _assert_same_update(ranks, whole)
    assert ranks[0]["losses"] == ranks[1]["losses"]
    for got, ref in zip(ranks[0]["losses"], whole["losses"]):
        assert got == pytest.approx(ref, rel=1e-5, abs=1e-7)
    # q is the whole batch's: strictly between 0 and 1 here, and not what either half alone would count
    qs = [p["pseudo_q"] for p in whole["losses"]]
    assert 0.1 < qs[0] < 0.9 and all(0 <= q <= 1 for q in qs)
    torch.manual_seed(7)
    m = build_method(_cfg("st-dasegnet"), total_iters=10)
    with torch.no_grad():
        halves = [float(m.student_losses(_share(_batch(0), r, WORLD))[0]["pseudo_q"]) for r in range(WORLD)]
    assert halves[0] != pytest.approx(halves[1]) and sum(halves) / 2 == pytest.approx(qs[0], rel=1e-5)
    assert ranks[0]["losses"][0]["pseudo_q"] == pytest.approx(qs[0], rel=1e-5)


if __name__ == "__main__":  # one rank of _on_ranks
    _rank_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
