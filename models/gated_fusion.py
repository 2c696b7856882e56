"""Gated feature fusion (GFF) of two feature maps, after SemiMedSeg's module (Zhang et al., MICCAI 2021).

A GRU-like gate lets the main features ``a`` take in what the other features ``b`` add::

    r   = sigmoid(W_r * [a, b])          reset gate: which parts of b to look at
    z   = sigmoid(W_z * [a, b])          select gate: how much of the candidate to take, per channel and pixel
    h   = relu(W_o * [a, r . b])         candidate features
    out = (1 - z) . a + z . h

``*`` is a k x k convolution over the channel concatenation ``[., .]``; ``.`` the element-wise product.
Weights start orthogonal and biases at zero (the reference's initialisation), so at the start z is about
one half everywhere. In ``method: semi`` a is the segmentation decoder's features of the image, b the
inpainting decoder's features of the same image with the predicted regions of some classes masked out.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedFeatureFusion(nn.Module):
    """out = (1 - z) a + z relu(W_o [a, r b]), r and z sigmoid gates of [a, b] (module docstring)."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd number >= 1, got {kernel_size}")
        pad = kernel_size // 2
        self.reset_gate = nn.Conv2d(2 * channels, channels, kernel_size, padding=pad)
        self.select_gate = nn.Conv2d(2 * channels, channels, kernel_size, padding=pad)
        self.candidate = nn.Conv2d(2 * channels, channels, kernel_size, padding=pad)
        for conv in (self.reset_gate, self.select_gate, self.candidate):
            nn.init.orthogonal_(conv.weight)
            nn.init.zeros_(conv.bias)

    def gates(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """(r, z): the reset and select gates, each shaped like ``a``."""
        ab = torch.cat([a, b], dim=1)
        return torch.sigmoid(self.reset_gate(ab)), torch.sigmoid(self.select_gate(ab))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape != b.shape:
            raise ValueError(f"GFF fuses maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        r, z = self.gates(a, b)
        h = torch.relu(self.candidate(torch.cat([a, r * b], dim=1)))
        return (1 - z) * a + z * h
