"""params.devices: an int >= 1 for the jobs that train through the loop, sharing the batch out evenly."""
import pytest

from core.errors import SpecError
from core.jobspec import load_job_spec


def _body(tmp_path, *, type="train", method="source-only", **params):
    img, lab = tmp_path / "img.tif", tmp_path / "lab.tif"
    for f in (img, lab):
        f.write_bytes(b"")
    body = {"type": type, "method": method, "classes": [{"id": 1, "name": "a", "color": "#000000"}],
            "source": {"scenes": [{"image": str(img), "labels": str(lab)}]}, "params": params,
            "output": str(tmp_path / "out")}
    if type == "adapt":
        body["target"] = {"scenes": [{"image": str(img)}]}
    if method == "adabn":
        body.pop("source")
        body["bundle"] = str(tmp_path)
    return body


def _problem(tmp_path, **kw) -> tuple[str, str]:
    with pytest.raises(SpecError) as e:
        load_job_spec(_body(tmp_path, **kw))
    p = e.value.problems[0]
    return p["field"], p["message"]


def test_devices_absent_by_default_and_taken_when_the_batch_splits(tmp_path):
    assert load_job_spec(_body(tmp_path)).params.devices is None
    spec = load_job_spec(_body(tmp_path, type="adapt", method="st-dasegnet", devices=2, batch_size=4))
    assert spec.params.devices == 2
    # batch_size left to the config's train block (or the default 4): checked when the job runs
    assert load_job_spec(_body(tmp_path, devices=3)).params.devices == 3


@pytest.mark.parametrize("value, says", [(0, "greater than or equal to 1"), (65, "less than or equal to 64"),
                                         ("2", "valid integer"), (1.5, "valid integer")])
def test_bad_device_counts_name_the_field(tmp_path, value, says):
    field, message = _problem(tmp_path, devices=value)
    assert field == "params.devices" and says in message


def test_batch_that_does_not_split_among_the_devices_is_refused(tmp_path):
    assert _problem(tmp_path, devices=3, batch_size=4) == (
        "params.devices", "batch_size 4 does not split evenly among 3 devices (each takes batch_size / devices of "
                          "every batch)")


@pytest.mark.parametrize("method", ["feature-regression", "adabn"])
def test_methods_that_run_in_one_process_refuse_devices(tmp_path, method):
    field, message = _problem(tmp_path, type="adapt", method=method, devices=2)
    assert field == "params.devices" and message.startswith(f"{method} jobs run in one process")
