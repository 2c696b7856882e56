"""Benchmark of the pretrain job: Benchmark A's cases (benchmarks/adapt.py) from each start a model can take.

Starts: ``random`` (no weights), ``imagenet`` (the case's config's ImageNet weights, where it has some: NEON), and
one per pretraining method (``simclr``, ``siameseim``; ``croco`` where the case has co-registered pairs, NC),
each pretrained once per case, from random weights, on the unlabelled train regions of both domains (the imagery
an adaptation job sees; no label is read) within a wall-time budget per method.

From each start, Benchmark A's own runners with the same fine-tuning budget (the start is a dimension of
benchmarks.adapt's settings, so run folders, resume and scoring are Benchmark A's): ``source-only`` (and
``source-only+target-stats``), ``st-dasegnet``, ``oracle`` (the ceiling of that start's gap closure), and the
label-efficiency rows ``source-only@5%`` / ``source-only@20%``: source-only trained on a fixed random 5 / 20 % of
the source label raster's labelled blocks (the rest nodata; the same blocks for every start and seed, nested).

Call flow of ``run_pretrain_benchmark``::

    for each case: its domains (Benchmark A's) and the label subsets
        pretrain each method (in parallel processes): a short timed probe -> iterations for the budget
            -> pretrain job (run_job, resumable) -> <out>/<case>/pretrain/<method>-it<N>/pretrained.pth
        for each start: benchmarks.adapt.run_case(<out>/<case>/<start>, settings with start + checkpoint,
            runners: source-only, st-dasegnet, oracle, source-only@5%, source-only@20%)
    report.json: pretraining.<case>.<start>.<row>.miou per seed, gap_closure per start, lifts over random,
        label efficiency, the pretraining runs (iterations, time, losses); report.md; two plots
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.adapt import CASES, RUNNERS, BenchContext, BenchSettings, Runner, register_runner, run_case
from benchmarks.common import saved_figure
from core.errors import ConfigError
from core.files import write_json
from core.jobspec import load_job_spec
from models.pretraining import PRETRAINING
from workers.pipelines.dispatch import run_job

#: the goal the issue sets: some pretraining lifts NC source-only target mIoU by this much over random
LIFT_GOAL = 0.20
#: rows of each start, in report order
ROWS = ("source-only", "source-only+target-stats", "st-dasegnet", "oracle")
#: the fine-tuning runs of each start (source-only also gives the source-only+target-stats row)
FINETUNE_ROWS = ("source-only", "st-dasegnet", "oracle")
#: iterations of the timed probe that sizes a pretraining run to its budget
PROBE_ITERATIONS = 6


# ---- label efficiency: a fixed share of the source labels ---------------------------------------------------

def label_subset(labels: Path, fraction: float, block: int, out_dir: Path, seed: int = 0) -> Path:
    """A copy of the label raster ``labels`` keeping the labels of a random ``fraction`` of its labelled
    ``block`` x ``block`` blocks, the rest nodata. The blocks are drawn in one fixed random order (``seed``), so
    a smaller fraction's blocks are among a larger one's, and every start and seed sees the same labels."""
    import rasterio

    out = Path(out_dir) / f"{Path(labels).stem}-{round(fraction * 100):g}pct-b{block}-s{seed}.tif"
    if out.is_file():
        return out
    with rasterio.open(labels) as ds:
        profile, data = ds.profile.copy(), ds.read(1)
    nodata = profile.get("nodata")
    if nodata is None:  # a value no class uses: the dtype's largest
        nodata = np.iinfo(data.dtype).max if np.issubdtype(data.dtype, np.integer) else -99999.0
        if np.any(data == nodata):
            raise ConfigError(f"{Path(labels).name} has no nodata value and uses {nodata}: cannot mark unlabelled "
                              "pixels", field="labels")
    labelled = data != nodata if not (isinstance(nodata, float) and math.isnan(nodata)) else ~np.isnan(data)
    h, w = data.shape
    rows, cols = -(-h // block), -(-w // block)
    padded = np.zeros((rows * block, cols * block), bool)
    padded[:h, :w] = labelled
    candidates = np.flatnonzero(padded.reshape(rows, block, cols, block).any(axis=(1, 3)).reshape(-1))
    order = candidates[np.random.default_rng(seed).permutation(len(candidates))]
    keep = np.zeros(rows * cols, bool)
    keep[order[: max(1, int(round(fraction * len(order))))]] = True
    mask = np.repeat(np.repeat(keep.reshape(rows, cols), block, 0), block, 1)[:h, :w]
    profile.update(nodata=nodata)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{time.time_ns()}.tmp")
    with rasterio.open(tmp, "w", **profile) as ds:
        ds.write(np.where(mask, data, np.asarray(nodata, data.dtype))[None])
    tmp.replace(out)  # whole or not at all (parallel runs may build the same file)
    return out


def subset_domain(domain: dict, fraction: float, block: int, out_dir: Path) -> dict:
    """A domain spec whose scenes' labels are :func:`label_subset` copies."""
    scenes = [{**sc, "labels": str(label_subset(Path(sc["labels"]), fraction, block, out_dir))}
              for sc in domain["scenes"]]
    return {**domain, "scenes": scenes}


def _fraction_row(fraction: float) -> str:
    return f"source-only@{round(fraction * 100):g}%"


def _source_only_on(fraction: float) -> Runner:
    """Source-only trained on ``fraction`` of the source labels (:func:`label_subset`)."""
    name = _fraction_row(fraction)

    def run(ctx: BenchContext, seed: int) -> dict[str, dict]:
        block = max(4, ctx.settings.crop // 4)
        sub = subset_domain(ctx.domains["source"], fraction, block, ctx.out.parent / "labels")
        ctx = replace(ctx, domains={**ctx.domains, name: sub})
        res = ctx.job(name, seed, type="train", method="source-only", source=name)
        return {name: ctx.scored(res, "source")}

    run.__doc__ = _source_only_on.__doc__.replace("``fraction``", f"{fraction:.0%}")
    return run


#: the label fractions below 100 % that the curve measures (100 % is the source-only row)
LABEL_FRACTIONS = (0.05, 0.2)
for _f in LABEL_FRACTIONS:
    register_runner(_fraction_row(_f), _source_only_on(_f), adaptation=False, default=False, cost=1.0)


# ---- settings ----------------------------------------------------------------------------------------------

@dataclass
class PretrainBenchSettings:
    """``budget_minutes``: pretraining wall time per method and case (a timed probe turns it into iterations;
    the issue's default budget is at most 20 min); ``pretrain_iterations`` fixes the count instead. Fine-tuning
    settings left None take the case's own (benchmarks.adapt.CASES), as ``iterations`` etc. do there."""

    seeds: int = 3
    budget_minutes: float = 10.0
    pretrain_iterations: int | None = None
    pretrain_batch_size: int | None = None   # default: the case's fine-tuning batch
    methods: tuple[str, ...] = ("simclr", "siameseim", "croco")
    simclr_local: bool = False               # SimCLR with Chaitanya et al.'s local contrast (pretraining.local)
    label_fractions: tuple[float, ...] = LABEL_FRACTIONS
    rows: tuple[str, ...] = FINETUNE_ROWS    # a subset measures less (e.g. source-only alone for the lift)
    iterations: int | None = None
    crop: int | None = None
    batch_size: int | None = None
    threads: int | None = 1
    jobs: int = 2
    shift_seed: int = 0
    extra: dict = field(default_factory=dict)  # fine-tuning BenchSettings fields (photometric, resize, ...)

    def finetune(self, case: str) -> BenchSettings:
        s = BenchSettings(seeds=self.seeds, case=case, iterations=self.iterations, crop=self.crop,
                          batch_size=self.batch_size, threads=self.threads, jobs=self.jobs, shift_seed=self.shift_seed,
                          **self.extra)
        return s.for_case(case)


def starts_of(case: str, methods: tuple[str, ...]) -> list[str]:
    """The starts a case has: random, ImageNet where its config has weights, each method that applies."""
    c = CASES[case]
    return ["random"] + (["imagenet"] if c.pretrained else []) + \
        [m for m in methods if c.paired or not PRETRAINING[m].paired]


# ---- pretraining runs ----------------------------------------------------------------------------------------

def pretrain_body(method: str, domains: dict, fs: BenchSettings, ps: PretrainBenchSettings, iterations: int,
                  out: Path) -> dict:
    """The pretrain job of a case: its config from random weights, both domains' train regions, unlabelled."""
    overrides = {"pretrained": None} if CASES[fs.case].pretrained else {}
    if method == "simclr" and ps.simclr_local:
        overrides["pretraining.local"] = True
    return {"type": "pretrain", "method": method, "model": {"config": fs.config, "overrides": overrides},
            "source": domains["source"], "target": domains["target"],
            "params": {"iterations": int(iterations), "batch_size": ps.pretrain_batch_size or fs.batch_size,
                       "crop": fs.crop, "seed": 0},
            "output": str(out)}


def pretrain_method(method: str, domains: dict, fs: BenchSettings, ps: PretrainBenchSettings, out: Path,
                    log: Callable[[str], None]) -> dict:
    """One method's pretraining for a case: sized to the budget by a timed probe (the plan is kept, so a rerun
    reuses or resumes the same run), then run. Returns what the report says of it."""
    if ps.threads:
        torch.set_num_threads(ps.threads)
    root = out / method
    plan_path = root / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    key = {"budget_minutes": ps.budget_minutes, "pretrain_iterations": ps.pretrain_iterations,
           "simclr_local": ps.simclr_local, "batch": ps.pretrain_batch_size or fs.batch_size, "crop": fs.crop}
    if plan is None or plan.get("key") != key:
        if ps.pretrain_iterations:
            plan = {"key": key, "iterations": int(ps.pretrain_iterations), "probe_s_per_iteration": None}
        else:
            log(f"{fs.case}: timing {method} ({PROBE_ITERATIONS} iterations) for a {ps.budget_minutes:g} min budget")
            probe = run_job(load_job_spec(pretrain_body(method, domains, fs, ps, PROBE_ITERATIONS, root / "probe")),
                            resume=False)
            spi = probe["metrics"]["training"]["elapsed_s"] / PROBE_ITERATIONS
            plan = {"key": key, "iterations": max(PROBE_ITERATIONS, int(ps.budget_minutes * 60 / max(spi, 1e-3))),
                    "probe_s_per_iteration": round(spi, 4)}
        write_json(plan_path, plan)
    its = plan["iterations"]
    log(f"{fs.case}: pretraining {method}, {its} iterations")
    t0 = time.perf_counter()
    # one folder per setting, so a rerun resumes or reuses the same run and never another one
    body = pretrain_body(method, domains, fs, ps, its, root)
    tag = hashlib.sha256(json.dumps({k: body[k] for k in ("model", "params")}, sort_keys=True).encode()).hexdigest()
    body["output"] = str(root / f"it{its}-{tag[:8]}")
    res = run_job(load_job_spec(body))
    training = res["metrics"]["training"]
    return {"method": method, "iterations": its, "path": str(Path(res["pretrained"]).parent),
            "probe_s_per_iteration": plan["probe_s_per_iteration"], "elapsed_s": training["elapsed_s"],
            "wall_s": round(time.perf_counter() - t0, 1), "final_losses": training["final_losses"],
            "late_losses": training["late_losses"], "pretraining": res["provenance"]["pretraining"]}


def _pretrain_worker(method: str, domains: dict, fs: dict, ps: dict, out: str) -> dict:
    """One method's pretraining in a fresh process (spawned: no OpenMP state inherited across fork)."""
    import sys

    def say(msg: str) -> None:
        print(f"{time.strftime('%X')} {msg}", file=sys.stderr, flush=True)

    ps_obj = PretrainBenchSettings(**{**ps, "methods": tuple(ps["methods"]), "rows": tuple(ps["rows"]),
                                      "label_fractions": tuple(ps["label_fractions"])})
    return pretrain_method(method, domains, BenchSettings(**fs), ps_obj, Path(out), say)


def pretrain_all(methods: list[str], domains: dict, fs: BenchSettings, ps: PretrainBenchSettings, out: Path,
                 log: Callable[[str], None]) -> dict[str, dict]:
    """Every method's pretraining for a case, ``ps.jobs`` processes at a time."""
    if ps.jobs <= 1 or len(methods) <= 1:
        return {m: pretrain_method(m, domains, fs, ps, out, log) for m in methods}
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=ps.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {m: pool.submit(_pretrain_worker, m, domains, asdict(fs), asdict(ps), str(out)) for m in methods}
        return {m: f.result() for m, f in futures.items()}


# ---- the benchmark -----------------------------------------------------------------------------------------

def start_settings(fs: BenchSettings, start: str, runs: dict[str, dict]) -> BenchSettings:
    """Fine-tuning settings of one start: random weights (``pretrained: None`` where the config has some), the
    config's own (imagenet), or a pretraining run's weights (model.checkpoint: its output folder)."""
    random_start = {"pretrained": None} if CASES[fs.case].pretrained else {}
    if start == "random":
        return replace(fs, start=start, overrides={**fs.overrides, **random_start})
    if start == "imagenet":
        return replace(fs, start=start)
    return replace(fs, start=start, overrides={**fs.overrides, **random_start}, checkpoint=runs[start]["path"])


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def summarise_case(case_reports: dict[str, dict], fractions: tuple[float, ...]) -> dict:
    """pretraining.<case> of the report: per start its rows (miou per seed, mean) and gap closure; the lift of
    each start over random; the label-efficiency curve (mean mIoU per label share)."""
    out: dict = {}
    for start, rep in case_reports.items():
        block = {row: {"miou": m["miou"], "mean_miou": m["mean"]["miou"], "std_miou": m["std"]["miou"],
                       "oa": m["mean"]["oa"], "mf1": m["mean"]["mf1"]}
                 for row, m in rep["methods"].items()}
        block["gap_closure"] = rep["gap_closure"]
        block["best_source_only"] = rep["best_source_only"]
        out[start] = block
    base = out.get("random") or {}
    lifts = {}
    for start, block in out.items():
        lift = {}
        for row in ("source-only", "st-dasegnet"):
            a, b = (block.get(row) or {}).get("mean_miou"), (base.get(row) or {}).get("mean_miou")
            lift[row] = (a / b - 1.0) if a is not None and b else None
        g, g0 = block["gap_closure"].get("st-dasegnet"), base.get("gap_closure", {}).get("st-dasegnet")
        lift["gap_closure_change"] = (g - g0) if g is not None and g0 is not None else None
        lifts[start] = lift
    curve = {start: {**{f"{round(f * 100):g}": (block.get(_fraction_row(f)) or {}).get("mean_miou")
                        for f in fractions},
                     "100": (block.get("source-only") or {}).get("mean_miou")}
             for start, block in out.items()}
    return {"starts": out, "lift_over_random": lifts, "label_efficiency": curve}


def goal_met(nc: dict | None) -> bool | None:
    """Some pretraining lifts NC source-only by >= 20 % relative over random and lifts ST-DASegNet's gap closure."""
    if not nc:
        return None
    lifts = nc["lift_over_random"]
    return any(start not in ("random", "imagenet") and (lf.get("source-only") or -1) >= LIFT_GOAL
               and (lf.get("gap_closure_change") or -1) > 0 for start, lf in lifts.items())


def run_pretrain_benchmark(out: str | Path, settings: PretrainBenchSettings | None = None, *,
                           cases: list[str] | None = None, data_dir: str | Path | None = None,
                           log: Callable[[str], None] | None = None) -> dict:
    """Run the pretraining benchmark on ``cases`` (default: every case); writes DIR/report.json, DIR/report.md and
    the plots, and per case and start Benchmark A's own report under DIR/<case>/<start>/."""
    ps = settings or PretrainBenchSettings()
    say = log or (lambda m: None)
    bad = [c for c in cases or [] if c not in CASES]
    if bad:
        raise ConfigError(f"unknown case(s) {', '.join(bad)}; known: {', '.join(CASES)}", field="case")
    unknown = [m for m in ps.methods if m not in PRETRAINING]
    if unknown:
        raise ConfigError(f"unknown pretraining method(s) {', '.join(unknown)}; known: {', '.join(PRETRAINING)}",
                          field="method")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report: dict = {"benchmark": "pretraining", "settings": asdict(ps), "pretraining": {}, "gap_closure": {},
                    "lift_over_random": {}, "label_efficiency": {}, "pretrain_runs": {}, "case_settings": {},
                    "timing_s": {}}
    bad_rows = [r for r in ps.rows if r not in FINETUNE_ROWS]
    if bad_rows:
        raise ConfigError(f"unknown row(s) {', '.join(bad_rows)}; known: {', '.join(FINETUNE_ROWS)}", field="row")
    rows = list(ps.rows) + [_fraction_row(f) for f in ps.label_fractions]
    unknown_rows = [r for r in rows if r not in RUNNERS]
    if unknown_rows:
        raise ConfigError(f"label fractions {unknown_rows} are not among {LABEL_FRACTIONS}", field="label_fractions")
    for case in cases or list(CASES):
        fs = ps.finetune(case)
        say(f"case {case}: {CASES[case].title}")
        tc = time.perf_counter()
        domains = CASES[case].domains(data_dir, fs.shift_seed, say)
        starts = starts_of(case, ps.methods)
        methods = [s for s in starts if s in PRETRAINING]
        runs = pretrain_all(methods, domains, fs, ps, out / case / "pretrain", say)
        report["pretrain_runs"][case] = runs
        t_pre = time.perf_counter() - tc
        case_reports = {}
        for start in starts:
            say(f"case {case}: fine-tuning from {start}")
            case_reports[start] = run_case(out / case / start, start_settings(fs, start, runs), methods=rows,
                                           data_dir=data_dir, log=say)
        summary = summarise_case(case_reports, ps.label_fractions)
        report["pretraining"][case] = {start: block for start, block in summary["starts"].items()}
        report["gap_closure"][case] = {start: b["gap_closure"].get("st-dasegnet")
                                       for start, b in summary["starts"].items()}
        report["lift_over_random"][case] = summary["lift_over_random"]
        report["label_efficiency"][case] = summary["label_efficiency"]
        report["case_settings"][case] = asdict(fs)
        report["timing_s"][case] = {"pretraining": round(t_pre, 1), "total": round(time.perf_counter() - tc, 1)}
    report["goal"] = {"lift_goal": LIFT_GOAL,
                      "met": goal_met({"lift_over_random": report["lift_over_random"].get("nc", {})}
                                      if "nc" in report["lift_over_random"] else None)}
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    report["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    write_json(out / "report.json", report)
    plot_starts(report, out / "starts.png")
    plot_label_efficiency(report, out / "label_efficiency.png")
    (out / "report.md").write_text(render_markdown(report))
    return report


# ---- report ------------------------------------------------------------------------------------------------

def _f(v, nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _pct(v) -> str:
    return "-" if v is None else f"{v:+.0%}"


def render_markdown(report: dict) -> str:
    s = report["settings"]
    budget = (f"{s['pretrain_iterations']} iterations" if s.get("pretrain_iterations")
              else f"{s['budget_minutes']:g} min per method (a timed probe sizes the iterations)")
    lines = ["# Pretraining benchmark", "",
             "Every start fine-tuned with Benchmark A's runners at the same budget (its cases, rows and scoring: "
             "mIoU on the target test region over the classes present there; gap closure = (ST-DASegNet - best "
             "source-only) / (oracle - best source-only), each from the same start). Pretraining: once per case and "
             f"method, from random weights, on the unlabelled train regions of both domains; budget {budget}"
             f"{'; SimCLR with the local contrastive loss' if s.get('simclr_local') else ''}.", ""]
    for case, starts in report["pretraining"].items():
        cs = report["case_settings"][case]
        lines += [f"## Case {case}: {CASES[case].title}", "",
                  f"Fine-tuning: config `{cs['config']}`, {cs['iterations']} iterations, batch {cs['batch_size']} x "
                  f"{cs['crop']} px, {cs['seeds']} seed(s).", "",
                  "| start | source-only | source-only+target-stats | st-dasegnet | oracle | gap closure | "
                  "source-only vs random | st-dasegnet vs random |", "|---|---|---|---|---|---|---|---|"]
        lifts = report["lift_over_random"][case]
        for start, b in starts.items():
            def cell(row):
                m = b.get(row)
                if not m:
                    return "-"
                return f"{_f(m['mean_miou'])} ± {_f(m['std_miou'])} ({', '.join(_f(x) for x in m['miou'])})"
            lines.append(f"| {start} | {cell('source-only')} | {cell('source-only+target-stats')} | "
                         f"{cell('st-dasegnet')} | {cell('oracle')} | {_f(b['gap_closure'].get('st-dasegnet'), 3)} | "
                         f"{_pct(lifts[start]['source-only'])} | {_pct(lifts[start]['st-dasegnet'])} |")
        curve = report["label_efficiency"][case]
        shares = list(next(iter(curve.values())).keys()) if curve else []
        lines += ["", "Label efficiency: source-only target mIoU (mean over seeds) trained on a share of the source "
                  "labels (fixed random blocks of the label raster):", "",
                  "| start | " + " | ".join(f"{p} %" for p in shares) + " |", "|---|" + "---|" * len(shares)]
        for start, c in curve.items():
            lines.append(f"| {start} | " + " | ".join(_f(c[p]) for p in shares) + " |")
        if "imagenet" in starts:
            im = (starts["imagenet"].get("source-only") or {}).get("mean_miou")
            lines += ["", "How close each start comes to ImageNet (source-only mean mIoU / ImageNet's): " + ", ".join(
                f"{k} {_f((b.get('source-only') or {}).get('mean_miou', 0) / im, 2) if im else '-'}"
                for k, b in starts.items())]
        lines += ["", "Pretraining runs:", "", "| method | iterations | probe s/it | time (s) | late losses |",
                  "|---|---|---|---|---|"]
        for m, r in report["pretrain_runs"][case].items():
            late = ", ".join(f"{k} {v:.4f}" for k, v in (r.get("late_losses") or {}).items())
            lines.append(f"| {m} | {r['iterations']} | {_f(r.get('probe_s_per_iteration'), 3)} | "
                         f"{r['elapsed_s']} | {late} |")
        t = report["timing_s"][case]
        lines += ["", f"Time: pretraining {t['pretraining'] / 60:.1f} min, case total {t['total'] / 60:.1f} min.", ""]
    g = report.get("goal") or {}
    lines += [f"Goal (NC: a pretraining lifts source-only target mIoU >= {g.get('lift_goal', LIFT_GOAL):.0%} relative "
              f"over random and lifts ST-DASegNet's gap closure): "
              f"{'met' if g.get('met') else 'not met' if g.get('met') is not None else 'NC not run'}.",
              "", f"Total time {report['elapsed_s'] / 60:.1f} min on {report['device']}.", "",
              "![mIoU by start](starts.png)", "", "![label efficiency](label_efficiency.png)", ""]
    return "\n".join(lines)


def plot_starts(report: dict, path: Path) -> Path:
    cases = list(report["pretraining"])
    n = max(1, len(cases))
    with saved_figure(path, 1, n, figsize=(6 * n, 4), squeeze=False, dpi=110) as (_, axes):
        for ax, case in zip(axes[0], cases):
            starts = report["pretraining"][case]
            names = list(starts)
            x = np.arange(len(names))
            for i, row in enumerate(("source-only", "st-dasegnet", "oracle")):
                vals = [(starts[s].get(row) or {}).get("mean_miou") or 0.0 for s in names]
                errs = [(starts[s].get(row) or {}).get("std_miou") or 0.0 for s in names]
                ax.bar(x + (i - 1) * 0.27, vals, 0.27, yerr=errs, capsize=2, label=row)
            ax.set_xticks(x, names, rotation=20)
            ax.set_ylabel("target test mIoU")
            ax.set_title(f"{case}: fine-tuned from each start")
            ax.legend(fontsize=8)
    return path


def plot_label_efficiency(report: dict, path: Path) -> Path:
    cases = list(report["label_efficiency"])
    n = max(1, len(cases))
    with saved_figure(path, 1, n, figsize=(5 * n, 4), squeeze=False, dpi=110) as (_, axes):
        for ax, case in zip(axes[0], cases):
            for start, curve in report["label_efficiency"][case].items():
                pts = sorted((float(k), v) for k, v in curve.items() if v is not None)
                if pts:
                    ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", label=start)
            ax.set_xscale("log")
            ax.set_xlabel("% of the source labels")
            ax.set_ylabel("source-only target test mIoU")
            ax.set_title(f"{case}: label efficiency")
            ax.legend(fontsize=8)
    return path
