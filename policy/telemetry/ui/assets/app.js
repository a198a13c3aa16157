// Bowline policyd dashboard: polls /v1/graph and /v1/signals and draws them.
// No dependencies, no build step. All text goes through textContent.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const POLL_MS = 2000;
  const NODE_W = 136, NODE_H = 46, ROW_GAP = 96, MIN_COL_GAP = 290, PAD = 24, ARC = 70;

  const $ = (id) => document.getElementById(id);
  const windowSel = $("window");
  const statusEl = $("status");
  let failures = 0;
  let updates = 0;
  let timer = null;
  let busy = false;

  // ---- formatting ----------------------------------------------------
  function fmtRate(v) {
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }
  function fmtPct(r) {
    const p = r * 100;
    if (p === 0) return "0%";
    if (p < 0.1) return "<0.1%";
    return (p < 10 ? p.toFixed(1) : p.toFixed(0)) + "%";
  }
  function fmtMs(v) {
    if (!v) return "–";
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + " s";
    if (v >= 10) return v.toFixed(0) + " ms";
    return v.toFixed(1) + " ms";
  }
  function fmtBytes(v) {
    const u = ["B", "kB", "MB", "GB"];
    let i = 0;
    while (v >= 1000 && i < u.length - 1) { v /= 1000; i++; }
    return (v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + u[i];
  }
  function fmtTime(s) {
    const d = new Date(s);
    return isNaN(d) ? s : d.toLocaleTimeString([], { hour12: false });
  }
  function nodeLabel(n) {
    if (n.id === "unknown") return "unknown";
    return n.service;
  }
  function severity(e) {
    if (e.error_ratio >= 0.05) return "bad";
    if (e.error_ratio >= 0.01) return "warn";
    return "ok";
  }

  // ---- DOM helpers ----------------------------------------------------
  function el(name, attrs, text) {
    const e = document.createElement(name);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svgEl(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // ---- status -----------------------------------------------------------
  function setStatus(state, text) {
    statusEl.dataset.state = state;
    if (statusEl.textContent !== text) statusEl.textContent = text;
    document.body.classList.toggle("stale", state === "stale");
  }

  // ---- graph layout -----------------------------------------------------
  // Columns by the longest path from a node without callers (bounded, so
  // cycles end), rows by name within a column.
  function layout(nodes, edges) {
    const depth = new Map(nodes.map((n) => [n.id, 0]));
    for (let i = 0; i < nodes.length; i++) {
      let changed = false;
      for (const e of edges) {
        if (e.source === e.destination || !depth.has(e.source) || !depth.has(e.destination)) continue;
        const d = Math.min(depth.get(e.source) + 1, nodes.length - 1);
        if (d > depth.get(e.destination)) { depth.set(e.destination, d); changed = true; }
      }
      if (!changed) break;
    }
    const cols = [];
    for (const n of nodes) {
      const c = depth.get(n.id);
      (cols[c] = cols[c] || []).push(n);
    }
    const dense = cols.filter(Boolean);
    dense.forEach((c) => c.sort((a, b) => a.id.localeCompare(b.id)));
    const svg = $("graph");
    const avail = Math.max(svg.clientWidth || 800, 400);
    const gap = dense.length > 1 ? Math.max(MIN_COL_GAP, (avail - 2 * PAD - NODE_W) / (dense.length - 1)) : 0;
    const rows = Math.max(1, ...dense.map((c) => c.length));
    const pos = new Map();
    dense.forEach((col, ci) => {
      const offset = ((rows - col.length) * ROW_GAP) / 2;
      col.forEach((n, ri) => {
        pos.set(n.id, { x: PAD + ci * gap, y: PAD + 12 + offset + ri * ROW_GAP, col: ci });
      });
    });
    const width = Math.max(avail, PAD * 2 + NODE_W + gap * (dense.length - 1));
    const height = PAD * 2 + 24 + rows * ROW_GAP + ARC;
    // Edges that skip columns arc over the nodes: leave room above.
    for (const p of pos.values()) p.y += ARC;
    return { pos, width, height };
  }

  function drawGraph(g) {
    const svg = $("graph");
    const nodesG = $("nodes"), edgesG = $("edges"), labelsG = $("edge-labels");
    clear(nodesG); clear(edgesG); clear(labelsG);
    $("graph-empty").hidden = g.nodes.length > 0;
    const { pos, width, height } = layout(g.nodes, g.edges);
    svg.setAttribute("viewBox", `0 0 ${width} ${g.nodes.length ? height : 40}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", g.nodes.length ? height : 40);

    const pairCount = new Map();
    for (const e of g.edges) {
      const a = pos.get(e.source), b = pos.get(e.destination);
      if (!a || !b) continue;
      const pair = e.source + "→" + e.destination;
      const k = pairCount.get(pair) || 0;
      pairCount.set(pair, k + 1);
      const sev = severity(e);
      const tcp = e.protocol === "tcp";
      const line1 = tcp
        ? `${e.connections} conn · ${fmtBytes(e.bytes_per_second)}/s`
        : `${fmtRate(e.rate)} rps · ${fmtPct(e.error_ratio)} err`;
      const line2 = tcp
        ? `mTLS ${fmtPct(e.mtls)}`
        : `p99 ${fmtMs(e.p99_ms)} · mTLS ${fmtPct(e.mtls)}`;
      const spoken = tcp
        ? `${nodeName(g, e.source)} to ${nodeName(g, e.destination)}, TCP: ${e.connections} connections, ${fmtBytes(e.bytes_per_second)} per second, ${fmtPct(e.mtls)} mutual TLS`
        : `${nodeName(g, e.source)} to ${nodeName(g, e.destination)}, ${e.protocol}: ${fmtRate(e.rate)} requests per second, ${fmtPct(e.error_ratio)} errors, 99th percentile ${fmtMs(e.p99_ms)}, ${fmtPct(e.mtls)} mutual TLS`;
      const grp = svgEl("g", {
        class: "edge " + sev, role: "img", "aria-label": spoken,
        "data-source": e.source, "data-destination": e.destination, "data-protocol": e.protocol,
        "data-rate": String(e.rate), "data-error-ratio": String(e.error_ratio), "data-requests": String(e.requests),
      });
      let d, lx, ly;
      if (e.source === e.destination) {
        const x = a.x + NODE_W / 2, y = a.y;
        d = `M ${x - 20} ${y} C ${x - 50} ${y - 60}, ${x + 50} ${y - 60}, ${x + 20} ${y}`;
        lx = x; ly = y - 52;
      } else if (b.col === a.col + 1) {
        const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
        const mx = (x1 + x2) / 2;
        d = `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2 - 2} ${y2}`;
        lx = mx; ly = (y1 + y2) / 2 + k * 34;
      } else if (b.col > a.col) { // skips columns: arc over the nodes between
        const x1 = a.x + NODE_W / 2, y1 = a.y, x2 = b.x + NODE_W / 2, y2 = b.y;
        const top = Math.min(y1, y2) - ARC + 8 + k * 14;
        d = `M ${x1} ${y1} C ${x1} ${top}, ${x2} ${top}, ${x2} ${y2 - 2}`;
        lx = (x1 + x2) / 2; ly = top + 16;
      } else { // back or sideways: below the nodes
        const x1 = a.x + NODE_W / 2, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2, y2 = b.y + NODE_H;
        const dip = Math.max(y1, y2) + 46 + k * 20;
        d = `M ${x1} ${y1} C ${x1} ${dip}, ${x2} ${dip}, ${x2} ${y2 + 2}`;
        lx = (x1 + x2) / 2; ly = dip - 6;
      }
      grp.appendChild(svgEl("path", { d, "marker-end": "url(#arrow)" }));
      const label = svgEl("g", { class: "edge-label " + sev, "aria-hidden": "true" });
      const w = Math.max(line1.length, line2.length) * 6.2 + 12;
      label.appendChild(svgEl("rect", { x: lx - w / 2, y: ly - 16, width: w, height: 32, rx: 4 }));
      label.appendChild(svgEl("text", { x: lx, y: ly - 3, "text-anchor": "middle", class: "rate errors" }, line1));
      label.appendChild(svgEl("text", { x: lx, y: ly + 11, "text-anchor": "middle", class: "latency" }, line2));
      label.setAttribute("data-source", e.source);
      label.setAttribute("data-destination", e.destination);
      labelsG.appendChild(label); // above the nodes
      edgesG.appendChild(grp);
    }

    for (const n of g.nodes) {
      const p = pos.get(n.id);
      const unknown = n.id === "unknown";
      const versions = n.versions && n.versions.length ? n.versions.join(", ") : "version unknown";
      const spoken = unknown ? "unknown callers" : `service ${n.service}, namespace ${n.namespace}, ${versions}`;
      const grp = svgEl("g", {
        class: "node" + (unknown ? " unknown" : ""), role: "img", tabindex: "0",
        "aria-label": spoken, "data-id": n.id, transform: `translate(${p.x},${p.y})`,
      });
      grp.appendChild(svgEl("title", {}, spoken));
      grp.appendChild(svgEl("rect", { width: NODE_W, height: NODE_H, rx: 8 }));
      grp.appendChild(svgEl("text", { x: 10, y: 19, class: "name" }, clip(nodeLabel(n), 17)));
      const meta = unknown ? "outside the mesh" : n.versions && n.versions.length ? `${n.namespace} · ${n.versions.join(", ")}` : n.namespace;
      grp.appendChild(svgEl("text", { x: 10, y: 36, class: "meta" }, clip(meta, 22)));
      nodesG.appendChild(grp);
    }
  }

  function clip(s, n) { return s.length > n ? s.slice(0, n - 1) + "…" : s; }

  function nodeName(g, id) {
    const n = g.nodes.find((x) => x.id === id);
    return n ? nodeLabel(n) : id;
  }

  function drawEdgesTable(g) {
    const tbody = $("edges-table").querySelector("tbody");
    clear(tbody);
    for (const e of g.edges) {
      const tr = el("tr", { "data-source": e.source, "data-destination": e.destination });
      tr.appendChild(el("td", {}, nodeName(g, e.source)));
      tr.appendChild(el("td", {}, nodeName(g, e.destination)));
      tr.appendChild(el("td", {}, e.protocol));
      if (e.protocol === "tcp") {
        tr.appendChild(el("td", { class: "num" }, `${e.connections} conn`));
        tr.appendChild(el("td", { class: "num" }, fmtPct(e.error_ratio)));
        tr.appendChild(el("td", { class: "num" }, "–"));
        tr.appendChild(el("td", { class: "num" }, `${fmtBytes(e.bytes_per_second)}/s`));
      } else {
        tr.appendChild(el("td", { class: "num" }, fmtRate(e.rate)));
        const err = el("td", { class: "num" });
        err.appendChild(el("span", { class: severity(e) === "ok" ? "" : "bad" }, fmtPct(e.error_ratio)));
        tr.appendChild(err);
        tr.appendChild(el("td", { class: "num" }, fmtMs(e.p50_ms)));
        tr.appendChild(el("td", { class: "num" }, fmtMs(e.p99_ms)));
      }
      tr.appendChild(el("td", { class: "num" }, fmtPct(e.mtls)));
      tbody.appendChild(tr);
    }
  }

  function sparkline(points, label) {
    const w = 120, h = 28;
    const svg = svgEl("svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": label });
    const max = Math.max(...points.map((p) => p.rate), 0.001);
    const step = points.length > 1 ? w / (points.length - 1) : w;
    const coords = points.map((p, i) => [i * step, h - 2 - (p.rate / max) * (h - 4)]);
    if (coords.length) {
      const line = coords.map((c, i) => (i ? "L" : "M") + c[0].toFixed(1) + " " + c[1].toFixed(1)).join(" ");
      svg.appendChild(svgEl("path", { class: "area", d: `${line} L ${coords[coords.length - 1][0].toFixed(1)} ${h} L 0 ${h} Z` }));
      svg.appendChild(svgEl("path", { d: line }));
    }
    return svg;
  }

  function drawSignals(s) {
    const tbody = $("signals-table").querySelector("tbody");
    clear(tbody);
    $("signals-empty").hidden = s.services.length > 0;
    for (const svc of s.services) {
      const tr = el("tr", { "data-service": svc.id });
      const name = el("th", { scope: "row" }, svc.service);
      name.appendChild(el("div", { class: "meta" }, svc.namespace));
      tr.appendChild(name);
      const spark = el("td");
      spark.appendChild(sparkline(svc.points, `${svc.service}: requests per second over the window, latest ${fmtRate(svc.points.length ? svc.points[svc.points.length - 1].rate : 0)}`));
      tr.appendChild(spark);
      tr.appendChild(el("td", { class: "num" }, fmtRate(svc.rate)));
      const err = el("td", { class: "num" });
      err.appendChild(el("span", { class: svc.error_ratio >= 0.05 ? "bad" : "" }, fmtPct(svc.error_ratio)));
      tr.appendChild(err);
      tr.appendChild(el("td", { class: "num" }, fmtMs(svc.p50_ms)));
      tr.appendChild(el("td", { class: "num" }, fmtMs(svc.p99_ms)));
      tbody.appendChild(tr);
    }
  }

  function drawDenials(s) {
    const tbody = $("denials-table").querySelector("tbody");
    clear(tbody);
    $("denials-empty").hidden = s.denials.length > 0;
    for (const d of s.denials) {
      const tr = el("tr", { "data-decision": d.decision, "data-rule": d.rule });
      tr.appendChild(el("td", { class: "num" }, fmtTime(d.time)));
      const dec = el("td", { class: "decision" });
      const cls = d.decision === "deny" ? "bad" : d.decision === "dry_run_deny" ? "dry" : "allow";
      const words = d.decision === "deny" ? "denied" : d.decision === "dry_run_deny" ? "would deny" : "allowed";
      dec.appendChild(el("span", { class: cls }, words));
      dec.appendChild(el("div", { class: "meta" }, (d.decision === "dry_run_deny" ? "dry run, " : d.decision === "allow" ? "audited, " : "") + "by " + d.origin));
      tr.appendChild(dec);
      const src = d.source || (d.source_principal && d.source_principal !== "unknown" ? d.source_principal : "unknown caller");
      const req = el("td", { class: "request" }, `${src} → ${d.destination}`);
      req.appendChild(el("div", { class: "meta" }, [d.method, d.path].filter(Boolean).join(" ") || "–"));
      tr.appendChild(req);
      const rule = el("td", { class: "rule" }, d.rule);
      if (d.rule_at) {
        const at = d.rule_at.split("/").pop();
        rule.appendChild(el("div", { class: "meta", title: d.rule_at }, at));
      }
      tr.appendChild(rule);
      tbody.appendChild(tr);
    }
  }

  function drawFooter(s) {
    const t = s.telemetry;
    $("telemetry-state").textContent =
      `${t.series} of ${t.max_series} metric series · ${t.overflowed} reports in overflow · ${t.entries} access log entries · ${t.streams} streams open`;
  }

  // ---- polling ----------------------------------------------------------
  async function getJSON(url) {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), 4000);
    try {
      const r = await fetch(url, { cache: "no-store", signal: ctl.signal });
      if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
      return await r.json();
    } finally {
      clearTimeout(t);
    }
  }

  async function tick() {
    timer = null;
    if (busy) { schedule(200); return; }
    busy = true;
    const w = windowSel.value;
    try {
      const [g, s] = await Promise.all([getJSON(`/v1/graph?window=${encodeURIComponent(w)}`), getJSON(`/v1/signals?window=${encodeURIComponent(w)}`)]);
      drawGraph(g);
      drawEdgesTable(g);
      drawSignals(s);
      drawDenials(s);
      drawFooter(s);
      failures = 0;
      updates++;
      document.body.dataset.updates = String(updates);
      setStatus("live", "Live · updated " + new Date().toLocaleTimeString([], { hour12: false }));
    } catch (err) {
      failures++;
      document.body.dataset.failures = String(failures);
      setStatus("stale", "Reconnecting to policyd… the numbers shown may be out of date");
    } finally {
      busy = false;
    }
    schedule(failures ? Math.min(1000 * failures, 5000) : POLL_MS);
  }

  function schedule(ms) {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(tick, ms);
  }

  windowSel.addEventListener("change", () => schedule(0));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(0); });
  schedule(0);
})();
