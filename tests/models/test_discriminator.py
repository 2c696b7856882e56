"""PatchGAN discriminator geometry and the spatial softmax it reads features through."""
from __future__ import annotations

import torch
from torch import nn

from models.discriminator import PatchGANDiscriminator, spatial_softmax


def _conv_widths(d: PatchGANDiscriminator) -> list[tuple[int, int, int]]:
    return [(m.in_channels, m.out_channels, m.stride[0]) for m in d.model if isinstance(m, nn.Conv2d)]


def test_segformer_discriminator_maps_12x12_to_1x1():
    d = PatchGANDiscriminator(512, num_layers=2)
    assert _conv_widths(d) == [(512, 64, 2), (64, 128, 2), (128, 256, 1), (256, 1, 1)]
    out = d(torch.randn(2, 512, 12, 12))
    assert out.shape == (2, 1, 1, 1)
    assert d.min_size == 12  # smaller maps cannot pass the instance norms: they are upsampled


def test_resnet_discriminator_widths_and_norms():
    d = PatchGANDiscriminator(2048, num_layers=3)
    assert _conv_widths(d) == [(2048, 64, 2), (64, 128, 2), (128, 256, 2), (256, 512, 1), (512, 1, 1)]
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in d.model) == 3
    assert all(m.negative_slope == 0.2 for m in d.model if isinstance(m, nn.LeakyReLU))


def test_small_inputs_still_give_patch_logits():
    d = PatchGANDiscriminator(32, num_layers=2)
    assert d(torch.randn(1, 32, 4, 4)).shape == (1, 1, 1, 1)


def test_spatial_softmax_is_per_channel_over_space():
    x = torch.randn(2, 3, 4, 5)
    y = spatial_softmax(x)
    assert torch.allclose(y.sum(dim=(2, 3)), torch.ones(2, 3))
    ref = torch.exp(x[1, 2]) / torch.exp(x[1, 2]).sum()
    assert torch.allclose(y[1, 2], ref, atol=1e-6)
