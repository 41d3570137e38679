// The hpcfutures dashboard: one page, hash routes, JSON from the server (or inlined in a
// snapshot), charts drawn as inline SVG.  No framework and nothing fetched from elsewhere,
// so it works on a cluster's login node with no internet.  Every list comes paged or
// aggregated from the server; the page never holds more than one view's answer.
"use strict";

(function () {
  const CONFIG = JSON.parse(document.getElementById("hpcf-config").textContent);
  const SNAPSHOT = CONFIG.snapshot || null;
  const STATES = ["pending", "queued", "running", "done", "memo_done", "failed", "dep_fail", "cancelled"];
  const STATE_COLORS = {
    pending: "#a0aec0", queued: "#b794f4", running: "#3182ce", done: "#2f9e44",
    memo_done: "#0ca678", failed: "#e03131", dep_fail: "#f08c00", cancelled: "#868e96",
  };
  const OUTCOME_COLORS = { ok: "#2f9e44", error: "#e03131", lost: "#f08c00", walltime: "#9c36b5", cancelled: "#868e96" };
  const BLOCK_COLORS = {
    pending: "#b794f4", queued: "#b794f4", running: "#3182ce", completed: "#2f9e44", done: "#2f9e44",
    failed: "#e03131", cancelled: "#868e96", timeout: "#9c36b5", held: "#f08c00", missing: "#495057", unknown: "#a0aec0",
  };
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PAGE = 50;

  // -- small helpers ----------------------------------------------------------------------

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "onclick" || key === "onchange") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(node, children) {
    if (children === null || children === undefined) return;
    if (!Array.isArray(children)) children = [children];
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function plural(n, word, many) { return `${fmtNum(n)} ${n === 1 ? word : many || word + "s"}`; }

  function sentence(text) {
    const t = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(t) ? t : t + ".";
  }

  function fmtTime(t) {
    if (t === null || t === undefined) return "–";
    const d = new Date(t * 1000);
    const today = new Date();
    const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (d.toDateString() === today.toDateString()) return clock;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock}`;
  }

  function fmtDur(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    if (s < 0) s = 0;
    if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
    return h ? `${h}h ${pad(m)}m ${pad(sec)}s` : `${m}m ${pad(sec)}s`;
  }

  function fmtNum(n) {
    if (n === null || n === undefined) return "–";
    return Number(n).toLocaleString("en-US");
  }

  function fmtRate(r) {
    if (!r) return "0/s";
    return r >= 10 ? `${r.toFixed(0)}/s` : `${r.toFixed(2)}/s`;
  }

  function dur(a, b) { return a === null || a === undefined || b === null || b === undefined ? null : b - a; }

  function badge(state, kind) {
    return el("span", { class: `badge ${kind || "state"}-${state}`, "data-state": state, text: state || "–" });
  }

  function taskLink(run, id, label) {
    return el("a", { href: `#/run/${run}/task/${id}`, "data-task": id, text: label || `#${id}` });
  }

  function section(id, title, children) {
    return el("section", { id, class: "panel" }, [title ? el("h2", { text: title }) : null].concat(children));
  }

  // -- data -------------------------------------------------------------------------------

  // The URL of an API answer, written as the server's snapshot writes it: parameters
  // sorted, empty ones left out.
  function api(path, params) {
    const keys = Object.keys(params || {}).filter((k) => params[k] !== null && params[k] !== undefined && params[k] !== "").sort();
    if (!keys.length) return path;
    return path + "?" + keys.map((k) => `${k}=${encodeURIComponent(String(params[k]))}`).join("&");
  }

  function getJSON(url) {
    if (SNAPSHOT) {
      if (Object.prototype.hasOwnProperty.call(SNAPSHOT, url)) return Promise.resolve(SNAPSHOT[url]);
      return Promise.reject(new Error("This page is not in the snapshot (it keeps the first pages only); " +
        "open the record with hpcfutures monitor serve to see it all."));
    }
    return fetch(url, { headers: { Accept: "application/json" } }).then((response) =>
      response.json().catch(() => ({})).then((body) => {
        if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
        return body;
      }));
  }

  // -- routing ----------------------------------------------------------------------------

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/";
    const [pathPart, queryPart] = raw.split("?");
    const parts = pathPart.split("/").filter(Boolean).map(decodeURIComponent);
    const params = {};
    new URLSearchParams(queryPart || "").forEach((v, k) => { params[k] = v; });
    if (parts[0] !== "run" || parts.length < 2) return { view: "runs", params };
    const route = { run: parts[1], view: parts[2] || "overview", arg: parts[3], params };
    if (route.view === "task" && !route.arg) route.view = "tasks";
    return route;
  }

  const TABS = [
    ["overview", "Overview"], ["stream", "Task stream"], ["tasks", "Tasks"],
    ["failures", "Failures"], ["blocks", "Blocks"], ["pools", "Pools & nodes"],
  ];

  function drawChrome(route) {
    const tabs = document.getElementById("tabs");
    const crumb = document.getElementById("crumb");
    tabs.textContent = "";
    crumb.textContent = "";
    if (route.run === undefined) return;
    crumb.appendChild(el("a", { href: `#/run/${route.run}`, id: "crumb-run", text: `run ${route.run}` }));
    if (route.view === "task") crumb.appendChild(el("span", { text: ` › task ${route.arg}` }));
    for (const [view, label] of TABS) {
      const active = route.view === view || (view === "tasks" && route.view === "task");
      tabs.appendChild(el("a", {
        href: `#/run/${route.run}${view === "overview" ? "" : "/" + view}`,
        id: `tab-${view}`, class: active ? "tab active" : "tab", text: label,
      }));
    }
  }

  let generation = 0;
  let timer = null;

  function render() {
    generation += 1;
    const mine = generation;
    if (timer) { clearTimeout(timer); timer = null; }
    const route = parseHash();
    if (route.view === "runs" && CONFIG.default_run && !location.hash.replace(/^#\/?/, "")) {
      location.replace(`#/run/${CONFIG.default_run}`);
      return;
    }
    document.body.dataset.view = route.view;
    document.body.dataset.ready = "0";
    drawChrome(route);
    load(route, mine, true);
  }

  function load(route, mine, first) {
    const view = VIEWS[route.view];
    const errorBox = document.getElementById("error");
    if (!view) {
      showError(`No such view: ${route.view}`);
      return;
    }
    view(route).then((result) => {
      if (mine !== generation) return; // the user moved on meanwhile
      errorBox.hidden = true;
      const main = document.getElementById("view");
      const scroll = window.scrollY;
      main.replaceChildren(result.node);
      if (!first) window.scrollTo(0, scroll);
      document.body.dataset.ready = "1";
      const live = !!result.live && !SNAPSHOT && CONFIG.poll > 0;
      document.body.dataset.live = live ? "1" : "0";
      document.getElementById("live").replaceChildren(
        live ? el("span", { class: "live-dot", title: "live: refreshing", text: "● live" }) : "");
      document.getElementById("status").textContent = SNAPSHOT
        ? `Snapshot${CONFIG.title ? " of " + CONFIG.title : ""}: the data as it was when exported.`
        : `Updated ${fmtTime(Date.now() / 1000)}${live ? ` · refreshing every ${CONFIG.poll / 1000} s` : ""}`;
      if (live) timer = setTimeout(() => { if (mine === generation) load(route, mine, false); }, CONFIG.poll);
    }).catch((error) => {
      if (mine !== generation) return;
      showError(error.message || String(error));
      document.body.dataset.ready = "1";
    });
  }

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message;
    box.hidden = false;
  }

  window.addEventListener("error", (event) => showError(`Page error: ${event.message}`));
  window.addEventListener("hashchange", render);

  // -- views ------------------------------------------------------------------------------

  const VIEWS = {};

  VIEWS.runs = function () {
    return getJSON("/api/runs").then((data) => {
      if (!data.runs.length) {
        return { node: section("runs", "Runs", [el("p", { class: "muted", text: "No runs recorded here yet." })]) };
      }
      const rows = data.runs.map((r) => el("tr", { "data-run": r.key }, [
        el("td", {}, el("a", { href: `#/run/${r.key}`, text: r.key })),
        el("td", { text: r.family }), el("td", { text: r.kind + (r.label ? ` (${r.label})` : "") }),
        el("td", {}, badge(r.status, "run")), el("td", { text: fmtTime(r.started) }),
        el("td", { text: fmtDur(dur(r.started, r.ended || r.heartbeat)) }),
        el("td", { class: "num", text: fmtNum(r.submitted) }), el("td", { class: "num", text: fmtNum(r.done) }),
        el("td", { class: "num", text: fmtNum(r.failed) }), el("td", { class: "num", text: fmtNum(r.cached) }),
        el("td", { class: "num", text: fmtNum(r.running) }), el("td", { text: r.host || "" }),
      ]));
      const head = ["run", "family", "kind", "status", "started", "duration", "tasks", "done", "failed", "cached", "running", "host"];
      return {
        node: section("runs", "Runs", el("table", { id: "runs-table" }, [
          el("thead", {}, el("tr", {}, head.map((h) => el("th", { text: h })))), el("tbody", {}, rows)])),
        live: data.runs.some((r) => r.status === "running"),
      };
    });
  };

  function stackedBar(counts, total, width, height, id) {
    const node = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "stacked", id, role: "img", preserveAspectRatio: "none" });
    let x = 0;
    for (const state of STATES) {
      const n = counts[state] || 0;
      if (!n || !total) continue;
      const w = (n / total) * width;
      node.appendChild(svg("rect", { x: x.toFixed(2), y: 0, width: Math.max(w, 0.5).toFixed(2), height, fill: STATE_COLORS[state], "data-state": state },
        svg("title", { text: `${state}: ${fmtNum(n)}` })));
      x += w;
    }
    if (!total) node.appendChild(svg("rect", { x: 0, y: 0, width, height, fill: "#e9ecef" }));
    return node;
  }

  function throughputChart(tp) {
    const W = 1180, H = 150, L = 40, B = 20;
    const max = Math.max(1, ...tp.ended);
    const bw = (W - L) / tp.ended.length;
    const node = svg("svg", { id: "throughput-chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
    node.appendChild(svg("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" }));
    node.appendChild(svg("text", { x: L - 4, y: 12, class: "tick", "text-anchor": "end", text: fmtNum(max) }));
    node.appendChild(svg("text", { x: L - 4, y: H - B, class: "tick", "text-anchor": "end", text: "0" }));
    tp.ended.forEach((n, i) => {
      if (!n) return;
      const h = (n / max) * (H - B - 6);
      node.appendChild(svg("rect", {
        x: (L + i * bw + 0.5).toFixed(1), y: (H - B - h).toFixed(1), width: Math.max(bw - 1, 1).toFixed(1), height: h.toFixed(1),
        fill: "#3182ce",
      }, svg("title", { text: `${fmtNum(n)} tasks ended ${fmtTime(tp.start + i * tp.width)}–${fmtTime(tp.start + (i + 1) * tp.width)}` })));
    });
    node.appendChild(svg("text", { x: L, y: H - 4, class: "tick", text: fmtTime(tp.start) }));
    node.appendChild(svg("text", { x: W, y: H - 4, class: "tick", "text-anchor": "end", text: fmtTime(tp.end) }));
    return node;
  }

  VIEWS.overview = function (route) {
    return getJSON(`/api/run/${route.run}/overview`).then((o) => {
      const r = o.run;
      const head = el("div", { class: "runhead" }, [
        el("h1", { id: "run-title", text: `${r.family} · run ${r.run_id}` }),
        badge(r.status, "run"),
        el("span", { class: "muted", text: ` ${r.kind}${r.label ? " " + r.label : ""} on ${r.host || "?"} · started ${fmtTime(r.started)} · ` +
          `${o.live ? "running for" : "took"} ${fmtDur(dur(r.started, r.ended || (o.live ? o.now : r.heartbeat)))} · hpcfutures ${r.version || "?"}` }),
        r.error ? el("p", { class: "error-text", text: r.error }) : null,
      ]);
      const cards = el("div", { class: "counts", id: "counts" }, [
        el("div", { class: "count total", "data-stat": "total", id: "count-total" }, [el("span", { class: "n", text: fmtNum(o.total) }), el("span", { class: "label", text: "tasks" })]),
      ].concat(STATES.map((s) => el("a", {
        class: "count", "data-state": s, id: `count-${s}`, href: `#/run/${route.run}/tasks?state=${s}`,
        style: `border-top-color:${STATE_COLORS[s]}`,
      }, [el("span", { class: "n", text: fmtNum(o.counts[s]) }), el("span", { class: "label", text: s.replace("_", " ") })]))));
      const tries = el("div", { class: "counts small", id: "try-counts" }, [
        ["tries", o.tries, "tries that ended"], ["retries", o.retries, "retried after an error (charged)"],
        ["requeued", o.requeued, "requeued after a lost worker (not charged)"], ["dropped", r.dropped, "samples dropped"],
      ].map(([k, n, label]) => el("div", { class: "count", "data-stat": k, id: `count-${k}` }, [
        el("span", { class: "n", text: fmtNum(n) }), el("span", { class: "label", text: label })])));
      const rate = el("div", { class: "rates" }, [
        el("span", { id: "rate-recent" }, [el("b", { text: fmtRate(o.rate_recent) }), o.live ? " in the last minute" : " in its last minute"]),
        el("span", { id: "capacity" }, [el("b", { text: fmtNum(o.workers) }), ` workers in ${plural(o.pools, "pool")}${o.live ? "" : " at the end"}`]),
        el("span", { id: "rate-overall" }, [el("b", { text: fmtRate(o.rate_overall) }), " over the run"]),
        el("span", { id: "eta" }, o.live
          ? (o.eta !== null ? [el("b", { text: fmtDur(o.eta) }), ` left for ${fmtNum(o.remaining)} tasks (ETA ${fmtTime(o.now + o.eta)})`]
            : [el("b", { text: "ETA unknown" }), o.remaining ? ` (${fmtNum(o.remaining)} tasks left, none ended in the last minute)` : ""])
          : [el("b", { text: "finished" })]),
      ]);
      const funcRows = o.funcs.map((f) => el("tr", { "data-func": f.func }, [
        el("td", {}, f.func === "(others)" ? f.func : el("a", { href: `#/run/${route.run}/tasks?func=${encodeURIComponent(f.func)}`, text: f.func })),
        el("td", {}, stackedBar(f.counts, f.total, 360, 14)),
        el("td", { class: "num", text: fmtNum(f.total) }),
        el("td", { class: "num", text: fmtNum(f.counts.done || 0) }),
        el("td", { class: "num", text: fmtNum(f.counts.failed || 0) }),
      ]));
      const node = el("div", { id: "overview", "data-run": route.run }, [
        head,
        section("progress", null, [cards, stackedBar(o.counts, o.total, 960, 18, "progress-bar"), tries,
          o.behind != null ? el("p", { id: "behind", class: "muted", text: `The counts are current; the task rows are ${fmtDur(o.behind)} ` +
            "behind them: the executor is busy, and the record writes them when it calms down." }) : null]),
        section("throughput", "Throughput", [rate, throughputChart(o.throughput)]),
        section("funcs", "By function", el("table", { id: "funcs-table" }, [
          el("thead", {}, el("tr", {}, ["function", "states", "tasks", "done", "failed"].map((h) => el("th", { text: h })))),
          el("tbody", {}, funcRows)])),
        legend(STATE_COLORS),
      ]);
      return { node, live: o.live };
    });
  };

  function legend(colors) {
    return el("div", { class: "legend" }, Object.entries(colors).map(([k, c]) =>
      el("span", {}, [el("i", { style: `background:${c}` }), k.replace("_", " ")])));
  }

  // The stream view keeps the tries it has seen, so that a poll asks only for new ones.
  const streamCache = { run: null, tries: new Map(), cursor: null };

  VIEWS.stream = function (route) {
    if (streamCache.run !== route.run) {
      streamCache.run = route.run; streamCache.tries = new Map(); streamCache.cursor = null;
    }
    const url = api(`/api/run/${route.run}/stream`, { since: streamCache.cursor });
    return getJSON(url).then((s) => {
      let body;
      if (s.mode === "heatmap") {
        streamCache.tries = new Map(); streamCache.cursor = null;
        body = heatmapChart(route, s);
      } else {
        // [lane, task, try, func, start, end, outcome]; lanes are indices into this answer's list
        for (const row of s.tries) streamCache.tries.set(`${row[1]}:${row[2]}`, [s.lanes[row[0]]].concat(row.slice(1)));
        if (s.until !== null && s.until !== undefined) streamCache.cursor = s.until;
        body = streamChart(route, s, Array.from(streamCache.tries.values()));
      }
      const note = el("p", { class: "muted", id: "stream-note" }, s.mode === "heatmap"
        ? `${fmtNum(s.total)} tries: how many ended per ${s.by} every ${fmtDur(s.width)} (darker is more, red is failed); ` +
          `past 5,000 tries the stream is drawn as a heatmap.${s.running ? ` ${fmtNum(s.running)} running now.` : ""}`
        : `${fmtNum(s.total)} tries, one bar each in the lane of the worker that ran it; click one for its task.` +
          `${s.running ? ` ${fmtNum(s.running)} running now.` : ""}`);
      const node = el("div", { id: "stream", "data-mode": s.mode }, [
        section("stream-panel", "Task stream", [note, body, legend(s.mode === "heatmap" ? {} : OUTCOME_COLORS)])]);
      return { node, live: s.live };
    });
  };

  function streamChart(route, s, tries) {
    const lanes = Array.from(new Set(tries.map((t) => t[0]))).sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
    const shown = lanes.slice(0, 300);
    const index = new Map(shown.map((lane, i) => [lane, i]));
    const L = 140, W = 1180, LH = 14, T = 4;
    const H = T + Math.max(shown.length, 1) * LH + 22;
    const span = Math.max(s.end - s.start, 1e-6);
    const x = (t) => L + ((t - s.start) / span) * (W - L - 4);
    const node = svg("svg", { id: "stream-chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
    shown.forEach((lane, i) => {
      if (i % 2) node.appendChild(svg("rect", { x: L, y: T + i * LH, width: W - L, height: LH, fill: "#f6f8fa" }));
      node.appendChild(svg("text", { x: L - 6, y: T + i * LH + 11, class: "tick", "text-anchor": "end", text: lane }));
    });
    for (const [lane, task, attempt, func, start, end, outcome] of tries) {
      const i = index.get(lane);
      if (i === undefined || start === null) continue;
      const x0 = x(start), x1 = x(end === null ? s.end : end);
      const rect = svg("rect", {
        x: x0.toFixed(1), y: T + i * LH + 2, width: Math.max(x1 - x0, 1.5).toFixed(1), height: LH - 4,
        fill: OUTCOME_COLORS[outcome] || "#a0aec0", "data-task": task, "data-try": attempt, class: "try",
      }, svg("title", { text: `task ${task} (${func || "?"}) try ${attempt}: ${outcome || "?"}, ${fmtDur(dur(start, end))} on ${lane}` }));
      rect.addEventListener("click", () => { location.hash = `#/run/${route.run}/task/${task}`; });
      node.appendChild(rect);
    }
    node.appendChild(svg("text", { x: L, y: H - 6, class: "tick", text: fmtTime(s.start) }));
    node.appendChild(svg("text", { x: W - 4, y: H - 6, class: "tick", "text-anchor": "end", text: fmtTime(s.end) }));
    const wrap = el("div", { class: "scroll" }, node);
    if (lanes.length > shown.length) wrap.appendChild(el("p", { class: "muted", text: `${lanes.length - shown.length} more lanes not drawn.` }));
    if (!tries.length) wrap.appendChild(el("p", { class: "muted", text: "No try has ended yet." }));
    return wrap;
  }

  function heatmapChart(route, s) {
    const L = 160, W = 1180, LH = 12, T = 4;
    const H = T + Math.max(s.lanes.length, 1) * LH + 22;
    const cw = (W - L - 4) / s.buckets;
    let max = 0;
    for (const lane of s.lanes) for (const v of lane.ended) max = Math.max(max, v);
    max = max || 1;
    const node = svg("svg", { id: "heatmap", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
    s.lanes.forEach((lane, i) => {
      node.appendChild(svg("text", { x: L - 6, y: T + i * LH + 10, class: "tick", "text-anchor": "end", text: lane.lane }));
      lane.ended.forEach((n, j) => {
        if (!n) return;
        const a = (0.15 + 0.85 * Math.min(1, n / max)).toFixed(3);
        const bad = lane.failed[j] / n;
        const fill = bad > 0.5 ? `rgba(224,49,49,${a})` : `rgba(49,130,206,${a})`;
        node.appendChild(svg("rect", {
          x: (L + j * cw).toFixed(1), y: T + i * LH, width: (cw + 0.3).toFixed(1), height: LH - 1, fill, class: "cell",
        }, svg("title", { text: `${lane.lane}, ${fmtTime(s.start + j * s.width)}: ${fmtNum(n)} tries ended, ${fmtNum(lane.failed[j])} failed` })));
      });
    });
    node.appendChild(svg("text", { x: L, y: H - 6, class: "tick", text: fmtTime(s.start) }));
    node.appendChild(svg("text", { x: W - 4, y: H - 6, class: "tick", "text-anchor": "end", text: fmtTime(s.start + s.buckets * s.width) }));
    return el("div", { class: "scroll" }, node);
  }

  VIEWS.tasks = function (route) {
    const p = route.params;
    const offset = Math.max(0, parseInt(p.offset || "0", 10) || 0);
    const query = { state: p.state, func: p.func, offset: offset || null };
    return getJSON(api(`/api/run/${route.run}/tasks`, query)).then((d) => {
      const go = (changes) => {
        const next = Object.assign({ state: p.state, func: p.func, offset: null }, changes);
        location.hash = `#/run/${route.run}/tasks${api("", next)}`;
      };
      const stateSelect = el("select", { id: "filter-state", onchange: (e) => go({ state: e.target.value, offset: null }) },
        [el("option", { value: "", text: "all states" })].concat(STATES.map((s) => el("option", { value: s, text: s, selected: s === d.state }))));
      const funcSelect = el("select", { id: "filter-func", onchange: (e) => go({ func: e.target.value, offset: null }) },
        [el("option", { value: "", text: "all functions" })].concat(d.funcs.map((f) => el("option", { value: f, text: f, selected: f === d.func }))));
      const last = Math.min(d.offset + d.tasks.length, d.total);
      const pageLink = (id, label, to, enabled) => enabled
        ? el("a", { id, class: "button", href: `#/run/${route.run}/tasks${api("", { state: d.state, func: d.func, offset: to || null })}`, text: label })
        : el("span", { id, class: "button disabled", text: label });
      const pager = el("div", { class: "pager", id: "pager" }, [
        pageLink("page-prev", "‹ previous", Math.max(0, d.offset - d.limit), d.offset > 0),
        el("span", { id: "tasks-range", text: d.total ? `${fmtNum(d.offset + 1)}–${fmtNum(last)} of ${fmtNum(d.total)}` : "no tasks" }),
        pageLink("page-next", "next ›", d.offset + d.limit, last < d.total),
      ]);
      const rows = d.tasks.map((t) => el("tr", { "data-task": t.task_id, "data-state": t.state }, [
        el("td", { class: "num" }, taskLink(route.run, t.task_id, String(t.task_id))),
        el("td", { text: t.func || "" }), el("td", { text: t.name || "" }),
        el("td", {}, badge(t.state)), el("td", { class: "num", text: t.tries }),
        el("td", { text: fmtTime(t.submitted) }), el("td", { text: fmtTime(t.started) }),
        el("td", { class: "num", text: fmtDur(t.duration) }), el("td", { text: t.host || "" }),
        el("td", { class: "exc", text: t.exception || "", title: t.exception || null }), el("td", { text: t.cache || "" }),
      ]));
      const table = el("table", { id: "tasks-table", "data-total": d.total }, [
        el("thead", {}, el("tr", {}, ["id", "function", "name", "state", "tries", "submitted", "started", "run time", "host", "exception", "cache"].map((h) => el("th", { text: h })))),
        el("tbody", {}, rows)]);
      const node = el("div", { id: "tasks" }, section("tasks-panel", "Tasks", [
        el("div", { class: "filters" }, [el("label", {}, ["State ", stateSelect]), el("label", {}, ["Function ", funcSelect]), pager]),
        table]));
      return { node, live: isLive() };
    });
  };

  // Whether the run shown is live, as the last overview or stream said; tables poll too.
  let lastLive = false;
  function isLive() { return lastLive; }

  function fact(label, value) {
    return [el("dt", { text: label }), el("dd", {}, value === null || value === undefined || value === "" ? "–" : value)];
  }

  function tail(label, text, cls, attempt) {
    if (!text) return null;
    return el("details", { open: cls === "traceback" }, [
      el("summary", { text: label }),
      el("pre", { class: cls, "data-try": attempt, text }),
    ]);
  }

  function relatives(run, list, total, id, title) {
    const items = list.map((t) => el("li", {}, [taskLink(run, t.task_id), ` ${t.func || ""} `, badge(t.state || "not recorded")]));
    return el("div", { id, class: "relatives" }, [
      el("h3", { text: `${title} (${fmtNum(total)})` }),
      items.length ? el("ul", {}, items) : el("p", { class: "muted", text: "none" }),
      total > list.length ? el("p", { class: "muted", text: `and ${fmtNum(total - list.length)} more` }) : null,
    ]);
  }

  function jsonText(value) {
    if (value === null || value === undefined) return null;
    if (typeof value === "object" && !Object.keys(value).length) return null;
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  VIEWS.task = function (route) {
    return getJSON(`/api/run/${route.run}/task/${route.arg}`).then((d) => {
      const t = d.task;
      const facts = el("dl", { class: "facts", id: "task-facts" }, [].concat(
        fact("function", t.func), fact("name", t.name), fact("executor", t.executor),
        fact("submitted", fmtTime(t.submitted)), fact("started", fmtTime(t.started)), fact("ended", fmtTime(t.ended)),
        fact("run time", fmtDur(t.duration)), fact("tries", String(t.tries)),
        fact("last ran on", [t.host, t.pool, t.worker].some((x) => x !== null && x !== undefined)
          ? `${t.host || "?"} · pool ${t.pool || "?"} · worker ${t.worker ?? "?"}` : null),
        fact("resources", jsonText(d.resources)),
        fact("exception", t.exception ? el("span", { class: "error-text", text: t.exception }) : null)));
      const why = el("section", { id: "why-not-running", class: `panel why why-${d.why.kind}`, "data-kind": d.why.kind }, [
        el("h2", { text: d.why.kind === "waiting" ? "Why is this task not running?" : d.why.kind === "running" ? "Running" : "Not waiting" }),
        el("ul", { id: "why-text" }, d.why.reasons.map((r) => el("li", { text: sentence(r) }))),
        d.why.kind === "waiting" ? el("p", {}, [el("a", { href: `#/run/${route.run}/blocks`, text: "blocks" }), " · ",
          el("a", { href: `#/run/${route.run}/pools`, text: "pools" })]) : null,
      ]);
      const tryRows = [];
      for (const a of d.tries) {
        tryRows.push(el("tr", { "data-try": a.try_no, "data-outcome": a.outcome }, [
          el("td", { class: "num", text: a.try_no }), el("td", {}, badge(a.outcome, "outcome")),
          el("td", { class: "charged", text: a.charged ? "charged" : "requeued" }),
          el("td", { text: fmtTime(a.queued) }), el("td", { text: fmtTime(a.dispatched) }),
          el("td", { text: fmtTime(a.started) }), el("td", { text: fmtTime(a.ended) }),
          el("td", { class: "num", text: fmtDur(dur(a.started, a.ended)) }),
          el("td", { text: a.host || "" }), el("td", { text: a.pool || "" }),
          el("td", { class: "num", text: a.worker === null ? "" : a.worker }), el("td", { class: "num", text: a.pid || "" }),
          el("td", { class: "num", text: a.rss_kb ? `${(a.rss_kb / 1024).toFixed(1)} MB` : "" }),
          el("td", { class: "num", text: a.cpu === null ? "" : fmtDur(a.cpu) }),
          el("td", { class: "num", text: a.exit_code === null ? "" : a.exit_code }),
        ]));
        const extra = [
          a.exception ? el("p", { class: "error-text", text: a.exception }) : null,
          tail(`traceback of try ${a.try_no}`, a.traceback, "traceback", a.try_no),
          tail(`stdout of try ${a.try_no} (tail)`, a.stdout_tail, "stdout", a.try_no),
          tail(`stderr of try ${a.try_no} (tail)`, a.stderr_tail, "stderr", a.try_no),
        ].filter(Boolean);
        if (extra.length) tryRows.push(el("tr", { class: "try-extra", "data-try": a.try_no }, el("td", { colspan: 15 }, extra)));
      }
      const tries = section("tries-panel", `Tries (${d.tries.length})`, d.tries.length
        ? el("div", { class: "scroll" }, el("table", { id: "tries" }, [
          el("thead", {}, el("tr", {}, ["try", "outcome", "counted", "queued", "dispatched", "started", "ended", "run time", "host", "pool", "worker", "pid", "peak RSS", "CPU", "exit"].map((h) => el("th", { text: h })))),
          el("tbody", {}, tryRows)]))
        : el("p", { class: "muted", text: "No try has ended yet." }));
      const cache = section("cache-explanation", "Cache", [
        el("p", { id: "cache-text", "data-decision": t.cache || "" }, [t.cache ? badge(t.cache, "cache") : null, " ", d.cache_explained]),
        d.cache_key ? el("p", { class: "muted" }, ["key ", el("code", { text: d.cache_key })]) : null,
      ]);
      const node = el("div", { id: "task-detail", "data-task": t.task_id, "data-state": t.state }, [
        el("div", { class: "runhead" }, [el("h1", { text: `Task ${t.task_id}` }), el("span", { id: "task-state" }, badge(t.state)),
          el("span", { class: "muted", text: ` ${t.func || ""}` })]),
        el("div", { class: "columns" }, [section("task-panel", null, facts), why]),
        tries,
        cache,
        section("graph", "Dependencies", el("div", { class: "columns" }, [
          relatives(route.run, d.parents, d.parents_total, "parents", "Parents"),
          relatives(route.run, d.children, d.children_total, "children", "Children")])),
      ]);
      return { node, live: d.why.kind !== "ended" && isLive() };
    });
  };

  VIEWS.failures = function (route) {
    return getJSON(`/api/run/${route.run}/failures`).then((f) => {
      const groups = f.groups.map((g) => el("div", { class: "failure-group panel", "data-exception": g.exception_type, "data-count": g.count }, [
        el("h3", {}, [el("span", { class: "exc-name", text: g.signature }), el("span", { class: "count-pill", text: fmtNum(g.count) })]),
        el("p", { class: "muted", text: `in ${g.funcs.join(", ")}` }),
        g.example && g.example !== g.signature ? el("p", { class: "error-text", text: g.example }) : null,
        el("p", {}, ["Tasks: "].concat(g.task_ids.map((id) => [taskLink(route.run, id), " "]).flat(),
          g.count > g.task_ids.length ? [el("a", { href: `#/run/${route.run}/tasks?state=failed`, text: `and ${fmtNum(g.count - g.task_ids.length)} more` })] : [])),
        tail(`traceback of task ${g.task_ids[0]}`, g.traceback, "traceback", null),
      ]));
      const tryRows = f.tries.map((t) => el("tr", { "data-outcome": t.outcome }, [
        el("td", {}, badge(t.outcome, "outcome")), el("td", { text: t.exception }), el("td", { class: "num", text: fmtNum(t.count) }),
        el("td", { class: "num", text: fmtNum(t.charged) }), el("td", { class: "num", text: fmtNum(t.requeued) }),
        el("td", {}, taskLink(route.run, t.example)),
      ]));
      const node = el("div", { id: "failures", "data-failed": f.failed }, [
        section("failure-groups", `Failed tasks (${fmtNum(f.failed)}), by exception`, [].concat(
          groups.length ? groups : [el("p", { class: "muted", id: "no-failures", text: "No task failed." })],
          f.more_groups ? [el("p", { class: "muted", text: `and ${fmtNum(f.more_groups)} smaller groups` })] : [],
          f.dep_fail ? [el("p", { id: "dep-fail" }, [el("a", { href: `#/run/${route.run}/tasks?state=dep_fail`, text: plural(f.dep_fail, "task") }),
            " did not run because a dependency failed."])] : [])),
        section("failed-tries", "Failed tries, by outcome", tryRows.length
          ? el("table", { id: "failed-tries-table" }, [
            el("thead", {}, el("tr", {}, ["outcome", "exception", "tries", "charged", "requeued", "example"].map((h) => el("th", { text: h })))),
            el("tbody", {}, tryRows)])
          : el("p", { class: "muted", text: "No try failed." })),
      ]);
      return { node, live: isLive() };
    });
  };

  function blockTimeline(b, end) {
    const W = 320, H = 14;
    const node = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "timeline", role: "img" });
    const h = b.history;
    if (!h.length) return node;
    const t0 = h[0].at, t1 = Math.max(end, h[h.length - 1].at + 1e-3);
    h.forEach((s, i) => {
      const a = h[i].at, z = i + 1 < h.length ? h[i + 1].at : t1;
      const key = (s.state || "unknown").toLowerCase();
      node.appendChild(svg("rect", {
        x: ((a - t0) / (t1 - t0) * W).toFixed(1), y: 0, width: Math.max((z - a) / (t1 - t0) * W, 1).toFixed(1), height: H,
        fill: BLOCK_COLORS[key] || "#a0aec0",
      }, svg("title", { text: `${s.state}${s.raw_state ? " (" + s.raw_state + ")" : ""} from ${fmtTime(a)} for ${fmtDur(z - a)}` })));
    });
    return node;
  }

  VIEWS.blocks = function (route) {
    return getJSON(`/api/run/${route.run}/blocks`).then((d) => {
      const now = Date.now() / 1000;
      const rows = d.blocks.map((b) => {
        const end = ["running", "pending", "queued", "held"].includes((b.state || "").toLowerCase()) ? now : (b.updated || now);
        return el("tr", { "data-block": b.block_id, "data-executor": b.executor, "data-state": b.state }, [
          el("td", { text: b.executor }), el("td", { class: "num", text: b.block_id }), el("td", { text: b.job_id || "" }),
          el("td", { class: "state" }, badge(b.state, "block")), el("td", { text: b.raw_state || "" }),
          el("td", { text: b.reason || "" }), el("td", { text: fmtTime(b.submitted) }), el("td", { text: fmtTime(b.updated) }),
          el("td", {}, [blockTimeline(b, end), el("ol", { class: "history" }, b.history.map((s) =>
            el("li", { "data-state": s.state }, `${fmtTime(s.at)} ${s.state}${s.raw_state ? " (" + s.raw_state + ")" : ""}${s.reason ? ": " + s.reason : ""}`)))]),
          el("td", {}, b.pools.map((p) => el("div", { text: p }))),
        ]);
      });
      const states = Object.entries(d.states).map(([s, n]) => el("span", { class: "state-count", "data-state": s }, [badge(s, "block"), ` ${fmtNum(n)} `]));
      const node = el("div", { id: "blocks" }, section("blocks-panel", `Blocks (${fmtNum(d.total)})`, d.blocks.length
        ? [el("p", { id: "block-states" }, states), el("div", { class: "scroll" }, el("table", { id: "blocks-table" }, [
          el("thead", {}, el("tr", {}, ["executor", "block", "job id", "state", "scheduler says", "reason", "submitted", "updated", "history", "pools"].map((h) => el("th", { text: h })))),
          el("tbody", {}, rows)]))]
        : el("p", { class: "muted", id: "no-blocks", text: "This run submitted no block (its workers are local, or it has no provider)." })));
      return { node, live: isLive() };
    });
  };

  function meter(value, max, color) {
    const W = 80, H = 10;
    const f = max ? Math.min(1, Math.max(0, value / max)) : 0;
    return svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "meter" }, [
      svg("rect", { x: 0, y: 0, width: W, height: H, fill: "#e9ecef" }),
      svg("rect", { x: 0, y: 0, width: (f * W).toFixed(1), height: H, fill: color }),
    ]);
  }

  function samplesChart(s) {
    const W = 1180, H = 140, L = 40, B = 20;
    const node = svg("svg", { id: "samples-chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
    node.appendChild(svg("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" }));
    const span = Math.max(s.end - s.start, 1e-6);
    const x = (t) => L + ((t - s.start) / span) * (W - L - 6);
    const y = (v) => H - B - (Math.min(100, Math.max(0, v)) / 100) * (H - B - 6);
    const lines = [["cpu_percent", "#3182ce", "CPU %"], ["mem_percent", "#e8590c", "memory %"]];
    for (const [key, color] of lines) {
      const pts = s.series.filter((p) => p[key] !== null).map((p) => `${x(p.at).toFixed(1)},${y(p[key]).toFixed(1)}`);
      if (pts.length) node.appendChild(svg("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 2, "data-series": key }));
    }
    const busy = s.series.filter((p) => p.workers).map((p) => `${x(p.at).toFixed(1)},${y((100 * p.busy) / p.workers).toFixed(1)}`);
    if (busy.length) node.appendChild(svg("polyline", { points: busy.join(" "), fill: "none", stroke: "#2f9e44", "stroke-width": 2, "stroke-dasharray": "4 3", "data-series": "busy" }));
    node.appendChild(svg("text", { x: L - 4, y: 12, class: "tick", "text-anchor": "end", text: "100%" }));
    node.appendChild(svg("text", { x: L, y: H - 4, class: "tick", text: fmtTime(s.start) }));
    node.appendChild(svg("text", { x: W - 4, y: H - 4, class: "tick", "text-anchor": "end", text: fmtTime(s.end) }));
    return el("div", {}, [node, legend({ "CPU %": "#3182ce", "memory %": "#e8590c", "busy workers %": "#2f9e44" })]);
  }

  VIEWS.pools = function (route) {
    return Promise.all([getJSON(`/api/run/${route.run}/pools`), getJSON(`/api/run/${route.run}/samples`)]).then(([d, s]) => {
      const poolRows = d.pools.map((p) => el("tr", { "data-pool": p.pool_id, "data-lost": p.lost ? "1" : "0" }, [
        el("td", { text: p.executor }), el("td", { text: p.pool_id }), el("td", { text: p.block_id ?? "" }),
        el("td", { text: p.host || "" }), el("td", { class: "num", text: p.pid || "" }), el("td", { class: "num", text: p.workers ?? "" }),
        el("td", { text: fmtTime(p.registered) }), el("td", {}, p.lost ? badge("lost", "pool") : badge("connected", "pool")),
        el("td", { text: p.lost ? `${fmtTime(p.lost)}${p.reason ? ": " + p.reason : ""}` : "" }),
      ]));
      const nodeRows = d.nodes.map((n) => el("tr", { "data-host": n.host || "", "data-pool": n.pool_id || "" }, [
        el("td", { text: n.host || "?" }), el("td", { text: n.pool_id || "" }), el("td", { text: fmtTime(n.at) }),
        el("td", {}, [meter(n.cpu_percent || 0, 100, "#3182ce"), ` ${n.cpu_percent === null ? "–" : n.cpu_percent.toFixed(0) + "%"}`]),
        el("td", { class: "num", text: n.load1 === null ? "–" : n.load1.toFixed(2) }),
        el("td", {}, [meter(n.mem_percent || 0, 100, "#e8590c"), ` ${n.mem_percent === null ? "–" : n.mem_percent.toFixed(0) + "%"}`]),
        el("td", { class: "num", text: n.rss_mb === null ? "–" : `${n.rss_mb.toFixed(0)} MB` }),
        el("td", {}, [meter(n.busy || 0, n.workers || 0, "#2f9e44"), ` ${n.busy ?? "–"}/${n.workers ?? "–"}`]),
      ]));
      const node = el("div", { id: "pools" }, [
        section("pools-panel", `Worker pools: ${fmtNum(d.active)} connected of ${fmtNum(d.total)}, ${fmtNum(d.workers)} workers`, poolRows.length
          ? el("div", { class: "scroll" }, el("table", { id: "pools-table" }, [
            el("thead", {}, el("tr", {}, ["executor", "pool", "block", "host", "pid", "workers", "joined", "status", "lost"].map((h) => el("th", { text: h })))),
            el("tbody", {}, poolRows)]))
          : el("p", { class: "muted", text: "No worker pool registered (threads and processes have none)." })),
        section("nodes-panel", "Nodes (latest sample)", nodeRows.length
          ? el("div", { class: "scroll" }, el("table", { id: "nodes-table" }, [
            el("thead", {}, el("tr", {}, ["host", "pool", "sampled", "CPU", "load", "memory", "RSS", "busy workers"].map((h) => el("th", { text: h })))),
            el("tbody", {}, nodeRows)]))
          : el("p", { class: "muted", text: "No node sample recorded." })),
        s.count ? section("samples-panel", "Over time", samplesChart(s)) : null,
      ]);
      return { node, live: isLive() };
    });
  };

  // Views other than the overview learn whether the run is live from the runs list, once.
  const plainViews = ["tasks", "task", "failures", "blocks", "pools"];
  for (const name of plainViews) {
    const inner = VIEWS[name];
    VIEWS[name] = function (route) {
      return getJSON("/api/runs").then((runs) => {
        const run = runs.runs.find((r) => String(r.key) === String(route.run));
        lastLive = !!run && !!run.live;
        return inner(route);
      });
    };
  }

  render();
})();
