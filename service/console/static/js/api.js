// The console's API client: same origin, bearer token, errors as {status, type, problems[]}.
"use strict";

(function () {
  const KEY = "geoadapt.token";

  class ApiError extends Error {
    constructor(status, type, problems) {
      const first = problems && problems[0];
      super(first ? (first.field ? `${first.field}: ${first.message}` : first.message) : `HTTP ${status}`);
      this.status = status;
      this.type = type;
      this.problems = problems || [];
    }
  }

  const api = {
    ApiError,
    token: null,

    load() {
      try { api.token = window.localStorage.getItem(KEY); } catch (e) { api.token = null; }
      return api.token;
    },
    save(token) {
      api.token = token;
      try { window.localStorage.setItem(KEY, token); } catch (e) { /* private mode: this page only */ }
    },
    forget() {
      api.token = null;
      try { window.localStorage.removeItem(KEY); } catch (e) { /* nothing stored */ }
    },

    headers(extra) {
      const h = Object.assign({}, extra || {});
      if (api.token) h.Authorization = `Bearer ${api.token}`;
      return h;
    },

    // fetch a relative API path; resolves to the Response when ok, else throws ApiError
    async raw(path, opts) {
      const o = Object.assign({}, opts || {});
      o.headers = api.headers(o.headers);
      let r;
      try {
        r = await fetch(path, o);
      } catch (e) {
        if (e && e.name === "AbortError") throw e;
        throw new ApiError(0, "network", [{ field: "", message: "cannot reach the geoadapt API (is the server running?)" }]);
      }
      if (r.ok) return r;
      let body = null;
      try { body = await r.json(); } catch (e) { body = null; }
      let problems = body && Array.isArray(body.detail) ? body.detail : null;
      if (!problems) {
        const msg = body && typeof body.detail === "string" ? body.detail : `${r.status} ${r.statusText || "error"}`;
        problems = [{ field: "", message: msg }];
      }
      const err = new ApiError(r.status, (body && body.type) || "http_error", problems);
      if (r.status === 401) window.dispatchEvent(new CustomEvent("geoadapt:unauthorized", { detail: err }));
      throw err;
    },

    async json(path, opts) {
      const r = await api.raw(path, opts);
      if (r.status === 204) return null;
      return r.json();
    },

    post(path, body, headers) {
      return api.json(path, {
        method: "POST",
        headers: Object.assign({ "Content-Type": "application/json" }, headers || {}),
        body: JSON.stringify(body),
      });
    },

    // a job file (bundle, COG, report) saved through the browser: links need the token, so fetch + blob
    async download(url, filename) {
      const r = await api.raw(url);
      const blob = await r.blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = filename;
      document.body.appendChild(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    },
  };

  // absolute API links (from the server) as paths of this origin, so a proxy's host name does not matter;
  // by text, not through URL(), which would percent-encode the {z}/{x}/{y} of tile templates
  api.path = function (href) {
    return String(href).replace(/^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i, "") || "/";
  };

  window.geoadaptApi = api;
})();
