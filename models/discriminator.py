"""PatchGAN discriminator of ST-DASegNet and the spatial softmax it reads features through."""
from __future__ import annotations

import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn


def spatial_softmax(feat: Tensor) -> Tensor:
    """Softmax over H*W for each channel: the discriminator sees where, not how strong."""
    b, c, h, w = feat.shape
    return feat.flatten(2).softmax(dim=-1).view(b, c, h, w)


@MODELS.register_module()
class PatchGANDiscriminator(nn.Module):
    """conv4x4/2 (C->64) + LReLU; (n-1) x [conv4x4/2 doubling (cap 512) + IN + LReLU];
    conv4x4/1 to min(2^n, 8)*64 + IN + LReLU; conv4x4/1 to 1 logit. Padding 1 throughout.

    Inputs smaller than :attr:`min_size` (a small crop through a stride-32 backbone) would shrink
    to nothing or to a single pixel that instance norm cannot normalise; they are bilinearly
    upsampled to ``min_size`` first. This never triggers at the paper's crop sizes (512-1024).
    """

    def __init__(self, in_channels: int, num_layers: int = 2, base_channels: int = 64, max_channels: int = 512,
                 negative_slope: float = 0.2):
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers (n) must be >= 1")
        self.in_channels = in_channels
        self.num_layers = num_layers
        act = lambda: nn.LeakyReLU(negative_slope, inplace=True)  # noqa: E731
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1), act()]
        ch = base_channels
        for _ in range(num_layers - 1):
            nxt = min(ch * 2, max_channels)
            layers += [nn.Conv2d(ch, nxt, 4, 2, 1), nn.InstanceNorm2d(nxt), act()]
            ch = nxt
        nxt = min(2 ** num_layers, 8) * base_channels
        layers += [nn.Conv2d(ch, nxt, 4, 1, 1), nn.InstanceNorm2d(nxt), act(), nn.Conv2d(nxt, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)
        self.min_size = self._min_input_size()

    def _min_input_size(self) -> int:
        """Smallest side for which every instance-normed map has >= 2 pixels per side."""
        for size in range(1, 4096):
            s, ok = size, True
            for m in self.model:
                if isinstance(m, nn.Conv2d):
                    s = (s + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
                    if s < 1:
                        ok = False
                        break
                elif isinstance(m, nn.InstanceNorm2d) and s < 2:
                    ok = False
                    break
            if ok:
                return size
        raise ValueError("discriminator too deep for any input size")  # pragma: no cover

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits (B, 1, h, w)."""
        h, w = x.shape[-2:]
        if h < self.min_size or w < self.min_size:
            x = F.interpolate(x, size=(max(h, self.min_size), max(w, self.min_size)), mode="bilinear",
                              align_corners=False)
        return self.model(x)
