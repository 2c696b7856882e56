"""``adaptation.ddm_start: neutral``: the DDM weighs both styles 1/2 and decoders warm-started from a plain segmentor
take 1/v times its input weights, so ST-DASegNet starts predicting exactly what the model it was loaded from predicts
(with the default start it does not); a head whose inputs cannot be rescaled is refused and left as it was."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from core.errors import ConfigError
from core.jobspec import ClassSpec
from core.raster.stats import BandStats
from models.adaptation import build_method
from models.batchnorm_statistics import batchnorm_layers
from models.bundle import save_bundle
from models.decoder_inputs import input_layers, scale_input_layers
from models.pretrained import load_pretrained

CLASSES = [ClassSpec(id=i, name=n, color="#000000") for i, n in ((1, "a"), (2, "b"), (3, "c"))]


def _trained_looking_source_only(tiny, folder):
    """A source-only bundle whose batch-norm statistics are far from their initial 0 / 1, as a trained model's."""
    torch.manual_seed(0)
    cfg = tiny("source-only", bands=4, classes=3)
    so = build_method(cfg, total_iters=1)
    g = torch.Generator().manual_seed(1)
    for layer in batchnorm_layers(so.inference_segmentor()):
        layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=g))
        layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=g) * 3 + 0.2)
    stats = {"source": BandStats(mean=[0.0] * 4, std=[1.0] * 4, count=10)}
    save_bundle(folder, so.inference_segmentor(), cfg, CLASSES, stats, {}, {}, inference=so.inference_config(),
                method=so.name)
    return so.inference_segmentor().eval()


def _started_st(tiny, folder, ddm_start):
    torch.manual_seed(2)
    st = build_method(tiny("st-dasegnet", bands=4, classes=3, **{"adaptation.ddm_start": ddm_start}), total_iters=10)
    return st, load_pretrained(st, folder)


def test_a_neutral_start_predicts_what_the_plain_model_it_was_loaded_from_predicts(tiny, tmp_path):
    plain = _trained_looking_source_only(tiny, tmp_path / "so")
    x = torch.randn(3, 4, 48, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = plain.predict_logits(x)
    st, report = _started_st(tiny, tmp_path / "so", "neutral")
    dual = st.inference_segmentor().eval()
    with torch.no_grad():
        assert torch.allclose(dual.predict_logits(x), expected, atol=1e-5)
    # every level's input layer of both decoders, and the teachers copied after
    assert len(report["ddm_start"]["decoder_inputs_scaled"]) == 2 * 4
    for teacher, decoder in (("teacher_s", dual.decoder_s), ("teacher_t", dual.decoder_t)):
        theirs = decoder.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in st.net[teacher].state_dict().items()), teacher


def test_the_default_start_does_not(tiny, tmp_path):
    plain = _trained_looking_source_only(tiny, tmp_path / "so")
    x = torch.randn(3, 4, 48, 48, generator=torch.Generator().manual_seed(3))
    st, report = _started_st(tiny, tmp_path / "so", "random")
    with torch.no_grad():
        gap = (st.inference_segmentor().eval().predict_logits(x) - plain.predict_logits(x)).abs().max()
    assert gap > 1e-2 and "ddm_start" not in report


def test_a_neutral_ddm_weighs_both_styles_one_half(tiny):
    st = build_method(tiny("st-dasegnet", bands=4, classes=3, **{"adaptation.ddm_start": "neutral"}), total_iters=10)
    ddm = st.inference_segmentor().ddm
    f = [torch.randn(2, c, 4, 4) for c in ddm.in_channels]
    v_s, v_t = ddm.distinct[0].weights(f[0], f[0] * 3)
    assert torch.equal(v_s, torch.full_like(v_s, 0.5)) and torch.equal(v_t, v_s)


def test_an_unknown_ddm_start_is_refused(tiny):
    with pytest.raises(ConfigError, match="ddm_start must be one of random, neutral"):
        build_method(tiny("st-dasegnet", bands=4, classes=3, **{"adaptation.ddm_start": "identity"}), total_iters=1)


class _PooledHead(nn.Module):
    """Reads its level directly and through average pooling: the pooled path's convolution is not an input layer."""

    def __init__(self):
        super().__init__()
        self.direct = nn.Conv2d(4, 2, 1)
        self.pooled = nn.Conv2d(4, 2, 1)

    def forward(self, levels):
        x = levels[0]
        return self.direct(x) + self.pooled(nn.functional.adaptive_avg_pool2d(x, 1))


def test_a_head_that_reads_its_input_through_pooling_is_refused_and_left_as_it_was():
    torch.manual_seed(0)
    head = _PooledHead()
    levels = [torch.randn(2, 4, 8, 8)]
    assert [name for name, _ in input_layers(head, levels)] == ["direct"]
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with pytest.raises(ConfigError, match="_PooledHead reads its input levels through more than"):
        scale_input_layers(head, levels, 2.0)
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())


def test_scaled_input_layers_keep_the_head_on_scaled_inputs():
    torch.manual_seed(0)
    head = _OneLevel()  # conv -> batch norm -> ReLU -> conv
    head.eval()
    levels = [torch.randn(2, 4, 8, 8)]
    with torch.no_grad():
        expected = head(levels)
        assert scale_input_layers(head, levels, 4.0) == ["conv"]
        assert torch.allclose(head([levels[0] / 4.0]), expected, atol=1e-6)


class _OneLevel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.norm.running_mean.uniform_(-1, 1)
        self.out = nn.Conv2d(3, 2, 1)

    def forward(self, levels):
        return self.out(torch.relu(self.norm(self.conv(levels[0]))))
