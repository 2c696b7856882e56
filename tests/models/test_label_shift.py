"""Label-shift correction (Saerens et al. 2002; BCTS, Alexandari et al. 2020): the prior ratio on a hand-computed
example, EM recovering a known target prior from calibrated posteriors and, after BCTS, from over-confident ones,
the pools and the two stages of the estimate, and ST-DASegNet's pseudo_prior option."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from models.adaptation import build_method
from models.label_shift import (LabelShiftEstimate, PixelPool, bbse_target_prior, calibrated, em_target_prior,
                                 fit_bcts, matching_bias, outside_simplex, pixel_rows, reweighted,
                                 shift_probabilities)


def test_probabilities_move_by_the_prior_ratio():
    # p = (0.5, 0.5) under pi_s = (0.8, 0.2); pi_t = (0.5, 0.5): ratio (0.625, 2.5) -> (0.3125, 1.25) / 1.5625
    prob = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    out = shift_probabilities(prob, torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5]))
    assert out.flatten().tolist() == pytest.approx([0.2, 0.8])
    # the same prior on both sides changes nothing
    same = shift_probabilities(prob, torch.tensor([0.8, 0.2]), torch.tensor([0.8, 0.2]))
    assert torch.allclose(same, prob)


def _calibrated_posteriors(n: int, source_prior, target_prior, seed: int = 0, *, labels: bool = False):
    """Pixels drawn under ``target_prior`` (class k: x ~ N(2k - K + 1, 1)), scored by the Bayes posterior
    under ``source_prior``: what a calibrated model trained on the source predicts on the target."""
    g = torch.Generator().manual_seed(seed)
    k = len(source_prior)
    y = torch.multinomial(torch.tensor(target_prior), n, replacement=True, generator=g)
    means = torch.arange(k, dtype=torch.float32) * 2 - (k - 1)
    x = torch.randn(n, generator=g) + means[y]
    likelihood = torch.exp(-(x[:, None] - means[None]) ** 2 / 2)
    post = likelihood * torch.tensor(source_prior)
    post = post / post.sum(dim=1, keepdim=True)
    return (post, y) if labels else post


def _overconfident(post: torch.Tensor, shift) -> torch.Tensor:
    """Log-probabilities of a network three times too sure of itself and biased per class (a per-row
    constant does not matter to a softmax)."""
    return 3.0 * (post.log() + torch.tensor(shift))


@pytest.mark.parametrize("source, target", [([0.77, 0.23], [0.59, 0.41]), ([0.5, 0.3, 0.2], [0.2, 0.3, 0.5])])
def test_em_recovers_the_target_prior_where_the_mean_prediction_does_not(source, target):
    post = _calibrated_posteriors(200_000, source, target)
    naive = post.mean(dim=0)
    estimate = em_target_prior(post, torch.tensor(source), iterations=300)
    assert torch.allclose(estimate, torch.tensor(target), atol=0.01), estimate
    assert (naive - torch.tensor(target)).abs().max() > 0.04  # the plain mean stays near the source's


def test_em_keeps_the_source_prior_when_there_is_no_shift():
    post = _calibrated_posteriors(100_000, [0.7, 0.3], [0.7, 0.3], seed=1)
    assert torch.allclose(em_target_prior(post, torch.tensor([0.7, 0.3]), iterations=100),
                          torch.tensor([0.7, 0.3]), atol=0.01)


def test_matching_ratio_reaches_the_target_prior_and_is_saerens_ratio_on_a_source_model():
    source, target = [0.77, 0.23], [0.59, 0.41]
    post = _calibrated_posteriors(200_000, source, target, seed=4)
    ratio = matching_bias(post.log(), torch.tensor(target)).exp()
    moved = post * ratio
    moved = moved / moved.sum(dim=1, keepdim=True)
    assert torch.allclose(moved.mean(dim=0), torch.tensor(target), atol=1e-4)
    saerens = torch.tensor(target) / torch.tensor(source)
    assert float(ratio[1] / ratio[0]) == pytest.approx(float(saerens[1] / saerens[0]), rel=0.05)


def test_bcts_undoes_over_confidence_and_bias_and_then_em_finds_the_target_prior():
    source, target = [0.77, 0.23], [0.59, 0.41]
    post_s, y_s = _calibrated_posteriors(100_000, source, source, seed=5, labels=True)
    t, b = fit_bcts(_overconfident(post_s, [0.0, -0.7]), y_s)
    assert float(t) == pytest.approx(3.0, rel=0.05)
    assert float(b[1] - b[0]) == pytest.approx(0.7, abs=0.05)
    post_t = _calibrated_posteriors(100_000, source, target, seed=6)
    raw = _overconfident(post_t, [0.0, -0.7]).softmax(dim=1)
    raw_source = _overconfident(post_s, [0.0, -0.7]).softmax(dim=1).mean(dim=0)
    # uncalibrated, EM misses the target's mix by far; calibrated, it finds it
    assert abs(float(em_target_prior(raw, raw_source)[1]) - 0.41) > 0.05
    cal_source = calibrated(_overconfident(post_s, [0.0, -0.7]), t, b).mean(dim=0)
    estimate = em_target_prior(calibrated(_overconfident(post_t, [0.0, -0.7]), t, b), cal_source)
    assert float(estimate[1]) == pytest.approx(0.41, abs=0.02)
    assert torch.allclose(calibrated(_overconfident(post_t, [0.0, -0.7]), t, b), post_t, atol=0.02)


def test_pool_keeps_evenly_spaced_rows_with_their_labels_and_wraps_round():
    pool = PixelPool(6, 2, per_batch=4, labelled=True)
    rows = torch.arange(20, dtype=torch.float32).view(10, 2)
    labels = torch.arange(10)
    pool.add(rows, labels)
    idx = torch.linspace(0, 9, 4).round().long()  # 0, 3, 6, 9
    got, got_labels = pool.contents()
    assert torch.equal(got, rows[idx]) and torch.equal(got_labels, labels[idx])
    pool.add(rows[:4], labels[:4])  # rows 0..3 once each: two fill the pool, two replace the oldest
    got, got_labels = pool.contents()
    assert len(pool) == 6 and int(pool.written) == 8
    assert got_labels.tolist() == [2, 3, 6, 9, 0, 1]
    pool.add(rows[:0], labels[:0])  # an empty batch adds nothing
    assert int(pool.written) == 8


def test_a_rank_with_no_pixels_still_joins_the_gather_and_keeps_the_others_rows():
    """Two ranks in one process: rank 0's batch has no labelled pixel, rank 1's has. Rank 0 must still call the
    collective (a gather it skips would leave rank 1 waiting for ever), and both pools end with rank 1's rows."""
    rows, labels = torch.arange(20, dtype=torch.float32).view(10, 2), torch.arange(10)
    sent: dict[int, torch.Tensor] = {}

    def gather_as(rank):
        def gather(block):
            sent[rank] = block
            return torch.cat([sent[0], sent[1]]) if len(sent) == 2 else block
        return gather

    empty_rank, full_rank = PixelPool(8, 2, per_batch=4, labelled=True), PixelPool(8, 2, per_batch=4, labelled=True)
    empty_rank.add(rows[:0], labels[:0], gather=gather_as(0))
    assert 0 in sent and int(empty_rank.written) == 0  # joined the gather; its own block holds no row
    full_rank.add(rows, labels, gather=gather_as(1))
    idx = torch.linspace(0, 9, 4).round().long()
    got, got_labels = full_rank.contents()
    assert torch.equal(got, rows[idx]) and torch.equal(got_labels, labels[idx])  # rank 0's absent rows dropped
    empty_rank.add(rows[:0], labels[:0], gather=lambda block: torch.cat([block, sent[1]]))  # with rank 1's rows
    got, got_labels = empty_rank.contents()
    assert torch.equal(got, rows[idx]) and torch.equal(got_labels, labels[idx])
    unlabelled = PixelPool(8, 2, per_batch=4)
    unlabelled.add(rows[:0], gather=lambda block: torch.cat([block, torch.cat([rows[:4], torch.ones(4, 1)], 1)]))
    assert torch.equal(unlabelled.contents()[0], rows[:4])


def test_estimate_waits_for_its_stage_then_freezes_and_keeps_the_mix():
    source, target = [0.7, 0.3], [0.4, 0.6]
    shift = LabelShiftEstimate(2, pool=30_000, per_batch=10_000)
    prob = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    post_s, y_s = _calibrated_posteriors(50_000, source, source, seed=5, labels=True)
    shift.observe_source(_overconfident(post_s, [0.0, 0.4]), y_s)
    for seed in (6, 7):
        shift.observe_target(_overconfident(_calibrated_posteriors(40_000, source, target, seed=seed), [0.0, 0.4]))
    assert not shift.estimated and torch.equal(shift.correct(prob), prob)  # nothing moves while estimating
    assert float(shift.total_variation()) == 0.0

    shift.freeze()
    assert shift.estimated and float(shift.temperature) == pytest.approx(3.0, rel=0.1)
    assert shift.source_prior.tolist() == pytest.approx(source, abs=0.02)
    assert shift.target_prior.tolist() == pytest.approx(target, abs=0.03)
    assert float(shift.total_variation()) == pytest.approx(float(shift.target_prior[1] - shift.source_prior[1]))
    frozen = shift.target_prior.clone()
    # a teacher that has since drifted to 10 % of the second class: pi_t stays, and its pseudo-labels, taken
    # with the factor from the pool of its recent pixels, keep the target's mix
    for seed in range(8, 11):
        shift.observe_target(_calibrated_posteriors(10_000, [0.9, 0.1], [0.9, 0.1], seed=seed).log())
    assert torch.equal(shift.target_prior, frozen)
    drifted = shift.target.contents()[0].exp()
    moved = shift.correct(drifted.T[None, :, :, None])[0, :, :, 0].T
    assert torch.allclose(moved.mean(dim=0), frozen, atol=1e-3)


def test_estimate_with_nothing_seen_corrects_nothing():
    shift = LabelShiftEstimate(3, pool=10, per_batch=5)
    shift.freeze()
    prob = torch.tensor([0.2, 0.3, 0.5]).view(1, 3, 1, 1)
    assert torch.allclose(shift.correct(prob), prob) and float(shift.total_variation()) == 0.0


def test_pixel_rows_keep_only_valid_pixels():
    prob = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    valid = torch.tensor([[[True, False], [False, False]], [[False, False], [False, True]]])
    out = pixel_rows(prob, valid)
    assert out.tolist() == [prob[0, :, 0, 0].tolist(), prob[1, :, 1, 1].tolist()]


def test_st_dasegnet_option_estimates_without_self_training_then_corrects_its_pseudo_labels(tiny, make_batch):
    torch.manual_seed(0)
    cfg = tiny("st-dasegnet", bands=4, classes=3, **{"adaptation.pseudo_prior": "em",
                                                     "adaptation.pseudo_threshold": 0.34})
    m = build_method(cfg, total_iters=20)
    assert "label_shift" in m.net and m.prior_estimation_iters() == 2  # 10 % of the budget
    shift = m.net["label_shift"]
    batch = make_batch(bands=4, classes=3, b=2, crop=32)
    terms, _ = m.student_losses(batch)
    # estimating: the teachers' source log-probabilities (labelled pixels) and target probabilities pooled,
    # and self-training carries no weight
    st, xs, ys = m.net["students"], batch["source"]["img"], batch["source"]["label"]
    xt, vt = batch["target"]["img"], batch["target"]["valid"]

    def teacher_prob(x):
        g_s, g_t = st.ddm(st.backbone_s(x), st.backbone_t(x))
        t = (m.net["teacher_s"](g_s) + m.net["teacher_t"](g_t)) / 2
        return F.interpolate(t, size=x.shape[-2:], mode="bilinear", align_corners=False).softmax(1)

    with torch.no_grad():
        source_rows = pixel_rows(teacher_prob(xs), ys != 255)
        target_rows = pixel_rows(teacher_prob(xt), vt)
    spaced = torch.linspace(0, len(source_rows) - 1, shift.source.per_batch).round().long()
    pooled, labels = shift.source.contents()
    assert torch.allclose(pooled.exp(), source_rows[spaced], atol=1e-5)
    assert torch.equal(labels, ys[ys != 255][spaced])
    spaced = torch.linspace(0, len(target_rows) - 1, shift.target.per_batch).round().long()
    assert torch.allclose(shift.target.contents()[0].exp(), target_rows[spaced], atol=1e-5)
    assert not shift.estimated and float(terms["prior_tv"]) == 0.0
    expected = terms["ce_src_s"] + terms["ce_src_t"] + 0.005 * (terms["adv_s"] + terms["adv_t"])
    assert float(terms["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-6)

    # frozen after the estimation stage; from then on the estimate stays and self-training weighs in
    m.train_step(make_batch(bands=4, classes=3, b=2, crop=32, seed=1), 0)
    assert not shift.estimated and m.training_record()["label_shift"]["target_prior"] is None
    m.train_step(make_batch(bands=4, classes=3, b=2, crop=32, seed=2), 1)
    assert shift.estimated
    frozen = shift.target_prior.clone()
    out = m.train_step(make_batch(bands=4, classes=3, b=2, crop=32, seed=3), 2)
    assert torch.equal(shift.target_prior, frozen) and out["prior_tv"] == pytest.approx(
        float(shift.total_variation()), abs=1e-6)
    assert "label_shift.target_prior" in m.state_dict()["net"]  # a resumed job continues from the estimate
    record = m.training_record()["label_shift"]  # what the job's metrics.training shows
    assert record["target_prior"] == pytest.approx(frozen.tolist(), abs=1e-4)
    assert record["temperature"] == pytest.approx(float(shift.temperature), abs=1e-4)
    assert record["source_prior"] == pytest.approx(shift.source_prior.tolist(), abs=1e-4)


@pytest.mark.parametrize("at_prediction", [True, False])
def test_the_delivered_model_predicts_with_the_target_prior_after_the_last_iteration(tiny, make_batch, at_prediction):
    torch.manual_seed(0)
    cfg = tiny("st-dasegnet", bands=4, classes=3, **{"adaptation.pseudo_prior": "em",
                                                     "adaptation.prior_at_prediction": at_prediction})
    m = build_method(cfg, total_iters=3)  # estimated over iteration 0, frozen after it
    for it in range(2):
        m.train_step(make_batch(bands=4, classes=3, b=2, crop=32, seed=it), it)
    shift, st = m.net["label_shift"], m.net["students"]
    assert shift.estimated and torch.isnan(shift.applied_ratio).all()
    x = make_batch(bands=4, classes=3, b=2, crop=32, seed=9)["target"]["img"]
    ratio = shift.prediction_ratio()
    m.eval()
    with torch.no_grad():
        before = st.predict_logits(x)
        m.predict_with_target_prior()  # what the last iteration does
        after = st.predict_logits(x)
    # the mean of both decoders' logits moves by log(ratio) at every pixel: probabilities times the ratio
    assert torch.allclose(after - before, ratio.log().view(1, -1, 1, 1).expand_as(after), atol=1e-5)
    assert torch.allclose(shift.applied_ratio, ratio)
    assert m.training_record()["label_shift"]["prediction_ratio"] == pytest.approx(ratio.tolist(), abs=1e-4)

    again = build_method(cfg, total_iters=3)
    for it in range(3):
        again.train_step(make_batch(bands=4, classes=3, b=2, crop=32, seed=it), it)
    applied = again.net["label_shift"].applied_ratio
    assert (not torch.isnan(applied).any()) == at_prediction


def test_st_dasegnet_without_the_option_has_no_estimate_and_refuses_unknown_values(tiny):
    m = build_method(tiny("st-dasegnet"), total_iters=10)
    assert "label_shift" not in m.net and m.training_record() == {}
    with pytest.raises(ConfigError, match="pseudo_prior"):
        build_method(tiny("st-dasegnet", **{"adaptation.pseudo_prior": "uniform"}), total_iters=10)


def test_a_given_target_prior_skips_the_estimate_and_corrects_from_the_first_adapting_step(tiny, make_batch):
    """``pseudo_prior`` as the target's class frequencies (known proportions, or a label-shift job's estimate):
    no estimating stage, self-training from the start, pseudo-labels matched to the given mix."""
    torch.manual_seed(0)
    cfg = tiny("st-dasegnet", bands=4, classes=3, **{"adaptation.pseudo_prior": [2, 1, 1],
                                                     "adaptation.pseudo_threshold": 0.34})
    m = build_method(cfg, total_iters=20)
    shift = m.net["label_shift"]
    assert shift.estimated and not shift.source_known and m.prior_estimation_iters() == 0
    assert shift.target_prior.tolist() == pytest.approx([0.5, 0.25, 0.25])
    terms, _ = m.student_losses(make_batch(bands=4, classes=3, b=2, crop=32))
    assert len(shift.source) == 0 and len(shift.target) == shift.target.per_batch  # no source pool: nothing to fit
    assert float(terms["prior_tv"]) == 0.0  # no pi_s to measure against
    # self-training weighs in at once (the spec's objective with its pseudo-label terms)
    expected = (terms["ce_src_s"] + terms["ce_src_t"] + 0.005 * (terms["adv_s"] + terms["adv_t"])
                + 0.25 * (terms["ce_pseudo_s"] + terms["ce_pseudo_t"]))
    assert float(terms["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    # the pooled target probabilities, moved by the prediction ratio, have the given mean
    pooled = reweighted(shift.target.contents()[0].exp(), shift.prediction_ratio())
    assert pooled.mean(dim=0).tolist() == pytest.approx([0.5, 0.25, 0.25], abs=1e-3)
    record = m.training_record()["label_shift"]
    assert record["source_prior"] is None and record["target_prior"] == pytest.approx([0.5, 0.25, 0.25], abs=1e-4)


def test_a_prior_read_before_training_is_fixed_by_the_job_and_missing_it_stops_the_first_adapting_step(
        tiny, make_batch):
    """``pseudo_prior: label-shift``: the job reads pi_t from the start model and fixes it (with pi_s and T for the
    record) before training; a run without it would self-train uncorrected, so the first adapting step refuses.
    It cannot follow a source warm-up, after which the model that adapts is not the one read."""
    cfg = tiny("st-dasegnet", bands=4, classes=3, **{"adaptation.pseudo_prior": "label-shift"})
    m = build_method(cfg, total_iters=20)
    shift = m.net["label_shift"]
    assert not shift.estimated and m.prior_estimation_iters() == 0
    with pytest.raises(RuntimeError, match="read before training"):
        m.student_losses(make_batch(bands=4, classes=3, b=2, crop=32))

    m = build_method(cfg, total_iters=20)
    m.fix_target_prior(torch.tensor([0.2, 0.3, 0.5]), source_prior=torch.tensor([0.5, 0.3, 0.2]), temperature=1.7)
    terms, _ = m.student_losses(make_batch(bands=4, classes=3, b=2, crop=32))
    assert len(m.net["label_shift"].target) == m.net["label_shift"].target.per_batch  # pseudo-labels matched at once
    record = m.training_record()["label_shift"]
    assert record["target_prior"] == pytest.approx([0.2, 0.3, 0.5]) and record["source_prior"] == pytest.approx(
        [0.5, 0.3, 0.2]) and record["temperature"] == pytest.approx(1.7)
    assert float(m.net["label_shift"].total_variation()) == pytest.approx(0.3)

    with pytest.raises(ConfigError, match="needs adaptation.pseudo_prior 'label-shift'"):
        build_method(tiny("st-dasegnet", classes=3), total_iters=10).fix_target_prior(torch.ones(3))
    with pytest.raises(ConfigError, match="source warm-up"):
        build_method(tiny("st-dasegnet", classes=3, **{"adaptation.pseudo_prior": "label-shift",
                                                        "adaptation.source_warmup": 0.5}), total_iters=10)


@pytest.mark.parametrize("prior, words", [([1, 1], "2 class frequencies for 3 classes"),
                                          ([1, -1, 1], "non-negative"), ([0, 0, 0], "not all 0"),
                                          (["a", 1, 1], "must be numbers")])
def test_a_given_prior_that_does_not_fit_the_classes_is_refused(tiny, prior, words):
    with pytest.raises(ConfigError, match=words):
        build_method(tiny("st-dasegnet", classes=3, **{"adaptation.pseudo_prior": prior}), total_iters=10)


def _gaussian_pixels(n: int, prior, seed: int, *, offset: float = 0.0):
    """(Bayes posteriors under the balanced prior, labels) of pixels drawn under ``prior``, their feature moved
    by ``offset`` (an input shift: p(x|y) changes)."""
    g = torch.Generator().manual_seed(seed)
    k = len(prior)
    y = torch.multinomial(torch.tensor(prior), n, replacement=True, generator=g)
    means = torch.arange(k, dtype=torch.float32) * 2 - (k - 1)
    x = torch.randn(n, generator=g) + means[y] + offset
    post = torch.exp(-(x[:, None] - means[None]) ** 2 / 2)
    return post / post.sum(dim=1, keepdim=True), y


def test_bbse_recovers_a_class_mix_shift_and_stays_in_the_simplex():
    source, labels = _gaussian_pixels(100_000, [0.5, 0.3, 0.2], seed=0)
    target, _ = _gaussian_pixels(100_000, [0.2, 0.3, 0.5], seed=1)
    estimate = bbse_target_prior(source, labels, target)
    assert torch.allclose(estimate, torch.tensor([0.2, 0.3, 0.5]), atol=0.02), estimate
    assert outside_simplex(estimate) == 0.0


def test_bbse_leaves_the_simplex_when_the_inputs_moved_rather_than_the_class_mix():
    """The same class mix seen through a sensor that brightens everything (every feature moved by 4): the model
    calls almost every pixel the brightest class, more of them than it calls that class on the source even
    where it is all there is. No class mix explains that, and BBSE says so; EM reads it as a shift (NC's case).
    A milder, uniform move can pass for a class mix: the check finds what no class mix explains, no more."""
    source, labels = _gaussian_pixels(100_000, [0.5, 0.3, 0.2], seed=0)
    target, _ = _gaussian_pixels(100_000, [0.5, 0.3, 0.2], seed=1, offset=4.0)
    estimate = bbse_target_prior(source, labels, target)
    assert outside_simplex(estimate) > 0.05, estimate
    em = em_target_prior(target, source.mean(dim=0), iterations=100)
    assert 0.5 * float((em - torch.tensor([0.5, 0.3, 0.2])).abs().sum()) > 0.2  # EM: a large, false shift
    # the limit: a milder move (1.5) can be explained by a class mix, and BBSE finds one
    milder, _ = _gaussian_pixels(100_000, [0.5, 0.3, 0.2], seed=1, offset=1.5)
    assert outside_simplex(bbse_target_prior(source, labels, milder)) == 0.0


def test_the_matching_solve_starts_from_the_last_one_and_old_checkpoints_still_load():
    post = _calibrated_posteriors(50_000, [0.7, 0.3], [0.5, 0.5], seed=2)
    target = torch.tensor([0.55, 0.45])
    cold = matching_bias(post.log(), target)
    # one step from the last solution is already there: a pool that moved by one batch needs few
    assert torch.allclose(matching_bias(post.log(), target, start=cold, iterations=1), cold, atol=1e-5)
    assert not torch.allclose(matching_bias(post.log(), target, iterations=1), cold, atol=1e-3)

    shift = LabelShiftEstimate(2, pool=1024, per_batch=512)
    shift.fix_target_prior(target)
    shift.observe_target(post[:512].log())
    ratio = shift.prediction_ratio()
    assert torch.allclose(shift.match_bias, ratio.log())  # kept for the next step, and in checkpoints
    state = {k: v for k, v in shift.state_dict().items() if k != "match_bias"}  # written before it existed
    again = LabelShiftEstimate(2, pool=1024, per_batch=512)
    again.load_state_dict(state)
    assert torch.equal(again.match_bias, torch.zeros(2)) and torch.equal(again.target_prior, shift.target_prior)


def test_bbse_leaves_what_the_source_cannot_resolve_at_no_shift():
    """A class on 0.5 % of the source: its few pixels' noise, inverted, swings its estimate past 0 on some
    draws of the same distribution. Regularised BBSE keeps it where the source has it."""
    prior = [0.6, 0.395, 0.005]
    plain, regularised = [], []
    for seed in range(5):
        source, labels = _gaussian_pixels(4000, prior, seed=seed)
        target, _ = _gaussian_pixels(4000, prior, seed=seed + 100)  # no shift at all
        plain.append(float(bbse_target_prior(source, labels, target, rtol=1e-7)[2]))
        regularised.append(float(bbse_target_prior(source, labels, target)[2]))
    assert max(abs(v - 0.005) for v in plain) > 0.015 and min(plain) < 0
    assert max(abs(v - 0.005) for v in regularised) < 0.003
