// tunesmith ui: the Data, Compare and Chat pages.
"use strict";

// -- Data ------------------------------------------------------------------------------------
UI.pages.data = async (main) => {
  const { files } = await api("/api/data");
  const pick = el("select.wide#data-file", el("option", { value: "" }, "the bundled demo data"),
    files.map(f => el("option", { value: f }, f)));
  const model = el("input.wide#preview-model", { type: "text", value: "embedded" });
  const out = el("div#data-out");
  const cleanBtn = el("button#clean", "Clean report");
  const previewBtn = el("button.primary#preview", "Masking preview");
  main.append(el("h1", "Data"), el("div.card",
    el("div.grid2", el("div", el("div.small.muted", "file"), pick),
      el("div", el("div.small.muted", "model (tokenizer and chat template)"), model)),
    el("div.row", { style: "margin-top:10px" }, previewBtn, cleanBtn)), out);
  const busy = (on) => { cleanBtn.disabled = previewBtn.disabled = on; };
  cleanBtn.onclick = async () => {
    if (!pick.value) { out.replaceChildren(el("div.notice", "pick a file of the workspace to clean")); return; }
    busy(true);
    try { out.replaceChildren(cleanView(await api("/api/data/clean", { file: pick.value }))); }
    catch (e) { out.replaceChildren(el("div.notice.error", e.message)); }
    busy(false);
  };
  previewBtn.onclick = async () => {
    busy(true);
    out.replaceChildren(el("div.muted", "rendering…"));
    try {
      const r = await api("/api/data/preview", { file: pick.value, model: model.value.trim(), n: 3 });
      out.replaceChildren(previewView(r));
    } catch (e) { out.replaceChildren(el("div.notice.error", e.message)); }
    busy(false);
  };
};

function cleanView(r) {
  const counts = [["input records", r.input_records], ["kept", r.kept],
    ...Object.entries(r.invalid_by_kind || {}).map(([k, n]) => ["invalid: " + k, n]),
    ...["too_short", "too_long", "repetitive", "exact_duplicates", "near_duplicates", "eval_leaks"]
      .filter(k => r[k]).map(k => [k.replace(/_/g, " "), r[k]])];
  const dropped = [...(r.invalid || []).map(x => ({ where: `${x.file}:${x.line}`, why: x.reason, text: "" })),
    ...(r.dropped || []).map(x => ({ where: x.source, why: x.reason || x.kind || "", text: x.text || "" }))];
  return el("div.card#clean-report", el("h2", "Clean report"),
    el("div.kv", counts.map(([k, v]) => [el("b", k), el("span", fmt(v))]).flat()),
    dropped.length ? el("div", { style: "margin-top:12px" }, el("h2", "Dropped records"), table([
      { label: "record", key: "where", render: x => x.where },
      { label: "why", render: x => x.why },
      { label: "text", render: x => el("span.small", x.text) },
    ], dropped.slice(0, 50))) : el("p.muted", "nothing was dropped"));
}

function previewView(r) {
  const s = r.summary;
  return el("div.card#preview-out", el("h2", "Masking preview"),
    el("p.small", el("span.tokens", el("span.t", "trained tokens")), " are highlighted; prompt tokens are grey. ",
      `Trained share ${(100 * s.trained_share).toFixed(1)}%, EOS ${JSON.stringify(r.eos_token)} trained in ${s.eos_trained_records} of ${s.records}.`),
    r.records.map(rec => el("div", { style: "margin-bottom:12px" },
      el("div.small.muted", `${rec.source} — ${rec.num_tokens} tokens, ${rec.num_trained} trained` +
        (rec.truncated ? ", truncated" : "")),
      el("div.tokens", rec.tokens.map(t => el("span." + (t.trained ? "t" : "p"), t.text))))));
}

// -- Compare ---------------------------------------------------------------------------------
UI.pages.compare = async (main) => {
  const { runs } = await api("/api/runs");
  const done = runs.filter(r => r.state === "finished");
  const boxes = done.map(r => el("label.row", el("input", { type: "checkbox", value: r.name, checked: true }),
    r.name, el("span.small.muted", r.method)));
  const out = el("div#compare-out");
  const btn = el("button.primary#compare", "Compare");
  main.append(el("h1", "Compare"), el("div.card", el("h2", "Finished runs"),
    done.length ? boxes : el("div.muted", "no finished run yet"), el("div", { style: "margin-top:10px" }, btn)), out);
  btn.onclick = async () => {
    const picked = boxes.map(b => b.querySelector("input")).filter(i => i.checked).map(i => i.value);
    btn.disabled = true;
    try {
      const r = await api("/api/compare", { runs: picked });
      const m = r.metric;
      out.replaceChildren(el("div.card", el("h2", "Comparison"), table([
        { label: "method", key: "method", render: x => x.method },
        { label: "run", render: x => x.run_dir || "" },
        { label: "trainable", num: true, key: "trainable_params" },
        { label: "% of base", num: true, render: x => x.trainable_share == null ? "–" : (100 * x.trainable_share).toFixed(3) + "%" },
        { label: m.replace(/_/g, " "), num: true, render: x => fmt(x[m], 3) },
        { label: "eval ppl", num: true, key: "eval_perplexity", render: x => fmt(x.eval_perplexity, 1) },
        { label: "forgetting", num: true, render: x => x.forgetting == null ? "–" : (100 * x.forgetting).toFixed(1) + "%" },
        { label: "train s", num: true, render: x => fmt(x.train_time_s, 1) },
        { label: "tokens/s", num: true, render: x => fmt(x.tokens_per_s, 0) },
      ], r.rows)), r.plot ? el("div.card", el("h2", "Quality vs trainable parameters"),
        el("img.plot#compare-plot", { src: "data:image/png;base64," + r.plot })) : null);
    } catch (e) { out.replaceChildren(el("div.notice.error", e.message)); }
    btn.disabled = false;
  };
  if (done.length >= 2) btn.click();
};

// -- Chat ------------------------------------------------------------------------------------
// Streams one answer from the OpenAI-compatible endpoint into `target`.
async function streamChat(model, prompt, maxTokens, target) {
  const res = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Tunesmith-UI": "1" },
    body: JSON.stringify({ model, stream: true, max_tokens: maxTokens, temperature: 0,
                           messages: [{ role: "user", content: prompt }] }),
  });
  if (!res.ok) { target.textContent = (await res.json()).error.message; return; }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  target.textContent = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, cut).trim();
      buf = buf.slice(cut + 2);
      if (!line.startsWith("data:") || line === "data: [DONE]") continue;
      const chunk = JSON.parse(line.slice(5));
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) target.textContent += delta.content;
    }
  }
  target.dataset.done = "1";
}

UI.pages.chat = async (main, chosen) => {
  const { runs } = await api("/api/runs");
  const done = runs.filter(r => r.state === "finished");
  const pick = el("select#chat-run", done.map(r => el("option", { value: r.name, selected: r.name === chosen }, r.name)));
  const loadBtn = el("button#chat-load", "Load");
  const status = el("span.small.muted#chat-status");
  const prompt = el("textarea#prompt", { rows: 3, placeholder: "Ask something…" });
  const maxTokens = el("input#max-tokens", { type: "number", value: 48, min: 1, max: 512, style: "width:80px" });
  const sendBtn = el("button.primary#send", { disabled: true }, "Send");
  const left = el("div.answer#answer-run"), right = el("div.answer#answer-base");
  const leftTitle = el("h2", "fine-tuned"), rightTitle = el("h2", "base");
  main.append(el("h1", "Chat"),
    el("div.card", el("div.row", "run", pick, loadBtn, status)),
    el("div.card", prompt, el("div.row", { style: "margin-top:8px" }, sendBtn, "max tokens", maxTokens,
      el("span.small.muted", "through /v1/chat/completions, as tunesmith serve"))),
    el("div.grid2", el("div.card", leftTitle, left), el("div.card", rightTitle, right)));
  let names = null;
  loadBtn.onclick = async () => {
    loadBtn.disabled = true; sendBtn.disabled = true;
    status.textContent = "loading…";
    try {
      names = await api("/api/chat/load", { name: pick.value });
      leftTitle.textContent = `fine-tuned: ${names.model}`;
      rightTitle.textContent = `base: ${String(names.base).split("/").pop()}`;
      status.textContent = "ready";
      sendBtn.disabled = false;
    } catch (e) { status.textContent = e.message; }
    loadBtn.disabled = false;
  };
  sendBtn.onclick = async () => {
    if (!names || !prompt.value.trim()) return;
    sendBtn.disabled = true;
    delete left.dataset.done; delete right.dataset.done;
    const n = parseInt(maxTokens.value, 10) || 48;
    await Promise.all([streamChat(names.model, prompt.value, n, left),
                       names.base ? streamChat(names.base, prompt.value, n, right) : null]);
    sendBtn.disabled = false;
  };
  if (!done.length) status.textContent = "no finished run to chat with yet";
  else if (chosen) loadBtn.click();
};
