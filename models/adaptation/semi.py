"""Semi-supervised correction (``method: semi``): SemiMedSeg's coarse-to-fine self-supervised correction
(Zhang et al., MICCAI 2021), adapted from one lesion class to land-cover classes, for a target of which a
few windows are labelled.

One shared encoder E (backbone + neck), a segmentation decoder D_seg (the config's decode head), an
inpainting decoder D_inp (models.inpainting_head) and a gated feature fusion GFF (models.gated_fusion).
Call flow of ``train_step``::

    labelled windows: source crops x_s (y_s) and labelled target crops x_l (y_l: 255 outside the labels)
    f = D_seg features of E([x_s, x_l])     coarse = cls(f)                     (one pass)
    L = CE(coarse_s, y_s) + w_t CE(coarse_l, y_l)                                phase 1: this alone
    phase 2 (from ``phase1`` x the budget on):
      masks per class: from a window's coarse map, classes in random order while their predicted share
          stays <= max_mask_fraction (else its least predicted class); M = pixels predicted as one of them
      labelled target:   x_l~ = x_l (1 - M_l);  fine = cls(GFF(f_l, D_inp features of E(x_l~)))
                         L += w_fine w_t CE(fine, y_l)
      unlabelled target: coarse map of x_u (no gradient) -> M_u;  rec = D_inp(E(x_u (1 - M_u)))
                         L += w_inp mean |rec - x_u| over the masked valid pixels
    one optimiser step over E, D_seg, D_inp and GFF

Inference is the plain segmentor E + D_seg on the image (the coarse pass), so a semi bundle predicts,
serves tiles, exports and teaches like any source-only one.

Choices where the paper (written for one foreground class) is silent or does not fit land cover, each
also in docs/semi.md:
- Per-class masking: every pixel of a land-cover map has a class, so masking all "detected regions" would
  mask the whole window; a random subset of the predicted classes is masked instead, a different one each
  time, so every class gets inpainted from its context.
- GFF fuses the two decoders' features (the issue's wording) and the inpainting decoder sees only the masked
  image: the reference fuses the encoder features of the original and the masked image and feeds both
  decoders with them, which lets the inpainting branch read the masked pixels from the original.
- Inference on the coarse pass: a fine pass at test time would need one masked image per class (K + 1
  encoder passes per window). The coarse pass is supervised directly on every labelled window; the
  reference supervises only its fine output.
- The fine pass runs on the labelled target windows, not on the source crops: the correction is for the
  target, and each extra pass costs a full encoder pass on the CPU.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch
from mmengine.config import Config
from torch import Tensor, nn

from core.errors import ConfigError
from models.adaptation.base import AdaptationMethod, register_method
from models.adaptation.source_only import class_weight_of, optim_modules_cfg
from models.gated_fusion import GatedFeatureFusion
from models.inpainting_head import InpaintingHead
from models.losses import cross_entropy
from models.segmentor import Segmentor, upsample


# -- pieces with their own formula tests ------------------------------------------------------------
def choose_mask_classes(pred: Tensor, valid: Tensor, num_classes: int, *, max_fraction: float,
                        generator: torch.Generator | None = None) -> Tensor:
    """(B, K) bool: the classes whose predicted regions are masked in each window.

    Present classes (predicted on a valid pixel) are taken in random order while the masked share of the
    window's valid pixels stays <= ``max_fraction``; a window where no class fits takes its least
    predicted class alone. Windows without a valid pixel mask nothing.
    """
    b = pred.shape[0]
    chosen = torch.zeros(b, num_classes, dtype=torch.bool)
    for i in range(b):
        v = valid[i]
        n = int(v.sum())
        if n == 0:
            continue
        share = torch.bincount(pred[i][v].flatten().cpu(), minlength=num_classes)[:num_classes].double() / n
        present = [int(c) for c in torch.randperm(num_classes, generator=generator) if share[c] > 0]
        total = 0.0
        for c in present:
            if total + float(share[c]) <= max_fraction + 1e-9:
                chosen[i, c] = True
                total += float(share[c])
        if not chosen[i].any():
            chosen[i, min(present, key=lambda c: float(share[c]))] = True
    return chosen.to(pred.device)


def class_region_mask(pred: Tensor, valid: Tensor, chosen: Tensor) -> Tensor:
    """(B, H, W) bool: valid pixels whose predicted class (``pred``, (B, H, W) train ids) is chosen for
    their window (``chosen``, (B, K) bool)."""
    k = chosen.shape[1]
    hit = torch.gather(chosen, 1, pred.clamp(0, k - 1).flatten(1)).view_as(pred)
    return hit & valid & (pred < k)


def mask_image(x: Tensor, mask: Tensor) -> Tensor:
    """The image with the masked pixels set to 0 in every band: the band mean of normalised inputs."""
    return x * (~mask)[:, None].to(x.dtype)


def inpainting_loss(rec: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error of the reconstruction over the masked pixels (every band); 0 without any."""
    m = mask[:, None].to(rec.dtype)
    count = m.sum() * rec.shape[1]
    if count == 0:
        return rec.sum() * 0.0  # keeps the graph, contributes nothing
    return ((rec - x).abs() * m).sum() / count


@contextmanager
def _classifier_input(head: nn.Module) -> Iterator[None]:
    """While open, ``head(feats)`` returns what its classifier (``conv_seg``) would take instead of logits:
    every mmseg decode head ends in ``cls_seg`` = dropout + conv_seg."""
    handle = head.conv_seg.register_forward_hook(lambda mod, args, out: args[0])
    try:
        yield
    finally:
        handle.remove()


def head_features(head: nn.Module, feats: Sequence[Tensor]) -> Tensor:
    """The decode head's features before its 1x1 classifier (after its dropout)."""
    with _classifier_input(head):
        return head(list(feats))


# -- the method ----------------------------------------------------------------------------------------
@register_method("semi")
class SemiSupervisedCorrection(AdaptationMethod):
    needs_target = True
    needs_target_labels = True

    def __init__(self, cfg: Config | Mapping, *, total_iters: int):
        super().__init__(cfg, total_iters=total_iters)
        m, a = self.cfg["model"], dict(self.cfg.get("adaptation") or {})
        self.a = a
        for key in ("phase1", "max_mask_fraction"):
            v = float(a.get(key, 0.0))
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"adaptation.{key} is a fraction (0-1), got {v}", field=f"adaptation.{key}")
        seg = Segmentor(m["backbone"], m["decode_head"], m.get("neck"))
        if not hasattr(seg.decode_head, "conv_seg"):
            raise ConfigError(f"method semi needs a decode head with an mmseg classifier (conv_seg); "
                              f"{m['decode_head'].get('type')!r} has none", field="model.decode_head")
        self.net["segmentor"] = seg
        bands = int(m["backbone"].get("in_channels", 3))
        levels = self._encoder_channels(seg, bands)
        channels = int(m["decode_head"]["channels"])
        self.net["inpainter"] = InpaintingHead(levels, channels, bands)
        self.net["fusion"] = GatedFeatureFusion(channels, int(a.get("fusion_kernel", 3)))
        self.class_weight = class_weight_of(m)
        self.num_classes = int(m["decode_head"]["num_classes"])
        modules = {"backbone": seg.backbone, "decode_head": seg.decode_head,
                   "inpainter": self.net["inpainter"], "fusion": self.net["fusion"]}
        if seg.neck is not None:
            modules["neck"] = seg.neck
        # the new heads learn from scratch like the decoder: they take its lr multiplier
        self.add_optimizer("student", modules,
                           optim_modules_cfg(self.cfg["optim"], ["decode_head", "inpainter", "fusion"]),
                           self.cfg.get("lr_schedule"))
        self.mask_rng = torch.Generator().manual_seed(int(a.get("mask_seed", 0)))
        self.train()

    @staticmethod
    def _encoder_channels(seg: Segmentor, bands: int) -> list[int]:
        with torch.no_grad():
            was = seg.training
            seg.eval()
            try:
                feats = seg.extract(torch.zeros(1, bands, 64, 64))
            finally:
                seg.train(was)
        return [int(f.shape[1]) for f in feats]

    # -- schedule --
    def phase1_iters(self) -> int:
        """Iterations of segmentation alone before the masked pass starts."""
        return int(round(float(self.a.get("phase1", 0.25)) * self.total_iters))

    # -- the objective --
    @property
    def segmentor(self) -> Segmentor:
        return self.net["segmentor"]

    def masks_of(self, coarse_logits: Tensor, valid: Tensor) -> Tensor:
        """Per-class masks (B, H, W) of windows from their coarse logits (no gradient flows through)."""
        pred = upsample(coarse_logits.detach(), valid.shape[-2:]).argmax(dim=1)
        chosen = choose_mask_classes(pred, valid, self.num_classes,
                                     max_fraction=float(self.a.get("max_mask_fraction", 0.5)),
                                     generator=self.mask_rng)
        return class_region_mask(pred, valid, chosen)

    def fine_logits(self, seg_features: Tensor, masked: Tensor) -> Tensor:
        """The fine segmentation: the classifier on GFF(segmentation features of the image, inpainting
        features of its masked copy)."""
        g = self.net["inpainter"].features(self.segmentor.extract(masked))
        g = upsample(g, seg_features.shape[-2:])
        return self.segmentor.decode_head.conv_seg(self.net["fusion"](seg_features, g))

    def inpainting_term(self, target: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(inpainting loss, masked share) of unlabelled target windows: their coarse maps (no gradient)
        choose the masks, the inpainting decoder reconstructs the masked pixels from the rest."""
        x, valid = target["img"], target["valid"]
        n = self.a.get("inpaint_batch_size")
        if n:  # fewer crops than the batch: the inpainting pass costs two encoder passes per crop
            x, valid = x[: int(n)], valid[: int(n)]
        with torch.no_grad():
            mask = self.masks_of(self.segmentor.forward_logits(x), valid)
        rec = self.net["inpainter"](self.segmentor.extract(mask_image(x, mask)), x.shape[-2:])
        share = mask.sum().float() / valid.sum().clamp(min=1)
        return inpainting_loss(rec, x, mask), share

    def losses(self, batch: Mapping, iteration: int) -> dict[str, Tensor]:
        """Every term (tensors) and the weighted total under ``loss``."""
        src = batch["source"]
        if "target_labelled" not in batch:
            raise ConfigError("method semi trains on labelled target windows: the batch has none "
                              "(the target scenes need labels)", field="target")
        tl = batch["target_labelled"]
        n = src["img"].shape[0]
        head = self.segmentor.decode_head
        f = head_features(head, self.segmentor.extract(torch.cat([src["img"], tl["img"]], dim=0)))
        coarse = head.conv_seg(f)
        w_t = float(self.a.get("target_weight", 1.0))
        terms = {"ce_src": cross_entropy(coarse[:n], src["label"], class_weight=self.class_weight),
                 "ce_tgt": cross_entropy(coarse[n:], tl["label"], class_weight=self.class_weight)}
        total = terms["ce_src"] + w_t * terms["ce_tgt"]
        if iteration >= self.phase1_iters():
            mask_l = self.masks_of(coarse[n:], tl["valid"])
            fine = self.fine_logits(f[n:], mask_image(tl["img"], mask_l))
            terms["ce_fine"] = cross_entropy(fine, tl["label"], class_weight=self.class_weight)
            terms["inpaint"], terms["masked_share"] = self.inpainting_term(batch["target"])
            total = (total + float(self.a.get("fine_weight", 1.0)) * w_t * terms["ce_fine"]
                     + float(self.a.get("inpaint_weight", 0.5)) * terms["inpaint"])
        terms["loss"] = total
        return terms

    def train_step(self, batch: Mapping, iteration: int) -> dict[str, float]:
        self.set_lr(iteration)
        opt = self.optimizers["student"]
        opt.zero_grad(set_to_none=True)
        terms = self.losses(batch, iteration)
        terms["loss"].backward()
        self.step("student")  # averaged over the ranks when several train together
        self.update_weight_average(iteration)
        return {k: float(v.detach()) for k, v in terms.items()}

    # -- state: the mask generator too, so a resumed run masks as the uninterrupted one would --
    def state_dict(self) -> dict:
        return {**super().state_dict(), "mask_rng": self.mask_rng.get_state()}

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        if state.get("mask_rng") is not None:
            self.mask_rng.set_state(state["mask_rng"])

    def backbones(self) -> list[nn.Module]:
        return [self.segmentor.backbone]

    def decoders(self) -> list[nn.Module]:
        return [self.segmentor.decode_head]

    def inference_config(self) -> dict:
        m = self.cfg["model"]
        return copy.deepcopy({"type": "Segmentor", "backbone": m["backbone"], "decode_head": m["decode_head"],
                              "neck": m.get("neck")})

    def inference_segmentor(self) -> nn.Module:
        return self.segmentor
