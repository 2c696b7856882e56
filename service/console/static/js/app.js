// The console's views: token, jobs (live), submit (form or spec), datasets, one job (curve, metrics,
// confusion matrix, downloads, map) and the map. Hash routes: #/jobs, #/submit, #/datasets, #/jobs/<id>, #/map.
"use strict";

(function () {
  const api = window.geoadaptApi;
  const charts = window.geoadaptCharts;
  const $ = (sel, root) => (root || document).querySelector(sel);
  const FINAL = ["successful", "failed", "dismissed"];
  const VIEWS = ["welcome", "jobs", "submit", "datasets", "job", "map"];

  const state = { view: null, timers: [], maps: [], datasets: null, models: null, gen: 0 };

  // ---- small helpers --------------------------------------------------------------------------
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids) if (k !== null && k !== undefined && k !== false) e.append(k);
    return e;
  }

  function uuid4() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);  // also outside secure contexts, unlike crypto.randomUUID
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const x = Array.from(b, (v) => v.toString(16).padStart(2, "0")).join("");
    return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
  }

  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    const p = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }

  function duration(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function size(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
    if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
    return `${(n / 1024 ** 3).toFixed(2)} GiB`;
  }

  const short = (id) => String(id).slice(0, 8);
  const base = (p) => String(p).split("/").pop();
  const badge = (status) => h("span", { class: `badge s-${status}` }, status);

  function later(fn, ms) {
    const gen = state.gen;
    const t = setTimeout(() => { if (gen === state.gen) fn(); }, ms);
    state.timers.push(t);
  }

  function banner(id, text, kind) {
    let b = document.getElementById(id);
    if (!text) { if (b) b.remove(); return; }
    if (!b) {
      b = h("div", { id, class: `banner ${kind || ""}`, role: kind === "error" ? "alert" : "status" });
      $("#banners").append(b);
    }
    b.textContent = text;
  }

  // ---- token ----------------------------------------------------------------------------------
  function tokenStatus(text, kind) {
    const s = $("#token-status");
    s.textContent = text || "";
    s.className = `token-status ${kind || ""}`;
  }

  async function checkToken() {
    if (!api.token) {
      tokenStatus("No token yet: paste an API token to see your jobs.", "info");
      return false;
    }
    try {
      await api.json("v1/jobs?limit=1");
      tokenStatus(`Token ${api.token.split("_").slice(0, 2).join("_")}… accepted.`, "ok");
      return true;
    } catch (e) {
      if (e.status === 401) return false;  // the unauthorized handler has said why
      tokenStatus(`Could not check the token: ${e.message}`, "error");
      return true;  // the server may be back in a moment; the views say what fails
    }
  }

  window.addEventListener("geoadapt:unauthorized", (ev) => {
    const why = ev.detail && ev.detail.problems && ev.detail.problems[0] ? ev.detail.problems[0].message : "unauthorized";
    tokenStatus(api.token
      ? `The server refused this token (${why}). Check it, or create a new one with \`geoadapt token create\`.`
      : "Paste an API token first.", "error");
    stopView();
    showView("welcome");
  });

  // ---- views ----------------------------------------------------------------------------------
  function stopView() {
    state.gen += 1;
    for (const t of state.timers) clearTimeout(t);
    state.timers = [];
    for (const m of state.maps) m.destroy();
    state.maps = [];
  }

  function showView(name) {
    state.view = name;
    for (const v of VIEWS) $(`#view-${v}`).hidden = v !== name;
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === name || (name === "job" && a.dataset.nav === "jobs")) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  async function route() {
    stopView();
    const hash = window.location.hash.replace(/^#\/?/, "").split("?")[0];
    const [head, arg] = hash.split("/");
    if (!api.token) { showView("welcome"); await checkToken(); return; }
    const name = head === "jobs" && arg ? "job" : (VIEWS.includes(head) ? head : "jobs");
    showView(name);
    const gen = state.gen;
    const ok = await checkToken();
    if (!ok || gen !== state.gen) return;
    if (name === "jobs") return jobsView();
    if (name === "submit") return submitView();
    if (name === "datasets") return datasetsView();
    if (name === "job") return jobView(arg);
    if (name === "map") return mapView();
  }

  // ---- shared lists ---------------------------------------------------------------------------
  async function datasets(refresh) {
    if (!state.datasets || refresh) state.datasets = (await api.json("v1/datasets?limit=200")).datasets;
    return state.datasets;
  }

  async function models(refresh) {
    if (!state.models || refresh) state.models = (await api.json("v1/models?limit=200")).models;
    return state.models;
  }

  function modelLabel(m) {
    return `${short(m.id)} · ${m.type}${m.method && m.method !== "source-only" ? ` ${m.method}` : ""} · ${m.config || ""}`;
  }

  // ---- jobs -----------------------------------------------------------------------------------
  async function cancelJob(id, btn) {
    if (btn && btn.dataset.confirm !== "1") {
      // a second press confirms: dismissal is cooperative, but a long run is costly to restart
      btn.dataset.confirm = "1";
      const old = btn.textContent;
      btn.textContent = "Press again to dismiss";
      setTimeout(() => { btn.dataset.confirm = ""; btn.textContent = old; }, 5000);
      return;
    }
    try {
      await api.json(`v1/jobs/${id}`, { method: "DELETE" });
      banner("action-msg", `Dismissal requested for job ${short(id)}.`, "ok");
    } catch (e) {
      banner("action-msg", `Could not dismiss job ${short(id)}: ${e.message}`, "error");
    }
  }

  async function deleteJob(id, btn) {
    if (btn.dataset.confirm !== "1") {
      // a second press confirms: the job's files and its model are gone for good
      btn.dataset.confirm = "1";
      const old = btn.textContent;
      btn.textContent = "Press again to delete";
      setTimeout(() => { btn.dataset.confirm = ""; btn.textContent = old; }, 5000);
      return;
    }
    try {
      await api.json(`v1/jobs/${id}`, { method: "DELETE" });
      state.models = null;  // its model went with it
      banner("action-msg", `Job ${short(id)} deleted, with its files and its model.`, "ok");
      window.location.hash = "#/jobs";
    } catch (e) {
      banner("action-msg", `Could not delete job ${short(id)}: ${e.message}`, "error");
    }
  }

  function progressCell(j) {
    const pct = Math.round(j.progress || 0);
    return h("div", { class: "prog" },
      h("progress", { max: "100", value: String(pct), "aria-label": `Progress of job ${short(j.id)}` }),
      h("span", {}, `${pct} %`),
      j.done != null && j.total ? h("span", { class: "muted" }, ` ${j.done}/${j.total}`) : null);
  }

  async function jobsView() {
    const gen = state.gen;
    const tbody = $("#jobs-table tbody");
    const live = $("#jobs-live");
    const filter = $("#jobs-status");
    filter.onchange = () => { stopView(); showView("jobs"); jobsView(); };
    const tick = async () => {
      let list;
      try {
        const q = filter.value ? `&status=${encodeURIComponent(filter.value)}` : "";
        list = await api.json(`v1/jobs?limit=50${q}`);
      } catch (e) {
        if (gen === state.gen && e.status !== 401) { live.textContent = `Could not load jobs: ${e.message}`; later(tick, 5000); }
        return;
      }
      if (gen !== state.gen) return;
      tbody.textContent = "";
      for (const j of list.jobs) {
        const active = !FINAL.includes(j.status);
        const cancel = active && !j.cancel_requested
          ? h("button", { type: "button", class: "small danger", "aria-label": `Dismiss job ${short(j.id)}` }, "Dismiss")
          : null;
        if (cancel) cancel.addEventListener("click", () => cancelJob(j.id, cancel));
        tbody.append(h("tr", { "data-job": j.id, "data-status": j.status },
          h("td", {}, h("a", { href: `#/jobs/${j.id}`, class: "mono" }, short(j.id))),
          h("td", {}, `${j.type}${j.method && j.method !== "source-only" ? ` · ${j.method}` : ""}`),
          h("td", {}, badge(j.status), j.cancel_requested && active ? h("span", { class: "muted" }, " dismissing") : null),
          h("td", { title: j.message || "" }, j.stage || "–"),
          h("td", {}, progressCell(j)),
          h("td", {}, active ? duration(j.eta_s) : "–"),
          h("td", {}, when(j.created_at)),
          h("td", { class: "row-actions" }, h("a", { href: `#/jobs/${j.id}`, "aria-label": `Open job ${short(j.id)}` }, "Open"), cancel)));
      }
      $("#jobs-empty").hidden = list.jobs.length > 0;
      const running = list.jobs.filter((j) => !FINAL.includes(j.status)).length;
      live.textContent = `${list.total} job${list.total === 1 ? "" : "s"}${running ? `, ${running} active (updating every 2 s)` : ""}.`;
      later(tick, running ? 2000 : 8000);
    };
    await tick();
  }

  // ---- form errors ----------------------------------------------------------------------------
  function clearErrors(form, box) {
    for (const e of form.querySelectorAll(".field-error")) e.remove();
    for (const e of form.querySelectorAll("[aria-invalid]")) {
      e.removeAttribute("aria-invalid");
      const d = (e.getAttribute("aria-describedby") || "").split(" ").filter((x) => !x.endsWith("-err")).join(" ");
      if (d) e.setAttribute("aria-describedby", d); else e.removeAttribute("aria-describedby");
    }
    box.textContent = "";
  }

  // each problem next to the control whose data-field is the longest prefix of the problem's field
  function showErrors(form, box, problems) {
    const fields = Array.from(form.querySelectorAll("[data-field]"));
    const general = [];
    for (const p of problems) {
      const f = p.field || "";
      let best = null;
      for (const el of fields) {
        const k = el.dataset.field;
        if ((f === k || f.startsWith(`${k}.`)) && (!best || k.length > best.dataset.field.length)) best = el;
      }
      if (best && best.id !== "spec-text") {
        const id = `${best.id}-err`;
        let msg = document.getElementById(id);
        if (!msg) {
          msg = h("p", { class: "field-error", id });
          best.closest(".field").append(msg);
        }
        msg.textContent = msg.textContent ? `${msg.textContent}; ${f}: ${p.message}` : `${f}: ${p.message}`;
        best.setAttribute("aria-invalid", "true");
        const d = (best.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
        if (!d.includes(id)) best.setAttribute("aria-describedby", [...d, id].join(" "));
      } else {
        general.push(p);
      }
    }
    const n = problems.length;
    box.append(h("p", {}, `The server refused the request: ${n} problem${n === 1 ? "" : "s"}${general.length < n ? " (shown next to the fields)" : ""}.`));
    if (general.length) {
      const ul = h("ul");
      for (const p of general) ul.append(h("li", {}, p.field ? h("code", {}, p.field) : null, p.field ? `: ${p.message}` : p.message));
      box.append(ul);
    }
    const first = form.querySelector("[aria-invalid]");
    if (first) first.focus();
  }

  // ---- submit ---------------------------------------------------------------------------------
  function parseClasses(text) {
    const out = [], problems = [];
    text.split("\n").map((l) => l.trim()).filter(Boolean).forEach((line, i) => {
      const m = line.match(/^(\d+)\s+(.+?)\s+(#[0-9a-fA-F]{6})$/);
      if (!m) problems.push({ field: `classes.${i}`, message: `line ${i + 1} should read "<id> <name> #rrggbb", got "${line}"` });
      else out.push({ id: Number(m[1]), name: m[2], color: m[3].toLowerCase() });
    });
    return { classes: out, problems };
  }

  function sceneOf(ds, withLabels) {
    const p = ds.paths || {};
    const s = p.image ? { image: p.image } : { bands: p.bands };
    if (withLabels && p.labels) s.labels = p.labels;
    return s;
  }

  function selected(sel) {
    return Array.from(sel.selectedOptions).map((o) => o.value);
  }

  function isAdabn(f) {
    return f.type.value === "adapt" && f.method.value === "adabn";
  }

  function isLabelShift(f) {
    return f.type.value === "adapt" && f.method.value === "label-shift";
  }

  function startsFromModel(f) {  // adapts a trained model without training: no config, no iterations
    return isAdabn(f) || isLabelShift(f);
  }

  function isSemi(f) {  // trains on the target scenes' labels too (a few windows of them)
    return f.type.value === "adapt" && f.method.value === "semi";
  }

  function takesDevices(f) {  // the jobs that train through the loop in several processes (params.devices)
    return f.type.value === "train" || (f.type.value === "adapt" && ["st-dasegnet", "semi", "source-only"].includes(f.method.value));
  }

  async function pretrainedJobs() {  // finished pretrain jobs: weights a job may start from (model.checkpoint)
    return (await api.json("v1/jobs?type=pretrain&status=successful&limit=200")).jobs || [];
  }

  function specFromForm() {
    const f = $("#job-form");
    const byId = Object.fromEntries((state.datasets || []).map((d) => [d.id, d]));
    const type = f.type.value;
    const { classes, problems } = parseClasses(f.classes.value);
    const adabn = isAdabn(f);
    const fromModel = startsFromModel(f);
    const pretrain = type === "pretrain";
    const spec = {
      type,
      method: type === "train" ? "source-only" : f.method.value,
      model: f.model.value.trim(),
      classes,
      source: { scenes: selected(f.source).map((id) => sceneOf(byId[id], !pretrain)) },
      params: {},
    };
    if (f.start.value && !fromModel) spec.model = { config: spec.model, checkpoint: f.start.value };
    if (pretrain) {  // imagery only: no classes, no validation; source and/or target scenes
      if (!classes.length) delete spec.classes;
      if (!spec.source.scenes.length) delete spec.source;
      spec.target = { scenes: selected(f.target).map((id) => sceneOf(byId[id], false)) };
      if (!spec.target.scenes.length) delete spec.target;
      if (!spec.source && !spec.target) problems.push({ field: "source", message: "choose source and/or target imagery to pretrain on" });
    }
    if (fromModel) {  // the model comes from the chosen bundle; for AdaBN it stands for the source too
      delete spec.model;
      if (adabn) delete spec.source;
      spec.bundle = f.bundle.value;
      if (!spec.bundle) {
        problems.push({ field: "bundle", message: adabn ? "choose the model whose batch-norm statistics to re-estimate"
          : "choose the model whose class frequencies to move onto the target's" });
      }
    }
    const semi = isSemi(f);
    if (type === "adapt") spec.target = { scenes: selected(f.target).map((id) => sceneOf(byId[id], semi)) };
    if (semi && spec.target.scenes.length && !spec.target.scenes.some((sc) => sc.labels)) {
      problems.push({ field: "target", message: "semi-supervised adaptation needs a target dataset with labels (on a few windows)" });
    }
    const val = pretrain ? [] : selected(f.validation);
    if (val.length) spec.validation = { scenes: val.map((id) => sceneOf(byId[id], true)) };
    const paramKeys = adabn ? ["batches", "batch_size", "crop", "seed"]
      : fromModel ? ["batches", "batch_size", "seed"] : ["iterations", "batch_size", "crop", "seed"];
    for (const k of paramKeys) {
      const v = f[k].value.trim();
      if (v === "") continue;
      if (!/^\d+$/.test(v)) problems.push({ field: `params.${k}`, message: "must be a whole number" });
      else spec.params[k] = Number(v);
    }
    if (type === "adapt" && !fromModel && f.compare_source_only.checked) spec.params.compare_source_only = true;
    if (isLabelShift(f) && f.skip_shift_check.checked) spec.params.skip_shift_check = true;
    const devices = f.devices.value.trim();
    if (takesDevices(f) && devices !== "") {
      if (!/^\d+$/.test(devices) || Number(devices) < 1) problems.push({ field: "params.devices", message: "must be a whole number, 1 or more" });
      else spec.params.devices = Number(devices);
    }
    if (!pretrain && spec.source && !spec.source.scenes.length) problems.push({ field: "source", message: "choose at least one labelled source dataset" });
    if (type === "adapt" && !spec.target.scenes.length) problems.push({ field: "target", message: "an adapt job needs target scenes" });
    if (!pretrain && !classes.length && !problems.some((p) => p.field.startsWith("classes"))) problems.push({ field: "classes", message: "give at least one class" });
    return { spec, problems };
  }

  async function submitSpec(spec, form, box, button) {
    button.disabled = true;
    try {
      const job = await api.post("v1/jobs", spec, { "Idempotency-Key": form.dataset.key });
      form.dataset.key = uuid4();
      banner("action-msg", `Job ${short(job.id)} submitted.`, "ok");
      window.location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      if (e.status === 401) return;
      showErrors(form, box, e.problems.length ? e.problems : [{ field: "", message: e.message }]);
    } finally {
      button.disabled = false;
    }
  }

  function fillSelect(sel, items, label, keep) {
    const old = new Set(keep || selected(sel));
    sel.textContent = "";
    for (const it of items) {
      const o = h("option", { value: it.id }, label(it));
      if (old.has(it.id)) o.selected = true;
      sel.append(o);
    }
  }

  async function submitView() {
    const form = $("#job-form"), spec = $("#spec-form");
    form.dataset.key = form.dataset.key || uuid4();
    spec.dataset.key = spec.dataset.key || uuid4();
    // the spec side needs nothing loaded: wired at once, so a choice made while the lists load still counts
    const showMode = () => {
      const mode = document.querySelector("input[name=submit-mode]:checked").value;
      form.hidden = mode !== "form";
      spec.hidden = mode !== "spec";
    };
    for (const r of document.querySelectorAll("input[name=submit-mode]")) r.onchange = showMode;
    showMode();
    $("#spec-file").onchange = async (ev) => {
      const file = ev.target.files[0];
      if (file) $("#spec-text").value = await file.text();
    };
    spec.onsubmit = async (ev) => {
      ev.preventDefault();
      const box = $("#spec-errors");
      clearErrors(spec, box);
      const text = $("#spec-text").value;
      let body;
      try {
        body = JSON.parse(text);
      } catch (e) {
        try {  // not JSON: YAML, read by the server (the same parser the CLI uses)
          body = await api.json("console/api/spec", { method: "POST", headers: { "Content-Type": "application/yaml" }, body: text });
        } catch (e2) {
          if (e2.status !== 401) showErrors(spec, box, e2.problems);
          return;
        }
      }
      if (!body || typeof body !== "object" || Array.isArray(body)) {
        showErrors(spec, box, [{ field: "(spec)", message: "a job spec must be a mapping of fields" }]);
        return;
      }
      await submitSpec(body, spec, box, $("#spec-submit"));
    };
    let ds = [], ms = [], pre = [];
    try {
      [ds, ms, pre] = await Promise.all([datasets(true), models(true), pretrainedJobs()]);
    } catch (e) {
      banner("action-msg", `Could not load datasets or models: ${e.message}`, "error");
    }
    const dsLabel = (d) => `${d.name} (${(d.report || {}).bands ?? "?"} bands${d.paths && d.paths.labels ? ", labelled" : ""})`;
    const labelled = ds.filter((d) => d.paths && d.paths.labels);
    fillSelect(form.source, labelled, dsLabel);
    fillSelect(form.target, ds, dsLabel);
    fillSelect(form.validation, labelled, dsLabel);
    $("#f-source-help").firstChild.textContent = labelled.length
      ? "Registered datasets that have labels (Ctrl/Shift to pick several). "
      : "No labelled dataset is registered yet. ";
    const from = $("#f-classes-from");
    from.textContent = "";
    from.append(h("option", { value: "" }, "—"));
    for (const m of ms) from.append(h("option", { value: m.id }, modelLabel(m)));
    const copyClasses = (id) => {
      const m = ms.find((x) => x.id === id);
      if (m) form.classes.value = m.classes.map((c) => `${c.id} ${c.name} ${c.color}`).join("\n");
    };
    from.onchange = () => copyClasses(from.value);
    const keep = form.bundle.value;
    form.bundle.textContent = "";
    form.bundle.append(h("option", { value: "" }, ms.length ? "—" : "no model yet: train one first"));
    for (const m of ms) form.bundle.append(h("option", { value: m.id }, modelLabel(m)));
    form.bundle.value = ms.some((m) => m.id === keep) ? keep : "";
    form.bundle.onchange = () => copyClasses(form.bundle.value);  // AdaBN keeps the model's classes
    const keepStart = form.start.value;
    form.start.textContent = "";
    form.start.append(h("option", { value: "" }, "the config's own weights"));
    for (const j of pre) form.start.append(h("option", { value: j.id }, `${short(j.id)} · ${j.method} · ${((j.spec || {}).model || {}).config || ""}`));
    form.start.value = pre.some((j) => j.id === keepStart) ? keepStart : "";
    const syncType = () => {
      const type = form.type.value;
      const adapt = type === "adapt", pretrain = type === "pretrain";
      for (const o of form.method.options) o.hidden = !(o.dataset.types || "").split(" ").includes(type);
      if (form.method.selectedOptions[0] && form.method.selectedOptions[0].hidden) {
        form.method.value = Array.from(form.method.options).find((o) => !o.hidden)?.value || "";
      }
      const adabn = isAdabn(form), fromModel = startsFromModel(form);
      form.target.disabled = !(adapt || pretrain);
      form.method.disabled = !(adapt || pretrain);
      $("#f-start-field").hidden = fromModel;
      // AdaBN and label shift start from a trained model: no model config, no training iterations; AdaBN takes
      // no source scenes either (the model stands for them), label shift calibrates on the labelled source
      $("#f-bundle-field").hidden = !fromModel;
      $("#f-batches-field").hidden = !fromModel;
      $("#f-bundle-help-adabn").hidden = !adabn;
      $("#f-bundle-help-label-shift").hidden = adabn;
      $("#f-skip-check-field").hidden = !isLabelShift(form);
      for (const el of [form.model, form.iterations]) el.closest(".field").hidden = fromModel;
      form.source.closest(".field").hidden = adabn;
      form.crop.closest(".field").hidden = fromModel && !adabn;
      // pretraining learns from imagery alone: nothing to validate or compare with
      form.validation.closest(".field").hidden = pretrain;
      form.compare_source_only.closest(".field").hidden = fromModel || pretrain;
      $("#f-devices-field").hidden = !takesDevices(form);
      $("#f-target-semi").hidden = !isSemi(form);
    };
    form.type.onchange = syncType;
    form.method.onchange = syncType;
    syncType();

    form.onsubmit = async (ev) => {
      ev.preventDefault();
      const box = $("#job-form-errors");
      clearErrors(form, box);
      const { spec: body, problems } = specFromForm();
      if (problems.length) { showErrors(form, box, problems); box.firstChild.textContent = `Please fix ${problems.length} problem${problems.length === 1 ? "" : "s"} first.`; return; }
      await submitSpec(body, form, box, $("#job-submit"));
    };
    $("#job-form-to-spec").onclick = () => {
      const { spec: body } = specFromForm();
      $("#spec-text").value = JSON.stringify(body, null, 2);
      document.querySelector("input[name=submit-mode][value=spec]").checked = true;
      form.hidden = true; spec.hidden = false;
      $("#spec-text").focus();
    };
  }

  // ---- datasets -------------------------------------------------------------------------------
  async function datasetsView() {
    const gen = state.gen;
    const render = async () => {
      let ds;
      try { ds = await datasets(true); } catch (e) { if (e.status !== 401) banner("action-msg", `Could not load datasets: ${e.message}`, "error"); return; }
      if (gen !== state.gen) return;
      const tbody = $("#datasets-table tbody");
      tbody.textContent = "";
      let pending = false;
      for (const d of ds) {
        const r = d.report || {};
        const st = (d.stats || {}).status || "–";
        pending = pending || st === "pending";
        const del = h("button", { type: "button", class: "small danger", "aria-label": `Delete dataset ${d.name}` }, "Delete");
        del.addEventListener("click", async () => {
          if (del.dataset.confirm !== "1") { del.dataset.confirm = "1"; del.textContent = "Press again to delete"; return; }
          try { await api.json(`v1/datasets/${d.id}`, { method: "DELETE" }); render(); } catch (e) { banner("action-msg", e.message, "error"); }
        });
        tbody.append(h("tr", { "data-dataset": d.id },
          h("td", {}, h("strong", {}, d.name), h("div", { class: "muted mono" }, short(d.id))),
          h("td", {}, String(r.bands ?? "–")),
          h("td", {}, r.width ? `${r.width} × ${r.height}` : "–"),
          h("td", {}, r.crs || "–"),
          h("td", {}, d.paths && d.paths.labels ? "yes" : "no"),
          h("td", {}, st),
          h("td", { class: "row-actions" }, h("a", { href: `#/map?dataset=${d.id}` }, "Map"), del)));
      }
      $("#datasets-empty").hidden = ds.length > 0;
      if (pending) later(render, 3000);
    };
    await render();

    const pf = $("#dataset-path-form");
    pf.onsubmit = async (ev) => {
      ev.preventDefault();
      const box = $("#dataset-path-errors");
      clearErrors(pf, box);
      const body = { name: $("#d-name").value.trim() };
      const img = $("#d-image").value.trim();
      const bands = $("#d-bands").value.split("\n").map((s) => s.trim()).filter(Boolean);
      if (img) body.image = img;
      if (bands.length) body.bands = bands;
      if ($("#d-labels").value.trim()) body.labels = $("#d-labels").value.trim();
      try {
        const d = await api.post("v1/datasets", body);
        banner("action-msg", `Dataset ${d.name} registered.`, "ok");
        pf.reset();
        render();
      } catch (e) { if (e.status !== 401) showErrors(pf, box, e.problems); }
    };
    const uf = $("#dataset-upload-form");
    uf.onsubmit = async (ev) => {
      ev.preventDefault();
      const box = $("#dataset-upload-errors");
      clearErrors(uf, box);
      const fd = new FormData();
      fd.append("name", $("#u-name").value.trim());
      if ($("#u-image").files[0]) fd.append("image", $("#u-image").files[0]);
      if ($("#u-labels").files[0]) fd.append("labels", $("#u-labels").files[0]);
      try {
        const d = await api.json("v1/datasets/upload", { method: "POST", body: fd });
        banner("action-msg", `Dataset ${d.name} uploaded.`, "ok");
        uf.reset();
        render();
      } catch (e) { if (e.status !== 401) showErrors(uf, box, e.problems); }
    };
  }

  // ---- one job --------------------------------------------------------------------------------
  function statusCard(j) {
    const box = $("#job-status");
    box.textContent = "";
    const pct = Math.round(j.progress || 0);
    const active = !FINAL.includes(j.status);
    box.append(...[
      h("div", { class: "status-line" }, badge(j.status),
        h("span", { class: "stage" }, j.stage ? `stage: ${j.stage}` : ""),
        j.cancel_requested && active ? h("span", { class: "muted" }, "dismissal requested") : null),
      h("div", { class: "prog big" },
        h("progress", { max: "100", value: String(pct), "aria-label": "Job progress" }),
        h("span", {}, `${pct} %`),
        j.done != null && j.total ? h("span", { class: "muted" }, ` ${j.done} of ${j.total}`) : null,
        active ? h("span", { class: "muted" }, ` · about ${duration(j.eta_s)} left`) : null),
      j.message ? h("p", { class: "message" }, j.message) : null,
      j.error ? h("p", { class: "error-text", role: "alert" }, h("strong", {}, `${j.error.type}: `), j.error.message) : null,
      h("p", { class: "muted" }, `created ${when(j.created_at)} · started ${when(j.started_at)} · finished ${when(j.finished_at)}` +
        (j.attempts > 1 ? ` · ${j.attempts} attempts` : "")),
    ].filter(Boolean));
    const cancel = $("#job-cancel");
    cancel.hidden = !active || j.cancel_requested;
    cancel.onclick = async () => { await cancelJob(j.id, cancel); };
    const del = $("#job-delete");
    del.hidden = active;  // DELETE on an ended job deletes it; on a live one it would cancel
    del.onclick = async () => { await deleteJob(j.id, del); };
  }

  function domainText(d) {
    if (!d) return null;
    const scenes = d.scenes.map((s) => {
      const files = s.image ? base(s.image) : `${s.bands.length} band files (${s.bands.map(base).join(", ")})`;
      return s.labels ? `${files}; labels ${base(s.labels)}` : files;
    });
    const reg = d.region ? ` · region ${JSON.stringify(d.region.columns ? { columns: d.region.columns, rows: d.region.rows } : "AOI")}` : "";
    return scenes.join(" | ") + reg;
  }

  function paramsList(j) {
    const dl = $("#job-params");
    dl.textContent = "";
    const s = j.spec || {};
    const add = (k, v) => { if (v !== null && v !== undefined && v !== "") dl.append(h("dt", {}, k), h("dd", {}, v)); };
    add("id", h("span", { class: "mono" }, j.id));
    add("type", j.type);
    add("method", j.method);
    add("model", (s.model || {}).config);
    if (s.model && s.model.overrides && Object.keys(s.model.overrides).length) add("overrides", h("code", {}, JSON.stringify(s.model.overrides)));
    const p = s.params || {};
    // left unset, iterations, batch and crop come from the model config's train block (or the defaults)
    const fromConfig = (v, unit = "") => (v === undefined || v === null ? "config's" : `${v}${unit}`);
    add("iterations", fromConfig(p.iterations));
    add("batch · crop · seed", `${fromConfig(p.batch_size)} · ${fromConfig(p.crop, " px")} · ${p.seed}`);
    add("normalisation", p.normalization);
    add("source", domainText(s.source));
    add("target", domainText(s.target));
    add("validation", domainText(s.validation));
    if (s.bundle) add("bundle", base(s.bundle));
    if (s.classes) {
      const ul = h("ul", { class: "class-legend compact" });
      for (const c of s.classes) {
        const sw = h("span", { class: "swatch", "aria-hidden": "true" });
        sw.style.background = c.color;
        ul.append(h("li", {}, sw, `${c.id} ${c.name}`));
      }
      add("classes", ul);
    }
  }

  async function loadCurve(j) {
    const box = $("#job-curve");
    if (!["train", "adapt", "pretrain"].includes(j.type)) { box.textContent = "Only training, adaptation and pretraining jobs have a training curve."; return; }
    let text = null;
    try {
      text = await (await api.raw(`v1/jobs/${j.id}/files/history.jsonl`)).text();
    } catch (e) {
      if (e.status !== 404) { box.textContent = `Could not load the training history: ${e.message}`; return; }
    }
    const hist = [];
    for (const line of (text || "").split("\n")) {
      if (!line.trim()) continue;
      try { hist.push(JSON.parse(line)); } catch (e) { /* a line being written */ }
    }
    if (!charts.trainingCurve(box, hist)) {
      const m = state.metrics && state.metrics.training;
      box.textContent = "";
      box.append(h("p", { class: "muted" }, FINAL.includes(j.status)
        ? "No training history was recorded for this job (its output has no history.jsonl)."
        : "The curve appears once the first iterations are logged."));
      if (m && m.final_losses) {
        box.append(h("p", {}, `Final losses after ${m.iterations} iterations: ` +
          Object.entries(m.final_losses).map(([k, v]) => `${k} ${charts.fmt(v)}`).join(", ")));
      }
    }
  }

  // [{label, m}] in display order: baseline first
  function metricBlocks(metrics, j) {
    if (!metrics) return [];
    if (metrics.evaluation) return Object.entries(metrics.evaluation).map(([k, m]) => ({ label: `on ${k}`, m }));
    const out = [];
    const baseline = metrics.source_only || metrics.baseline;
    if (baseline) out.push({ label: metrics.source_only ? "source-only" : "before adaptation", m: baseline });
    if (metrics.validation) out.push({ label: j.type === "adapt" ? `adapted (${j.method})` : "trained", m: metrics.validation });
    return out;
  }

  function metricsTable(blocks, j) {
    const box = $("#job-metrics");
    box.textContent = "";
    if (!blocks.length) {
      box.append(h("p", {}, "This job had no validation labels, so accuracy was not measured. Add labelled validation scenes to get IoU, OA and F1."));
      return;
    }
    const f = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1));
    const names = Object.keys(blocks[blocks.length - 1].m.per_class || {});
    const classes = Object.fromEntries(((j.spec || {}).classes || []).map((c) => [c.name, c]));
    const tbl = h("table", { class: "metrics", id: "metrics-table" });
    tbl.append(h("caption", {}, "Per-class IoU and F1 (%) on the validation scenes" + (blocks.length > 1 ? ", side by side" : "")));
    const head = h("tr", {}, h("th", { scope: "col" }, "class"));
    for (const b of blocks) head.append(h("th", { scope: "col" }, `IoU ${b.label}`), h("th", { scope: "col" }, `F1 ${b.label}`));
    if (blocks.length === 2) head.append(h("th", { scope: "col" }, "Δ IoU"));
    head.append(h("th", { scope: "col" }, "pixels"));
    tbl.append(h("thead", {}, head));
    const body = h("tbody");
    for (const n of names) {
      const sw = h("span", { class: "swatch", "aria-hidden": "true" });
      if (classes[n]) sw.style.background = classes[n].color;
      const tr = h("tr", {}, h("th", { scope: "row" }, sw, n));
      for (const b of blocks) {
        const c = (b.m.per_class || {})[n] || {};
        tr.append(h("td", {}, f(c.iou)), h("td", {}, f(c.f1)));
      }
      if (blocks.length === 2) {
        const a = (blocks[0].m.per_class[n] || {}).iou, b2 = (blocks[1].m.per_class[n] || {}).iou;
        tr.append(h("td", {}, a == null || b2 == null ? "–" : `${b2 >= a ? "+" : ""}${((b2 - a) * 100).toFixed(1)}`));
      }
      tr.append(h("td", {}, ((blocks[blocks.length - 1].m.per_class[n] || {}).pixels ?? 0).toLocaleString()));
      body.append(tr);
    }
    for (const [key, label] of [["miou", "mIoU"], ["mf1", "mF1"], ["oa", "OA"]]) {
      const tr = h("tr", { class: "summary", "data-metric": key }, h("th", { scope: "row" }, label));
      for (const b of blocks) tr.append(h("td", { colspan: "2" }, f(b.m[key])));
      if (blocks.length === 2) {
        const a = blocks[0].m[key], b2 = blocks[1].m[key];
        tr.append(h("td", {}, a == null || b2 == null ? "–" : `${b2 >= a ? "+" : ""}${((b2 - a) * 100).toFixed(1)}`));
      }
      tr.append(h("td", {}, ""));
      body.append(tr);
    }
    tbl.append(body);
    box.append(h("div", { class: "table-wrap" }, tbl));
    const m = blocks[blocks.length - 1].m;
    if (m.mean_over) box.append(h("p", { class: "help" }, `Means over ${m.mean_over}` + (m.classes_absent && m.classes_absent.length ? `; absent from the reference: ${m.classes_absent.join(", ")}.` : ".")));
  }

  // the label-free signals (models/label_free.py): [key, label, what it tells]
  const LABEL_FREE = [
    ["mean_max_prob", "Mean confidence",
      "Average probability of the predicted class on target pixels: how sure the model is (not whether it is right)."],
    ["entropy", "Entropy (nats)", "Average uncertainty of the prediction; lower is surer, ln K (K classes) is a uniform guess."],
    ["entropy_normalised", "Entropy ÷ ln K", "The same on a 0–1 scale: 0 certain, 1 a uniform guess."],
    ["agreement", "Agreement", "Share of target pixels where the two networks pick the same class "
      + "(ST-DASegNet: its two students; feature regression: teacher and student)."],
    ["pseudo_coverage", "Coverage", "Share of target pixels predicted with at least the pseudo-label threshold's confidence."],
    ["pseudo_coverage_0.9", "Coverage ≥ 0.9", "Share of target pixels predicted with at least 0.9 confidence."],
    ["class_tv", "Class-mix shift",
      "How far the predicted class mix on the target is from that on the source (total variation: 0 the same, 1 disjoint)."],
    ["expected_miou", "Expected mIoU",
      "The mIoU the model would have on the target if its probabilities were right; every class weighs alike, "
      + "so a model that ignores a class it half-expects scores low. An estimate, not a measurement."],
  ];

  function labelFreeTable(metrics, j) {
    const box = $("#job-label-free");
    box.textContent = "";
    const lf = metrics && metrics.label_free;
    if (!lf) {
      box.append(h("p", { class: "muted" }, j.type === "adapt"
        ? "This job recorded no label-free signals (it ran before they were added)."
        : "Only adaptation jobs report signals without labels."));
      return;
    }
    const models = [];
    if (lf.source_only) models.push({ label: "source-only", s: lf.source_only });
    models.push({ label: `adapted (${j.method})`, s: lf });
    const tbl = h("table", { class: "metrics", id: "label-free-table" });
    tbl.append(h("caption", {}, `Computed without target labels, on ${((lf.pixels || {}).target ?? 0).toLocaleString()} target pixels`));
    const head = h("tr", {}, h("th", { scope: "col" }, "signal"));
    for (const m of models) head.append(h("th", { scope: "col" }, m.label));
    head.append(h("th", { scope: "col" }, "what it tells"));
    tbl.append(h("thead", {}, head));
    const body = h("tbody");
    const f = (v) => (v === null || v === undefined ? "–" : v.toFixed(3));
    for (const [key, label, help] of LABEL_FREE) {
      if (!models.some((m) => m.s[key] !== undefined)) continue;
      let name = label;
      if (key === "pseudo_coverage") name = `Coverage ≥ ${lf.pseudo_threshold}`;
      if (key === "agreement") name = `Agreement (${lf.agreement_of})`;
      const tr = h("tr", { "data-signal": key }, h("th", { scope: "row" }, name));
      for (const m of models) tr.append(h("td", {}, f(m.s[key])));
      tr.append(h("td", { class: "help" }, help));
      body.append(tr);
    }
    tbl.append(body);
    box.append(h("div", { class: "table-wrap" }, tbl));

    // the predicted class mix on target beside the source's (the adapted model's)
    const dist = lf.class_distribution || {};
    if (dist.target && dist.source) {
      const pct = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1));
      const mix = h("table", { class: "metrics", id: "class-mix-table" });
      mix.append(h("caption", {}, "Predicted class mix (%), adapted model"));
      mix.append(h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "class"), h("th", { scope: "col" }, "source"),
        h("th", { scope: "col" }, "target"))));
      const mb = h("tbody");
      const classes = (j.spec || {}).classes || [];
      for (const id of Object.keys(dist.target)) {
        const c = classes.find((x) => String(x.id) === id);
        const sw = h("span", { class: "swatch", "aria-hidden": "true" });
        if (c) sw.style.background = c.color;
        mb.append(h("tr", { "data-class": id }, h("th", { scope: "row" }, sw, c ? c.name : id),
          h("td", {}, pct(dist.source[id])), h("td", {}, pct(dist.target[id]))));
      }
      mix.append(mb);
      box.append(h("div", { class: "table-wrap" }, mix));
    }
  }

  function confusion(blocks) {
    const box = $("#job-confusion");
    box.textContent = "";
    const withCm = blocks.filter((b) => b.m.confusion_matrix);
    if (!withCm.length) { box.append(h("p", { class: "muted" }, "No confusion matrix: the job had no validation labels.")); return; }
    const area = h("div");
    if (withCm.length > 1) {
      const sel = h("select", { id: "cm-which" });
      withCm.forEach((b, i) => sel.append(h("option", { value: String(i) }, b.label)));
      sel.value = String(withCm.length - 1);
      sel.onchange = () => charts.confusionMatrix(area, withCm[Number(sel.value)].m.confusion_matrix);
      box.append(h("div", { class: "row" }, h("label", { for: "cm-which" }, "Model"), sel));
    }
    box.append(area);
    charts.confusionMatrix(area, withCm[withCm.length - 1].m.confusion_matrix);
  }

  function downloads(res) {
    const box = $("#job-downloads");
    box.textContent = "";
    const groups = { "Model bundle": [], "Predicted maps (COG)": [], "Windows to label": [], "Metrics and report": [],
      "Other files": [] };
    const preds = new Set((res.predictions || []).map((p) => p.path));
    for (const f of res.files || []) {
      // a class COG's .aux.xml sidecar (GDAL categories, attribute table) belongs with its map
      const sidecarOf = f.name.endsWith(".aux.xml") && preds.has(f.name.slice(0, -".aux.xml".length));
      const g = f.name.startsWith("bundle/") ? "Model bundle" : preds.has(f.name) || sidecarOf ? "Predicted maps (COG)"
        : /^suggestions\.(gpkg|geojson|json)$/.test(f.name) ? "Windows to label"
        : /(^|\/)(metrics|report|predictions)\.(json|html|md)$/.test(f.name) ? "Metrics and report" : "Other files";
      groups[g].push(f);
    }
    for (const [g, files] of Object.entries(groups)) {
      if (!files.length) continue;
      const ul = h("ul", { class: "files" });
      for (const f of files) {
        const b = h("button", { type: "button", class: "link", "data-file": f.name }, f.name);
        b.addEventListener("click", async () => {
          b.disabled = true;
          try { await api.download(api.path(f.links.download), base(f.name)); } catch (e) { banner("action-msg", `Download failed: ${e.message}`, "error"); }
          b.disabled = false;
        });
        ul.append(h("li", {}, b, h("span", { class: "muted" }, ` ${size(f.size)}`)));
      }
      box.append(h("h3", {}, g), ul);
    }
    if (!box.childNodes.length) box.append(h("p", { class: "muted" }, "This job wrote no files."));
  }

  function samePaths(a, b) {
    return JSON.stringify(a) === JSON.stringify(b);
  }

  // the registered dataset that holds a job's scene, so that the map can show its imagery
  function datasetOfScene(ds, scene) {
    if (!scene) return null;
    return ds.find((d) => d.paths && (scene.image ? d.paths.image === scene.image : samePaths(d.paths.bands, scene.bands))) || null;
  }

  // the job scene a predicted map covers: workers name it <role>-<index>-<file>.tif (workers/pipelines/predict.py)
  function predictionScene(entry) {
    const m = /(?:^|\/)(target|validation|source)-(\d+)-([^/]*)\.tif$/.exec(entry.path || "");
    return m ? { key: `${m[1]}/${m[2]}`, role: m[1], index: Number(m[2]), file: m[3] } : null;
  }

  // a suggest job's windows to label (workers/pipelines/labels.py writes suggestions.geojson in WGS84)
  function suggestionsOf(j, res) {
    const f = ((res && res.files) || []).find((x) => x.name === "suggestions.geojson");
    return f ? { label: `${short(j.id)} · windows to label`, url: f.links.download } : null;
  }

  async function jobMap(j, res) {
    const panel = $("#job-map-panel");
    let ds = [], ms = [];
    try { [ds, ms] = await Promise.all([datasets(true), models(true)]); } catch (e) { /* the map says what is missing */ }
    const s = j.spec || {};
    // the job's own scenes first (it may name files no dataset registers), then every dataset
    const imageries = [];
    for (const role of ["target", "validation", "source"]) {
      ((s[role] || {}).scenes || []).forEach((sc, i) => {
        const file = sc.image ? base(sc.image) : `${sc.bands.length} band files`;
        imageries.push({ key: `${role}/${i}`, label: `job's ${role} ${i + 1}: ${file}`, base: `v1/jobs/${j.id}/scenes/${role}/${i}` });
      });
    }
    for (const d of ds) imageries.push({ key: d.id, label: `dataset ${d.name}`, base: `v1/datasets/${d.id}` });
    const scene = ((s.target || s.validation || s.source || {}).scenes || [])[0];
    const imagery = datasetOfScene(ds, scene) || ds[0] || null;  // what tile inference runs on
    const predictions = ((res && res.predictions) || []).filter((p) => p.kind === "classes")
      .map((p) => ({ label: `${short(j.id)} · ${p.name}`, entry: p, job: j, imagery: (predictionScene(p) || {}).key }));
    const modelItems = ms.map((m) => ({ id: m.id, label: modelLabel(m), classes: m.classes }));
    const suggestions = suggestionsOf(j, res);
    const current = state.maps.find((m) => m.jobId === j.id);
    if (current) {  // the job finished while shown: keep the map (and the user's view), add the results
      current.setResults(predictions, modelItems, predictions.length ? 0 : null);
      current.setSuggestions(suggestions);
      return;
    }
    for (const m of state.maps) m.destroy();
    state.maps = [];
    const isModel = ms.some((m) => m.id === j.id);
    const mp = new window.geoadaptMap.MapPanel(panel, {
      datasets: ds, imageries, models: modelItems,
      imagery: (predictions[0] && predictions[0].imagery) || (imageries.length ? imageries[0].key : null),
      predictions, prediction: predictions.length ? 0 : null,
      model: isModel ? j.id : null, modelDataset: imagery ? imagery.id : null,
      showModel: isModel && !predictions.length && !!imagery, suggestions,
    });
    mp.jobId = j.id;
    state.maps.push(mp);
  }

  async function jobView(id) {
    const gen = state.gen;
    state.metrics = null;
    $("#job-title").textContent = `Job ${short(id)}`;
    for (const [sel, text] of [["#job-metrics", "Metrics appear when the job has finished."],
      ["#job-label-free", "Adaptation jobs report these when they have finished."],
      ["#job-confusion", "Needs validation labels and a finished job."], ["#job-downloads", "Files appear when the job has finished."],
      ["#job-curve", ""], ["#job-status", "Loading…"]]) {
      $(sel).textContent = "";
      $(sel).append(h("p", { class: "muted" }, text));
    }
    $("#job-params").textContent = "";
    $("#job-cancel").hidden = true;
    $("#job-delete").hidden = true;
    let shownFinal = false, mapShown = false;
    const tick = async () => {
      let j;
      try { j = await api.json(`v1/jobs/${id}`); } catch (e) {
        if (gen !== state.gen || e.status === 401) return;
        $("#job-status").textContent = e.status === 404 ? `No job ${id} (or it belongs to another token).` : `Could not load the job: ${e.message}`;
        if (e.status !== 404) later(tick, 5000);
        return;
      }
      if (gen !== state.gen) return;
      $("#job-title").textContent = `Job ${short(j.id)} · ${j.type}${j.method !== "source-only" ? ` · ${j.method}` : ""}`;
      statusCard(j);
      if (!$("#job-params").childNodes.length) paramsList(j);
      const final = FINAL.includes(j.status);
      if (final && !shownFinal) {
        shownFinal = true;
        let res = null;
        if (j.status === "successful") {
          try { res = await api.json(`v1/jobs/${j.id}/results`); } catch (e) { banner("action-msg", `Could not load results: ${e.message}`, "error"); }
          if (gen !== state.gen) return;
        }
        state.metrics = res && res.metrics;
        const blocks = metricBlocks(res && res.metrics, j);
        if (res) { metricsTable(blocks, j); labelFreeTable(res.metrics, j); confusion(blocks); downloads(res); }
        else $("#job-metrics").textContent = `The job is ${j.status}: no results.`;
        await loadCurve(j);
        await jobMap(j, res);
        mapShown = true;
      } else if (!final) {
        await loadCurve(j);
        if (!mapShown) { mapShown = true; await jobMap(j, null); }
        later(tick, 1500);
      }
    };
    await tick();
  }

  // ---- the map --------------------------------------------------------------------------------
  async function mapView() {
    const gen = state.gen;
    const panel = $("#main-map-panel");
    panel.textContent = "Loading datasets, models and results…";
    let ds = [], ms = [], jobs = [];
    try {
      [ds, ms, jobs] = await Promise.all([datasets(true), models(true), api.json("v1/jobs?status=successful&limit=20").then((r) => r.jobs)]);
    } catch (e) {
      if (e.status !== 401) panel.textContent = `Could not load: ${e.message}`;
      return;
    }
    // every prediction comes with the scene it covers, so the map never shows one job's classes over
    // another's imagery: it opens on the newest job's prediction (or #/map?job=ID's) over its own scene
    const predictions = [], imageries = [];
    const results = await Promise.all(jobs.map((j) => api.json(`v1/jobs/${j.id}/results`).catch(() => null)));
    results.forEach((res, i) => {
      const j = jobs[i];
      for (const p of (res && res.predictions) || []) {
        if (p.kind !== "classes") continue;
        const sc = predictionScene(p), key = sc && `${j.id}/${sc.key}`;
        if (sc && !imageries.some((x) => x.key === key)) {
          imageries.push({ key, label: `job ${short(j.id)} · ${sc.role} ${sc.index + 1}: ${sc.file}`,
            base: `v1/jobs/${j.id}/scenes/${sc.role}/${sc.index}` });
        }
        predictions.push({ label: `${short(j.id)} · ${p.name}`, entry: p, job: j, imagery: key });
      }
    });
    for (const d of ds) imageries.push({ key: d.id, label: `dataset ${d.name}`, base: `v1/datasets/${d.id}` });
    if (gen !== state.gen) return;
    const q = new URLSearchParams(window.location.hash.split("?")[1] || "");
    const want = q.get("dataset"), wantJob = q.get("job");
    const wanted = wantJob ? jobs.findIndex((j) => j.id === wantJob) : -1;
    const suggestions = wanted >= 0 ? suggestionsOf(jobs[wanted], results[wanted]) : null;
    let first = want ? -1 : predictions.findIndex((p) => !wantJob || p.job.id === wantJob);
    if (first < 0 && !want && !suggestions && predictions.length) first = 0;
    const pred = first >= 0 ? predictions[first] : null;
    panel.textContent = "";
    if (suggestions && !pred) {  // a suggest job (one target scene): its windows over that scene
      imageries.unshift({ key: `${wantJob}/target/0`, label: `job ${short(wantJob)} · target 1`,
        base: `v1/jobs/${wantJob}/scenes/target/0` });
    }
    const mp = new window.geoadaptMap.MapPanel(panel, {
      datasets: ds, imageries, models: ms.map((m) => ({ id: m.id, label: modelLabel(m), classes: m.classes })),
      predictions, imagery: want || (pred && pred.imagery) || (suggestions && imageries[0] && imageries[0].key)
        || (ds[0] && ds[0].id) || null,
      prediction: pred ? first : null, model: null, showModel: false, suggestions,
    });
    state.maps.push(mp);
  }

  // ---- start ----------------------------------------------------------------------------------
  function start() {
    if (!window.L) {
      banner("no-map-library",
        "The map library (Leaflet) is not installed on this server, so maps are shown as still pictures. " +
        "Install it with scripts/setup.sh on a machine with npm (it runs `npm ci` and `npm run build`).", "warn");
    }
    const input = $("#token-input");
    api.load();
    if (api.token) input.value = "";
    $("#token-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const t = input.value.trim();
      if (!t) { tokenStatus("Paste a token first (it starts with ga_).", "error"); input.focus(); return; }
      api.save(t);
      input.value = "";
      state.datasets = state.models = null;
      if (!window.location.hash || window.location.hash === "#/") window.location.hash = "#/jobs";
      else route();
    });
    $("#token-forget").addEventListener("click", () => {
      api.forget();
      state.datasets = state.models = null;
      tokenStatus("Token forgotten on this browser.", "info");
      route();
    });
    window.addEventListener("hashchange", route);
    route();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
