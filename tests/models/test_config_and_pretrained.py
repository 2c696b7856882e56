"""Configs by name, overrides, fitting to a job; the paper configs' head widths; pretrained loading."""
from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from models.adaptation import build_method
from models.config import apply_overrides, list_configs, resolve_config
from models.pretrained import load_pretrained


def test_names_and_overrides():
    names = list_configs()
    assert {"segformer-tiny", "segformer_mit-b0", "segformer_mit-b5", "deeplabv3plus_r50-d8",
            "st-dasegnet_mit-b5_potsdam2vaihingen"} <= set(names)
    cfg = resolve_config("segformer-tiny", method="st-dasegnet", in_channels=9, num_classes=2,
                         overrides={"adaptation.pseudo_threshold": 0.9, "optim": {"lr": 1e-3}})
    assert cfg["model"]["backbone"]["in_channels"] == 9 and cfg["model"]["decode_head"]["num_classes"] == 2
    assert cfg["adaptation"]["pseudo_threshold"] == 0.9 and cfg["adaptation"]["adv_weight"] == 0.005
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["type"] == "AdamW"
    assert resolve_config("segformer-tiny")["adaptation"] == {"type": "source-only", "average_weights": 0.0}
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(cfg, {"modle.backbone.depth": 3})
    with pytest.raises(ConfigError, match="unknown model config"):
        resolve_config("segformer-huge")
    with pytest.raises(ConfigError, match="no part of the model reads 'model.backbone.no_such_kwarg'"):
        resolve_config("segformer-tiny", overrides={"model.backbone.no_such_kwarg": 1})


@pytest.mark.parametrize("overrides, field, words", [
    # what a job once wrote into its bundle and then ignored
    ({"custom_imports": {"imports": ["os"]}}, "custom_imports", ["no part of the model reads 'custom_imports'",
                                                                  "the top level has adaptation, augment"]),
    ({"a": 1}, "a", ["no part of the model reads 'a'"]),
    ({"model.backbone.embed_dim": 32}, "model.backbone.embed_dim", ["embed_dims", "MixVisionTransformer also takes"]),
    ({"lr_schedule.warmup": 5}, "lr_schedule.warmup", ["lr_schedule has min_lr, power, warmup_iters, warmup_ratio"]),
    ({"model.decode_head.loss_decode": {"type": "FocalLoss", "gama": 2.0}}, "model.decode_head.loss_decode.gama",
     ["FocalLoss also takes", "gamma"]),
    # a type is a registered name: a dotted path would be imported and called by the registry
    ({"model.type": "os.system"}, "model.type", ["not a registered module name"]),
    ({"model": {"backbone": {"type": "os.system", "command": "true"}}}, "model.backbone.type",
     ["'os.system' is not a registered", "MixVisionTransformer"]),
    ({"model.neck": {"type": "subprocess.run"}}, "model.neck.type", ["not a registered module name"]),
    ({"optim.type": "LBFGS"}, "optim.type", ["AdamW, Adam, SGD"]),
    ({"adaptation.type": "source-only"}, "adaptation.type", ["the job's method"]),
])
def test_an_override_nothing_reads_is_refused_naming_it_and_the_keys_there(overrides, field, words):
    with pytest.raises(ConfigError) as e:
        resolve_config("segformer-tiny", method="st-dasegnet", overrides=overrides, in_channels=3, num_classes=2)
    assert e.value.field == f"model.overrides.{field}"
    assert all(w in e.value.message for w in words), e.value.message


def test_overrides_of_module_arguments_the_config_leaves_at_their_defaults_still_apply():
    cfg = resolve_config("segformer-tiny", in_channels=3, num_classes=2, overrides={
        "model.backbone.with_cp": True, "optim.eps": 1e-7, "norm_cfg.momentum": 0.2,
        "model.decode_head.loss_decode": {"type": "FocalLoss", "gamma": 2.0, "use_sigmoid": True},
        "model.neck": {"type": "FPN", "in_channels": [16, 32, 80, 128], "out_channels": 64, "num_outs": 4}})
    assert cfg["model"]["backbone"]["with_cp"] is True and cfg["optim"]["eps"] == 1e-7
    assert cfg["model"]["decode_head"]["loss_decode"]["gamma"] == 2.0 and cfg["model"]["neck"]["type"] == "FPN"


def test_paper_class_weights_must_fit_the_job_classes():
    with pytest.raises(ConfigError, match="6 weights but the job has 7 classes"):
        resolve_config("st-dasegnet_mit-b5_potsdam2vaihingen", method="st-dasegnet", num_classes=7)


def test_mit_b5_head_takes_the_ddm_widened_deepest_level():
    cfg = resolve_config("st-dasegnet_mit-b5_potsdam2vaihingen", method="st-dasegnet", in_channels=3, num_classes=6)
    from models.adaptation.st_dasegnet import widen_head_for_ddm

    assert cfg["level_channels"] == [64, 128, 320, 512]
    assert widen_head_for_ddm(cfg["model"]["decode_head"], cfg["level_channels"])["in_channels"] == [64, 128, 320, 576]
    assert cfg["adaptation"]["pseudo_class_weight"] == [1.01, 1.01, 1.51, 1.51, 2.01, 2.01]
    assert cfg["adaptation"]["discriminator"]["num_layers"] == 2 and cfg["disc_optim"]["lr"] == 1e-5


def test_deeplab_head_and_discriminator_depth():
    cfg = resolve_config("deeplabv3plus_r50-d8", method="st-dasegnet", in_channels=3, num_classes=6)
    from models.adaptation.st_dasegnet import widen_head_for_ddm

    head = widen_head_for_ddm(cfg["model"]["decode_head"], cfg["level_channels"])
    assert head["in_channels"] == 2048 + 256 and head["c1_in_channels"] == 256
    assert cfg["adaptation"]["discriminator"]["num_layers"] == 3
    assert cfg["optim"]["type"] == "SGD" and cfg["optim"]["decoder_lr_mult"] == 2.0


def test_pretrained_mmseg_checkpoint_fills_every_backbone_and_adapts_bands(tiny, tmp_path):
    torch.manual_seed(0)
    donor = build_method(tiny("source-only", bands=3, classes=3), total_iters=1).net["segmentor"]
    state = {f"backbone.{k}": v for k, v in donor.backbone.state_dict().items()}
    state.update({f"decode_head.{k}": v for k, v in donor.decode_head.state_dict().items()})
    path = tmp_path / "seg.pth"
    torch.save({"state_dict": state, "meta": {}}, path)

    torch.manual_seed(1)
    m = build_method(tiny("st-dasegnet", bands=6, classes=3), total_iters=1)
    rep = load_pretrained(m, path)
    st = m.net["students"]
    first = "layers.0.0.projection.weight"
    assert first in rep["adapted"]
    w3 = donor.backbone.state_dict()[first]
    w6 = st.backbone_s.state_dict()[first]
    assert w6.shape[1] == 6 and torch.allclose(w6.sum(1), w3.sum(1), atol=1e-6)  # same response to flat input
    key = "layers.1.1.0.attn.attn.in_proj_weight"
    assert torch.equal(st.backbone_s.state_dict()[key], donor.backbone.state_dict()[key])
    assert torch.equal(st.backbone_t.state_dict()[key], donor.backbone.state_dict()[key])
    # decoders: the DDM-widened deepest input keeps the old weights, new channels start at zero
    assert "convs.3.conv.weight" in rep["widened"]
    w = st.decoder_s.convs[3].conv.weight
    assert torch.equal(w[:, :128], donor.decode_head.convs[3].conv.weight) and (w[:, 128:] == 0).all()
    assert torch.equal(st.decoder_s.conv_seg.weight, donor.decode_head.conv_seg.weight)
    assert torch.equal(m.net["teacher_s"].conv_seg.weight, donor.decode_head.conv_seg.weight)
    with pytest.raises(ConfigError):
        load_pretrained(m, tmp_path / "missing.pth")


def test_a_configs_train_block_fills_what_a_stored_spec_leaves_unset(tmp_path):
    """The paper-scale configs carry their schedule (40k iterations, batch 4, 384 px); a job spec that went
    through the service's store and names none of them gets it; a param the job set wins."""
    from core.jobspec import CONFIG_DEFAULTED_PARAMS, load_job_spec
    from models.config import train_settings

    img = tmp_path / "img.tif"
    img.write_bytes(b"")
    body = {"type": "train", "method": "source-only", "model": "segformer_mit-b0",
            "classes": [{"id": 1, "name": "a", "color": "#000000"}],
            "source": {"scenes": [{"image": str(img), "labels": str(img)}]}, "params": {"crop": 256},
            "output": str(tmp_path / "out")}
    spec = load_job_spec(load_job_spec(body).to_jsonable())
    explicit = {k: getattr(spec.params, k) for k in CONFIG_DEFAULTED_PARAMS if k in spec.params.model_fields_set}
    defaults = {k: getattr(spec.params, k) for k in CONFIG_DEFAULTED_PARAMS}
    cfg = resolve_config(spec.model.config, overrides=spec.model.overrides, num_classes=1, in_channels=3)
    assert train_settings(cfg, explicit, defaults) == {"iterations": 40000, "batch_size": 4, "crop": 256}
