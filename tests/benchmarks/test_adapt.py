"""Benchmark A: the gap-closure arithmetic, and a few-iteration smoke run of the whole command."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from benchmarks.adapt import render_markdown, summarise


def _m(miou, ious):
    return {"miou": miou, "oa": 0.5, "mf1": 0.4, "per_class": {c: {"iou": v} for c, v in zip("ab", ious)}}


def test_gap_closure_uses_the_better_source_only_row_and_is_unclipped():
    rows = {
        "source-only": [_m(0.10, [0.1, 0.1]), _m(0.12, [0.1, 0.14])],
        "source-only+target-stats": [_m(0.14, [0.2, 0.08]), _m(0.16, [0.2, 0.12])],
        "st-dasegnet": [_m(0.20, [0.3, 0.1]), _m(0.22, [0.3, 0.14])],
        "feature-regression": [_m(0.30, [0.3, 0.3]), _m(0.30, [0.3, 0.3])],
        "oracle": [_m(0.24, [0.3, 0.18]), _m(0.26, [0.3, 0.22])],
    }
    s = summarise(rows, ["a", "b"], ["st-dasegnet", "feature-regression"])
    assert s["best_source_only"] == "source-only+target-stats"
    assert s["gap_closure"]["st-dasegnet"] == pytest.approx((0.21 - 0.15) / (0.25 - 0.15))
    assert s["gap_closure"]["feature-regression"] == pytest.approx(1.5)  # above 1: not clipped
    m = s["methods"]["st-dasegnet"]
    assert m["miou"] == [0.20, 0.22] and m["per_class_iou"]["b"] == [0.1, 0.14]
    assert m["mean"]["miou"] == pytest.approx(0.21) and m["std"]["miou"] == pytest.approx(0.0141421, rel=1e-4)


def test_an_averaged_source_only_row_is_a_source_only_baseline_of_gap_closure():
    rows = {
        "source-only": [_m(0.10, [0.1, 0.1])],
        "source-only+average-0.5": [_m(0.14, [0.2, 0.08])],
        "st-dasegnet": [_m(0.20, [0.3, 0.1])],
        "oracle": [_m(0.24, [0.3, 0.18])],
    }
    s = summarise(rows, ["a", "b"], ["st-dasegnet"])
    assert s["best_source_only"] == "source-only+average-0.5"
    assert s["gap_closure"]["st-dasegnet"] == pytest.approx((0.20 - 0.14) / (0.24 - 0.14))


def test_the_averaged_source_only_row_is_a_source_only_job_with_its_model_averaged(tmp_path):
    from benchmarks.adapt import RUNNERS

    ctx, jobs = _recording_context(tmp_path, "nc")
    rows = RUNNERS["source-only+average-0.5"].runner(ctx, 0)
    assert set(rows) == {"source-only+average-0.5", "source-only+average-0.5+target-stats"}
    [(name, _, kw)] = jobs
    assert (name, kw["type"], kw["method"]) == ("source-only+average-0.5", "train", "source-only")
    assert kw["model"]["overrides"]["adaptation.average_weights"] == 0.5
    assert RUNNERS["source-only+average-0.5+adabn"].needs == ("source-only+average-0.5",)


def test_label_free_signals_are_rank_correlated_with_miou_across_every_run():
    def run(miou, conf, entropy):
        return {**_m(miou, [miou, miou]), "label_free": {"mean_max_prob": conf, "entropy": entropy}}

    rows = {  # four runs: confidence ranks them as mIoU does but for one swap; entropy in reverse
        "source-only": [run(0.10, 0.60, 0.9), run(0.20, 0.80, 0.7)],
        "st-dasegnet": [run(0.30, 0.70, 0.5), run(0.40, 0.90, 0.3)],
        "oracle": [_m(0.5, [0.5, 0.5])],  # no signals: left out of the ranking
    }
    s = summarise(rows, ["a", "b"], ["st-dasegnet"])
    # ranks of confidence (1, 3, 2, 4) against (1, 2, 3, 4): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert s["label_free"]["mean_max_prob"] == pytest.approx(0.8)
    assert s["label_free"]["entropy"] == pytest.approx(-1.0)
    assert s["label_free"]["agreement"] is None  # no run has it
    assert s["methods"]["st-dasegnet"]["label_free"][1]["mean_max_prob"] == 0.90
    assert "label_free" not in s["methods"]["oracle"]
    # a row that shows another row's runs is not counted twice
    again = summarise({**rows, "copy": rows["st-dasegnet"]}, ["a", "b"], ["st-dasegnet"], copies=("copy",))
    assert again["label_free"] == s["label_free"]
    # so is a seed whose model is another row's unchanged (a refused label-shift job), while its other seed counts
    shifted = [{**rows["source-only"][0], "refused": "inputs changed", "copy_of": "source-only"},
               run(0.45, 0.95, 0.2)]
    with_refusal = summarise({**rows, "label-shift": shifted}, ["a", "b"], ["st-dasegnet"])
    assert with_refusal["methods"]["label-shift"]["copy_of"] == ["source-only", None]
    # five runs: confidence ranks (1, 3, 2, 4, 5) against (1, 2, 3, 4, 5): rho = 1 - 6 * 2 / (5 * 24) = 0.9
    assert with_refusal["label_free"]["mean_max_prob"] == pytest.approx(0.9)


def test_report_shows_how_each_adaptation_run_ended_per_seed():
    late = [{"loss": 1.0, "pseudo_q": 0.0123, "disc_bce": 0.6901}, {"loss": 1.1, "pseudo_q": 0.4567, "disc_bce": 0.5}]
    rows = {
        "source-only": [{**_m(0.10, [0.1, 0.1]), "late_losses": {"loss": 0.9, "ce_src": 0.9}}] * 2,
        "adabn": [_m(0.11, [0.1, 0.1])] * 2,  # no training run: nothing to show
        "st-dasegnet": [{**_m(0.20, [0.3, 0.1]), "late_losses": x} for x in late],
        "oracle": [_m(0.30, [0.3, 0.3])] * 2,
    }
    s = summarise(rows, ["a", "b"], ["st-dasegnet", "adabn"])
    assert s["methods"]["st-dasegnet"]["late_losses"] == late
    assert "late_losses" not in s["methods"]["adabn"]
    report = {"settings": {"config": "segformer-tiny", "iterations": 8, "batch_size": 2, "crop": 32, "shift_seed": 0},
              "seeds": [0, 1], "train_columns": [0, 0.6], "test_columns": [0.6, 1], "mean_over": "classes",
              "classes": ["a", "b"], "goals": {}, "elapsed_s": 60, "device": "cpu", "threads": 1, **s}
    md = render_markdown(report)
    assert "| st-dasegnet | 0.0123, 0.4567 | 0.6901, 0.5000 |" in md
    table = md[md.index("How training ended"):]
    assert "source-only" not in table and "adabn" not in table  # only rows with diagnostics


def test_report_says_where_a_label_shift_job_refused():
    why = "the target's inputs changed, not only its class mix: ..."
    rows = {"source-only": [_m(0.10, [0.1, 0.1])] * 2,
            "label-shift": [{**_m(0.10, [0.1, 0.1]), "refused": why}, _m(0.15, [0.2, 0.1])],
            "oracle": [_m(0.30, [0.3, 0.3])] * 2}
    s = summarise(rows, ["a", "b"], ["label-shift"])
    assert s["methods"]["label-shift"]["refused"] == [why, None]
    assert "refused" not in s["methods"]["source-only"]
    report = {"settings": {"config": "segformer-tiny", "iterations": 8, "batch_size": 2, "crop": 32, "shift_seed": 0},
              "seeds": [3, 4], "train_columns": [0, 0.6], "test_columns": [0.6, 1], "mean_over": "classes",
              "classes": ["a", "b"], "goals": {}, "elapsed_s": 60, "device": "cpu", "threads": 1, **s}
    md = render_markdown(report)
    assert f"`label-shift` refused at seed(s) 3 (the row scores the unchanged model there): {why}" in md


def test_report_names_the_code_that_trained_each_row_when_rows_were_made_by_several():
    from benchmarks.adapt import code_names

    now = {"version": "0.1.0", "commit": "b" * 40, "modified": True}
    earlier = {"version": "0.1.0", "commit": "a" * 40, "modified": False}
    # a resumed run names each run's code; a job with no training loop, the code that wrote its bundle
    assert code_names({"code": {"written_by": now, "trained_by": [earlier, now]}}) == ["aaaaaaaaaa",
                                                                                      "bbbbbbbbbb+modified"]
    assert code_names({"code": {"written_by": now}}) == ["bbbbbbbbbb+modified"]
    assert code_names({"code": {"written_by": {"version": "0.1.0", "commit": None, "modified": None}}}) == ["v0.1.0"]
    assert code_names({}) == []
    # with the digest of the training code recorded, it names the code: the same for two commits that changed
    # only other code, for a modified checkout and for an installed copy (no checkout) holding that code
    digest, other = "0123456789abcdef" * 4, "fedcba9876543210" * 4
    assert code_names({"code": {"trained_by": [{**earlier, "source": digest}, {**now, "source": digest},
                                               {"version": "0.1.0", "source": digest, "commit": None,
                                                "modified": None}]}}) == ["src-01234567"] * 3
    assert code_names({"code": {"written_by": {**earlier, "source": other}}}) == ["src-fedcba98"]
    rows = {"source-only": [{**_m(0.10, [0.1, 0.1]), "made_by": ["aaaaaaaaaa"]}] * 2,
            "adabn": [{**_m(0.12, [0.1, 0.1]), "made_by": ["bbbbbbbbbb+modified"]}] * 2,
            "oracle": [_m(0.30, [0.3, 0.3])] * 2}
    s = summarise(rows, ["a", "b"], ["adabn"])
    assert s["methods"]["adabn"]["made_by"] == [["bbbbbbbbbb+modified"]] * 2
    assert "made_by" not in s["methods"]["oracle"]
    report = {"settings": {"config": "segformer-tiny", "iterations": 8, "batch_size": 2, "crop": 32, "shift_seed": 0},
              "seeds": [0, 1], "train_columns": [0, 0.6], "test_columns": [0.6, 1], "mean_over": "classes",
              "classes": ["a", "b"], "goals": {}, "elapsed_s": 60, "device": "cpu", "threads": 1, **s}
    assert ("Runs trained by 2 versions of the code: `aaaaaaaaaa`: source-only; `bbbbbbbbbb+modified`: adabn"
            in render_markdown(report))
    one = summarise({**rows, "adabn": rows["source-only"]}, ["a", "b"], ["adabn"])
    assert "versions of the code" not in render_markdown({**report, **one})


def test_bench_adapt_smoke(nc_data, tmp_path):
    n = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["bench", "adapt", "--case", "nc", "--iterations", "2", "--seeds", "1",
                                       "--crop", "32", "--batch-size", "2", "--threads", "1", "--jobs", "2",
                                       "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(n)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())["cases"]["nc"]
    assert set(report["methods"]) == {"source-only", "source-only+target-stats", "st-dasegnet", "st-dasegnet-faithful",
                                      "adabn", "label-shift", "oracle", "feature-regression"}
    for m in report["methods"].values():
        assert len(m["miou"]) == len(m["oa"]) == len(m["mf1"]) == 1 and len(m["per_class_iou"]) == 7
    assert set(report["gap_closure"]) == {"st-dasegnet", "st-dasegnet-faithful", "adabn", "label-shift",
                                          "feature-regression"}
    assert (tmp_path / "report.md").read_text().startswith("# Benchmark A")
    assert set(report["label_free"]) >= {"mean_max_prob", "entropy", "agreement", "pseudo_coverage", "expected_miou"}
    # read on the scored test region and on the train region: other pixels, other values
    assert set(report["label_free_train_region"]) == set(report["label_free"])
    so = report["methods"]["source-only"]
    assert so["label_free"][0]["mean_max_prob"] != so["label_free_train_region"][0]["mean_max_prob"]
    assert "| signal | test region | train region |" in (tmp_path / "nc" / "report.md").read_text()
    # the shipped default is the faithful method: one set of runs, shown as both rows
    assert report["faithful_is_default"] and report["methods"]["st-dasegnet-faithful"]["miou"] == \
        report["methods"]["st-dasegnet"]["miou"]
    assert "st-dasegnet-faithful" not in report["timing_s"]
    assert 0 <= report["methods"]["st-dasegnet"]["label_free"][0]["agreement"] <= 1  # two students
    tmp_path = tmp_path / "nc"  # the case's own report and plot
    [late] = report["methods"]["st-dasegnet"]["late_losses"]  # how the run ended: q and the discriminators
    assert 0 <= late["pseudo_q"] <= 1 and late["disc_bce"] > 0
    assert "How training ended" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "per_class_iou.png").stat().st_size > 1000
    assert "gap closure st-dasegnet" in res.output and "gap closure feature-regression" in res.output


def test_bench_adapt_blocks_split_smoke(nc_data, tmp_path):
    """The blocks split end to end at toy size: jobs train, adapt and are scored on checkerboard regions."""
    n = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["bench", "adapt", "--case", "nc", "--split", "blocks", "--iterations", "2",
                                       "--seeds", "1", "--crop", "32", "--batch-size", "2", "--threads", "1", "--jobs",
                                       "1", "--method", "source-only", "--method", "adabn", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(n)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())["cases"]["nc"]
    assert report["split"] == "blocks" and report["settings"]["split"] == "blocks"
    assert set(report["methods"]) == {"source-only", "source-only+target-stats", "adabn"}
    assert all(0 <= m["miou"][0] <= 1 for m in report["methods"].values())
    assert "Split `blocks`" in (tmp_path / "nc" / "report.md").read_text()
    assert all("split-blocks" in p.name for p in (tmp_path / "nc" / "runs").iterdir())


def test_bench_adapt_neon_case_smoke(tmp_path):
    """The NEON case end to end at toy size: pretrained and random starts, no feature regression (no pairs)."""
    n = torch.get_num_threads()
    try:
        res = CliRunner().invoke(app, ["bench", "adapt", "--case", "neon", "--iterations", "2", "--seeds", "1",
                                       "--crop", "32", "--batch-size", "2", "--threads", "1", "--jobs", "2",
                                       "--method", "source-only", "--method", "source-only-random",
                                       "--method", "adabn", "--method", "oracle", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(n)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())["cases"]["neon"]
    assert set(report["methods"]) == {"source-only", "source-only+target-stats", "source-only-random", "adabn",
                                      "oracle"}
    assert report["classes"] == ["not tree", "tree"] and report["settings"]["config"] == "efficientnet-lite0"
    from models.bundle import load_bundle

    [run] = (tmp_path / "neon" / "runs").glob("*/seed0")
    started = load_bundle(run / "source-only").provenance["pretrained"]
    assert started["weights"] == "efficientnet-lite0" and started["loaded"] > 0
    assert load_bundle(run / "source-only-random").provenance.get("pretrained") is None


def test_bench_adapt_refuses_an_unknown_method_before_any_work(tmp_path, monkeypatch, capsys):
    from cli import main

    monkeypatch.setattr("sys.argv", ["geoadapt", "bench", "adapt", "--method", "source-only+target-stats",
                                     "--method", "dann", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    text = " ".join(capsys.readouterr().err.split())
    assert "unknown method(s) source-only+target-stats, dann" in text
    assert not (tmp_path / "out").exists()  # nothing fetched, nothing written


def test_bench_adapt_refuses_a_split_the_case_cannot_draw_before_any_work(tmp_path, monkeypatch, capsys):
    from cli import main

    monkeypatch.setattr("sys.argv", ["geoadapt", "bench", "adapt", "--case", "nc", "--case", "neon", "--split",
                                     "blocks", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "the neon case splits its targets by columns, not 'blocks'" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "out").exists()  # nc was not run first


def test_the_blocks_split_keeps_its_runs_apart_and_the_report_says_where_it_scored(tmp_path):
    from benchmarks.adapt import BenchContext, BenchSettings

    def ctx(split):
        return BenchContext(BenchSettings(split=split).for_case("nc"), tmp_path, {}, None, print)

    assert ctx("blocks").run_dir(0, "adabn") != ctx("columns").run_dir(0, "adabn")
    assert "split-blocks" in str(ctx("blocks").run_dir(0, "adabn"))
    rows = {"source-only": [_m(0.10, [0.1, 0.1])], "oracle": [_m(0.30, [0.3, 0.3])]}
    report = {"settings": {"config": "segformer-tiny", "iterations": 8, "batch_size": 2, "crop": 32, "shift_seed": 0},
              "seeds": [0], "split": "blocks", "train_columns": [0.0, 0.6], "test_columns": [0.6, 1.0],
              "mean_over": "classes", "classes": ["a", "b"], "goals": {}, "elapsed_s": 60, "device": "cpu",
              "threads": 1, **summarise(rows, ["a", "b"], [])}
    text = render_markdown(report)
    assert "Split `blocks`: train region = the even cells of a checkerboard of 96 px cells" in text
    assert "columns [0.0, 0.6]" not in text


def test_a_named_st_dasegnet_option_runs_the_method_with_its_overrides_added(tmp_path):
    from models.config import resolve_config
    from benchmarks.adapt import RUNNERS, ST_DASEGNET_OPTIONS, BenchContext, BenchSettings

    name = "st-dasegnet+threshold-0.9"
    assert not RUNNERS[name].default and RUNNERS[name].adaptation  # a row when asked for, with a gap closure
    jobs = []

    class Ctx(BenchContext):
        def job(self, name, seed, **kw):
            jobs.append((name, seed, kw))
            return {"bundle": tmp_path / "bundle", "metrics": {"training": {"late_losses": {"pseudo_q": 0.3}}}}

        def evaluate(self, bundle, stats):
            return {"miou": 0.1, "stats": stats}

    ctx = Ctx(BenchSettings(overrides={"model.decode_head.dropout_ratio": 0.0}).for_case("nc"), tmp_path, {}, None, print)
    assert RUNNERS[name].runner(ctx, 2) == {name: {"miou": 0.1, "stats": "target", "late_losses": {"pseudo_q": 0.3}}}
    [(job_name, seed, kw)] = jobs
    assert (job_name, seed, kw["method"], kw["target"]) == (name, 2, "st-dasegnet", "target")
    overrides = kw["model"]["overrides"]
    assert overrides == {"augment.photometric": False, "model.decode_head.dropout_ratio": 0.0,
                         **ST_DASEGNET_OPTIONS[name]}
    cfg = resolve_config(kw["model"]["config"], method="st-dasegnet", overrides=overrides)
    assert cfg["adaptation"]["pseudo_threshold"] == 0.9 and cfg["adaptation"]["pseudo_rare_threshold"] == 0.8
    assert cfg["augment"]["photometric"] is False


def _recording_context(tmp_path, case: str):
    """A benchmark context that records the jobs it is asked for (and scores every bundle 0.2) instead of
    running them: what a runner asks of the product."""
    from benchmarks.adapt import BenchContext, BenchSettings

    jobs = []

    class Ctx(BenchContext):
        def job(self, name, seed, **kw):
            jobs.append((name, seed, kw))
            return {"bundle": tmp_path / "bundle", "metrics": {}}

        def evaluate(self, bundle, stats):
            return {"miou": 0.2, "stats": stats}

    return Ctx(BenchSettings().for_case(case), tmp_path, {}, None, print), jobs


def _adabn_run(ctx, seed: int = 0):
    """The seed's AdaBN run, as if done: its weights file (what the adabn-init rows start from)."""
    weights = ctx.run_dir(seed, "adabn") / "bundle" / "weights.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"re-estimated")
    return weights


def _trained_source_only(ctx, seed: int):
    """The seed's source-only run, as if trained: its weights file."""
    weights = ctx.run_dir(seed, "source-only") / "bundle" / "weights.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"trained")
    return weights


@pytest.mark.parametrize("name", ["st-dasegnet+source-init+mean-teacher",
                                  "st-dasegnet+source-init+ema-budget+norm-eval+prior-em"])
def test_the_warm_start_options_start_from_the_seeds_source_only_model_with_their_overrides(tmp_path, name):
    from models.config import resolve_config
    from benchmarks.adapt import LABEL_SHIFT_OPTIONS, MEAN_TEACHER, RUNNERS

    wanted = LABEL_SHIFT_OPTIONS.get(name, MEAN_TEACHER)
    assert RUNNERS[name].needs == ("source-only",) and not RUNNERS[name].default
    ctx, jobs = _recording_context(tmp_path, "nc")
    weights = _trained_source_only(ctx, 1)  # the seed's source-only run is there: it is not trained again
    assert RUNNERS[name].runner(ctx, 1) == {name: {"miou": 0.2, "stats": "target", "late_losses": {}}}
    [(job_name, seed, kw)] = jobs
    assert (job_name, seed, kw["method"], kw["model"]["checkpoint"]) == (name, 1, "st-dasegnet", str(weights))
    model = kw["model"]
    block = resolve_config(model["config"], method="st-dasegnet", overrides=model["overrides"])["adaptation"]
    assert {k: block[k.removeprefix("adaptation.")] for k in wanted} == wanted
    assert block["pseudo_rare_threshold"] == 0.8  # the rest of the block stays the spec's
    if name in LABEL_SHIFT_OPTIONS:
        assert block["pseudo_prior"] == "em" and block["norm_eval"] is True and block["ema_horizon"] == 0.1
        assert block["self_training_weight"] == 0.25 and block["pseudo_threshold"] == 0.975
    else:
        assert block["self_training_weight"] == 1.0


def test_the_prior_label_shift_option_gives_st_dasegnet_the_label_shift_jobs_target_mix(tmp_path, monkeypatch):
    import json

    from models.config import resolve_config
    from benchmarks.adapt import RUNNERS

    name = "st-dasegnet+source-init+ema-budget+norm-eval+prior-label-shift"
    assert RUNNERS[name].needs == ("source-only", "label-shift") and not RUNNERS[name].default
    ctx, jobs = _recording_context(tmp_path, "neon")
    weights = _trained_source_only(ctx, 2)
    recorded = ctx.run_dir(2, "label-shift") / "metrics.json"  # the seed's label-shift job, already run
    recorded.parent.mkdir(parents=True)
    recorded.write_text(json.dumps({"training": {"label_shift": {"target_prior": [0.58, 0.42]}}}))
    RUNNERS[name].runner(ctx, 2)
    [(_, seed, kw)] = jobs
    assert seed == 2 and kw["model"]["checkpoint"] == str(weights)
    block = resolve_config(kw["model"]["config"], method="st-dasegnet", overrides=kw["model"]["overrides"])["adaptation"]
    assert block["pseudo_prior"] == [0.58, 0.42] and block["norm_eval"] is True and block["ema_horizon"] == 0.1

    # where the seed's label-shift job refuses, there is no mix to pass on: the run goes without, and says why
    from benchmarks.adapt import RunnerSpec

    monkeypatch.setitem(RUNNERS, "label-shift", RunnerSpec(lambda ctx, seed: {"label-shift": {"refused": "inputs"}}))
    _trained_source_only(ctx, 3)
    row = RUNNERS[name].runner(ctx, 3)[name]
    assert row["refused"] == "no pseudo_prior given: inputs"
    assert "adaptation.pseudo_prior" not in jobs[-1][2]["model"]["overrides"]


@pytest.mark.parametrize("start", ["st-dasegnet", "st-dasegnet+adabn-init+ema-budget+norm-eval+prior-from-start"])
def test_adabn_after_st_dasegnet_re_estimates_the_seeds_st_dasegnet_model(start, tmp_path, monkeypatch):
    import benchmarks.adapt as adapt
    from benchmarks.adapt import RUNNERS, RunnerSpec

    name = f"{start}+adabn"
    assert RUNNERS[name].needs == (start,) and not RUNNERS[name].default and RUNNERS[name].adaptation
    ctx, _ = _recording_context(tmp_path, "neon")
    ctx.domains["target"] = {"scenes": [{"image": "target.tif"}]}
    specs = []  # the job bodies, as they would be submitted
    monkeypatch.setattr(adapt, "load_job_spec", lambda body: body)
    monkeypatch.setattr(adapt, "run_job", lambda body, callbacks: specs.append(body) or {"bundle": body["output"]})
    trained = []  # the seed's ST-DASegNet run is trained first where it is missing, then reused
    monkeypatch.setitem(RUNNERS, start, RunnerSpec(lambda ctx, seed: trained.append(seed) or {}))
    assert RUNNERS[name].runner(ctx, 1)[name]["miou"] == 0.2
    assert trained == [1]
    [spec] = specs
    assert (spec["method"], spec["bundle"], spec["target"]) == ("adabn", str(ctx.run_dir(1, start)),
                                                                ctx.domains["target"])
    assert spec["output"] == str(ctx.run_dir(1, name)) and spec["params"]["seed"] == 1
    weights = ctx.run_dir(2, start) / "bundle" / "weights.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"trained")
    RUNNERS[name].runner(ctx, 2)
    assert trained == [1] and specs[-1]["bundle"] == str(ctx.run_dir(2, start))


def test_the_adabn_start_with_source_statistics_feeds_and_scores_both_domains_through_them(tmp_path):
    import json

    from benchmarks.adapt import RUNNERS

    name = "st-dasegnet+adabn-init+ema-budget+norm-eval+prior-label-shift+source-stats"
    assert RUNNERS[name].needs == ("adabn", "adabn+label-shift") and not RUNNERS[name].default
    ctx, jobs = _recording_context(tmp_path, "neon")
    weights = ctx.run_dir(0, "adabn") / "bundle" / "weights.pth"  # the seed's AdaBN model, already there
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"re-estimated")
    recorded = ctx.run_dir(0, "adabn+label-shift") / "metrics.json"
    recorded.parent.mkdir(parents=True)
    recorded.write_text(json.dumps({"training": {"label_shift": {"target_prior": [0.6, 0.4]}}}))
    assert RUNNERS[name].runner(ctx, 0)[name]["stats"] == "source"
    [(_, _, kw)] = jobs
    assert kw["params"] == {"normalization": "source"} and kw["model"]["checkpoint"] == str(weights)
    assert kw["model"]["overrides"]["adaptation.pseudo_prior"] == [0.6, 0.4]


def test_the_adabn_start_as_a_mean_teacher_weighs_self_training_like_the_source_ce(tmp_path):
    import json

    from models.config import resolve_config
    from benchmarks.adapt import RUNNERS

    name = "st-dasegnet+adabn-init+mean-teacher+norm-eval+prior-label-shift"
    assert RUNNERS[name].needs == ("adabn", "adabn+label-shift") and not RUNNERS[name].default
    ctx, jobs = _recording_context(tmp_path, "neon")
    weights = ctx.run_dir(1, "adabn") / "bundle" / "weights.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"re-estimated")
    recorded = ctx.run_dir(1, "adabn+label-shift") / "metrics.json"
    recorded.parent.mkdir(parents=True)
    recorded.write_text(json.dumps({"training": {"label_shift": {"target_prior": [0.55, 0.45]}}}))
    RUNNERS[name].runner(ctx, 1)
    [(_, seed, kw)] = jobs
    assert seed == 1 and kw["model"]["checkpoint"] == str(weights) and not kw.get("params")
    block = resolve_config(kw["model"]["config"], method="st-dasegnet",
                           overrides=kw["model"]["overrides"])["adaptation"]
    assert block["pseudo_prior"] == [0.55, 0.45] and block["norm_eval"] is True
    assert (block["ema_horizon"], block["pseudo_threshold"], block["self_training_weight"]) == (0.5, 0.9, 1.0)


@pytest.mark.parametrize("name", [f"st-dasegnet+adabn-init+ema-budget+{norm}+prior-from-start{threshold}"
                                  for norm in ("norm-eval", "norm-per-domain") for threshold in ("", "+threshold-0.9")])
def test_the_one_job_chain_reads_its_prior_itself_and_runs_without_where_the_reading_is_refused(name, tmp_path,
                                                                                                monkeypatch):
    from core.errors import NotALabelShiftError
    from benchmarks.adapt import ADABN_BATCHES, RUNNERS

    assert RUNNERS[name].needs == ("adabn",) and not RUNNERS[name].default
    ctx, jobs = _recording_context(tmp_path, "neon")
    weights = _adabn_run(ctx)
    row = RUNNERS[name].runner(ctx, 0)[name]
    [(_, _, kw)] = jobs
    overrides = kw["model"]["overrides"]
    assert overrides["adaptation.pseudo_prior"] == "label-shift"
    assert overrides["adaptation.norm_eval"] == ("per-domain" if "norm-per-domain" in name else True)
    assert overrides.get("adaptation.pseudo_threshold") == (0.9 if name.endswith("threshold-0.9") else None)
    assert kw["params"] == {"batches": ADABN_BATCHES} and kw["model"]["checkpoint"] == str(weights)
    assert "refused" not in row

    refusing = ctx.job

    def job(*args, **kw):  # the reading's check refuses: the job stops before training
        if kw["model"]["overrides"].get("adaptation.pseudo_prior") == "label-shift":
            raise NotALabelShiftError("the target's inputs changed", field="target")
        return refusing(*args, **kw)

    monkeypatch.setattr(ctx, "job", job)
    row = RUNNERS[name].runner(ctx, 0)[name]
    assert row["refused"] == "no pseudo_prior given: the target's inputs changed"
    assert "adaptation.pseudo_prior" not in jobs[-1][2]["model"]["overrides"] and not jobs[-1][2]["params"]


@pytest.mark.parametrize("case, lr", [("nc", 6e-4), ("neon", 2e-4)])
def test_the_fine_tuning_row_trains_at_a_tenth_of_its_case_s_learning_rate(case, lr, tmp_path):
    from benchmarks.adapt import RUNNERS

    name = "st-dasegnet+adabn-init+ema-budget+norm-per-domain+prior-from-start+lr-0.1"
    ctx, jobs = _recording_context(tmp_path, case)
    _adabn_run(ctx)
    RUNNERS[name].runner(ctx, 0)
    [(_, _, kw)] = jobs
    overrides = kw["model"]["overrides"]
    assert overrides["optim.lr"] == pytest.approx(lr / 10) and overrides["adaptation.norm_eval"] == "per-domain"


def test_the_per_domain_row_fed_through_the_source_statistics_is_scored_as_it_was_fed(tmp_path):
    from benchmarks.adapt import ADABN_BATCHES, RUNNERS

    name = "st-dasegnet+adabn-init+ema-budget+norm-per-domain+prior-from-start+source-stats"
    ctx, jobs = _recording_context(tmp_path, "neon")
    weights = _adabn_run(ctx)
    row = RUNNERS[name].runner(ctx, 0)[name]
    [(_, _, kw)] = jobs
    assert kw["params"] == {"normalization": "source", "batches": ADABN_BATCHES}
    assert kw["model"]["overrides"]["adaptation.norm_eval"] == "per-domain"
    assert kw["model"]["checkpoint"] == str(weights)
    assert row["stats"] == "source"  # the target test region read as the job read the target


def test_the_neutral_ddm_rows_start_from_the_adabn_model_with_a_neutral_ddm(tmp_path):
    from models.config import resolve_config
    from benchmarks.adapt import ADABN_BATCHES, RUNNERS

    norm_eval = "st-dasegnet+adabn-init+neutral-ddm+ema-budget+norm-eval+prior-from-start+threshold-0.9"
    tracked = "st-dasegnet+adabn-init+neutral-ddm+ema-budget+norm-per-domain-tracked+prior-from-start+source-stats"
    ctx, jobs = _recording_context(tmp_path, "neon")
    weights = _adabn_run(ctx)
    rows = {name: RUNNERS[name].runner(ctx, 0)[name] for name in (norm_eval, tracked)}
    blocks = {name: resolve_config(kw["model"]["config"], method="st-dasegnet",
                                   overrides=kw["model"]["overrides"])["adaptation"] for name, _, kw in jobs}
    assert all(kw["model"]["checkpoint"] == str(weights) for _, _, kw in jobs)
    assert all(b["ddm_start"] == "neutral" and b["ema_horizon"] == 0.1 and b["pseudo_prior"] == "label-shift"
               for b in blocks.values())
    assert (blocks[norm_eval]["norm_eval"], blocks[norm_eval]["pseudo_threshold"]) == (True, 0.9)
    assert not blocks[norm_eval]["track_domain_statistics"]
    assert (blocks[tracked]["norm_eval"], blocks[tracked]["track_domain_statistics"]) == ("per-domain", True)
    assert jobs[1][2]["params"] == {"normalization": "source", "batches": ADABN_BATCHES}
    assert (rows[norm_eval]["stats"], rows[tracked]["stats"]) == ("target", "source")


def test_the_averaged_rows_are_the_neutral_ddm_rows_with_their_students_averaged_over_half_the_budget(tmp_path):
    from models.config import resolve_config
    from benchmarks.adapt import RUNNERS

    plain = ("st-dasegnet+adabn-init+neutral-ddm+ema-budget+norm-eval+prior-from-start+threshold-0.9",
             "st-dasegnet+adabn-init+neutral-ddm+ema-budget+norm-per-domain-tracked+prior-from-start+source-stats")
    ctx, jobs = _recording_context(tmp_path, "neon")
    _adabn_run(ctx)
    for name in plain:
        RUNNERS[name].runner(ctx, 0)
        RUNNERS[f"{name}+average-0.5"].runner(ctx, 0)
    blocks = [resolve_config(kw["model"]["config"], method="st-dasegnet",
                             overrides=kw["model"]["overrides"])["adaptation"] for _, _, kw in jobs]
    for (without, with_average), (job_without, job_with) in zip((blocks[:2], blocks[2:]), (jobs[:2], jobs[2:])):
        assert (without["average_weights"], with_average["average_weights"]) == (0.0, 0.5)
        assert {**with_average, "average_weights": 0.0} == without
        assert job_with[2]["params"] == job_without[2]["params"]


def test_photometric_switch_reaches_every_job_and_keeps_its_runs_apart(tmp_path):
    from models.config import resolve_config
    from benchmarks.adapt import BenchContext, BenchSettings

    off = BenchContext(BenchSettings().for_case("nc"), tmp_path, {}, None, print)
    on = BenchContext(BenchSettings(photometric=True).for_case("nc"), tmp_path, {}, None, print)
    assert off.run_dir(0, "source-only") != on.run_dir(0, "source-only")  # never reuses the other's runs
    for ctx, want in ((off, False), (on, True)):
        cfg = resolve_config(ctx.settings.config, overrides=ctx.settings.model_overrides())
        assert cfg["augment"]["photometric"] is want
    # a caller's own override of the switch wins
    assert BenchSettings(photometric=True, overrides={"augment.photometric": False}).model_overrides() == {
        "augment.photometric": False}


def test_resize_switch_reaches_every_job_and_keeps_its_runs_apart(tmp_path):
    from models.config import resolve_config
    from benchmarks.adapt import BenchContext, BenchSettings

    on = BenchContext(BenchSettings().for_case("nc"), tmp_path, {}, None, print)
    off = BenchContext(BenchSettings(resize=False).for_case("nc"), tmp_path, {}, None, print)
    assert on.run_dir(0, "oracle") != off.run_dir(0, "oracle")
    for ctx, want in ((on, (0.5, 2.0)), (off, False)):
        cfg = resolve_config(ctx.settings.config, overrides=ctx.settings.model_overrides())
        assert (tuple(cfg["augment"]["resize"]) if want else cfg["augment"]["resize"]) == want


def test_auto_class_weights_switch_reaches_every_method_and_keeps_its_runs_apart(tmp_path):
    from models.class_weights import auto_fields
    from models.config import resolve_config
    from benchmarks.adapt import BenchContext, BenchSettings

    plain = BenchContext(BenchSettings().for_case("nc"), tmp_path, {}, None, print)
    auto = BenchContext(BenchSettings(auto_class_weights=True).for_case("nc"), tmp_path, {}, None, print)
    assert plain.run_dir(1, "st-dasegnet") != auto.run_dir(1, "st-dasegnet")
    for method in ("source-only", "st-dasegnet", "feature-regression"):
        cfg = resolve_config(auto.settings.config, method=method, overrides=auto.settings.model_overrides(method))
        # filled from each job's own training labels when it runs; the adaptation's own where the method has them
        expected = {"model.decode_head.loss_decode.class_weight"}
        if method == "st-dasegnet":
            expected.add("adaptation.pseudo_class_weight")
        assert expected <= set(auto_fields(cfg))
        cfg = resolve_config(plain.settings.config, method=method, overrides=plain.settings.model_overrides(method))
        assert auto_fields(cfg) == []


def test_source_stats_option_trains_and_scores_the_target_with_the_source_statistics(tmp_path):
    from benchmarks.adapt import RUNNERS, BenchContext, BenchSettings

    name = "st-dasegnet+source-stats"
    assert not RUNNERS[name].default and RUNNERS[name].adaptation
    jobs, scored = [], []

    class Ctx(BenchContext):
        def job(self, name, seed, **kw):
            jobs.append((name, seed, kw))
            return {"bundle": tmp_path / "bundle"}

        def evaluate(self, bundle, stats):
            scored.append(stats)
            return {"miou": 0.1}

    RUNNERS[name].runner(Ctx(BenchSettings().for_case("nc"), tmp_path, {}, None, print), 1)
    [(job_name, seed, kw)] = jobs
    assert (job_name, seed, kw["method"], kw["target"]) == (name, 1, "st-dasegnet", "target")
    assert kw["params"] == {"normalization": "source"} and scored == ["source"]


def test_the_faithful_row_is_the_default_row_only_while_the_default_has_the_specs_values():
    from benchmarks.adapt import FAITHFUL_ST_DASEGNET, default_is_faithful

    for config in ("segformer-tiny", "efficientnet-lite0"):
        assert default_is_faithful(config, {})
        assert default_is_faithful(config, FAITHFUL_ST_DASEGNET)
    assert not default_is_faithful("efficientnet-lite0", {"adaptation.ema_horizon": 0.1})
    assert not default_is_faithful("segformer-tiny", {"adaptation.pseudo_threshold": 0.9})


@pytest.mark.parametrize("case", ["nc", "neon"])
def test_the_oracle_draws_half_its_crops_from_the_target_train_scenes(case):
    """The same rule in every case: crops shared equally per scene, so small target scenes beside a large
    source (NEON: 2 % of the labelled area) are not drowned by it."""
    from benchmarks.adapt import CASES
    from core.jobspec import DomainSpec
    from core.raster.domain import Domain
    from models.normalization import Normalizer
    from models.sampling.sampler import WindowSampler

    domains = CASES[case].domains(None, 0, lambda msg: None)
    spec = DomainSpec.model_validate(domains["target_labelled"])
    assert spec.balance == "scenes"
    n_source = len(domains["source"]["scenes"])
    with Domain.open(spec, None, labels=False) as dom:
        sampler = WindowSampler(dom, 64, Normalizer(dom.stats()), seed=0, labelled=False)
        drawn = []
        for _ in range(20):
            sampler.sample(8)
            drawn += [i >= n_source for i, _ in sampler.last_windows]
    assert 0.4 <= sum(drawn) / len(drawn) <= 0.6
