"""Where each adaptation row of Benchmark A stands against the baselines it must beat, per case and across cases.

The project's rule for the product default (docs/st-dasegnet.md): an option becomes the default only when it is above
AdaBN and above the best source-only row by more than the seeds' spread on every case. This module applies that rule
to a benchmark's reports, so the verdict is computed, not read off tables by hand:

    per case   gain over each baseline (difference of the seed means), the margin it must exceed (the larger of the
               two rows' standard deviations over seeds: 0 with one seed, where any gain counts), above or not
    across     the rows run in every case, their gap closure and standing in each, and whether they win in all

``bench adapt`` applies both to the cases it runs; ``bench standing`` applies the rule across case reports written
by different runs (NC under its checkerboard split beside NEON, which has no such split).
"""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import saved_figure
from core.errors import ConfigError
from core.files import write_json

#: the adaptation baseline every adaptation row must beat (no training: re-estimated batch-norm statistics)
ADABN = "adabn"
#: the name the standings give the case's best source-only row (the baseline of gap closure)
BEST_SOURCE_ONLY = "best source-only"


def _versus(row: dict, baseline: dict) -> dict | None:
    mean, base = row["mean"]["miou"], baseline["mean"]["miou"]
    if mean is None or base is None:
        return None
    gain = mean - base
    margin = max(row["std"]["miou"] or 0.0, baseline["std"]["miou"] or 0.0)
    return {"gain": gain, "margin": margin, "above": gain > margin}


def case_standing(report: dict) -> dict[str, dict]:
    """{adaptation row: {baseline: {"gain", "margin", "above"} or None where the baseline was not run}} for a case's
    report (``methods``, ``gap_closure``, ``best_source_only``). AdaBN is not measured against itself."""
    methods, best = report["methods"], report.get("best_source_only")
    standing = {}
    for name in report["gap_closure"]:
        if name not in methods:
            continue
        baselines = {BEST_SOURCE_ONLY: methods.get(best) if best else None}
        if name != ADABN:
            baselines[ADABN] = methods.get(ADABN)
        standing[name] = {key: _versus(methods[name], b) if b else None for key, b in baselines.items()}
    return standing


def _wins(standing: dict) -> bool:
    # AdaBN itself is a baseline, never a candidate
    return ADABN in standing and all(v is not None and v["above"] for v in standing.values())


def _gap_closure_sd(report: dict, name: str) -> float | None:
    """The row's spread over seeds in gap-closure units: its sd over (oracle - best source-only)."""
    methods, best = report["methods"], report.get("best_source_only")
    if not best or "oracle" not in methods or methods[name]["std"]["miou"] is None:
        return None
    denom = methods["oracle"]["mean"]["miou"] - methods[best]["mean"]["miou"]
    return methods[name]["std"]["miou"] / abs(denom) if abs(denom) > 1e-12 else None


def across_cases(reports: dict[str, dict]) -> dict:
    """The rows that every case ran, with each case's gap closure and standing, and ``wins``: the rows above every
    baseline by more than the spread in every case (what the default must be)."""
    standings = {case: case_standing(r) for case, r in reports.items()}
    common = [name for name in next(iter(standings.values()), {})
              if all(name in s for s in standings.values())]
    rows = {name: {case: {"gap_closure": reports[case]["gap_closure"].get(name),
                          "gap_closure_sd": _gap_closure_sd(reports[case], name), "standing": standings[case][name]}
                   for case in reports} for name in common}
    return {"cases": list(reports), "rows": rows,
            "wins": [name for name in common if all(_wins(standings[case][name]) for case in reports)]}


def verdict(across: dict) -> str:
    """One line: the rows that win every case (what ``bench adapt`` and ``bench standing`` print last)."""
    return ("rows above AdaBN and the best source-only by more than the spread on every case: "
            f"{', '.join(across['wins']) or 'none'}")


def _cell(v: dict | None) -> str:
    if v is None:
        return "not run"
    return f"{'above' if v['above'] else 'not above'} ({v['gain']:+.4f} vs {v['margin']:.4f})"


def render_case_standing(standing: dict[str, dict]) -> list[str]:
    """Markdown lines: each adaptation row's gain over each baseline against the margin it must exceed."""
    if not standing:
        return []
    lines = ["", "Standing against the baselines (gain of the seed means vs the larger of the two rows' standard "
                 "deviations; above = the gain exceeds it):", "",
             f"| method | vs {BEST_SOURCE_ONLY} | vs {ADABN} |", "|---|---|---|"]
    for name, s in standing.items():
        lines.append(f"| {name} | {_cell(s.get(BEST_SOURCE_ONLY))} | "
                     f"{_cell(s[ADABN]) if ADABN in s else '-'} |")
    return lines


def render_across_cases(across: dict) -> list[str]:
    """Markdown lines: the across-case table and which rows win in every case."""
    cases = across["cases"]
    lines = ["# Across cases", "",
             "The default rule: above AdaBN and above the best source-only row by more than the seeds' spread on "
             "every case. Per case: gap closure; `S` above the best source-only, `A` above AdaBN (`-` not above, "
             "`?` baseline not run).", "",
             "| method | " + " | ".join(cases) + " | wins every case |", "|---|" + "---|" * (len(cases) + 1)]

    def mark(v: dict | None, letter: str) -> str:
        return "?" if v is None else letter if v["above"] else "-"

    for name, per_case in across["rows"].items():
        cells = []
        for case in cases:
            c = per_case[case]
            g = "-" if c["gap_closure"] is None else f"{c['gap_closure']:.2f}"
            marks = mark(c["standing"].get(BEST_SOURCE_ONLY), "S") + (
                mark(c["standing"][ADABN], "A") if ADABN in c["standing"] else "")
            cells.append(f"{g} {marks}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if name in across['wins'] else 'no'} |")
    lines += ["", "Rows that win every case: " + (", ".join(f"`{n}`" for n in across["wins"]) or "none") + "."]
    return lines


def plot_across_cases(across: dict, path: Path) -> Path | None:
    """Gap closure in the first two cases, one point per row run in both (numbered as in the key beside it; bars: the
    seeds' spread in gap-closure units), with each case's AdaBN as a grey line and its best source-only row as the
    black line at 0: a row that wins sits above and right of all of them by more than the spread. None with fewer
    than two cases."""
    if len(across["cases"]) < 2:
        return None
    x_case, y_case = across["cases"][:2]
    names = [n for n, c in across["rows"].items() if n != ADABN  # AdaBN: the lines
             and c[x_case]["gap_closure"] is not None and c[y_case]["gap_closure"] is not None]
    with saved_figure(path, 1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.1]}) as (_, (ax, key)):
        for i, name in enumerate(names, 1):
            x_row, y_row = across["rows"][name][x_case], across["rows"][name][y_case]
            x, y = x_row["gap_closure"], y_row["gap_closure"]
            ax.errorbar([x], [y], xerr=x_row["gap_closure_sd"], yerr=y_row["gap_closure_sd"], fmt="o", capsize=3,
                        color="tab:green" if name in across["wins"] else "tab:blue", zorder=3)
            ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        adabn = across["rows"].get(ADABN)
        if adabn and adabn[x_case]["gap_closure"] is not None and adabn[y_case]["gap_closure"] is not None:
            ax.axvline(adabn[x_case]["gap_closure"], color="grey", linestyle="--", label=f"{ADABN} ({x_case})")
            ax.axhline(adabn[y_case]["gap_closure"], color="grey", linestyle=":", label=f"{ADABN} ({y_case})")
            ax.legend(loc="best", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.5)  # the best source-only row of each case (gap closure 0)
        ax.axvline(0, color="black", linewidth=0.5)
        ax.set_xlabel(f"gap closure, {x_case}")
        ax.set_ylabel(f"gap closure, {y_case}")
        ax.set_title("Adaptation rows on both cases (green: wins every case)", fontsize=10)
        key.axis("off")  # the numbered names: too long to write beside the points
        key.text(0, 1, "\n".join(f"{i}. {n}" for i, n in enumerate(names, 1)), transform=key.transAxes,
                 fontsize=7, va="top", family="monospace")
    return path


def case_reports(paths: list[Path]) -> dict[str, dict]:
    """Case reports from Benchmark A ``report.json`` files (a run's, with every case under ``cases``, or one case's),
    named by case, with the split where it is not the design's (``nc[blocks]``). A file that is not such a report,
    or two reports of the same case and split, are refused with the reason."""
    reports: dict[str, dict] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not a readable report.json ({type(e).__name__}: {e})", field="report") from None
        found = list(data["cases"].values()) if isinstance(data.get("cases"), dict) else [data]
        for report in found:
            if not isinstance(report, dict) or not {"case", "methods", "gap_closure"} <= set(report):
                raise ConfigError(f"{path}: not a Benchmark A report (no case with methods and gap closure)",
                                  field="report")
            split = report.get("split", "columns")
            name = report["case"] if split == "columns" else f"{report['case']}[{split}]"
            if name in reports:
                raise ConfigError(f"{path}: a second report of case {name}; give one per case and split",
                                  field="report")
            reports[name] = report
    if len(reports) < 2:
        raise ConfigError(f"the rule across cases needs reports of at least two cases, got {len(reports)}",
                          field="report")
    return reports


def write_across_cases(reports: dict[str, dict], out: Path) -> dict:
    """``across_cases`` of ``reports`` written to ``out``: report.json, report.md, cases.png."""
    out.mkdir(parents=True, exist_ok=True)
    across = across_cases(reports)
    write_json(out / "report.json", {"across_cases": across})
    (out / "report.md").write_text("\n".join(render_across_cases(across)) + "\n")
    plot_across_cases(across, out / "cases.png")
    return across
