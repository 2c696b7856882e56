"""The default rule applied to Benchmark A's reports: each adaptation row against AdaBN and the best source-only row,
by more than the seeds' spread, per case and across cases."""
from __future__ import annotations

import pytest

from benchmarks.adapt import summarise
from benchmarks.standing import (ADABN, BEST_SOURCE_ONLY, across_cases, case_standing, plot_across_cases,
                                 render_across_cases, render_case_standing)


def _m(miou):
    return {"miou": miou, "oa": 0.5, "mf1": 0.4, "per_class": {"a": {"iou": miou}}}


def _case(**rows: list[float]) -> dict:
    """A case's summary from per-seed mIoU lists (keyword names with _ for + and - as the rows spell them)."""
    named = {k.replace("__", "+").replace("_", "-"): [_m(x) for x in v] for k, v in rows.items()}
    adaptation = [n for n in named if n not in ("source-only", "source-only+target-stats", "oracle")]
    return summarise(named, ["a"], adaptation)


def test_a_row_is_above_a_baseline_only_by_more_than_the_larger_spread():
    report = _case(source_only=[0.10, 0.10, 0.10], adabn=[0.20, 0.21, 0.22], oracle=[0.5, 0.5, 0.5],
                   wide=[0.22, 0.30, 0.26],      # +0.05 over AdaBN, but its own sd is 0.04: above? 0.05 > 0.04
                   close=[0.215, 0.225, 0.235],  # +0.015 over AdaBN, sd 0.01 each: above
                   inside=[0.205, 0.215, 0.225])  # +0.005 over AdaBN: inside the spread
    s = case_standing(report)
    assert s["wide"][ADABN]["gain"] == pytest.approx(0.05) and s["wide"][ADABN]["margin"] == pytest.approx(0.04)
    assert s["wide"][ADABN]["above"] and s["close"][ADABN]["above"] and not s["inside"][ADABN]["above"]
    assert all(s[r][BEST_SOURCE_ONLY]["above"] for r in ("wide", "close", "inside"))
    assert ADABN not in s[ADABN]  # not against itself
    noisy = case_standing(_case(source_only=[0.10, 0.10, 0.10], adabn=[0.20, 0.21, 0.22], oracle=[0.5] * 3,
                                noisy=[0.16, 0.34, 0.25]))  # +0.04 over AdaBN, sd 0.09
    assert not noisy["noisy"][ADABN]["above"]


def test_the_best_source_only_row_is_the_baseline_and_one_seed_counts_any_gain():
    s = case_standing(_case(source_only=[0.10], source_only__target_stats=[0.15], oracle=[0.5], adabn=[0.16],
                            row=[0.151]))
    assert s["row"][BEST_SOURCE_ONLY]["gain"] == pytest.approx(0.001) and s["row"][BEST_SOURCE_ONLY]["above"]
    assert not s["row"][ADABN]["above"]


def test_a_baseline_not_run_leaves_the_row_undecided_and_it_cannot_win():
    one = _case(source_only=[0.10, 0.11], oracle=[0.5, 0.5], row=[0.3, 0.31])
    assert case_standing(one)["row"] == {BEST_SOURCE_ONLY: case_standing(one)["row"][BEST_SOURCE_ONLY], ADABN: None}
    across = across_cases({"x": one, "y": one})
    assert across["wins"] == []
    assert "? " not in "".join(render_case_standing(case_standing(one)))  # rendered as "not run"
    assert "not run" in "".join(render_case_standing(case_standing(one)))


def test_across_cases_a_row_wins_only_where_it_is_above_both_baselines_in_every_case(tmp_path):
    base = dict(source_only=[0.10, 0.10, 0.10], adabn=[0.20, 0.21, 0.22], oracle=[0.5, 0.5, 0.5])
    nc = _case(**base, both=[0.29, 0.30, 0.31], first=[0.29, 0.30, 0.31], only_nc=[0.29, 0.30, 0.31])
    neon = _case(**base, both=[0.29, 0.30, 0.31], first=[0.205, 0.215, 0.225], other=[0.4, 0.4, 0.4])
    across = across_cases({"nc": nc, "neon": neon})
    assert across["cases"] == ["nc", "neon"]
    assert set(across["rows"]) == {"adabn", "both", "first"}  # rows run in every case
    assert across["wins"] == ["both"]
    assert across["rows"]["first"]["neon"]["standing"][BEST_SOURCE_ONLY]["above"]
    assert not across["rows"]["first"]["neon"]["standing"][ADABN]["above"]
    assert across["rows"]["both"]["nc"]["gap_closure"] == pytest.approx(0.5)
    md = "\n".join(render_across_cases(across))
    assert "| both | 0.50 SA | 0.50 SA | yes |" in md and "| first | 0.50 SA | 0.29 S- | no |" in md
    assert "Rows that win every case: `both`." in md
    png = plot_across_cases(across, tmp_path / "cases.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_across_cases(across_cases({"nc": nc}), tmp_path / "one.png") is None
    assert not (tmp_path / "one.png").exists()


def test_a_benchmark_of_several_cases_writes_the_rule_across_them(tmp_path, monkeypatch):
    """run_benchmark's assembly: each case's report as run_case returns it (here made from fixed figures, standing in
    for the training runs the smoke test of one case makes), then the across-case verdict in report.json, a section
    of report.md and the plot."""
    import json

    import benchmarks.adapt as adapt

    def fake_case(out, settings, **_):
        rows = dict(source_only=[0.10, 0.10, 0.10], adabn=[0.20, 0.21, 0.22], oracle=[0.5] * 3,
                    st_dasegnet=[0.29, 0.30, 0.31])
        return {"case": settings.case, "title": settings.case, **_case(**rows)}

    monkeypatch.setattr(adapt, "run_case", fake_case)
    monkeypatch.setattr(adapt, "render_markdown", lambda r: f"## {r['case']}")
    report = adapt.run_benchmark(tmp_path, methods=["source-only"], cases=["nc", "neon"])
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["across_cases"]["wins"] == ["st-dasegnet"] == report["across_cases"]["wins"]
    assert "# Across cases" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "cases.png").stat().st_size > 0
    one = adapt.run_benchmark(tmp_path / "one", methods=["source-only"], cases=["nc"])
    assert "across_cases" not in one and not (tmp_path / "one" / "cases.png").exists()
    # the CLI says which rows win every case
    from typer.testing import CliRunner

    from cli import app

    res = CliRunner().invoke(app, ["bench", "adapt", "--seeds", "3", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert ("rows above AdaBN and the best source-only by more than the spread on every case: st-dasegnet"
            in res.output)


def test_bench_standing_applies_the_rule_across_reports_of_different_runs(tmp_path):
    """`geoadapt bench standing`: NC under the checkerboard beside NEON, each from its own run's report.json; bad
    input exits 2 with the reason and writes nothing."""
    import json
    import subprocess
    import sys

    base = dict(source_only=[0.10, 0.10, 0.10], adabn=[0.20, 0.21, 0.22], oracle=[0.5] * 3)
    nc = {"case": "nc", "split": "blocks", **_case(**base, row=[0.29, 0.30, 0.31])}
    neon = {"case": "neon", "split": "columns", **_case(**base, row=[0.205, 0.215, 0.225])}
    (tmp_path / "nc.json").write_text(json.dumps({"benchmark": "A", "cases": {"nc": nc}}))
    (tmp_path / "neon.json").write_text(json.dumps(neon))  # one case's own report

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cli", "bench", "standing", *args], capture_output=True,
                              text=True, timeout=300)

    done = cli(str(tmp_path / "nc.json"), str(tmp_path / "neon.json"), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "row: gap closure nc[blocks] 0.500   neon 0.287" in done.stdout
    assert "on every case: none" in done.stdout
    written = json.loads((tmp_path / "out" / "report.json").read_text())["across_cases"]
    assert written["cases"] == ["nc[blocks]", "neon"] and written["wins"] == []
    assert (tmp_path / "out" / "cases.png").exists()
    (tmp_path / "bad.json").write_text(json.dumps({"benchmark": "B"}))
    for args, why in (([str(tmp_path / "nc.json")], "at least two cases, got 1"),
                      ([str(tmp_path / "nc.json"), str(tmp_path / "nc.json")], "a second report of case nc[blocks]"),
                      ([str(tmp_path / "nc.json"), str(tmp_path / "bad.json")], "not a Benchmark A report"),
                      ([str(tmp_path / "nc.json"), str(tmp_path / "missing.json")], "not a readable report.json")):
        refused = cli(*args, "--out", str(tmp_path / "refused"))
        assert refused.returncode == 2 and why in refused.stderr, refused.stderr
    assert not (tmp_path / "refused").exists()
