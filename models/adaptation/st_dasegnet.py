"""ST-DASegNet: dual students + DDM + two discriminators + EMA cross-domain separated self-training.

One training iteration (``train_step``), as in ``st-dasegnet.md``::

    t > 0: teachers <- EMA(student decoders, alpha_t = min(1 - 1/(t+1), 0.999))
    F_ss = B_S(x_s)   F_ts = B_S(x_t)   F_st = B_T(x_s)   F_tt = B_T(x_t)      (4 backbone passes)
    (G_ss, G_st) = DDM(F_ss, F_st)      (G_ts, G_tt) = DDM(F_ts, F_tt)
    P_ss = D_S(G_ss)  P_ts = D_S(G_ts)  P_st = D_T(G_st)  P_tt = D_T(G_tt)
    teacher: softmax(up((D_S_ema(G_ts) + D_T_ema(G_tt)) / 2)) -> p, yhat_t; weights w(p, q)
    L = CE(P_ss, y_s) + CE(P_st, y_s) + 0.25 [CE_w(P_ts, yhat_t) + CE_w(P_tt, yhat_t)]
        + 0.005 [BCE(D_src(ssm(F_ts[-1])), 1) + BCE(D_tgt(ssm(F_st[-1])), 1)]   (discriminators frozen)
    student optimiser step
    L_D = 0.005 [BCE(D_src(F_ss), 1) + BCE(D_src(F_ts), 0) + BCE(D_tgt(F_tt), 1) + BCE(D_tgt(F_st), 0)]
          on detached, spatially-softmaxed last-level features; discriminator optimiser step

Inference (``DualSegmentor``): both backbones -> DDM -> mean of both decoders' logits.

On several devices (``params.devices``; models.training.distributed) every rank runs this step on its share
of the batch: q is counted over the whole batch (gathered), both optimiser steps use gradients averaged over
the ranks, so students and discriminators stay identical and the EMA teachers, updated from the synchronised
students, do too.

Documented deviations: teachers start as copies of the student decoders (the reference starts
them from random weights); teachers run with batch-statistics normalisation and no dropout
(their running BN buffers are never EMA-updated, since the EMA covers parameters only).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterable, Mapping, Sequence

import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from torch import Tensor, nn

import models.ddm  # noqa: F401  (registers DomainDisentangledModule)
import models.discriminator  # noqa: F401  (registers PatchGANDiscriminator)
from core.errors import ConfigError
from core.jobspec import IGNORE_INDEX, PRIOR_FROM_START
from models.adaptation.base import AdaptationMethod, register_method
from models.adaptation.source_only import class_weight_of, optim_modules_cfg
from models.batchnorm_statistics import batchnorm_layers, reestimate_batchnorm
from models.ddm import reduced_channels
from models.decoder_inputs import scale_input_layers
from models.discriminator import spatial_softmax
from models.domain_statistics import DomainStatistics
from models.label_shift import LabelShiftEstimate, add_class_log_ratio, given_prior, pixel_rows
from models.losses import cross_entropy, gan_loss
from models.segmentor import build_module, decode, probe_channels, register_segmentor, upsample

#: ``adaptation.norm_eval``'s value for batch norm frozen at statistics of each domain's own (models.domain_statistics)
PER_DOMAIN = "per-domain"
#: ``adaptation.ddm_start``: the DDM as built (PyTorch's initialisation: the spec says nothing), or neutral (v = 1/2;
#: decoders warm-started from a plain segmentor then start computing what it computed)
DDM_RANDOM, DDM_NEUTRAL = "random", "neutral"
DDM_STARTS = (DDM_RANDOM, DDM_NEUTRAL)
#: side of the random images that find and check the decoders' input layers at a neutral warm start
PROBE_SIZE = 64


# -- pieces with their own formula tests ------------------------------------------------------------
def ema_alpha(t: int, max_alpha: float = 0.999) -> float:
    """alpha_t = min(1 - 1/(t+1), max_alpha)."""
    return min(1.0 - 1.0 / (t + 1), max_alpha)


def budget_max_alpha(total_iters: int, horizon: float, max_alpha: float = 0.999) -> float:
    """The EMA cap for a horizon of ``horizon`` x the iteration budget: 1 - 1 / (horizon * total), at most
    ``max_alpha``. The spec's 0.999 is a 1,000-iteration memory, set for 40k iterations; in a run of a few
    hundred the teacher would stay the plain mean of every student state since the start."""
    return min(max_alpha, 1.0 - 1.0 / max(2.0, horizon * total_iters))


def classwise_quality(conf: Tensor, label: Tensor, num_classes: int, *, threshold: float, quantile: float,
                      valid: Tensor | None = None) -> float:
    """q with class-wise thresholds (CBST, Zou et al. 2018): a pixel counts as confident when its confidence
    reaches its predicted class's threshold tau_c = min(threshold, the ``quantile`` of the confidences of the
    batch's pixels predicted as c), so rare or hard classes are not left out of self-training."""
    if valid is None:
        valid = torch.ones_like(conf, dtype=torch.bool)
    confident = torch.zeros_like(valid)
    for c in range(num_classes):
        mine = valid & (label == c)
        if mine.any():
            tau = min(threshold, float(torch.quantile(conf[mine].float(), quantile)))
            confident |= mine & (conf >= tau)
    return float(confident.sum()) / max(int(valid.sum()), 1)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """teacher <- alpha * teacher + (1 - alpha) * student, parameters only."""
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(alpha).add_(ps.detach(), alpha=1.0 - alpha)


def pseudo_labels(teacher_logits: Tensor, size: Sequence[int], valid: Tensor | None = None, *,
                  correct: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Upsample, softmax (then ``correct``, e.g. a label-shift correction, on the (B,K,H,W) probabilities)
    -> (confidence p (B,H,W), label (B,H,W) int64; 255 where not valid)."""
    prob = upsample(teacher_logits.detach(), tuple(size)).softmax(dim=1)
    if correct is not None:
        prob = correct(prob)
    conf, label = prob.max(dim=1)
    if valid is not None:
        label = label.masked_fill(~valid, IGNORE_INDEX)
    return conf, label


def pseudo_weights(
    conf: Tensor,
    label: Tensor,
    class_weight: Sequence[float] | Tensor,
    *,
    threshold: float = 0.975,
    rare_threshold: float = 0.8,
    valid: Tensor | None = None,
) -> tuple[Tensor, float]:
    """Per-pixel pseudo-label weights and the batch quality q.

    q = fraction of (valid) pixels in the batch with p >= ``threshold``;
    w = q * cw[label] where p >= ``rare_threshold``, else 0.5 * q; 0 on invalid pixels.
    """
    if valid is None:
        valid = torch.ones_like(conf, dtype=torch.bool)
    q = quality(conf, threshold, valid)
    return quality_weights(conf, label, class_weight, q, rare_threshold=rare_threshold, valid=valid), q


def quality(conf: Tensor, threshold: float, valid: Tensor) -> float:
    """q = fraction of (valid) pixels with p >= ``threshold``."""
    return float(((conf >= threshold) & valid).sum().float() / valid.sum().clamp(min=1))


def quality_weights(conf: Tensor, label: Tensor, class_weight: Sequence[float] | Tensor, q: float | Tensor, *,
                    rare_threshold: float = 0.8, valid: Tensor | None = None) -> Tensor:
    """The spec's per-pixel weights for a batch quality q, however q was counted: w = q * cw[label] where
    p >= ``rare_threshold``, else 0.5 * q; 0 on invalid pixels."""
    q = torch.as_tensor(q, dtype=conf.dtype, device=conf.device)
    cw = torch.as_tensor(class_weight, dtype=conf.dtype, device=conf.device)
    safe = label.clamp(max=len(cw) - 1)  # ignored pixels index anything; their weight is zeroed
    w = torch.where(conf >= rare_threshold, q * cw[safe], 0.5 * q)
    return w * valid.to(w.dtype) if valid is not None else w


def widen_head_for_ddm(head_cfg: Mapping, level_channels: Sequence[int]) -> dict:
    """Set a decode head's in_channels from the backbone levels, the deepest widened by d."""
    head = copy.deepcopy(dict(head_cfg))
    last = len(level_channels) - 1
    out = list(level_channels)
    out[last] += reduced_channels(level_channels[last])
    idx = head.get("in_index", last)
    if isinstance(idx, (list, tuple)):
        head["in_channels"] = [out[i] for i in idx]
    else:
        head["in_channels"] = out[idx]
    return head


def has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def backbone_pair(backbone: nn.Module, xs: Tensor, xt: Tensor, *, joint: bool) -> tuple[list[Tensor], list[Tensor]]:
    """B(x_s), B(x_t). With ``joint`` (only for backbones without batch norm, e.g. MiT, whose outputs
    are per-sample) both go through one call, which is faster and gives the same features; backbones
    with batch norm keep two passes so each domain's batch statistics stay its own."""
    if joint:
        feats = backbone(torch.cat([xs, xt], dim=0))
        n = xs.shape[0]
        return [f[:n] for f in feats], [f[n:] for f in feats]
    return list(backbone(xs)), list(backbone(xt))


def set_teacher_mode(module: nn.Module) -> None:
    """Train-mode normalisation (batch statistics), dropout and drop-path off."""
    module.train()
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "DropPath":
            m.eval()


# -- inference segmentor ----------------------------------------------------------------------------
@register_segmentor
class DualSegmentor(nn.Module):
    """Both student backbones -> DDM -> mean of both decoders' logits (the inference ensemble)."""

    def __init__(self, backbone: dict, ddm: dict, decode_head: dict, decode_head_t: dict | None = None):
        super().__init__()
        self.backbone_s = build_module(backbone, "backbone")
        self.backbone_t = build_module(backbone, "backbone")
        self.ddm = MODELS.build(copy.deepcopy(ddm))
        self.decoder_s = build_module(decode_head, "decode_head")
        self.decoder_t = build_module(decode_head_t or decode_head, "decode_head")

    @property
    def num_classes(self) -> int:
        return int(self.decoder_s.num_classes)

    def styles(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """(F_s, F_t, G_s, G_t) of one batch of images: both backbones, then the DDM."""
        f_s, f_t = list(self.backbone_s(x)), list(self.backbone_t(x))
        g_s, g_t = self.ddm(f_s, f_t)
        return f_s, f_t, g_s, g_t

    def predict_logits(self, x: Tensor) -> Tensor:
        _, _, g_s, g_t = self.styles(x)
        logits = (decode(self.decoder_s, g_s) + decode(self.decoder_t, g_t)) / 2
        return upsample(logits, x.shape[-2:])

    def prediction_heads(self) -> list[nn.Module]:
        """The decode heads whose mean logits are the prediction."""
        return [self.decoder_s, self.decoder_t]

    forward = predict_logits


# -- the method ----------------------------------------------------------------------------------------
@register_method("st-dasegnet")
class STDASegNet(AdaptationMethod):
    needs_target = True

    def __init__(self, cfg: Config | Mapping, *, total_iters: int):
        super().__init__(cfg, total_iters=total_iters)
        m, a = self.cfg["model"], self.cfg["adaptation"]
        self.a = a
        levels = self.cfg.get("level_channels")
        if not levels:  # resolve_config records them; probe for configs built by hand
            levels = probe_channels(build_module(m["backbone"], "backbone"), int(m["backbone"].get("in_channels", 3)))
        head = widen_head_for_ddm(m["decode_head"], levels)
        head_t = copy.deepcopy(head)
        if a.get("target_class_weight") is not None:  # the reference weighs D_T's CE differently
            head_t.setdefault("loss_decode", {})["class_weight"] = list(a["target_class_weight"])
        ddm = dict(a.get("ddm") or {"type": "DomainDisentangledModule"})
        ddm["in_channels"] = levels
        self._inference_cfg = {"type": "DualSegmentor", "backbone": m["backbone"], "ddm": ddm,
                               "decode_head": head, "decode_head_t": head_t}

        students = DualSegmentor(m["backbone"], ddm, head, head_t)
        # same initialisation for both backbones (spec); decoders start independently
        students.backbone_t.load_state_dict(students.backbone_s.state_dict())
        self.ddm_start = a.get("ddm_start") or DDM_RANDOM
        if self.ddm_start not in DDM_STARTS:
            raise ConfigError(f"adaptation.ddm_start must be one of {', '.join(DDM_STARTS)}, not {self.ddm_start!r}",
                              field="model.overrides")
        if self.ddm_start == DDM_NEUTRAL:
            students.ddm.neutral_start()
        self.net["students"] = students
        self.joint_backbone_pass = not has_batch_norm(students.backbone_s)
        #: ``norm_eval``'s regime has begun (set when adapting starts): batch norm on running statistics, or with
        #: ``track_domain_statistics`` each domain's batches through statistics of their own that they update
        self.norm_eval_started = False
        norm_eval = a.get("norm_eval") or False
        if norm_eval not in (False, True, PER_DOMAIN):
            raise ConfigError(f"adaptation.norm_eval must be false, true or '{PER_DOMAIN}', not {norm_eval!r}",
                              field="model.overrides")
        self.per_domain_statistics = norm_eval == PER_DOMAIN
        if self.per_domain_statistics and float(a.get("source_warmup", 0.0)) > 0:
            raise ConfigError(f"adaptation.norm_eval '{PER_DOMAIN}' estimates each domain's statistics before "
                              "training, from the start model; after a source warm-up the model that adapts is "
                              "another", field="model.overrides")
        #: with per-domain statistics: batch norm stays in training mode, so each domain's batches are normalised
        #: by their own batch statistics and move that domain's running statistics (DSBN as Chang et al. train it);
        #: frozen, the statistics describe the start model's features however far training moves the weights
        self.track_domain_statistics = bool(a.get("track_domain_statistics", False))
        if self.track_domain_statistics and not self.per_domain_statistics:
            raise ConfigError(f"adaptation.track_domain_statistics needs adaptation.norm_eval '{PER_DOMAIN}' (the "
                              "statistics it tracks per domain)", field="model.overrides")
        if a.get("teacher_init", "copy") == "copy":
            self.net["teacher_s"] = copy.deepcopy(students.decoder_s)
            self.net["teacher_t"] = copy.deepcopy(students.decoder_t)
        else:  # the reference code's random start
            self.net["teacher_s"] = build_module(head, "decode_head")
            self.net["teacher_t"] = build_module(head_t, "decode_head")
        for t in ("teacher_s", "teacher_t"):
            self.net[t].requires_grad_(False)
        if self.per_domain_statistics:  # the layers hold the target's; the source's wait here
            self.net["source_statistics"] = DomainStatistics(self.normalization_layers())
        disc = dict(a.get("discriminator") or {"type": "PatchGANDiscriminator"})
        disc["in_channels"] = levels[-1]
        self.net["disc_src"] = MODELS.build(copy.deepcopy(disc))
        self.net["disc_tgt"] = MODELS.build(copy.deepcopy(disc))

        self.class_weight_s = class_weight_of({"decode_head": head})
        self.class_weight_t = class_weight_of({"decode_head": head_t})
        k = int(head["num_classes"])
        self.pseudo_class_weight = list(a.get("pseudo_class_weight") or [1.0] * k)
        prior = a.get("pseudo_prior")
        if prior == "em":  # pseudo-labels moved onto the target's class frequencies (models.label_shift)
            self.net["label_shift"] = LabelShiftEstimate(k)  # estimated while the teachers are source models
        elif isinstance(prior, (list, tuple)):  # the target's class frequencies given: no estimating stage
            self.net["label_shift"] = LabelShiftEstimate(k)
            self.net["label_shift"].fix_target_prior(given_prior(prior, k))
        elif prior == PRIOR_FROM_START:  # read from the start model before training (workers.pipelines.train)
            if float(a.get("source_warmup", 0.0)) > 0:
                raise ConfigError("adaptation.pseudo_prior 'label-shift' is read from the start model before "
                                  "training; after a source warm-up the model that adapts is another (use 'em')",
                                  field="model.overrides")
            self.net["label_shift"] = LabelShiftEstimate(k)
        elif prior is not None:
            raise ConfigError(f"adaptation.pseudo_prior must be None (the spec), 'em', 'label-shift' or the target's "
                              f"class frequencies (a list of {k} numbers, one per class), not {prior!r}")
        self.add_optimizer(
            "student",
            {"backbone_s": students.backbone_s, "backbone_t": students.backbone_t, "ddm": students.ddm,
             "decoder_s": students.decoder_s, "decoder_t": students.decoder_t},
            optim_modules_cfg(self.cfg["optim"], ["decoder_s", "decoder_t"]),
            self.cfg.get("lr_schedule"),
        )
        self.add_optimizer("discriminator", {"disc_src": self.net["disc_src"], "disc_tgt": self.net["disc_tgt"]},
                           self.cfg.get("disc_optim") or {"type": "Adam", "lr": 1e-5, "betas": (0.9, 0.99)},
                           self.cfg.get("lr_schedule"))
        self.train()

    # -- modes --
    def train(self, mode: bool = True) -> "STDASegNet":
        super().train(mode)
        if mode:
            set_teacher_mode(self.net["teacher_s"])
            set_teacher_mode(self.net["teacher_t"])
            if self.norm_eval_started and not self.track_domain_statistics:
                for layer in self.normalization_layers():
                    layer.eval()
        return self

    # -- batch-norm statistics per domain (``norm_eval: per-domain``) --
    def normalization_layers(self) -> list[nn.Module]:
        """Every batch-norm layer of the students and teachers, in a fixed order (found afresh each time: running
        on several devices swaps them for synchronised ones)."""
        return [layer for part in ("students", "teacher_s", "teacher_t") for layer in batchnorm_layers(self.net[part])]

    def source_statistics(self) -> contextlib.AbstractContextManager:
        """A context in which batch norm normalises with the source's statistics (with ``norm_eval: per-domain``;
        otherwise nothing changes)."""
        if not self.per_domain_statistics:
            return super().source_statistics()
        return self.net["source_statistics"].applied(self.normalization_layers())

    @torch.no_grad()
    def estimate_domain_statistics(self, source_batches: Iterable[Tensor], target_batches: Iterable[Tensor]) -> None:
        """``norm_eval: per-domain``, before training: each domain's batch-norm statistics estimated on its own
        crops (normalised images) from the model as it starts, as AdaBN estimates them; the teachers take their
        decoders'. Training then keeps both sets frozen."""
        if not self.per_domain_statistics:
            raise ConfigError(f"per-domain statistics need adaptation.norm_eval '{PER_DOMAIN}'")
        students = self.net["students"]

        def estimate(batches: Iterable[Tensor]) -> None:
            reestimate_batchnorm(students, batches)
            for teacher, decoder in (("teacher_s", students.decoder_s), ("teacher_t", students.decoder_t)):
                for mine, theirs in zip(batchnorm_layers(self.net[teacher]), batchnorm_layers(decoder)):
                    mine.running_mean.copy_(theirs.running_mean)
                    mine.running_var.copy_(theirs.running_var)

        estimate(source_batches)
        self.net["source_statistics"].capture(self.normalization_layers())
        estimate(target_batches)  # left in the layers: the delivered model predicts the target with them

    # -- the objective --
    def max_alpha(self) -> float:
        """The EMA cap: the spec's ``ema_max_alpha``, or with ``ema_horizon`` (a fraction of the budget) the
        cap that gives the teacher a memory of that many iterations."""
        cap = float(self.a.get("ema_max_alpha", 0.999))
        horizon = self.a.get("ema_horizon")
        return budget_max_alpha(self.total_iters, float(horizon), cap) if horizon else cap

    def warmup_iters(self) -> int:
        """Iterations of the source-only stage (``source_warmup``: a fraction of the budget) before the
        adversarial and self-training terms start; 0 in the spec."""
        return int(round(float(self.a.get("source_warmup") or 0.0) * self.total_iters))

    def update_teachers(self, iteration: int) -> float:
        warm = self.warmup_iters()
        if warm and iteration <= warm:
            # teachers follow the students exactly through the source-only stage, so self-training starts
            # from the warmed-up decoders instead of an average that includes the random start
            alpha = 0.0
        else:
            alpha = ema_alpha(iteration - warm, self.max_alpha())
        ema_update(self.net["teacher_s"], self.net["students"].decoder_s, alpha)
        ema_update(self.net["teacher_t"], self.net["students"].decoder_t, alpha)
        return alpha

    def student_losses(self, batch: Mapping, adapting: bool = True) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every term of the student objective, the weighted total under ``loss`` (the source terms alone
        when not ``adapting``), and the detached last-level features the discriminator step needs."""
        a, st = self.a, self.net["students"]
        xs, ys = batch["source"]["img"], batch["source"]["label"]
        xt = batch["target"]["img"]
        vt = batch["target"].get("valid")
        size = xs.shape[-2:]

        if self.per_domain_statistics and self.norm_eval_started:  # each domain through its own statistics
            with self.source_statistics():
                f_ss, f_st, g_ss, g_st, p_ss, p_st = self.domain_pass(xs)
            f_ts, f_tt, g_ts, g_tt, p_ts, p_tt = self.domain_pass(xt)
        else:
            # one pass for both domains where no batch statistics are computed: no batch norm, or batch norm frozen
            joint = self.joint_backbone_pass or self.norm_eval_started
            f_ss, f_ts = backbone_pair(st.backbone_s, xs, xt, joint=joint)
            f_st, f_tt = backbone_pair(st.backbone_t, xs, xt, joint=joint)
            g_ss, g_st = st.ddm(f_ss, f_st)
            g_ts, g_tt = st.ddm(f_ts, f_tt)
            p_ss, p_ts = decode(st.decoder_s, g_ss), decode(st.decoder_s, g_ts)
            p_st, p_tt = decode(st.decoder_t, g_st), decode(st.decoder_t, g_tt)

        with torch.no_grad():
            t_logits = self.teacher_logits(g_ts, g_tt)
            correct = self.label_shift_correction((g_ss, g_st), ys, vt, adapting)
            conf, yhat = pseudo_labels(t_logits, xt.shape[-2:], vt, correct=correct)
            threshold = float(a.get("pseudo_threshold", 0.975))
            rare = float(a.get("pseudo_rare_threshold", 0.8))
            q = self.batch_quality(conf, yhat, vt, threshold)
            w = quality_weights(conf, yhat, self.pseudo_class_weight, q, rare_threshold=rare, valid=vt)

        terms = {
            "ce_src_s": cross_entropy(p_ss, ys, class_weight=self.class_weight_s),
            "ce_src_t": cross_entropy(p_st, ys, class_weight=self.class_weight_t),
            "ce_pseudo_s": cross_entropy(p_ts, yhat, class_weight=self.class_weight_s, pixel_weight=w),
            "ce_pseudo_t": cross_entropy(p_tt, yhat, class_weight=self.class_weight_t, pixel_weight=w),
            "adv_s": gan_loss(self.net["disc_src"](spatial_softmax(f_ts[-1])), True, size),
            "adv_t": gan_loss(self.net["disc_tgt"](spatial_softmax(f_st[-1])), True, size),
        }
        terms["loss"] = self.combine(terms, adapting=adapting)
        terms["pseudo_q"] = torch.tensor(q)
        if "label_shift" in self.net:  # how far the estimated target class frequencies sit from the source's
            terms["prior_tv"] = self.net["label_shift"].total_variation()
        feats = {"ss": f_ss[-1].detach(), "ts": f_ts[-1].detach(), "st": f_st[-1].detach(), "tt": f_tt[-1].detach()}
        return terms, feats

    def domain_pass(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], Tensor, Tensor]:
        """One domain's batch through both students: (F_S, F_T, G_S, G_T, P_S, P_T), with F_S = B_S(x),
        F_T = B_T(x), (G_S, G_T) = DDM(F_S, F_T), P_S = D_S(G_S), P_T = D_T(G_T)."""
        st = self.net["students"]
        f_s, f_t = list(st.backbone_s(x)), list(st.backbone_t(x))
        g_s, g_t = st.ddm(f_s, f_t)
        return f_s, f_t, g_s, g_t, decode(st.decoder_s, g_s), decode(st.decoder_t, g_t)

    def teacher_logits(self, g_s: list[Tensor], g_t: list[Tensor]) -> Tensor:
        """The teachers' ensemble on one domain's disentangled features: (D_S_ema(G_s) + D_T_ema(G_t)) / 2."""
        return (decode(self.net["teacher_s"], [g.detach() for g in g_s])
                + decode(self.net["teacher_t"], [g.detach() for g in g_t])) / 2

    def label_shift_correction(self, g_source: tuple[list[Tensor], list[Tensor]], ys: Tensor,
                               valid: Tensor | None, adapting: bool) -> Callable[[Tensor], Tensor] | None:
        """With ``pseudo_prior='em'`` (models.label_shift): while estimating, the teachers' log-probabilities on
        this batch's labelled source pixels pooled; always, what pools their target probabilities and moves
        them onto pi_t (unchanged until pi_t is estimated)."""
        shift = self.net["label_shift"] if "label_shift" in self.net else None
        if shift is None or not adapting:
            return None
        if self.a.get("pseudo_prior") == PRIOR_FROM_START and not shift.estimated:
            raise RuntimeError("adaptation.pseudo_prior 'label-shift' is read before training, from the start model "
                               "(workers.pipelines.train does it); this run was given none")
        gather = self.collective.gather
        if not shift.estimated:
            with self.source_statistics():
                log_prob = upsample(self.teacher_logits(*g_source), tuple(ys.shape[-2:])).log_softmax(dim=1)
            labelled = ys != IGNORE_INDEX
            shift.observe_source(pixel_rows(log_prob, labelled), ys[labelled], gather=gather)

        def correct(prob: Tensor) -> Tensor:
            shift.observe_target(pixel_rows(prob, valid).clamp(min=1e-12).log(), gather=gather)
            return shift.correct(prob)

        return correct

    def fix_target_prior(self, target_prior: Tensor, *, source_prior: Tensor | None = None,
                         temperature: Tensor | float | None = None) -> None:
        """pi_t read before training (``pseudo_prior: label-shift``; workers.pipelines.train): self-training matches
        its pseudo-labels to it from the first adapting step, as to a given mix; pi_s and T are kept for the record."""
        if self.a.get("pseudo_prior") != PRIOR_FROM_START:
            raise ConfigError("a class mix read before training needs adaptation.pseudo_prior 'label-shift'")
        self.net["label_shift"].fix_target_prior(target_prior.detach().cpu().float(), source_prior=source_prior,
                                                 temperature=temperature)

    def estimating_prior(self) -> bool:
        """Whether ``pseudo_prior='em'`` is still estimating pi_t (it freezes after its estimation stage)."""
        return "label_shift" in self.net and not self.net["label_shift"].estimated

    def prior_estimation_iters(self) -> int:
        """Adapting iterations over which ``pseudo_prior='em'`` estimates pi_t before freezing it: a stage without
        self-training, so the teachers stay source models (self-training on corrected labels while estimating
        feeds the estimate back into the teachers it is read from). 0 when pi_t is given."""
        if self.a.get("pseudo_prior") != "em":
            return 0
        return max(1, int(round(float(self.a.get("pseudo_prior_estimation", 0.1)) * self.total_iters)))

    def batch_quality(self, conf: Tensor, yhat: Tensor, valid: Tensor | None, threshold: float) -> float:
        """q of the whole batch: over every rank's share of it when several train together (q is one scalar
        of the batch, so every rank weighs its pixels with the same q, as one process would)."""
        if valid is None:
            valid = torch.ones_like(conf, dtype=torch.bool)
        if self.collective.distributed:  # one gather: labels and the mask travel exactly as floats
            whole = self.collective.gather(torch.stack([conf, yhat.to(conf.dtype), valid.to(conf.dtype)], dim=1))
            conf, yhat, valid = whole[:, 0], whole[:, 1].long(), whole[:, 2].bool()
        if self.a.get("pseudo_quantile") is None:  # the spec: q from the fixed threshold
            return quality(conf, threshold, valid)
        # CBST-style class-wise thresholds decide q
        return classwise_quality(conf, yhat, len(self.pseudo_class_weight), threshold=threshold,
                                 quantile=float(self.a["pseudo_quantile"]), valid=valid)

    def combine(self, terms: Mapping[str, Tensor], adapting: bool = True) -> Tensor:
        """L = CE_ss + CE_st + lambda_st [CE_w_ts + CE_w_tt] + lambda_adv [adv_s + adv_t]; the source terms
        alone while ``adapting`` is False (the source-only warm-up stage)."""
        lam_st = float(self.a.get("self_training_weight", 0.25)) if adapting else 0.0
        if self.estimating_prior():  # pi_t is read from a teacher that has not yet learnt from its own labels
            lam_st = 0.0
        lam_adv = float(self.a.get("adv_weight", 0.005)) if adapting else 0.0
        return (terms["ce_src_s"] + terms["ce_src_t"]
                + lam_st * (terms["ce_pseudo_s"] + terms["ce_pseudo_t"])
                + lam_adv * (terms["adv_s"] + terms["adv_t"]))

    def discriminator_terms(self, feats: Mapping[str, Tensor], size) -> dict[str, Tensor]:
        """The discriminator step's four BCE terms, unweighted. D_src: real B_S(x_s), fake B_S(x_t);
        D_tgt: real B_T(x_t), fake B_T(x_s)."""
        d_src, d_tgt = self.net["disc_src"], self.net["disc_tgt"]
        return {
            "src_real": gan_loss(d_src(spatial_softmax(feats["ss"])), True, size),
            "src_fake": gan_loss(d_src(spatial_softmax(feats["ts"])), False, size),
            "tgt_real": gan_loss(d_tgt(spatial_softmax(feats["tt"])), True, size),
            "tgt_fake": gan_loss(d_tgt(spatial_softmax(feats["st"])), False, size),
        }

    def discriminator_loss(self, terms: Mapping[str, Tensor]) -> Tensor:
        """L_D = lambda_adv x the sum of the four terms (the same weight as the student's adversarial term)."""
        return float(self.a.get("adv_weight", 0.005)) * sum(terms.values())

    def train_step(self, batch: Mapping, iteration: int) -> dict[str, float]:
        adapting = iteration >= self.warmup_iters()  # False through the source-only warm-up stage
        if adapting and self.a.get("norm_eval") and not self.norm_eval_started:
            # frozen at the statistics of the source model adaptation starts from (after any warm-up stage)
            self.norm_eval_started = True
            self.train()
        if iteration > 0:
            self.update_teachers(iteration)
        self.set_lr(iteration)
        discs = (self.net["disc_src"], self.net["disc_tgt"])
        opt_s, opt_d = self.optimizers["student"], self.optimizers["discriminator"]

        for d in discs:  # frozen for the student's backward
            d.requires_grad_(False)
        opt_s.zero_grad(set_to_none=True)
        terms, feats = self.student_losses(batch, adapting)
        terms["loss"].backward()
        self.step("student")

        for d in discs:
            d.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        terms_d = self.discriminator_terms(feats, batch["source"]["img"].shape[-2:])
        loss_d = self.discriminator_loss(terms_d) * (1.0 if adapting else 0.0)
        loss_d.backward()
        self.step("discriminator")

        # before the class mix goes into the decoders: the delivered students are the average, then moved onto it
        self.update_weight_average(iteration)
        if "label_shift" in self.net and iteration + 1 >= self.warmup_iters() + self.prior_estimation_iters():
            self.net["label_shift"].freeze()
            if iteration == self.total_iters - 1 and self.a.get("prior_at_prediction", True):
                self.predict_with_target_prior()
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["loss_disc"] = float(loss_d.detach())
        # mean BCE per discriminator term: ln 2 = 0.693 where the discriminators cannot tell the domains apart
        out["disc_bce"] = float(sum(terms_d.values()).detach()) / len(terms_d)
        return out

    def backbones(self) -> list[nn.Module]:
        return [self.net["students"].backbone_s, self.net["students"].backbone_t]

    def decoders(self) -> list[nn.Module]:
        return [self.net["students"].decoder_s, self.net["students"].decoder_t]

    def after_pretrained(self, loaded: dict) -> None:
        # "widened": a decoder input the DDM widens was loaded from a plain segmentor's (models.pretrained._fit)
        if self.ddm_start == DDM_NEUTRAL and loaded["widened"]:
            loaded["ddm_start"] = {"decoder_inputs_scaled": self._keep_warm_start()}
        # teachers start as copies of the (now pretrained) student decoders
        if self.a.get("teacher_init", "copy") == "copy":
            self.net["teacher_s"].load_state_dict(self.net["students"].decoder_s.state_dict())
            self.net["teacher_t"].load_state_dict(self.net["students"].decoder_t.state_dict())

    def _keep_warm_start(self) -> list[str]:
        """Decoders warm-started from a plain segmentor (their DDM-widened inputs say so), under a neutral DDM: their
        input layers take 1/v times its weights, so the students start as the model they were loaded from (both
        backbones alike, v = 1/2 on every level, the universal channels at zero weight). Returns the layers."""
        students = self.net["students"]
        bands = int(self.cfg["model"]["backbone"].get("in_channels", 3))
        probe = torch.randn(2, bands, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0))
        was_training = students.training
        students.eval()
        try:
            with torch.no_grad():
                f = list(students.backbone_s(probe.to(next(students.parameters()).device)))
                g_s, g_t = students.ddm(f, f)
            factor = 1.0 / students.ddm.NEUTRAL_WEIGHT
            scaled = []
            for name, decoder, g in (("decoder_s", students.decoder_s, g_s), ("decoder_t", students.decoder_t, g_t)):
                scaled += [f"{name}.{layer}" for layer in scale_input_layers(decoder, [x * factor for x in g], factor)]
            return scaled
        finally:
            students.train(was_training)

    @torch.no_grad()
    def predict_with_target_prior(self) -> None:
        """After the last iteration: the factor that keeps the pseudo-labels at pi_t moved into both student
        decoders' class biases (log of it added to each; the prediction is their mean), so the delivered model
        predicts the target with its estimated class mix. Self-training moves the students only part of the
        way there when few pixels are confident (q)."""
        shift = self.net["label_shift"]
        ratio = shift.prediction_ratio()
        add_class_log_ratio(self.decoders(), ratio, option="adaptation.prior_at_prediction")
        shift.applied_ratio.copy_(ratio)

    def training_record(self) -> dict:
        """With ``pseudo_prior``: the class frequencies the teachers encode on the source and the target's
        estimate (per train index: the job's class order), so a user sees the shift the labels were moved by."""
        record = super().training_record()
        if "label_shift" in self.net:
            shift = self.net["label_shift"]
            applied = None if torch.isnan(shift.applied_ratio).any() else shift.applied_ratio
            record["label_shift"] = shift.record(applied)
        return record

    def inference_config(self) -> dict:
        return copy.deepcopy(self._inference_cfg)

    def inference_segmentor(self) -> nn.Module:
        return self.net["students"]
