"""model.overrides judged at submit: with the catalogue a worker writes at start (written here by the same
function, in a process of its own as in a worker), a key nothing reads is a 422 naming it and the keys
there; keys the model does read are accepted, in order, as the worker applies them."""
from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.store import tokens
from service.store.db import session_scope

from tests.helpers import train_spec


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    path = tmp_path_factory.mktemp("catalogue") / "override-catalogue.json"
    code = "import sys; from models.config import write_override_catalogue; write_override_catalogue(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=300)
    return path.read_bytes()


@pytest.fixture
def submit(settings, tiny_scene, catalogue):
    settings.override_catalogue.parent.mkdir(parents=True, exist_ok=True)
    settings.override_catalogue.write_bytes(catalogue)
    app = create_app(settings)
    with session_scope(app.state.sessions) as s:
        _, plain = tokens.create_token(s, name="overrides")
    with TestClient(app) as client:
        def post(overrides: dict, **extra):
            spec = train_spec(*tiny_scene, model={"config": "segformer-tiny", "overrides": overrides}, **extra)
            return client.post("/v1/jobs", json=spec, headers={"Authorization": f"Bearer {plain}"})
        yield post


@pytest.mark.parametrize("overrides, field, words", [
    ({"a": 1}, "a", ["no part of the model reads 'a'", "the top level has adaptation, augment"]),
    ({"model.backbone.embed_dim": 32}, "model.backbone.embed_dim", ["embed_dims", "MixVisionTransformer also takes"]),
    ({"model": {"decode_head": {"loss_decode": {"type": "FocalLoss", "gama": 2}}}},
     "model.decode_head.loss_decode.gama", ["FocalLoss also takes", "gamma"]),
    ({"model.backbone.type": "NoSuchBackbone"}, "model.backbone.type", ["not a registered module name"]),
    ({"adaptation.pseudo_threshold": 0.9}, "adaptation.pseudo_threshold",
     ["adaptation has average_weights, type"]),  # source-only
], ids=["made-up", "typo-of-an-argument", "typo-inside-a-new-loss", "unregistered-type", "another-methods-key"])
def test_a_key_nothing_reads_is_a_422_naming_it(submit, overrides, field, words):
    r = submit(overrides)
    assert r.status_code == 422 and r.json()["type"] == "invalid_config", r.text
    detail = r.json()["detail"][0]
    assert detail["field"] == f"model.overrides.{field}" and all(w in detail["message"] for w in words), detail


def test_keys_the_model_reads_are_accepted_in_the_order_they_apply(submit, tiny_scene):
    r = submit({"model.backbone.with_cp": True, "optim.eps": 1e-7,
                "model.neck": {"type": "FPN", "in_channels": [16, 32, 80, 128], "out_channels": 64, "num_outs": 4},
                "model.neck.num_outs": 5})  # a key of the neck the override before added
    assert r.status_code == 201, r.text
    # the adaptation's keys are the method's: ST-DASegNet's block has pseudo_threshold
    r = submit({"adaptation.pseudo_threshold": 0.9}, type="adapt", method="st-dasegnet",
               target={"scenes": [{"image": str(tiny_scene[0])}]})
    assert r.status_code == 201, r.text
