// The map panel: input imagery (band choice, stretch), a predicted class map (opacity, legend), live tile
// inference of a model on a registered image, and the class / band values at a clicked point.
// Tiles are fetched with the token (fetch + blob URL): an <img src> could not send it.
"use strict";

(function () {
  const api = window.geoadaptApi;
  let seq = 0;

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

  function option(value, label, selected) {
    const o = h("option", { value }, label);
    if (selected) o.selected = true;
    return o;
  }

  let AuthTileLayer = null;
  function authLayerClass() {
    if (AuthTileLayer || !window.L) return AuthTileLayer;
    AuthTileLayer = window.L.TileLayer.extend({
      createTile(coords, done) {
        const tile = document.createElement("img");
        tile.alt = "";
        tile.setAttribute("role", "presentation");
        const ctrl = new AbortController();
        tile._ga_abort = ctrl;
        api.raw(this.getTileUrl(coords), { signal: ctrl.signal })
          .then((r) => r.blob())
          .then((blob) => {
            const url = URL.createObjectURL(blob);
            tile.onload = () => { URL.revokeObjectURL(url); done(null, tile); };
            tile.onerror = () => { URL.revokeObjectURL(url); done(new Error("not an image"), tile); };
            tile.src = url;
          })
          .catch((e) => {
            if (!(e && e.name === "AbortError")) this.fire("ga:tilefail", { error: e, coords });
            done(e, tile);
          });
        return tile;
      },
      initialize(url, options) {
        window.L.TileLayer.prototype.initialize.call(this, url, options);
        this.on("tileunload", (ev) => { if (ev.tile && ev.tile._ga_abort) ev.tile._ga_abort.abort(); });
      },
    });
    return AuthTileLayer;
  }

  function boundsOf(tj) {
    const b = tj.bounds;
    return b ? [[b[1], b[0]], [b[3], b[2]]] : null;
  }

  class MapPanel {
    // opts: {datasets, imageries:[{key, label, base}], imagery: key|null, models, predictions:[{label, entry, job}],
    //        prediction: index|null, model: modelId|null, modelDataset: datasetId|null, showModel: bool,
    //        suggestions: {label, url}|null (a suggest job's suggestions.geojson: windows to label, WGS84)}
    // an imagery's base is the API path its info, tilejson, tiles and point hang from (a dataset, a job's scene)
    constructor(container, opts) {
      this.container = container;
      this.opts = opts;
      this.id = `mp${++seq}`;
      this.layers = { imagery: null, prediction: null, model: null, suggestions: null };
      this.legends = { prediction: null, model: null };
      this.infoCache = {};
      this.build();
    }

    build() {
      const o = this.opts, id = this.id;
      this.container.textContent = "";
      const ds = o.datasets || [];
      // ---- controls
      const imgSel = h("select", { id: `${id}-img` }, option("", "none"));
      this.imageries = o.imageries || ds.map((d) => ({ key: d.id, label: d.name, base: `v1/datasets/${d.id}` }));
      for (const im of this.imageries) imgSel.append(option(im.key, im.label, im.key === o.imagery));
      const bandSel = ["red", "green", "blue"].map((c) => h("select", { id: `${id}-b-${c}`, "data-band": c }));
      const modeSel = h("select", { id: `${id}-mode` }, option("rgb", "RGB (3 bands)"), option("grey", "one band, grey"));
      const autoBox = h("input", { type: "checkbox", id: `${id}-auto`, checked: true });
      const sMin = h("input", { type: "number", id: `${id}-smin`, step: "any", disabled: true, inputmode: "decimal" });
      const sMax = h("input", { type: "number", id: `${id}-smax`, step: "any", disabled: true, inputmode: "decimal" });
      const predSel = h("select", { id: `${id}-pred` }, option("", "none"));
      (o.predictions || []).forEach((p, i) => predSel.append(option(String(i), p.label, i === o.prediction)));
      const opacity = h("input", { type: "range", id: `${id}-opacity`, min: "0", max: "100", value: "70", "aria-valuetext": "70 %" });
      const modelSel = h("select", { id: `${id}-model` }, option("", "none"));
      for (const m of o.models || []) modelSel.append(option(m.id, m.label, m.id === o.model && o.showModel));
      const modelDs = h("select", { id: `${id}-model-ds` });
      for (const d of ds) modelDs.append(option(d.id, d.name, d.id === (o.modelDataset || o.imagery)));
      const suggBox = h("input", { type: "checkbox", id: `${id}-sugg`, checked: true });
      this.suggCount = h("span", { class: "muted", id: `${id}-sugg-count` });
      this.el = { imgSel, bandSel, modeSel, autoBox, sMin, sMax, predSel, opacity, modelSel, modelDs, suggBox };

      const lab = (forId, text) => h("label", { for: forId }, text);
      const imagery = h("fieldset", { class: "map-group" }, h("legend", {}, "Imagery"),
        h("div", { class: "row" }, lab(imgSel.id, "Dataset"), imgSel),
        h("div", { class: "row" }, lab(modeSel.id, "Display"), modeSel),
        h("div", { class: "row bands" },
          lab(bandSel[0].id, "Red"), bandSel[0], lab(bandSel[1].id, "Green"), bandSel[1], lab(bandSel[2].id, "Blue"), bandSel[2]),
        h("div", { class: "row" }, autoBox, lab(autoBox.id, "Automatic stretch (2–98 % of each band)")),
        h("div", { class: "row stretch" }, lab(sMin.id, "Stretch min"), sMin, lab(sMax.id, "max"), sMax));
      const prediction = h("fieldset", { class: "map-group" }, h("legend", {}, "Predicted classes"),
        h("div", { class: "row" }, lab(predSel.id, "Result"), predSel),
        h("div", { class: "row" }, lab(opacity.id, "Opacity"), opacity));
      const model = h("fieldset", { class: "map-group" }, h("legend", {}, "Tile inference (live)"),
        h("div", { class: "row" }, lab(modelSel.id, "Model"), modelSel),
        h("div", { class: "row" }, lab(modelDs.id, "on image"), modelDs),
        h("p", { class: "help" }, "Runs the model on each tile you look at (slower than a finished prediction)."));
      this.legendBox = h("div", { class: "legend", id: `${id}-legend`, role: "group", "aria-label": "Class legend" });
      this.info = h("div", { class: "point-info", id: `${id}-info`, role: "status", "aria-live": "polite" },
        "Click the map to see the class and band values at a point.");
      this.mapDiv = h("div", { class: "map", id: `${id}-map`, tabindex: "0", "aria-label": "Map: arrow keys pan, + and - zoom" });
      this.msg = h("div", { class: "map-msg", role: "status", "aria-live": "polite" });
      this.suggGroup = h("fieldset", { class: "map-group", id: `${id}-sugg-group`, hidden: !o.suggestions },
        h("legend", {}, "Windows to label"),
        h("div", { class: "row" }, suggBox, lab(suggBox.id, "Show the suggested windows (rank 1: most useful)")),
        this.suggCount);
      const side = h("div", { class: "map-side" }, imagery, prediction, this.suggGroup, model, this.legendBox);
      const mapCol = h("div", { class: "map-col" }, this.mapDiv, this.msg, this.info);
      this.container.append(h("div", { class: "map-layout" }, mapCol, side));

      if (!window.L) {
        this.noMapLibrary();
        return;
      }
      this.map = window.L.map(this.mapDiv, { zoomControl: true, attributionControl: true, minZoom: 2, maxZoom: 19 });
      this.map.attributionControl.setPrefix("Leaflet");
      this.map.setView([20, 0], 2);
      window.L.control.scale({ imperial: false }).addTo(this.map);
      this.map.on("click", (e) => this.onClick(e.latlng));
      this.fitted = false;

      imgSel.addEventListener("change", () => this.loadImagery());
      modeSel.addEventListener("change", () => this.updateImagery());
      for (const s of bandSel) s.addEventListener("change", () => this.updateImagery());
      autoBox.addEventListener("change", () => {
        sMin.disabled = sMax.disabled = autoBox.checked;
        this.updateImagery();
      });
      for (const s of [sMin, sMax]) s.addEventListener("change", () => this.updateImagery());
      predSel.addEventListener("change", () => this.loadPrediction());
      opacity.addEventListener("input", () => {
        const v = Number(opacity.value) / 100;
        opacity.setAttribute("aria-valuetext", `${opacity.value} %`);
        for (const k of ["prediction", "model"]) if (this.layers[k]) this.layers[k].setOpacity(v);
      });
      modelSel.addEventListener("change", () => this.loadModel());
      modelDs.addEventListener("change", () => this.loadModel());
      suggBox.addEventListener("change", () => this.loadSuggestions());

      this.loadImagery();
      this.loadSuggestions();
      this.loadPrediction();
      if (o.showModel) this.loadModel();
    }

    say(text, kind) {
      this.msg.textContent = text || "";
      this.msg.className = `map-msg ${kind || ""}`;
    }

    // without the map library: say so, and still show the whole predicted map as one picture
    async noMapLibrary() {
      this.mapDiv.classList.add("nomap");
      this.mapDiv.textContent = "The map library is not installed, so there is no interactive map. ";
      const p = (this.opts.predictions || [])[this.opts.prediction ?? -1];
      if (!p || !p.entry.links.preview) return;
      try {
        const r = await api.raw(api.path(p.entry.links.preview));
        const img = h("img", { class: "preview", alt: `Predicted classes of ${p.label} (whole image)` });
        img.src = URL.createObjectURL(await r.blob());
        this.mapDiv.append(img);
        await this.showLegend("prediction", p);
      } catch (e) {
        this.say(`Preview unavailable: ${e.message}`, "error");
      }
    }

    fit(tj) {
      const b = boundsOf(tj);
      if (b && !this.fitted) {
        this.map.fitBounds(b);
        this.fitted = true;
      }
    }

    async loadImagery() {
      const im = this.imageries.find((x) => x.key === this.el.imgSel.value);
      this.imageryInfo = null;
      if (!im) { this.setLayer("imagery", null); return; }
      try {
        const info = await api.json(`${im.base}/info`);
        info.base = im.base;
        this.imageryInfo = info;
        const { bandSel, modeSel } = this.el;
        const def = info.default_bidx;
        bandSel.forEach((s, i) => {
          s.textContent = "";
          info.band_names.forEach((n, j) => s.append(option(String(j + 1), n === `band ${j + 1}` ? String(j + 1) : `${j + 1} (${n})`, j + 1 === (def[i] ?? def[0]))));
        });
        modeSel.value = def.length === 3 ? "rgb" : "grey";
        const pct = info.percentiles.bands;
        this.el.sMin.value = String(Number(Math.min(...def.map((b) => pct[b - 1][0])).toPrecision(4)));
        this.el.sMax.value = String(Number(Math.max(...def.map((b) => pct[b - 1][1])).toPrecision(4)));
        this.updateImagery();
      } catch (e) {
        this.say(`Imagery: ${e.message}`, "error");
      }
    }

    updateImagery() {
      const info = this.imageryInfo;
      if (!info || !this.map) return;
      const { bandSel, modeSel, autoBox, sMin, sMax } = this.el;
      const grey = modeSel.value === "grey";
      bandSel[1].disabled = bandSel[2].disabled = grey;
      const bidx = (grey ? [bandSel[0]] : bandSel).map((s) => s.value).join(",");
      let q = `bidx=${bidx}`;
      if (!autoBox.checked) {
        const lo = Number(sMin.value), hi = Number(sMax.value);
        if (!(Number.isFinite(lo) && Number.isFinite(hi) && hi > lo)) {
          this.say("Stretch: give a min below the max.", "error");
          return;
        }
        q += `&rescale=${lo},${hi}`;
      }
      this.say("");
      api.json(`${info.base}/WebMercatorQuad/tilejson.json?${q}`).then((tj) => {
        this.setLayer("imagery", this.tileLayer(tj, { zIndex: 1, className: "layer-imagery" }));
        this.fit(tj);
      }).catch((e) => this.say(`Imagery: ${e.message}`, "error"));
    }

    tileLayer(tj, extra) {
      const Cls = authLayerClass();
      const layer = new Cls(api.path(tj.tiles[0]), Object.assign({
        bounds: boundsOf(tj), maxNativeZoom: tj.maxzoom, minNativeZoom: tj.minzoom, maxZoom: 19, tileSize: 256,
      }, extra || {}));
      layer.on("ga:tilefail", (ev) => {
        if (ev.error && ev.error.status && ev.error.status !== 404) this.say(`Some tiles failed: ${ev.error.message}`, "error");
      });
      return layer;
    }

    setLayer(kind, layer) {
      if (this.layers[kind]) this.map.removeLayer(this.layers[kind]);
      this.layers[kind] = layer;
      if (layer) layer.addTo(this.map);
    }

    async loadPrediction() {
      const i = this.el.predSel.value;
      const p = i === "" ? null : this.opts.predictions[Number(i)];
      this.prediction = p;
      if (!p) { this.setLayer("prediction", null); this.showLegend("prediction", null); return; }
      // a prediction is shown over the scene it was made from, never over unrelated imagery
      const sel = this.el.imgSel;
      if (p.imagery && sel.value !== p.imagery && this.imageries.some((x) => x.key === p.imagery)) {
        sel.value = p.imagery;
        this.loadImagery();
      }
      try {
        const tj = await api.json(api.path(p.entry.links.tilejson));
        // nearest-neighbour look beyond the COG's own zooms: classes must not blur
        this.setLayer("prediction", this.tileLayer(tj, { zIndex: 5, opacity: Number(this.el.opacity.value) / 100, className: "layer-prediction" }));
        this.fit(tj);
        await this.showLegend("prediction", p);
      } catch (e) {
        this.say(`Prediction: ${e.message}`, "error");
      }
    }

    // a suggest job's windows: outlines with their rank, over whatever imagery is shown
    async loadSuggestions() {
      const s = this.opts.suggestions;
      this.suggGroup.hidden = !s;
      if (!s || !this.el.suggBox.checked) { this.setLayer("suggestions", null); this.suggCount.textContent = ""; return; }
      try {
        const fc = await api.json(api.path(s.url));
        const feats = fc.features || [];
        this.suggCount.textContent = `${feats.length} windows`;
        if (!this.map) return;
        const layer = window.L.geoJSON(fc, {
          style: { color: "#ff00ff", weight: 2, fill: true, fillOpacity: 0.05, className: "layer-suggestion" },
          onEachFeature: (f, l) => {
            const p = f.properties || {};
            const dis = p.disagreement === null || p.disagreement === undefined ? "" : `, disagreement ${Number(p.disagreement).toFixed(3)}`;
            l.bindTooltip(`#${p.rank}: score ${Number(p.score).toFixed(3)}, entropy ${Number(p.entropy).toFixed(3)}${dis}`);
          },
        });
        this.setLayer("suggestions", layer);
        if (!this.fitted && feats.length) {
          this.map.fitBounds(layer.getBounds());
          this.fitted = true;
        }
      } catch (e) {
        this.say(`Suggested windows: ${e.message}`, "error");
      }
    }

    setSuggestions(s) {
      this.opts.suggestions = s;
      this.loadSuggestions();
    }

    async classesOf(p) {
      const key = p.entry.links.info;
      if (!this.infoCache[key]) this.infoCache[key] = api.json(api.path(key));
      return (await this.infoCache[key]).classes || [];
    }

    async loadModel() {
      const m = this.el.modelSel.value, d = this.el.modelDs.value;
      if (!m || !d || !this.map) { this.setLayer("model", null); this.showLegend("model", null); return; }
      try {
        const tj = await api.json(`v1/models/${m}/WebMercatorQuad/tilejson.json?dataset=${encodeURIComponent(d)}`);
        this.setLayer("model", this.tileLayer(tj, { zIndex: 6, minZoom: tj.minzoom, opacity: Number(this.el.opacity.value) / 100, className: "layer-model" }));
        this.fit(tj);
        if (this.map.getZoom() < tj.minzoom) this.map.setZoom(tj.minzoom);
        const model = (this.opts.models || []).find((x) => x.id === m);
        this.showLegend("model", model ? { label: model.label, classes: model.classes } : null);
      } catch (e) {
        this.say(`Tile inference: ${e.message}`, "error");
      }
    }

    async showLegend(kind, p) {
      this.legends[kind] = null;
      if (p) {
        try {
          this.legends[kind] = { label: p.label, classes: p.classes || (await this.classesOf(p)) };
        } catch (e) {
          this.say(`Legend: ${e.message}`, "error");
        }
      }
      const box = this.legendBox;
      box.textContent = "";
      const key = (lg) => JSON.stringify(lg.classes.map((c) => [Number(c.id), c.name, String(c.color).toLowerCase()]));
      const same = (a, b) => a && b && key(a) === key(b);
      for (const k of ["prediction", "model"]) {
        const lg = this.legends[k];
        if (!lg) continue;
        // tile inference with the classes the prediction already shows: one legend says it all
        if (k === "model" && same(lg, this.legends.prediction)) continue;
        box.append(h("h3", {}, k === "prediction" ? "Classes" : "Classes (tile inference)"));
        const ul = h("ul", { class: "class-legend", "data-kind": k });
        for (const c of lg.classes) {
          const sw = h("span", { class: "swatch", "aria-hidden": "true" });
          sw.style.background = c.color;
          ul.append(h("li", { "data-class-id": String(c.id) }, sw, h("span", {}, c.name)));
        }
        box.append(ul);
      }
    }

    async onClick(latlng) {
      const lon = latlng.lng.toFixed(6), lat = latlng.lat.toFixed(6);
      const parts = [h("strong", {}, `${lat}, ${lon}`)];
      const jobs = [];
      if (this.prediction && this.layers.prediction) {
        const url = api.path(this.prediction.entry.links.info).replace(/\/info(\?.*)?$/, `/point/${lon},${lat}`);
        jobs.push(api.json(url).then((pt) => {
          const c = pt.class;
          const line = h("div", { class: "pt-class" });
          if (c) {
            const sw = h("span", { class: "swatch", "aria-hidden": "true" });
            sw.style.background = c.color;
            line.append("Class: ", sw, h("span", { class: "pt-class-name" }, c.name));
          } else line.append("Class: no prediction here");
          parts.push(line);
          if (pt.probabilities) {
            const ul = h("ul", { class: "probs" });
            for (const [name, p] of Object.entries(pt.probabilities).sort((a, b) => b[1] - a[1])) {
              ul.append(h("li", {}, `${name}: ${(p * 100).toFixed(1)} %`));
            }
            parts.push(h("div", {}, "Probabilities:"), ul);
          }
        }).catch((e) => parts.push(h("div", {}, `Class: ${e.status === 404 ? "outside the result" : e.message}`))));
      }
      if (this.imageryInfo && this.layers.imagery) {
        const info = this.imageryInfo;
        jobs.push(api.json(`${info.base}/point/${lon},${lat}`).then((pt) => {
          const vals = pt.values.map((v, i) => `${info.band_names[i]} ${v === null ? "–" : window.geoadaptCharts.fmt(v)}`);
          parts.push(h("div", { class: "pt-bands" }, `Bands: ${vals.join(", ")}`));
        }).catch((e) => parts.push(h("div", {}, `Bands: ${e.status === 404 ? "outside the image" : e.message}`))));
      }
      if (!jobs.length) parts.push(h("div", {}, "Show imagery or a predicted result to query a point."));
      await Promise.all(jobs);
      this.info.textContent = "";
      this.info.append(...parts);
      if (this.map) {
        const pop = h("div", {});
        pop.append(...parts.map((n) => n.cloneNode(true)));
        window.L.popup().setLatLng(latlng).setContent(pop).openOn(this.map);
      }
    }

    // a job that has just finished: its results join the map that was showing its imagery
    setResults(predictions, models, select) {
      this.opts.predictions = predictions;
      this.opts.models = models;
      const { predSel, modelSel } = this.el;
      const keepModel = modelSel.value;
      predSel.textContent = "";
      predSel.append(option("", "none"));
      predictions.forEach((p, i) => predSel.append(option(String(i), p.label, i === select)));
      modelSel.textContent = "";
      modelSel.append(option("", "none"));
      for (const m of models) modelSel.append(option(m.id, m.label, m.id === keepModel));
      if (this.map) this.loadPrediction();
      else this.noMapLibrary();
    }

    destroy() {
      if (this.map) this.map.remove();
      this.map = null;
      this.container.textContent = "";
    }
  }

  window.geoadaptMap = { MapPanel };
})();
