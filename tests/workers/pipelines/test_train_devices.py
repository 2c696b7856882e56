"""Train jobs on several devices (``params.devices``) through the pipeline, on the real NC scene: CPU ranks
with gloo. ``devices: 1`` runs the distributed path and matches the plain run bit for bit; two ranks write a
bundle, checkpoints with each rank's state, progress, and resume exactly after a stop."""
from __future__ import annotations

import json

import pytest
import torch

from core.data.nc import NC_CLASSES
from core.errors import DevicesUnavailableError, SpecError
from core.jobspec import load_job_spec
from models.bundle import load_bundle
from models.training.callbacks import History, StopAfter
from models.training.checkpoint import LAST, load_checkpoint
from workers.distributed import Ranks
from workers.pipelines.dispatch import run_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(d, out, *, type="train", method="source-only", model=None, **params):
    body = {"type": type, "method": method, "classes": NC_CLASSES, "source": d["source"],
            "params": {"iterations": 6, "batch_size": 4, "crop": 32, "seed": 2, **params}, "output": str(out)}
    if model is not None:
        body["model"] = model
    if type == "adapt":
        body["target"] = d["target"]
    return load_job_spec(body)


def _weights(path):
    return load_bundle(path).segmentor.state_dict()


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_devices_1_runs_the_distributed_path_and_equals_the_plain_run(bench_domains, tmp_path):
    plain_hist, ddp_hist = History(), History()
    plain = run_job(_spec(bench_domains, tmp_path / "plain"), [plain_hist])
    one = run_job(_spec(bench_domains, tmp_path / "one", devices=1), [ddp_hist], log=print)
    assert plain["status"] == one["status"] == "finished"
    assert one["provenance"]["devices"] == 1 and "devices" not in plain["provenance"]
    # the same loss curve and weights: the DDP path with one rank draws and steps as one process does
    assert [p.losses for p in plain_hist.progress] == [p.losses for p in ddp_hist.progress]
    assert _same_weights(_weights(tmp_path / "plain"), _weights(tmp_path / "one"))


def test_two_cpu_ranks_train_checkpoint_and_resume_exactly(bench_domains, tmp_path):
    params = {"devices": 2, "checkpoint_interval": 2}
    first = run_job(_spec(bench_domains, tmp_path / "resumed", **params), [StopAfter(3)])
    assert first["status"] == "stopped" and first["iteration"] == 3
    ckpt = load_checkpoint(tmp_path / "resumed" / "checkpoints" / LAST)
    # every rank's own sampler stream is in the checkpoint: the two draw different windows
    ranks = ckpt["ranks"]
    assert len(ranks) == 2 and ranks[0]["batches"]["source"] != ranks[1]["batches"]["source"]
    assert ranks[0]["batches"]["source"] == ckpt["batches"]["source"]

    hist = History()
    second = run_job(_spec(bench_domains, tmp_path / "resumed", **params), [hist])
    assert second["status"] == "finished" and hist.progress[0].iteration == 4
    straight = run_job(_spec(bench_domains, tmp_path / "straight", **params))
    assert _same_weights(_weights(tmp_path / "resumed"), _weights(tmp_path / "straight"))
    assert second["metrics"]["training"]["final_losses"] == straight["metrics"]["training"]["final_losses"]
    assert second["metrics"]["training"]["late_losses"] == straight["metrics"]["training"]["late_losses"]
    assert second["provenance"]["devices"] == 2 and second["provenance"]["batch_size"] == 4
    # rank 0 alone wrote the job's files; the other rank said what it did in its log
    history = [json.loads(line) for line in (tmp_path / "straight" / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [1, 2, 3, 4, 5, 6]
    log = (tmp_path / "straight" / "checkpoints" / "ranks" / "rank-1.log").read_text()
    assert "rank finished" in log and "2 x cpu (gloo, rank 1)" in log


def test_st_dasegnet_adapt_job_on_two_ranks(bench_domains, tmp_path):
    hist = History()
    # with the label-shift option both ranks pool pixels through gathers every step
    model = {"config": "segformer-tiny", "overrides": {"adaptation.pseudo_prior": "em"}}
    res = run_job(_spec(bench_domains, tmp_path, type="adapt", method="st-dasegnet", model=model, iterations=3,
                        devices=2, predict_targets=False), [hist])
    assert res["status"] == "finished" and res["provenance"]["devices"] == 2
    shift = res["metrics"]["training"]["label_shift"]
    assert sum(shift["target_prior"]) == pytest.approx(1.0, abs=1e-3)
    late = res["metrics"]["training"]["late_losses"]
    assert {"pseudo_q", "disc_bce", "adv_s"} <= set(late) and 0 <= late["pseudo_q"] <= 1
    assert [p.iteration for p in hist.progress] == [1, 2, 3]
    assert load_bundle(tmp_path).method == "st-dasegnet"


def test_a_rank_that_fails_fails_the_job_with_its_error(bench_domains, tmp_path, monkeypatch):
    from workers import distributed

    spec = _spec(bench_domains, tmp_path, devices=2, iterations=4)
    # the other rank is given a crop larger than the scene's region: it fails while it prepares
    broken = spec.model_copy(update={"params": spec.params.model_copy(update={"crop": 4096})})
    start = distributed.Ranks._start_peers
    monkeypatch.setattr(distributed.Ranks, "_start_peers", lambda self, s, resume, log: start(self, broken, resume, log))
    with pytest.raises(RuntimeError, match="a training rank failed: rank 1 exited with 1") as e:
        run_job(spec)
    assert "Error" in str(e.value)  # the rank's own error, from its log


def test_more_gpus_than_the_worker_has_fail_naming_the_field(bench_domains, tmp_path):
    spec = _spec(bench_domains, tmp_path, devices=2)
    have = torch.cuda.device_count()
    with pytest.raises(DevicesUnavailableError) as e:
        Ranks.for_job(spec.model_copy(update={"params": spec.params.model_copy(update={"devices": have + 1})}),
                      torch.device("cuda"))
    assert e.value.field == "params.devices" and f"asks for {have + 1} GPUs; this worker has {have}" in str(e.value)
    with pytest.raises(SpecError, match="params.devices: batch_size 5 does not split evenly among 2 devices"):
        Ranks.for_job(spec, torch.device("cpu")).share(5)
