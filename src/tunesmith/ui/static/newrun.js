// tunesmith ui: the New-run form, generated from the training config's fields.
"use strict";

UI.pages.new = async (main) => {
  const { fields, data_files: dataFiles } = await api("/api/form");
  const inputs = {};
  const errs = {};
  let key = crypto.randomUUID();  // one launch per key: a double click cannot start two runs

  const dataList = el("datalist#data-files", dataFiles.map(f => el("option", { value: f })));
  const fieldBox = (f) => {
    let input;
    if (f.kind === "bool") {
      input = el("input", { type: "checkbox", name: f.name, checked: !!f.default });
    } else if (f.kind === "choice") {
      input = el("select", { name: f.name }, (f.default === null ? [el("option", { value: "" }, "(default)")] : []),
        f.choices.map(c => el("option", { value: c, selected: c === f.default }, c)));
    } else {
      const dflt = Array.isArray(f.default) ? f.default.join(",") : f.default;
      input = el("input", { type: "text", name: f.name, placeholder: dflt === null || dflt === "" ? "" : String(dflt),
                            list: ["data", "eval-data"].includes(f.name) ? "data-files" : null });
    }
    inputs[f.name] = { f, input };
    errs[f.name] = el("div.err");
    const box = el("div.field", { "data-field": f.name },
      f.kind === "bool" ? el("label", input, " ", f.name) : el("label", { for: f.name }, f.name),
      el("div.help", f.help + (f.kind !== "bool" && f.default !== null && f.default !== "" &&
        !(Array.isArray(f.default) && !f.default.length) ? ` (default: ${f.default})` : "")),
      f.kind === "bool" ? null : input, errs[f.name]);
    if (f.name === "data") box.append(uploadRow(input));
    return box;
  };
  const values = () => {
    const out = {};
    for (const [name, { f, input }] of Object.entries(inputs)) {
      if (f.kind === "bool") { if (input.checked !== !!f.default) out[name] = input.checked; }
      else if (input.value.trim() !== "") out[name] = f.kind === "list"
        ? input.value.split(",").map(s => s.trim()).filter(Boolean) : input.value.trim();
    }
    return out;
  };

  const planBox = el("div#plan", el("div.muted", "the plan appears as you fill the form"));
  const general = el("div.notice.error#form-error", { style: "display:none" });
  const confirmBox = el("div#confirm");
  const launchBtn = el("button.primary#launch", "Launch");
  const main_ = fields.filter(f => f.main), more = fields.filter(f => !f.main);
  main.append(el("h1", "New run"), el("div.grid-form",
    el("div.card", el("form#new-run", { onsubmit: e => e.preventDefault() }, dataList,
      el("div.fields", main_.map(fieldBox)),
      el("details.more", el("summary", `More settings (${more.length})`), el("div.fields", more.map(fieldBox))))),
    el("div.sticky", el("div.card", el("h2", "Memory plan"), planBox),
      el("div.card", general, confirmBox, el("div.row", launchBtn,
        el("span.small.muted", "starts `tunesmith train` in the workspace"))))));

  const showErrors = (list) => {
    for (const [name, box] of Object.entries(errs)) {
      box.textContent = "";
      box.parentElement.classList.remove("bad");
    }
    general.style.display = "none";
    for (const e of list) {
      if (errs[e.key]) { errs[e.key].textContent = e.message; errs[e.key].parentElement.classList.add("bad"); }
      else { general.textContent = e.message; general.style.display = ""; }
    }
  };
  let seq = 0;
  const replan = async () => {
    const mine = ++seq;
    const v = values();
    const r = await api("/api/plan", { values: v });
    if (mine !== seq) return;  // an older answer arriving late
    showErrors(r.errors);
    planBox.dataset.model = v.model || "embedded";
    if (r.plan) {
      const apply = el("button#apply-plan", "Apply recommended");
      apply.onclick = () => {
        for (const [k, v] of Object.entries(r.plan.apply)) if (inputs[k]) inputs[k].input.value = String(v);
        changed();
      };
      planBox.replaceChildren(planView(r.plan), el("div", { style: "margin-top:10px" }, apply));
    } else if (r.plan_error) {
      planBox.replaceChildren(el("div.notice", r.plan_error));
    }
  };
  let timer = null;
  const changed = () => {
    key = crypto.randomUUID();
    confirmBox.replaceChildren();
    clearTimeout(timer);
    timer = setTimeout(() => replan().catch(e => showErrors([{ key: "", message: e.message }])), 300);
  };
  main.querySelector("form").addEventListener("input", changed);
  main.querySelector("form").addEventListener("change", changed);
  onLeave(() => clearTimeout(timer));

  const launch = async (force) => {
    launchBtn.disabled = true;
    const v = values();
    if (force) v.force = true;
    try {
      const r = await api("/api/launch", { values: v, key });
      location.hash = "#/run/" + encodeURIComponent(r.name);
    } catch (e) {
      launchBtn.disabled = false;
      if (e.body && e.body.needs_force) {
        const go = el("button.danger#force-launch", "Launch anyway");
        go.onclick = () => { confirmBox.replaceChildren(); launch(true); };
        confirmBox.replaceChildren(el("div.notice", e.message, el("div", { style: "margin-top:8px" }, go)));
      } else {
        showErrors([{ key: (e.body.error || {}).key || "", message: e.message }]);
      }
    }
  };
  launchBtn.onclick = () => launch(false);
  replan().catch(() => {});
};

function uploadRow(dataInput) {
  const file = el("input", { type: "file", accept: ".jsonl,.json,.csv,.parquet,.txt" });
  const note = el("span.small.muted");
  file.onchange = async () => {
    const f = file.files[0];
    if (!f) return;
    note.textContent = "checking…";
    try {
      const r = await api("/api/upload?filename=" + encodeURIComponent(f.name), f);
      dataInput.value = r.path;
      dataInput.dispatchEvent(new Event("input", { bubbles: true }));
      note.textContent = `${r.kept} of ${r.input} records usable`;
    } catch (e) {
      note.textContent = e.message;
    }
  };
  return el("div.row.small", { style: "margin-top:4px" }, el("span", { style: "white-space:nowrap" }, "or upload"), file, note);
}
