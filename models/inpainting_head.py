"""Inpainting decoder of ``method: semi``: the encoder's feature pyramid of a masked image -> the image's bands.

A light FPN-like head, the counterpart of the segmentation decoder (SemiMedSeg pairs a segmentation and an
inpainting decoder on one shared encoder)::

    every level l: 1x1 conv -> ``channels``, bilinear up to the finest level's size
    concat -> 3x3 conv + BN + ReLU                 -> features (channels, finest level's size)   [fused by GFF]
    bilinear up to the image size -> 3x3 conv      -> reconstruction (bands, H, W), in normalised units

Its features have the segmentation head's width so the gated fusion can mix the two.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from models.segmentor import upsample


class InpaintingHead(nn.Module):
    def __init__(self, in_channels: Sequence[int], channels: int, out_channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(int(c), channels, 1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels * len(self.lateral), channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def features(self, feats: Sequence[Tensor]) -> Tensor:
        """(B, channels, h0, w0) at the finest level's resolution."""
        if len(feats) != len(self.lateral):
            raise ValueError(f"the inpainting head takes {len(self.lateral)} levels, got {len(feats)}")
        size = feats[0].shape[-2:]
        lat = [upsample(conv(f), size) for conv, f in zip(self.lateral, feats)]
        return self.fuse(torch.cat(lat, dim=1))

    def reconstruct(self, features: Tensor, size: Sequence[int]) -> Tensor:
        """The image (B, out_channels, H, W) from (possibly fused) features."""
        return self.out(upsample(features, tuple(size)))

    def forward(self, feats: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        return self.reconstruct(self.features(feats), size)
