// tunesmith ui: the pages. Each renders into <main> and registers what to stop on leaving.
"use strict";

const COLORS = { loss: "#2563eb", lr: "#9333ea", grad_norm: "#d97706", tokens_per_s: "#16a34a" };
const CURVE_TITLES = { loss: "loss", lr: "learning rate", grad_norm: "gradient norm",
                       tokens_per_s: "trained tokens / s" };
const PLAN_COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#db2777", "#64748b",
                     "#65a30d", "#ea580c"];
// Metrics where a fall is an improvement (their change is coloured the other way round).
const LOWER_IS_BETTER = /perplexity|error|limit|repeated|loss|forgetting/;
const runLink = name => el("a", { href: "#/run/" + encodeURIComponent(name) }, name);

// -- Runs ------------------------------------------------------------------------------------
UI.pages.runs = async (main) => {
  const box = el("div.card");
  main.append(el("h1", "Runs", el("div.actions", el("a", { href: "#/new" },
    el("button.primary", "New run")))), box);
  const refresh = async () => {
    const data = await api("/api/runs");
    document.getElementById("workspace").textContent = data.workspace;
    if (!data.runs.length) {
      box.replaceChildren(el("div.empty", "No runs in this workspace yet. ",
        el("a", { href: "#/new" }, "Start one"), "."));
      return;
    }
    box.replaceChildren(table([
      { label: "run", render: r => runLink(r.name) },
      { label: "state", render: r => badge(r.state) },
      { label: "method", key: "method" },
      { label: "model", render: r => el("span.small", String(r.model || "").split("/").pop()) },
      { label: "steps", num: true, render: r => `${r.step}${r.max_steps ? " / " + r.max_steps : ""}` },
      { label: "eval", render: r => r.headline
          ? el("span", `${r.headline.metric.replace(/_/g, " ")} ${fmt(r.headline.adapted, 3)} `, signed(r.headline.delta))
          : el("span.muted", "–") },
    ], data.runs));
  };
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 3000);
  onLeave(() => clearInterval(timer));
};

// -- Run page --------------------------------------------------------------------------------
function planView(plan) {
  if (!plan) return el("div.muted", "no plan yet");
  const parts = Object.entries(plan.breakdown || {}).filter(([, v]) => v > 0);
  const total = plan.total_bytes || 1;
  const rec = plan.recommendation || {};
  return el("div",
    el("div.row", badge(plan.verdict),
      el("span", `${bytes(plan.total_bytes)} of ${bytes(plan.budget_bytes)}`)),
    el("div.bar", parts.map(([k, v], i) => el("span", {
      title: `${k}: ${bytes(v)}`,
      style: `width:${(100 * v / total).toFixed(2)}%;background:${PLAN_COLORS[i % PLAN_COLORS.length]}`,
    }))),
    el("div.legend", parts.map(([k, v], i) => el("span",
      el("i", { style: `background:${PLAN_COLORS[i % PLAN_COLORS.length]}` }), `${k} ${bytes(v)}`))),
    rec.method ? el("div.small.muted", { style: "margin-top:8px" },
      `recommended: ${rec.method}, micro-batch ${rec.batch_size} × ${rec.grad_accum}, seq ${rec.seq_len}` +
      (rec.changes && rec.changes.length ? " — " + rec.changes.join("; ") : "")) : null);
}

UI.pages.run = async (main, name) => {
  const data = await api("/api/run?name=" + encodeURIComponent(name));
  const state = el("span#state", badge(data.state));
  const step = el("span.stat#step", String(data.step || 0));
  const stopBtn = el("button.danger#stop", "Stop");
  const resumeBtn = el("button#resume", "Resume");
  const chatLink = el("a", { href: "#/chat/" + encodeURIComponent(name) }, el("button", "Chat"));
  const setState = (s) => {
    state.replaceChildren(badge(s));
    stopBtn.disabled = !["running", "starting"].includes(s);
    resumeBtn.disabled = !["interrupted", "failed"].includes(s);
    chatLink.style.display = s === "finished" ? "" : "none";
  };
  stopBtn.onclick = async () => {
    stopBtn.disabled = true;
    try { await api("/api/run/stop", { name }); } catch (e) { alert(e.message); }
  };
  resumeBtn.onclick = async () => {
    resumeBtn.disabled = true;
    try { await api("/api/run/resume", { name, key: crypto.randomUUID() }); follow(); }
    catch (e) { alert(e.message); }
  };
  main.append(el("h1", name, state, el("div.actions", stopBtn, resumeBtn, chatLink)));
  const info = el("div.row", { style: "gap:40px" });
  const renderInfo = (d) => {
    const c = d.config || {};
    info.replaceChildren(
      el("div", el("div.muted.small", "step"), el("div", step,
        el("span.muted", c["max-steps"] ? ` / ${c["max-steps"]}` : ""))),
      el("div", el("div.muted.small", "method"), el("div.stat", c.method || "–")),
      el("div", el("div.muted.small", "model"), el("div", String(c.model || "–"))),
      el("div", el("div.muted.small", "data"), el("div.small", (c.data || []).join(", ") || "demo")));
  };
  renderInfo(data);
  main.append(el("div.card", info));

  const charts = el("div.grid2.card#charts");
  main.append(charts);
  const curves = {};
  for (const k of Object.keys(CURVE_TITLES)) {
    const cell = el("div");
    charts.append(cell);
    curves[k] = new Curve(cell, CURVE_TITLES[k], COLORS[k]);
  }
  let lastStep = 0;
  const add = (rows) => {
    for (const r of rows) {
      if (r.step <= lastStep) continue;  // the stream starts at the file's first row
      lastStep = r.step;
      for (const k of Object.keys(curves)) curves[k].push(r.step, r[k]);
      step.textContent = String(r.step);
    }
    for (const c of Object.values(curves)) c.redraw();
    charts.dataset.points = String(curves.loss.xs.length);
  };
  add(data.metrics || []);

  const lower = el("div");
  const exportBox = el("div");  // built once: an export in progress outlives re-renders
  main.append(lower, exportBox);
  const renderLower = (d) => {
    lower.replaceChildren();
    const ev = d.eval || { rows: [] };
    lower.append(el("div.grid2",
      el("div.card", el("h2", "Memory plan"), planView(d.plan)),
      el("div.card", el("h2", "Files"), d.has_report ? el("p", el("a", {
          href: "/api/file?path=" + encodeURIComponent(name + "/report.html"), target: "_blank" },
          "Open the report")) : null,
        el("div.small", (d.files || []).map(f => el("div", f.dir ? el("span", f.name + "/") :
          el("a", { href: "/api/file?path=" + encodeURIComponent(f.path), target: "_blank" }, f.name),
          el("span.muted", "  " + bytes(f.size))))))));
    if (ev.rows.length) {
      lower.append(el("div.card#eval", el("h2", `Evaluation (${ev.task || "held-out"})`), table([
        { label: "metric", render: r => r.metric === ev.headline ? el("b", r.metric) : r.metric },
        { label: "base", num: true, render: r => fmt(r.base, 3) },
        { label: "fine-tuned", num: true, render: r => fmt(r.adapted, 3) },
        { label: "change", num: true, render: r => signed(r.delta, LOWER_IS_BETTER.test(r.metric)) },
      ], ev.rows)));
    }
    if ((d.samples || []).length) {
      lower.append(el("div.card", el("h2", "Samples"), table([
        { label: "prompt", key: "prompt", render: r => r.prompt },
        { label: "reference", render: r => el("code", r.reference || "") },
        { label: "base", render: r => el("code", r.base || "") },
        { label: "fine-tuned", render: r => el("code", r.adapted || "") },
      ], d.samples.slice(0, 6))));
    }
    if (d.trained && !exportBox.hasChildNodes()) exportBox.append(exportCard(name));
    if (d.log && d.state !== "finished") lower.append(el("div.card", el("h2", "Log"), el("pre.log", d.log)));
  };
  renderLower(data);
  setState(data.state);

  let source = null;
  const follow = () => {
    if (source) source.close();
    source = new EventSource("/api/run/events?name=" + encodeURIComponent(name));
    source.addEventListener("metrics", e => add(JSON.parse(e.data)));
    source.addEventListener("reset", () => {
      lastStep = 0;
      Object.values(curves).forEach(c => c.reset());
    });
    source.addEventListener("state", e => setState(JSON.parse(e.data).state));
    source.addEventListener("end", async () => {
      source.close(); source = null;
      const fresh = await api("/api/run?name=" + encodeURIComponent(name));
      setState(fresh.state);
      renderInfo(fresh);
      renderLower(fresh);
    });
  };
  follow();
  onLeave(() => source && source.close());
};

function exportCard(name) {
  const fmtSel = el("select", ["merged", "peft", "safetensors", "gguf"].map(f => el("option", { value: f }, f)));
  const out = el("div#export-result");
  const btn = el("button#export", "Export");
  btn.onclick = async () => {
    btn.disabled = true;
    out.replaceChildren(el("div.muted", "exporting and verifying…"));
    try {
      const r = await api("/api/export", { name, format: fmtSel.value });
      const v = r.verification || {};
      out.replaceChildren(
        el("div.notice" + (r.error ? ".error" : ""), r.error ? r.error :
          `${v.passed ? "verified" : "written"}: ${r.out}`),
        el("div.kv", Object.entries(v).filter(([, x]) => typeof x !== "object").map(([k, x]) =>
          [el("b", k), el("span", fmt(x))]).flat()));
    } catch (e) {
      out.replaceChildren(el("div.notice.error", e.message));
    }
    btn.disabled = false;
  };
  return el("div.card", el("h2", "Merge / export"),
    el("div.row", fmtSel, btn, el("span.small.muted", "the result is reloaded and compared with the run before it is kept")),
    out);
}
