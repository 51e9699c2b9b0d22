// tunesmith ui: helpers shared by the pages (pages.js): requests, elements, charts, routing.
"use strict";

const UI = { pages: {}, cleanup: [] };

// JSON request; a non-2xx answer throws an Error carrying the server's message and body.
async function api(path, body, method) {
  const opts = { method: method || (body === undefined ? "GET" : "POST"), headers: {} };
  if (opts.method !== "GET") {
    opts.headers["X-Tunesmith-UI"] = "1";
    if (body instanceof Blob) {
      opts.body = body;
    } else {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body || {});
    }
  }
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const err = new Error((data && data.error && data.error.message) || res.statusText);
    err.status = res.status; err.body = data || {};
    throw err;
  }
  return data;
}

// el("div.card#id", {attr: v, onclick: f}, child, "text", ...)
function el(spec, attrs, ...children) {
  const [tagAndClasses, id] = spec.split("#");
  const [tag, ...classes] = tagAndClasses.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  if (id) node.id = id;
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs); attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "html") node.innerHTML = v;
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function badge(state) { return el("span.badge." + state, { "data-state": state }, state); }

function fmt(v, digits) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (digits === 0 || (digits === undefined && Number.isInteger(v))) {
    return Math.round(v).toLocaleString("en-US");
  }
  return v.toFixed(digits === undefined ? 3 : digits);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 2 : 0)} ${units[i]}`;
}

// A change with its sign, green when it is an improvement (`lowerBetter`: a fall is one).
function signed(v, lowerBetter) {
  if (v === null || v === undefined) return el("span.muted", "–");
  const good = lowerBetter ? v < 0 : v > 0;
  return el("span." + (v === 0 ? "muted" : good ? "pos" : "neg"), (v > 0 ? "+" : "") + fmt(v, 3));
}

function table(columns, rows) {
  return el("table",
    el("thead", el("tr", columns.map(c => el("th" + (c.num ? ".num" : ""), c.label)))),
    el("tbody", rows.map(r => el("tr", columns.map(c => {
      const v = c.render ? c.render(r) : fmt(r[c.key]);
      return el("td" + (c.num ? ".num" : ""), v);
    })))));
}

// Axis labels: small values (a learning rate) in exponent form, large ones grouped.
function tick(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a < 0.01) return v.toExponential(1);
  if (a >= 1000) return Math.round(v).toLocaleString("en-US");
  return String(+v.toPrecision(3));
}

// A line chart (uPlot) whose data grow: push(x, y) then redraw().
class Curve {
  constructor(parent, title, color) {
    this.xs = []; this.ys = [];
    this.box = el("div.chart", el("div.title", title));
    parent.append(this.box);
    const width = Math.max(300, (parent.clientWidth || 560) - 8);
    this.plot = new uPlot({
      width, height: 180, legend: { show: false }, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false } },
      series: [{ label: "step" }, { label: title, stroke: color, width: 2, points: { size: 4 } }],
      axes: [{ label: "step", size: 36 }, { size: 64, values: (u, vals) => vals.map(tick) }],
    }, [this.xs, this.ys], this.box);
  }
  push(x, y) { if (y !== null && y !== undefined) { this.xs.push(x); this.ys.push(y); } }
  reset() { this.xs.length = 0; this.ys.length = 0; this.redraw(); }
  redraw() { this.plot.setData([this.xs, this.ys]); }
}

function onLeave(fn) { UI.cleanup.push(fn); }

async function route() {
  while (UI.cleanup.length) { try { UI.cleanup.pop()(); } catch (e) { /* page gone */ } }
  const hash = decodeURIComponent(location.hash.slice(2) || "runs");
  const [page, ...rest] = hash.split("/");
  const arg = rest.join("/");
  for (const a of document.querySelectorAll(".top nav a")) {
    a.classList.toggle("active", a.dataset.page === page || (page === "run" && a.dataset.page === "runs"));
  }
  const main = document.getElementById("main");
  main.replaceChildren();
  const render = UI.pages[page] || UI.pages.runs;
  try {
    await render(main, arg);
  } catch (e) {
    main.append(el("div.notice.error", e.message));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
