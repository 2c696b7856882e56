"""HistoryFile: the loss curve written beside a job's outputs, cut back on resume."""
import json

from models.training.callbacks import HistoryFile, Progress


def _progress(it, total=10, loss=1.0):
    return Progress(iteration=it, total=total, losses={"loss": loss / it}, lr={"backbone": 1e-4}, elapsed_s=it,
                    eta_s=None)


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_writes_losses_and_validations_then_drops_redone_iterations_on_resume(tmp_path):
    path = tmp_path / "history.jsonl"
    h = HistoryFile(path, every=2)
    h.on_start(0, 10)
    for it in range(1, 8):
        h.on_progress(_progress(it))
    h.on_validation(6, {"miou": 0.4, "oa": 0.8, "mf1": 0.5, "per_class": {}}, True)
    lines = _lines(path)
    assert [x["iteration"] for x in lines if "losses" in x] == [2, 4, 6]
    assert lines[-1] == {"iteration": 6, "validation": {"miou": 0.4, "oa": 0.8, "mf1": 0.5}, "best": True}

    # a crash after iteration 7 with the last checkpoint at 4: iterations 5.. run again
    with open(path, "a") as f:
        f.write('{"iteration": 8, "loss')  # a line cut by the crash
    resumed = HistoryFile(path, every=2)
    resumed.on_start(4, 10)
    assert [x["iteration"] for x in _lines(path)] == [2, 4]
    for it in range(5, 11):
        resumed.on_progress(_progress(it))
    assert [x["iteration"] for x in _lines(path)] == [2, 4, 6, 8, 10]


def test_default_spacing_keeps_long_schedules_small(tmp_path):
    h = HistoryFile(tmp_path / "h.jsonl")
    h.on_start(0, 40000)
    for it in range(1, 401):
        h.on_progress(_progress(it, total=40000))
    assert len(_lines(tmp_path / "h.jsonl")) == 5  # every 80 iterations
