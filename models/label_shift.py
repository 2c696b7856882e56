"""Label shift: a model's class probabilities moved from the class frequencies it learnt onto the target's.

A classifier whose probabilities encode class frequencies pi_s predicts, on a domain where they are pi_t (and
p(x|y) is unchanged), p_t(y|x) proportional to p(y|x) pi_t(y) / pi_s(y). pi_t is unknown without labels;
Saerens, Latinne and Decaestecker (Neural Computation, 2002) estimate it by EM on the unlabelled pixels::

    pi^0 = pi_s
    E:   p^k(y|x) = p(y|x) pi^k(y) / pi_s(y), normalised over y
    M:   pi^{k+1}(y) = mean over pixels of p^k(y|x)

EM trusts the probabilities: an over-confident network overshoots. Alexandari, Kundaje and Shrikumar (ICML
2020) calibrate first, by bias-corrected temperature scaling (BCTS) fitted on labelled source data:
p_cal = softmax(log p / T + b), T and b minimising the labels' cross-entropy; pi_s is then the mean calibrated
probability on the source.

Where it matters: Benchmark A's NEON source has 23 % trees and its targets 41 %; the source model predicts
15 % trees on the target, and self-training on its pseudo-labels teaches the students the source's mix again.

The label-shift job (workers/pipelines/label_shift.py) runs calibration and EM once on a trained model and moves
its classifier's biases (:func:`add_class_log_ratio`); it first checks the shift is one of class mix with a
second estimate from the model's decisions rather than its probabilities (BBSE, :func:`bbse_target_prior`).

:class:`LabelShiftEstimate` serves self-training (ST-DASegNet's option ``pseudo_prior='em'``) in two stages:

    estimating   the teachers' log-probabilities on labelled source pixels and on target pixels are pooled;
                 no self-training in this stage (the method's job), so the teachers stay source models
    frozen       at the stage's end: BCTS fitted on the source pool, pi_s = the mean calibrated source
                 probability, pi_t = EM over the calibrated target pool, then fixed. Pseudo-labels are the
                 teachers' probabilities times e^b, b the per-class bias that makes the mean over the pool
                 of recent target pixels equal pi_t: they keep the target's mix however far the teachers
                 move (multiplying by pi_t / pi_s again would compound once the teachers have learnt part of
                 the shift from their own corrected labels)

What the stages guard against, seen on NEON: EM re-run through training follows a teacher that learns from
its own corrected labels (it drifted from 0.45 to 0.12 trees); self-training while estimating feeds the
estimate back into the teacher (0.63 trees). Batch norm must run on running statistics (ST-DASegNet's
``norm_eval``): a target batch normalised by its own statistics looks like the source's class mix to the
teacher, and EM finds no shift there (0.19 trees, against 0.38 with running statistics).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from core.errors import ConfigError
from core.jobspec import class_mix_problem

#: no class's prior falls below this (a class absent from the source would make the ratio infinite)
MIN_PRIOR = 1e-4

Gather = Callable[[Tensor], Tensor]


def reweighted(prob: Tensor, factor: Tensor) -> Tensor:
    """Probabilities (class dimension 1 of (B, K, ...)) times a per-class factor, normalised again."""
    shifted = prob * factor.to(prob).view(1, -1, *([1] * (prob.dim() - 2)))
    return shifted / shifted.sum(dim=1, keepdim=True).clamp(min=1e-12)


def shift_probabilities(prob: Tensor, source_prior: Tensor, target_prior: Tensor) -> Tensor:
    """p(y|x) pi_t(y) / pi_s(y), normalised over the class dimension (dim 1 of (B, K, ...))."""
    return reweighted(prob, target_prior.clamp(min=MIN_PRIOR) / source_prior.clamp(min=MIN_PRIOR))


def pixel_rows(values: Tensor, valid: Tensor | None = None) -> Tensor:
    """(B, K, H, W) -> (N, K): the per-class values (probabilities, log-probabilities) of the valid pixels."""
    flat = values.movedim(1, -1).reshape(-1, values.shape[1])
    return flat if valid is None else flat[valid.reshape(-1)]


@torch.no_grad()
def add_class_log_ratio(heads, ratio: Tensor, *, option: str) -> None:
    """Add log(ratio) to the class biases of each decode head's classifier (an mmseg head's ``conv_seg``), so a
    model whose prediction is their mean logits predicts with its probabilities times ``ratio`` (normalised):
    what moves a delivered model onto the target's class mix. ``option``: what asked, for the error."""
    heads = check_class_biases(heads, option=option)
    for head in heads:
        head.conv_seg.bias.add_(ratio.log().to(head.conv_seg.bias))


def check_class_biases(heads, *, option: str) -> list:
    """The decode heads, each with a biased ``conv_seg`` classifier (what :func:`add_class_log_ratio` moves), or a
    clear error naming the head that has none."""
    heads = list(heads)
    for head in heads:
        if getattr(head, "conv_seg", None) is None or head.conv_seg.bias is None:
            raise ConfigError(f"{option} needs decode heads with a biased conv_seg classifier; "
                              f"{type(head).__name__} has none")
    return heads


def given_prior(values, num_classes: int) -> Tensor:
    """Class frequencies a user gives (core.jobspec.class_mix_problem says what they must be), normalised; a clear
    error for anything else."""
    problem = class_mix_problem(values, num_classes)
    if problem:
        raise ConfigError(f"adaptation.pseudo_prior: {problem}", field="model.overrides")
    prior = torch.tensor([float(v) for v in values], dtype=torch.float32)
    return prior / prior.sum()


def em_target_prior(pixels: Tensor, source_prior: Tensor, *, iterations: int = 100) -> Tensor:
    """Saerens et al.'s EM estimate of the target's class frequencies from (N, K) probabilities that a model
    whose probabilities encode ``source_prior`` gives N target pixels."""
    prior = source_prior.clone().float()
    if pixels.shape[0] == 0:
        return prior
    for _ in range(iterations):
        prior = shift_probabilities(pixels.float(), source_prior, prior).mean(dim=0)
    return prior


def bbse_target_prior(source_prob: Tensor, labels: Tensor, target_prob: Tensor, *, rtol: float = 0.05) -> Tensor:
    """Black-box shift estimation (Lipton, Wang and Smola, ICML 2018): with C[i, j] = P_s(argmax = i, y = j) on
    labelled source pixels and mu[i] = P_t(argmax = i) on the target, label shift means mu = C w with
    w = pi_t / pi_s >= 0. Returns pi_t = w pi_s, unconstrained: it leaves the simplex (a class below 0 or above
    1) when the target's inputs changed too, which is what :func:`outside_simplex` measures.

    Solved as w = 1 + C+ (mu - mu_s), mu_s = P_s(argmax = i), with C's singular directions weaker than ``rtol``
    of its strongest left out: what the source pixels cannot resolve (a rare class's few pixels, whose
    sampling noise the inverse would swing past 0) stays at no shift, as in regularised BBSE (Azizzadenesheli
    et al., ICLR 2019)."""
    k = source_prob.shape[1]
    keep = (labels >= 0) & (labels < k)
    y, predicted = labels[keep].long(), source_prob[keep].argmax(dim=1)
    joint = torch.zeros(k, k)
    joint.index_put_((predicted.cpu(), y.cpu()), torch.ones(len(y)), accumulate=True)
    joint /= max(len(y), 1)
    mu = torch.bincount(target_prob.argmax(dim=1).cpu(), minlength=k).float() / max(len(target_prob), 1)
    w = 1 + torch.linalg.pinv(joint, rtol=rtol) @ (mu - joint.sum(dim=1))
    return w * joint.sum(dim=0)


def outside_simplex(prior: Tensor) -> float:
    """How far class frequencies leave the simplex: the mass below 0 (0 for frequencies that could be real)."""
    return float(prior.clamp(max=0).neg().sum())


def fit_bcts(log_probs: Tensor, labels: Tensor, *, iterations: int = 100) -> tuple[Tensor, Tensor]:
    """Bias-corrected temperature scaling: (T, b) minimising the mean cross-entropy of
    softmax(log_probs / T + b) against ``labels`` ((N, K) and (N,); labels outside 0..K-1 left out)."""
    k = log_probs.shape[1]
    keep = (labels >= 0) & (labels < k)
    x, y = log_probs[keep].float().clamp(min=-60.0), labels[keep].long()
    log_t = torch.zeros((), requires_grad=True)
    bias = torch.zeros(k, requires_grad=True)
    if len(y) == 0:
        return torch.ones(()), torch.zeros(k)
    opt = torch.optim.LBFGS([log_t, bias], lr=0.5, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x / log_t.exp() + bias, y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return log_t.detach().exp(), (bias - bias[0]).detach()


def calibrated(log_probs: Tensor, temperature: Tensor, bias: Tensor) -> Tensor:
    """softmax(log_probs / T + b) over dim 1 of (N, K)."""
    return (log_probs.float().clamp(min=-60.0) / temperature + bias).softmax(dim=1)


def matching_bias(log_probs: Tensor, target_prior: Tensor, *, start: Tensor | None = None, iterations: int = 100,
                  tolerance: float = 1e-6) -> Tensor:
    """The per-class log-factor b with which the (N, K) log-probabilities' mean probability, once shifted by b and
    normalised, equals ``target_prior`` (fixed point b <- b + log pi_t - log mean; the same step as EM's, with
    pi_t known and the prior the probabilities encode unknown). From ``start`` (the last solution: a pool that
    changed by one batch moves it little) until no class's b moves by more than ``tolerance``. Returned with
    its first class at 0."""
    log_target = target_prior.float().clamp(min=MIN_PRIOR).log()
    bias = torch.zeros_like(log_target) if start is None else start.float().clone()
    if log_probs.shape[0] == 0:
        return bias
    log_p = log_probs.float().clamp(min=-60.0)
    for _ in range(iterations):
        step = log_target - (log_p + bias).softmax(dim=1).mean(dim=0).clamp(min=1e-12).log()
        bias = bias + step
        if float(step.abs().max()) <= tolerance:
            break
    return bias - bias[0]


class PixelPool(nn.Module):
    """The last ``size`` rows of (N, K) values (with a label per row when ``labelled``), written ``per_batch``
    rows at a time, evenly spaced over each batch's pixels; buffers, so a resumed job keeps them."""

    def __init__(self, size: int, num_classes: int, *, per_batch: int, labelled: bool = False):
        super().__init__()
        self.per_batch, self.labelled = int(per_batch), labelled
        self.register_buffer("rows", torch.zeros(int(size), num_classes))
        self.register_buffer("labels", torch.zeros(int(size) if labelled else 0, dtype=torch.long))
        self.register_buffer("written", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return min(int(self.written), len(self.rows))

    @torch.no_grad()
    def add(self, rows: Tensor, labels: Tensor | None = None, *, gather: Gather | None = None) -> None:
        """Exactly ``per_batch`` rows of this batch (repeated when fewer; none when empty), so every rank
        gathers one shape; ``gather`` concatenates every rank's. A rank with no rows still takes part in the
        gather (with rows marked absent), since a collective that one rank skips never returns on the others."""
        if rows.shape[0] == 0 and gather is None:
            return
        k = self.rows.shape[1]
        if rows.shape[0]:
            idx = torch.linspace(0, rows.shape[0] - 1, self.per_batch, device=rows.device).round().long()
            block = rows[idx].float()
            label_col = labels[idx].to(block)[:, None] if self.labelled else block[:, :0]
        else:
            block = torch.zeros(self.per_batch, k, device=rows.device)
            label_col = block[:, :1] if self.labelled else block[:, :0]
        present = torch.full((self.per_batch, 1), float(rows.shape[0] > 0), device=block.device)
        # labels travel as one more column, and whether the rows are real as the last
        block = torch.cat([block, label_col, present], dim=1)
        block = (gather(block) if gather else block).to(self.rows.device)
        block = block[block[:, -1] > 0.5, :-1]
        if not len(block):
            return
        size = len(self.rows)
        at = (int(self.written) + torch.arange(len(block), device=block.device)) % size
        self.rows[at[-size:]] = block[-size:, :k]
        if self.labelled:
            self.labels[at[-size:]] = block[-size:, k].long()
        self.written += len(block)

    def contents(self) -> tuple[Tensor, Tensor | None]:
        n = len(self)
        return self.rows[:n], (self.labels[:n] if self.labelled else None)


class LabelShiftEstimate(nn.Module):
    """The two stages of the module docstring; ``pool`` pixels per domain, ``per_batch`` of each batch."""

    def __init__(self, num_classes: int, *, pool: int = 131072, per_batch: int = 4096):
        super().__init__()
        self.source = PixelPool(pool, num_classes, per_batch=per_batch, labelled=True)
        self.target = PixelPool(pool, num_classes, per_batch=per_batch)
        self.register_buffer("source_prior", torch.full((num_classes,), float("nan")))
        self.register_buffer("target_prior", torch.full((num_classes,), float("nan")))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        #: the factor moved into the delivered model's class biases (NaN until then; ST-DASegNet's
        #: prior_at_prediction)
        self.register_buffer("applied_ratio", torch.full((num_classes,), float("nan")))
        #: the last matching log-factor: where the next step's solve starts (a buffer, so a resumed job solves
        #: from where a straight one would)
        self.register_buffer("match_bias", torch.zeros(num_classes))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before match_bias existed start the solve from 0, as those jobs did
        state_dict.setdefault(prefix + "match_bias", torch.zeros_like(self.match_bias))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def estimated(self) -> bool:
        return bool(self.frozen)

    @property
    def source_known(self) -> bool:
        """Whether pi_s was estimated (a target prior given by the user comes without one)."""
        return self.estimated and not bool(torch.isnan(self.source_prior).any())

    @torch.no_grad()
    def fix_target_prior(self, prior: Tensor, *, source_prior: Tensor | None = None,
                         temperature: Tensor | float | None = None) -> None:
        """pi_t given rather than estimated here (known class proportions of the target, or an estimate read before
        training): frozen from the start. Pseudo-labels are matched to it as to an estimate. ``source_prior`` and
        ``temperature``: pi_s and T where the estimate that gave pi_t had them (for the record); pi_s unknown
        without."""
        self.target_prior.copy_(prior / prior.sum())
        if source_prior is not None:
            self.source_prior.copy_(source_prior)
        if temperature is not None:
            self.temperature.fill_(float(temperature))
        self.frozen.fill_(True)

    def observe_source(self, log_probs: Tensor, labels: Tensor, *, gather: Gather | None = None) -> None:
        """(N, K) teacher log-probabilities on labelled source pixels and their (N,) labels."""
        self.source.add(log_probs, labels, gather=gather)

    def observe_target(self, log_probs: Tensor, *, gather: Gather | None = None) -> None:
        """(N, K) teacher log-probabilities on target pixels."""
        self.target.add(log_probs, gather=gather)

    @torch.no_grad()
    def freeze(self) -> None:
        """End of the estimating stage: calibrate on the source pool, estimate pi_s and pi_t, fix them (once)."""
        if self.estimated:
            return
        source, labels = self.source.contents()
        target, _ = self.target.contents()
        if len(source) and len(target):
            t, b = fit_bcts(source, labels)
            self.temperature.copy_(t)
            self.source_prior.copy_(calibrated(source, t, b).mean(dim=0))
            self.target_prior.copy_(em_target_prior(calibrated(target, t, b), self.source_prior))
        else:  # nothing seen: no correction
            self.source_prior.fill_(1.0 / len(self.source_prior))
            self.target_prior.copy_(self.source_prior)
        self.frozen.fill_(True)

    def correct(self, prob: Tensor) -> Tensor:
        """(B, K, H, W) probabilities moved onto pi_t by the factor that gives the target pool its mean (unchanged
        before the estimate)."""
        if not self.estimated:
            return prob
        return reweighted(prob, self.prediction_ratio())

    def prediction_ratio(self) -> Tensor:
        """The per-class factor that gives the pool of recent target pixels the mean pi_t: what a model whose
        probabilities are the pool's predicts the target with, once multiplied in (1 before the estimate)."""
        if not self.estimated:
            return torch.ones_like(self.target_prior)
        bias = matching_bias(self.target.contents()[0], self.target_prior, start=self.match_bias)
        self.match_bias.copy_(bias)
        return bias.exp()

    def record(self, ratio: Tensor | None) -> dict:
        """What a job reports of the estimate (rounded, in the job's class order): pi_s (None when pi_t was given
        without one), pi_t, T, and ``ratio``, the factor moved into the model (None until one is)."""
        if not self.estimated:
            return {"source_prior": None, "target_prior": None}

        def rounded(values: Tensor) -> list[float]:
            return [round(float(v), 4) for v in values]

        return {"source_prior": rounded(self.source_prior) if self.source_known else None,
                "target_prior": rounded(self.target_prior), "temperature": round(float(self.temperature), 4),
                "prediction_ratio": rounded(ratio) if ratio is not None else None}

    def total_variation(self) -> Tensor:
        """Half the L1 distance between the estimated pi_t and pi_s (0 before the estimate or without pi_s)."""
        if not self.source_known:
            return torch.zeros(())
        return 0.5 * (self.target_prior.cpu() - self.source_prior.cpu()).abs().sum()
