// Pictures of a job: the training curve (SVG) and the confusion matrix (canvas + the numbers as a table).
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  // colour-blind-safe series colours (Okabe-Ito), all at least 3:1 against white
  const SERIES = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#8a6d00", "#56718a"];

  function el(tag, attrs, parent) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }

  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    const step0 = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(10));
    return out;
  }

  function fmt(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    return a >= 1000 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
  }

  // history: [{iteration, losses:{name: value}}, {iteration, validation:{miou,...}}, ...]
  function trainingCurve(container, history) {
    container.textContent = "";
    const steps = history.filter((h) => h && h.losses && Number.isFinite(h.iteration));
    const vals = history.filter((h) => h && h.validation && Number.isFinite(h.iteration));
    if (!steps.length && !vals.length) return false;
    const keys = [];
    for (const h of steps) for (const k of Object.keys(h.losses)) if (!keys.includes(k)) keys.push(k);
    // the total first, then the parts; at most SERIES.length lines stay readable
    keys.sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
    const shown = keys.slice(0, SERIES.length);
    const W = 560, H = 260, m = { l: 52, r: vals.length ? 48 : 14, t: 12, b: 36 };
    const its = history.map((h) => h.iteration).filter(Number.isFinite);
    const x0 = Math.min(...its), x1 = Math.max(...its, x0 + 1);
    const lv = [];
    for (const h of steps) for (const k of shown) if (Number.isFinite(h.losses[k])) lv.push(h.losses[k]);
    const y0 = lv.length ? Math.min(0, ...lv) : 0, y1 = lv.length ? Math.max(...lv) : 1;
    const yt = niceTicks(y0, y1, 5);
    const ylo = yt[0], yhi = yt[yt.length - 1] > ylo ? yt[yt.length - 1] : ylo + 1;
    const sx = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (v) => H - m.b - ((v - ylo) / (yhi - ylo)) * (H - m.t - m.b);
    const sy2 = (v) => H - m.b - v * (H - m.t - m.b);

    const last = steps.length ? steps[steps.length - 1] : null;
    const lastVal = vals.length ? vals[vals.length - 1] : null;
    const summary = [
      last ? `Training losses over ${last.iteration} iterations; last ${shown.map((k) => `${k} ${fmt(last.losses[k])}`).join(", ")}.` : "",
      lastVal && lastVal.validation.miou != null ? `Validation mIoU ${fmt(lastVal.validation.miou)} at iteration ${lastVal.iteration}.` : "",
    ].join(" ");
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": summary, class: "curve" });
    el("title", {}, svg).textContent = summary;
    const grid = el("g", { class: "grid" }, svg);
    for (const t of yt) {
      el("line", { x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t) }, grid);
      const lab = el("text", { x: m.l - 6, y: sy(t) + 4, "text-anchor": "end", class: "tick" }, svg);
      lab.textContent = fmt(t);
    }
    for (const t of niceTicks(x0, x1, 6)) {
      const lab = el("text", { x: sx(t), y: H - m.b + 16, "text-anchor": "middle", class: "tick" }, svg);
      lab.textContent = String(t);
    }
    el("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle", class: "axis" }, svg).textContent = "iteration";
    el("text", { x: 12, y: m.t + 4, class: "axis", transform: `rotate(-90 12 ${m.t + 4})`, "text-anchor": "end" }, svg)
      .textContent = "loss";
    el("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "frame" }, svg);
    el("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: "frame" }, svg);

    shown.forEach((k, i) => {
      const pts = steps.filter((h) => Number.isFinite(h.losses[k])).map((h) => `${sx(h.iteration).toFixed(1)},${sy(h.losses[k]).toFixed(1)}`);
      if (pts.length) el("polyline", { points: pts.join(" "), fill: "none", stroke: SERIES[i], "stroke-width": k === "loss" ? 2.2 : 1.4, class: "series" }, svg);
    });
    if (vals.length) {
      for (const t of [0, 0.25, 0.5, 0.75, 1]) {
        el("text", { x: W - m.r + 6, y: sy2(t) + 4, class: "tick" }, svg).textContent = t.toFixed(2);
      }
      el("line", { x1: W - m.r, x2: W - m.r, y1: m.t, y2: H - m.b, class: "frame" }, svg);
      const pts = vals.filter((h) => h.validation.miou != null).map((h) => [sx(h.iteration), sy2(h.validation.miou)]);
      if (pts.length > 1) el("polyline", { points: pts.map((p) => p.join(",")).join(" "), fill: "none", stroke: "#1b1f24", "stroke-dasharray": "5 3", "stroke-width": 1.6 }, svg);
      for (const p of pts) el("circle", { cx: p[0], cy: p[1], r: 3.5, fill: "#1b1f24" }, svg);
    }
    container.appendChild(svg);
    const legend = document.createElement("ul");
    legend.className = "series-legend";
    shown.forEach((k, i) => {
      const li = document.createElement("li");
      li.innerHTML = `<span class="swatch line" style="background:${SERIES[i]}"></span>`;
      li.appendChild(document.createTextNode(k));
      legend.appendChild(li);
    });
    if (vals.length) {
      const li = document.createElement("li");
      li.innerHTML = '<span class="swatch dashed"></span>';
      li.appendChild(document.createTextNode("validation mIoU (right axis)"));
      legend.appendChild(li);
    }
    container.appendChild(legend);
    return true;
  }

  // mix white -> the colour by t in [0, 1]
  function ramp(t) {
    const a = [255, 255, 255], b = [8, 69, 148];
    return `rgb(${a.map((v, i) => Math.round(v + (b[i] - v) * t)).join(",")})`;
  }

  // cm: {classes:[...], counts:[[...]], rows:"reference", columns:"prediction"}; rows normalised (recall)
  function confusionMatrix(container, cm) {
    container.textContent = "";
    const names = cm.classes || [];
    const counts = cm.counts || [];
    const n = names.length;
    if (!n || counts.length !== n) return false;
    const rowSum = counts.map((r) => r.reduce((s, v) => s + v, 0));
    const frac = counts.map((r, i) => r.map((v) => (rowSum[i] ? v / rowSum[i] : 0)));
    const cell = Math.max(28, Math.min(56, Math.floor(420 / n)));
    const labW = 110, labH = 92;
    const dpr = window.devicePixelRatio || 1;
    const W = labW + n * cell + 8, H = labH + n * cell + 8;
    const canvas = document.createElement("canvas");
    canvas.width = W * dpr; canvas.height = H * dpr;
    canvas.style.width = `${W}px`; canvas.style.height = `${H}px`;
    canvas.className = "confusion";
    const diag = names.map((c, i) => `${c} ${(frac[i][i] * 100).toFixed(0)}%`).join(", ");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `Confusion matrix, rows reference, columns prediction, each row as percentages. Correct per class: ${diag}.`);
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    g.fillStyle = "#ffffff"; g.fillRect(0, 0, W, H);
    g.font = "12px system-ui, sans-serif";
    g.textBaseline = "middle";
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        const x = labW + j * cell, y = labH + i * cell, t = frac[i][j];
        g.fillStyle = ramp(t); g.fillRect(x, y, cell - 1, cell - 1);
        if (cell >= 28 && rowSum[i]) {
          g.fillStyle = t > 0.5 ? "#ffffff" : "#1b1f24";
          g.textAlign = "center";
          g.fillText(`${Math.round(t * 100)}`, x + cell / 2, y + cell / 2);
        }
      }
      g.fillStyle = "#1b1f24"; g.textAlign = "right";
      g.fillText(names[i].slice(0, 16), labW - 6, labH + i * cell + cell / 2);
    }
    for (let j = 0; j < n; j++) {
      g.save();
      g.translate(labW + j * cell + cell / 2, labH - 6);
      g.rotate(-Math.PI / 3);
      g.textAlign = "left"; g.fillStyle = "#1b1f24";
      g.fillText(names[j].slice(0, 16), 0, 0);
      g.restore();
    }
    const wrap = document.createElement("div");
    wrap.className = "confusion-wrap";
    wrap.appendChild(canvas);
    const note = document.createElement("p");
    note.className = "help";
    note.textContent = "Rows: reference class; columns: predicted class; each row in % of its reference pixels.";
    container.append(wrap, note);

    const det = document.createElement("details");
    det.innerHTML = "<summary>The counts as a table</summary>";
    const tbl = document.createElement("table");
    tbl.className = "numbers";
    const head = document.createElement("tr");
    head.innerHTML = '<th scope="col">reference \\ prediction</th>';
    for (const c of names) { const th = document.createElement("th"); th.scope = "col"; th.textContent = c; head.appendChild(th); }
    tbl.appendChild(head);
    counts.forEach((row, i) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th"); th.scope = "row"; th.textContent = names[i]; tr.appendChild(th);
      for (const v of row) { const td = document.createElement("td"); td.textContent = v.toLocaleString(); tr.appendChild(td); }
      tbl.appendChild(tr);
    });
    det.appendChild(tbl);
    container.appendChild(det);
    return true;
  }

  window.geoadaptCharts = { trainingCurve, confusionMatrix, fmt };
})();
