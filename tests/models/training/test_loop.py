"""The loop: N iterations straight equal N/2 + resume + N/2; cooperative stop; best-checkpoint tracking;
the late losses (means over the last tenth of the schedule), across a resume too."""
from __future__ import annotations

import pytest
import torch

from models.adaptation import build_method
from models.training.callbacks import Callback, History, StopAfter
from models.training.checkpoint import BEST, LAST, load_checkpoint
from models.training.loop import TrainLoop, late_start, load_best_weights


def _run(tiny, batch_source, workdir, total, *, stop_after=None, resume=True, method="st-dasegnet"):
    torch.manual_seed(123)  # fixed seed: identical initial weights for both runs
    m = build_method(tiny(method, **{"model.decode_head.dropout_ratio": 0.1}), total_iters=total)
    hist = History()
    cbs = [hist] + ([StopAfter(stop_after)] if stop_after else [])
    loop = TrainLoop(m, batch_source(seed=5, crop=32, b=2), total_iters=total, workdir=workdir, callbacks=cbs)
    return m, loop.run(resume=resume), hist


def _full_state(m):
    sd = m.state_dict()
    return {k: v for k, v in sd["net"].items()}, sd["optimizers"]


def test_resume_equals_straight_run(tiny, batch_source, tmp_path):
    n = 6
    straight, res_a, hist_a = _run(tiny, batch_source, tmp_path / "a", n)
    assert res_a.finished and not res_a.stopped

    _, res_b1, _ = _run(tiny, batch_source, tmp_path / "b", n, stop_after=n // 2)
    assert res_b1.stopped and res_b1.iterations_done == n // 2 and (tmp_path / "b" / LAST).exists()
    # a fresh process would rebuild everything with other random weights: the checkpoint must win
    torch.manual_seed(999)
    resumed, res_b2, hist_b = _run(tiny, batch_source, tmp_path / "b", n)
    assert res_b2.finished and hist_b.progress[0].iteration == n // 2 + 1

    net_a, opt_a = _full_state(straight)
    net_b, opt_b = _full_state(resumed)
    assert net_a.keys() == net_b.keys()
    for k in net_a:  # students, DDM, teachers, discriminators, BN buffers: bit-identical
        assert torch.equal(net_a[k], net_b[k]), k
    for name in opt_a:
        for pid, st in opt_a[name]["state"].items():
            for key, v in st.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt_b[name]["state"][pid][key])), (name, key)
    assert hist_a.progress[-1].losses == hist_b.progress[-1].losses
    assert load_checkpoint(tmp_path / "b" / LAST)["iteration"] == n


class _StopAt(Callback):
    def __init__(self, when):
        self.when, self.seen, self.checkpoints = when, 0, []

    def on_progress(self, p):
        self.seen = p.iteration

    def on_checkpoint(self, iteration, path, kind):
        self.checkpoints.append((iteration, kind))

    def should_stop(self):
        return self.seen >= self.when


def test_cooperative_stop_checkpoints_and_best_tracking(tiny, batch_source, tmp_path):
    torch.manual_seed(0)
    m = build_method(tiny("source-only"), total_iters=8)
    scores = iter([0.2, 0.5, 0.4])
    stop = _StopAt(6)
    progress = History()
    loop = TrainLoop(m, batch_source(seed=1, crop=32, target=False), total_iters=8, workdir=tmp_path,
                     validate=lambda seg: {"miou": next(scores)}, val_interval=2, callbacks=[progress, stop])
    res = loop.run()
    assert res.stopped and res.iterations_done == 6
    assert (6, "last") in stop.checkpoints and (4, "best") in stop.checkpoints
    assert res.best["iteration"] == 4 and res.best["value"] == 0.5
    p = progress.progress[-1]
    assert p.total == 8 and p.eta_s is not None and set(p.lr) == {"student"} and "loss" in p.losses
    rec = load_best_weights(m, tmp_path)
    assert rec["iteration"] == 4 and (tmp_path / BEST).exists()


def test_late_losses_average_the_last_tenth_of_the_schedule_across_a_resume(tiny, batch_source, tmp_path):
    assert (late_start(800), late_start(20), late_start(5), late_start(1)) == (720, 18, 4, 0)
    n = 20
    _, straight, hist = _run(tiny, batch_source, tmp_path / "a", n, method="source-only")
    last_two = [p.losses for p in hist.progress if p.iteration > 18]  # iterations 18 and 19, 0-based
    assert len(last_two) == 2
    for k in ("loss", "ce_src"):
        assert straight.late_losses[k] == pytest.approx(sum(x[k] for x in last_two) / 2)
    assert straight.late_losses["loss"] != pytest.approx(straight.final_losses["loss"])  # an average, not the last

    # stopped inside the late window: the part already averaged travels in the checkpoint
    _, first, _ = _run(tiny, batch_source, tmp_path / "b", n, stop_after=19, method="source-only")
    assert first.stopped and first.iterations_done == 19
    _, resumed, _ = _run(tiny, batch_source, tmp_path / "b", n, method="source-only")
    assert resumed.late_losses == pytest.approx(straight.late_losses)
    # the training time adds up over the two runs; a finished job run again keeps it
    assert resumed.elapsed_s > first.elapsed_s > 0
    _, again, _ = _run(tiny, batch_source, tmp_path / "b", n, method="source-only")
    assert again.iterations_done == n and again.elapsed_s == pytest.approx(resumed.elapsed_s, abs=0.05)


def test_a_resumed_job_records_the_code_of_each_run_that_trained_it(tiny, batch_source, tmp_path, monkeypatch):
    import models.training.loop as loop_module

    first_code = {"version": "0.1.0", "commit": "a" * 40, "modified": False}
    later_code = {"version": "0.1.0", "commit": "b" * 40, "modified": True}
    monkeypatch.setattr(loop_module, "code_version", lambda: first_code)
    _, first, _ = _run(tiny, batch_source, tmp_path, 6, stop_after=3, method="source-only")
    assert first.code == [first_code]
    _, resumed, _ = _run(tiny, batch_source, tmp_path, 6, method="source-only")  # the same code again: one entry
    assert resumed.code == [first_code]
    _, done, _ = _run(tiny, batch_source, tmp_path / "other", 6, stop_after=3, method="source-only")
    monkeypatch.setattr(loop_module, "code_version", lambda: later_code)
    _, mixed, _ = _run(tiny, batch_source, tmp_path / "other", 6, method="source-only")
    assert mixed.code == [first_code, later_code]
    # a finished job run again by other code trains nothing: its record stays what trained it
    _, reused, _ = _run(tiny, batch_source, tmp_path, 6, method="source-only")
    assert reused.iterations_done == 6 and reused.code == [first_code]


def test_the_code_version_names_this_checkout():
    import subprocess
    import tomllib

    from core.code_version import ROOT, code_version, source_digest

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    version = code_version()
    assert version["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    if head.returncode == 0:  # run from a checkout (CI's clean clone is one)
        assert version["commit"] == head.stdout.strip() and isinstance(version["modified"], bool)
    assert version["source"] == source_digest(ROOT) and len(version["source"]) == 64


def test_the_code_digest_names_the_sources_wherever_they_lie(tmp_path):
    """An installed copy of the sources (as the worker image makes one, without .git) has the checkout's digest;
    changing, adding or renaming a source file changes it; compiled caches and files of other packages do not."""
    import shutil

    from core.code_version import ROOT, SOURCE_PACKAGES, source_digest

    copy = tmp_path / "site-packages"
    for package in SOURCE_PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    here = source_digest(ROOT)
    assert source_digest(copy) == here
    (copy / "core" / "__pycache__").mkdir(exist_ok=True)
    (copy / "core" / "__pycache__" / "x.cpython-311.py").write_text("cached")
    (copy / "cli").mkdir(exist_ok=True)
    (copy / "cli" / "other.py").write_text("x = 1\n")
    assert source_digest(copy) == here
    module = copy / "core" / "task_names.py"
    module.write_text(module.read_text() + "\n")
    changed = source_digest(copy)
    assert changed != here
    module.rename(copy / "core" / "task_names_renamed.py")
    assert source_digest(copy) not in (here, changed)
    (copy / "models" / "new_module.py").write_text("")
    assert len({source_digest(copy), here, changed}) == 3
