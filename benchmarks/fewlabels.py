"""Benchmark fewlabels: ``method: semi`` with 1 % and 5 % of the target train region's windows labelled, the
windows chosen by ``labels suggest`` and at random, on both Benchmark A cases (benchmarks.adapt.CASES).

Call flow of ``run_fewlabels``::

    per case (its data, domains, model and crop are Benchmark A's; benchmarks.adapt.run_case runs the rows):
        rows: source-only (+ target statistics) and the oracle, as in Benchmark A, and one semi row per
              strategy x budget ("semi-suggest@1%", ...), each after this seed's source-only run:
            the target train region's windows at the crop size: a tiling, kept where >= MIN_VALID is valid -> N
            budget: n = max(1, round(p x N)) windows
            suggest: models.label_suggestions.suggest_windows(source-only bundle, each target scene, n, window =
                     crop, the train region, the scene's own statistics); the n best of all scenes by score
            random:  n of the N tiling windows, seeded by (seed, n)
            -> one GeoPackage of windows per target scene (core.raster.vector_write); target scenes keep their
               labels, limited to those windows (label_windows; scenes without a window: no labels)
            -> adapt job, method semi, model.checkpoint = the source-only bundle -> scored on the target test region
        beside each semi row, "finetune-<strategy>@<budget>": the same windows, a train job (plain cross-entropy) on
              the source scenes and the windowed target scenes from the source-only bundle, as many iterations
    gap closure per seed: (semi - best source-only) / (oracle - best source-only), the best source-only row
    chosen by its mean as in Benchmark A; also the closure of the means
    DIR/report.json: {"few_labels": {case: {"suggest@1%": {"miou": [...], "gap_closure": [...], ...}, ...}}, ...};
    DIR/report.md and DIR/few_labels.png; each case's Benchmark A style report in DIR/<case>/

The target labels are read for the chosen windows only (and, as in Benchmark A, to score the test region and to
train the oracle). Scores use the semi bundle's own (target) statistics.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from rasterio.windows import Window

from benchmarks.adapt import CASES, BenchContext, BenchSettings, check_split, register_runner, run_case
from benchmarks.common import saved_figure
from core.errors import ConfigError
from core.files import write_json
from core.jobspec import DomainSpec, RegionSpec
from core.raster.domain import Domain

#: budgets: the share of the target train region's windows that is labelled
BUDGETS = (1, 5)
STRATEGIES = ("suggest", "random")
#: the issue's goal for 5 % of the windows chosen by suggest
GAP_CLOSURE_GOAL = 0.8
#: a window of the tiling counts when this share of its pixels is valid (suggest's own default)
MIN_VALID = 0.5


@dataclass
class FewLabelsOptions:
    """The semi runs' own settings (beside Benchmark A's, which fix the data, model, crop and batch).
    ``iterations`` None: a quarter of the case's; ``window`` None: the crop."""

    iterations: int | None = None
    window: int | None = None
    overrides: dict | None = None   # model overrides of the semi runs only (e.g. adaptation.phase1)

    @classmethod
    def of(cls, settings: BenchSettings) -> "FewLabelsOptions":
        return cls(**(settings.extra.get("fewlabels") or {}))

    def semi_iterations(self, settings: BenchSettings) -> int:
        """Default: a quarter of the case's budget, a fine-tuning of the source-only model (each semi iteration
        costs about three source-only ones)."""
        return int(self.iterations or max(1, settings.iterations // 4))

    def side(self, settings: BenchSettings) -> int:
        return int(self.window or settings.crop)


def row_name(strategy: str, pct: int) -> str:
    return f"semi-{strategy}@{pct}%"


def budget(pct: int, n_windows: int) -> int:
    """Windows labelled at a budget of ``pct`` % of ``n_windows``: at least one."""
    return max(1, int(round(pct / 100.0 * n_windows)))


def region_windows(target: dict, side: int, min_valid: float = MIN_VALID) -> list[tuple[int, Window, float]]:
    """The target's tiling into side x side windows from each scene region's top-left corner, as (scene index,
    window of the image, valid share), keeping windows with at least ``min_valid`` valid pixels."""
    out = []
    with Domain.open(DomainSpec.model_validate(target), None, labels=False) as dom:
        for it in dom.items:
            reg = it.region
            for r in range(int(reg.row_off), int(reg.row_off + reg.height) - side + 1, side):
                for c in range(int(reg.col_off), int(reg.col_off + reg.width) - side + 1, side):
                    win = Window(c, r, side, side)
                    share = float(it.read(win, resampling="nearest").valid.mean())
                    if share >= min_valid:
                        out.append((it.index, win, share))
    return out


def _polygon(transform, win: Window) -> dict:
    c0, r0 = int(win.col_off), int(win.row_off)
    c1, r1 = c0 + int(win.width), r0 + int(win.height)
    ring = [transform @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))]
    return {"type": "Polygon", "coordinates": [[(float(x), float(y)) for x, y in ring]]}


def random_windows(tiling: list[tuple[int, Window, float]], n: int, seed: int) -> list[tuple[int, Window]]:
    """``n`` windows of the tiling, drawn without replacement by a generator of ``seed``."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(tiling), size=min(n, len(tiling)), replace=False)
    return [(tiling[i][0], tiling[i][1]) for i in sorted(int(p) for p in picks)]


def suggested_windows(bundle: str | Path, target: dict, n: int, side: int) -> list[tuple[int, Window, float]]:
    """The ``n`` best windows of labels suggest over every target scene (each scene ranked on its own, then
    pooled by score): (scene index, window, score)."""
    from models.bundle import load_bundle
    from models.label_suggestions import suggest_windows

    b = load_bundle(bundle)
    region = RegionSpec.model_validate(target["region"]) if target.get("region") else None
    pooled = []
    for i, scene in enumerate(target["scenes"]):
        paths = [scene["image"]] if scene.get("image") else list(scene["bands"])
        image = paths[0] if len(paths) == 1 else paths
        got = suggest_windows(b, image, n, window=side, region=region, stats="input", min_valid=MIN_VALID)
        pooled += [(i, s.window, float(s.score)) for s in got.suggestions]
    pooled.sort(key=lambda p: -p[2])
    return pooled[:n]


def labelled_target(target: dict, windows: list[tuple[int, Window]], folder: Path) -> dict:
    """The target domain with each scene's labels limited to its chosen windows (a GeoPackage per scene);
    scenes without a chosen window lose their labels."""
    from core.raster.scene import Scene
    from core.raster.vector_write import write_gpkg

    folder.mkdir(parents=True, exist_ok=True)
    scenes = []
    for i, scene in enumerate(target["scenes"]):
        mine = [w for j, w in windows if j == i]
        out = {k: v for k, v in scene.items() if k not in ("labels", "label_windows")}
        if mine:
            paths = [scene["image"]] if scene.get("image") else list(scene["bands"])
            with Scene.open(paths[0] if len(paths) == 1 else paths) as s:
                transform, crs = s.grid.transform, s.grid.crs
            path = folder / f"scene{i}_windows.gpkg"
            feats = [(_polygon(transform, w), {"rank": k + 1, "col_off": int(w.col_off), "row_off": int(w.row_off),
                                               "width": int(w.width), "height": int(w.height)})
                     for k, w in enumerate(mine)]
            write_gpkg(path, feats, crs, layer="label_windows")
            out.update(labels=scene["labels"], label_windows=str(path))
        scenes.append(out)
    return {**target, "scenes": scenes}


@dataclass
class LabelBudget:
    """One seed's labelled target windows at a strategy and budget, shared by the semi and fine-tuning rows."""

    run_name: str                  # the semi run's folder: by window count, not share (see chosen_windows)
    domain_key: str                # ctx.domains entry: the target with labels limited to the windows
    windows: list[tuple[int, Window]]
    region_windows: int
    side: int
    iterations: int


def chosen_windows(ctx: BenchContext, seed: int, strategy: str, pct: int) -> LabelBudget:
    """The windows this seed labels at ``pct`` % by ``strategy``, written as label windows of the target."""
    s, opts = ctx.settings, FewLabelsOptions.of(ctx.settings)
    side, iters = opts.side(s), opts.semi_iterations(s)
    tiling = region_windows(ctx.domains["target"], side)
    if not tiling:
        raise ConfigError(f"the target train region holds no {side} px window with {MIN_VALID:.0%} valid pixels",
                          field="window")
    n = budget(pct, len(tiling))
    # named by the window count, not the share: two budgets that round to the same count label the same
    # windows (random draws are seeded by the count too) and share one run
    run_name = f"semi-{strategy}-n{n}-it{iters}-w{side}"
    if opts.overrides:
        import hashlib

        run_name += "-" + hashlib.sha256(json.dumps(opts.overrides, sort_keys=True).encode()).hexdigest()[:8]
    so = ctx.source_only_run(seed)
    if strategy == "suggest":
        chosen = [(i, w) for i, w, _ in suggested_windows(so, ctx.domains["target"], n, side)]
    else:
        chosen = random_windows(tiling, n, seed=1000 * seed + n)
    folder = ctx.run_dir(seed, run_name).parent / f"{run_name}.windows"
    key = f"target_{run_name}"
    ctx.domains[key] = labelled_target(ctx.domains["target"], chosen, folder)
    return LabelBudget(run_name, key, chosen, len(tiling), side, iters)


def _labels_record(ctx: BenchContext, strategy: str, pct: int, lb: LabelBudget, pixels: int | None) -> dict:
    return {"strategy": strategy, "budget_pct": pct, "windows": len(lb.windows), "region_windows": lb.region_windows,
            "window": lb.side, "labelled_pixels": pixels,
            # of the target train region's valid pixels
            "labelled_share": pixels / ctx.target_stats.count if pixels is not None else None,
            "chosen": [[i, int(w.col_off), int(w.row_off)] for i, w in lb.windows]}


def _semi_runner(strategy: str, pct: int):
    def run(ctx: BenchContext, seed: int) -> dict[str, dict]:
        s = ctx.settings
        lb = chosen_windows(ctx, seed, strategy, pct)
        # half batches of labelled and of inpainted target crops: the budget's windows are few, and each crop
        # costs two encoder passes (two crops at least: batch norm needs more than one value per channel)
        half = max(min(2, s.batch_size), s.batch_size // 2)
        overrides = {**s.model_overrides("semi"), "adaptation.labelled_batch_size": half,
                     "adaptation.inpaint_batch_size": half, **(FewLabelsOptions.of(s).overrides or {})}
        model = {"config": s.config, "overrides": overrides, "checkpoint": str(ctx.source_only_run(seed))}
        res = ctx.job(lb.run_name, seed, type="adapt", method="semi", target=lb.domain_key, model=model,
                      params={"iterations": lb.iterations})
        metrics = ctx.scored(res, "target")
        pixels = (res.get("metrics") or {}).get("target_labelled_pixels")
        metrics["labels"] = _labels_record(ctx, strategy, pct, lb, pixels)
        return {row_name(strategy, pct): metrics}

    run.__doc__ = (f"semi with {pct} % of the target train region's windows labelled, chosen by "
                   f"{'labels suggest' if strategy == 'suggest' else 'a seeded random draw'} (benchmarks.fewlabels)")
    return run


def finetune_row(strategy: str, pct: int) -> str:
    return f"finetune-{strategy}@{pct}%"


def _finetune_runner(strategy: str, pct: int):
    def run(ctx: BenchContext, seed: int) -> dict[str, dict]:
        s = ctx.settings
        lb = chosen_windows(ctx, seed, strategy, pct)
        # the source scenes and the target scenes labelled in the windows, crops shared equally per scene as the
        # oracle shares them: plain supervised training on exactly the labels semi gets, for as many iterations
        labelled = [sc for sc in ctx.domains[lb.domain_key]["scenes"] if sc.get("labels")]
        key = f"source+{lb.domain_key}"
        ctx.domains[key] = {"scenes": ctx.domains["source"]["scenes"] + labelled, "balance": "scenes"}
        model = {"config": s.config, "overrides": s.model_overrides("source-only"),
                 "checkpoint": str(ctx.source_only_run(seed))}
        res = ctx.job(lb.run_name.replace("semi-", "finetune-", 1), seed, type="train", method="source-only",
                      source=key, model=model, params={"iterations": lb.iterations})
        metrics = ctx.scored(res, "source")  # one domain: its statistics are the source's and the windows' pooled
        metrics["labels"] = _labels_record(ctx, strategy, pct, lb, None)
        return {finetune_row(strategy, pct): metrics}

    run.__doc__ = (f"the source-only model fine-tuned (plain cross-entropy) on the source labels and the target "
                   f"windows semi-{strategy}@{pct}% labels, for semi's iterations: what semi's correction adds")
    return run


for _strategy in STRATEGIES:
    for _pct in BUDGETS:
        # named options of Benchmark A too (geoadapt bench adapt --method semi-suggest@5%), never its defaults
        # a larger budget runs after the smaller one of its strategy: when both round to the same windows they
        # share one run folder, which two processes must not train into at once
        smaller = tuple(row_name(_strategy, p) for p in BUDGETS if p < _pct)
        register_runner(row_name(_strategy, _pct), _semi_runner(_strategy, _pct), default=False, cost=3.0,
                        needs=("source-only", *smaller))
        # after its semi row: both write the same windows
        register_runner(finetune_row(_strategy, _pct), _finetune_runner(_strategy, _pct), default=False, cost=0.5,
                        needs=("source-only", row_name(_strategy, _pct),
                               *(finetune_row(_strategy, p) for p in BUDGETS if p < _pct)))

SEMI_ROWS = [row_name(st, p) for st in STRATEGIES for p in BUDGETS]
FINETUNE_ROWS = [finetune_row(st, p) for st in STRATEGIES for p in BUDGETS]


def few_labels_summary(case_report: dict) -> dict:
    """One case's entry of report.json["few_labels"]: per strategy@budget the per-seed mIoU, the per-seed gap
    closure against the best source-only row and the oracle, the closure of the means, and the labels used."""
    methods = case_report["methods"]
    best = case_report.get("best_source_only")
    base = methods[best]["miou"] if best else None
    top = methods["oracle"]["miou"] if "oracle" in methods else None
    out: dict = {"best_source_only": best,
                 "source_only": {"miou": base, "mean": methods[best]["mean"]["miou"] if best else None},
                 "oracle": {"miou": top, "mean": methods["oracle"]["mean"]["miou"] if top else None},
                 "goal": {"suggest@5%": GAP_CLOSURE_GOAL}}
    for row in SEMI_ROWS + FINETUNE_ROWS:
        if row not in methods:
            continue
        m = methods[row]
        per_seed = None
        if base and top:
            per_seed = [(x - b) / (t - b) if abs(t - b) > 1e-12 else None for x, b, t in zip(m["miou"], base, top)]
        entry = {"miou": m["miou"], "gap_closure": per_seed,
                 "gap_closure_of_means": case_report["gap_closure"].get(row),
                 "oa": m["oa"], "mf1": m["mf1"], "per_class_iou_mean": m["per_class_iou_mean"]}
        if m.get("labels"):
            entry["labels"] = m["labels"]  # per seed: the windows and labelled pixels the run learnt from
        out[row.removeprefix("semi-")] = entry
    return out


def run_fewlabels(out: str | Path, settings: BenchSettings | None = None, *, cases: list[str] | None = None,
                  options: FewLabelsOptions | None = None, data_dir: str | Path | None = None,
                  log: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark on ``cases`` (default: both) and write DIR/report.json, DIR/report.md and
    DIR/few_labels.png (and Benchmark A's per-case reports under DIR/<case>/)."""
    s = settings or BenchSettings()
    opts = options or FewLabelsOptions()
    s = BenchSettings(**{**asdict(s), "extra": {**s.extra, "fewlabels": asdict(opts)}})
    bad = [c for c in cases or [] if c not in CASES]
    if bad:
        raise ConfigError(f"unknown case(s) {', '.join(bad)}; known: {', '.join(CASES)}", field="case")
    for case in cases or list(CASES):
        check_split(case, s.split)
    say = log or (lambda m: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    reports, few = {}, {}
    for case in cases or list(CASES):
        say(f"case {case}: {CASES[case].title}")
        r = run_case(out / case, s.for_case(case), methods=["source-only", "oracle", *SEMI_ROWS, *FINETUNE_ROWS],
                     data_dir=data_dir, log=say)
        reports[case] = r
        few[case] = few_labels_summary(r)
    report = {"benchmark": "fewlabels", "few_labels": few, "cases": reports,
              "settings": {**asdict(s), "fewlabels": asdict(opts)}, "budgets_pct": list(BUDGETS),
              "strategies": list(STRATEGIES), "goal": {"suggest@5%": GAP_CLOSURE_GOAL, "suggest_beats_random": True},
              "elapsed_s": round(time.perf_counter() - t0, 1)}
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report))
    plot(report, out / "few_labels.png")
    return report


def render_markdown(report: dict) -> str:
    def f(v):
        return "-" if v is None else f"{v:.4f}"

    def mean(xs):
        xs = [x for x in xs or [] if x is not None]
        return sum(xs) / len(xs) if xs else None

    lines = ["# Benchmark fewlabels: semi-supervised correction with a few labelled target windows", "",
             "Method `semi` started from each seed's source-only model, with 1 % and 5 % of the target train "
             "region's windows (at the crop size) labelled, the windows chosen by `labels suggest` on the "
             "source-only model or drawn at random. Gap closure = (semi - best source-only) / (oracle - best "
             "source-only) per seed, unclipped; goal: >= 0.8 for suggest@5 % on both cases, and suggest above "
             "random at each budget. Beside each semi row, `finetune-…`: the same source-only model trained with "
             "plain cross-entropy on the source labels and the same target windows, for as many iterations "
             "(crops shared equally per scene), which says what semi's correction adds.", ""]
    for case, c in report["few_labels"].items():
        cr = report["cases"][case]
        s = cr["settings"]
        fl = (s.get("extra") or {}).get("fewlabels") or {}
        lines += [f"## Case {case}: {cr['title']}", "",
                  f"Config `{s['config']}`, batch {s['batch_size']} x {s['crop']} px; source-only and oracle "
                  f"{s['iterations']} iterations, semi {fl.get('iterations') or s['iterations']} iterations more from "
                  f"the source-only model; label windows {fl.get('window') or s['crop']} px; seeds {cr['seeds']}"
                  + (f"; split `{s['split']}` (bench adapt --split)" if s.get("split", "columns") != "columns" else "")
                  + ".", "",
                  f"Best source-only row: `{c['best_source_only']}` (mIoU {f(c['source_only']['mean'])}), oracle "
                  f"{f(c['oracle']['mean'])}.", "",
                  "| labels | windows (of region) | labelled px | mIoU per seed | mean mIoU | gap closure per seed | "
                  "mean | of means |", "|---|---|---|---|---|---|---|---|"]
        for key in [k.removeprefix("semi-") for k in SEMI_ROWS] + FINETUNE_ROWS:
            e = c.get(key)
            if e is None:
                continue
            labs = [x for x in e.get("labels") or [] if x]
            win = labs[0]["windows"] if labs else "-"
            region = labs[0].get("region_windows") if labs else None
            px = ", ".join(str(x.get("labelled_pixels")) for x in labs) if labs else "-"
            gc = e.get("gap_closure") or []
            lines.append(f"| {key} | {win}{f' ({region})' if region else ''} | {px} | "
                         f"{', '.join(f(x) for x in e['miou'])} | {f(mean(e['miou']))} | "
                         f"{', '.join(f(x) for x in gc)} | {f(mean(gc))} | {f(e.get('gap_closure_of_means'))} |")
        s5, r5 = c.get("suggest@5%"), c.get("random@5%")
        if s5 and r5:
            g = mean(s5.get("gap_closure"))
            lines += ["", f"- suggest@5 % gap closure {f(g)}: goal >= {GAP_CLOSURE_GOAL} "
                          f"{'reached' if g is not None and g >= GAP_CLOSURE_GOAL else 'not reached'}."]
        for pct in BUDGETS:
            sg, rd = c.get(f"suggest@{pct}%"), c.get(f"random@{pct}%")
            if sg and rd:
                a, b = mean(sg["miou"]), mean(rd["miou"])
                lines.append(f"- {pct} %: suggest {f(a)} vs random {f(b)} mean mIoU: suggest "
                             f"{'beats' if a > b else 'does not beat'} random.")
            for strategy in STRATEGIES:
                sm, ft = c.get(f"{strategy}@{pct}%"), c.get(finetune_row(strategy, pct))
                if sm and ft:
                    a, b = mean(sm["miou"]), mean(ft["miou"])
                    lines.append(f"- {pct} % {strategy}: semi {f(a)} vs plain fine-tuning on the same windows "
                                 f"{f(b)}: semi {'adds' if a > b else 'adds nothing'} ({a - b:+.4f}).")
        lines.append("")
    lines += [f"Total time {report['elapsed_s'] / 60:.1f} min. Per-case Benchmark A style reports (per-class IoU, "
              "label-free signals, how training ended) in `<case>/report.md`.", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    cases = list(report["few_labels"])
    n = max(len(cases), 1)
    with saved_figure(path, 1, n, figsize=(5.5 * n, 4), squeeze=False, dpi=120) as (_, axes):
        for ax, case in zip(axes[0], cases):
            c = report["few_labels"][case]
            for k, strategy in enumerate(STRATEGIES):
                xs, ys, es = [], [], []
                for pct in BUDGETS:
                    e = c.get(f"{strategy}@{pct}%")
                    if e is None:
                        continue
                    v = np.array(e["miou"], dtype=float)
                    xs.append(pct + (k - 0.5) * 0.3)
                    ys.append(v.mean())
                    es.append(v.std(ddof=1) if len(v) > 1 else 0.0)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"semi, {strategy}")
            if c["source_only"]["mean"] is not None:
                ax.axhline(c["source_only"]["mean"], color="grey", ls="--",
                           label=f"best source-only ({c['best_source_only']})")
            if c["oracle"]["mean"] is not None:
                ax.axhline(c["oracle"]["mean"], color="black", ls=":", label="oracle")
            ax.set_xticks(list(BUDGETS), [f"{p} %" for p in BUDGETS])
            ax.set_xlabel("target train windows labelled")
            ax.set_ylabel("mIoU on the target test region")
            ax.set_title(f"case {case}")
            ax.legend(fontsize=7)
    return path
