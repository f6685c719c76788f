// Set up a run: the form from the schema, live validation and plan, doctor, save, start.
"use strict";

const Setup = {
  schema: null,
  values: {},        // key -> form value, only the keys the user (or a loaded file) set
  inputs: {},        // key -> input element
  checkTimer: null,
  checkSeq: 0,

  init(info) {
    this.schema = info.schema;
    this.buildForm();
    const presets = $("preset-select");
    for (const p of info.presets) presets.append(el("option", { value: p }, p));
    $("open-btn").onclick = () => this.open({ path: $("open-path").value, format: $("open-format").value });
    $("preset-btn").onclick = () => this.open({ preset: presets.value });
    $("browse-btn").onclick = () => Browser.show(App.info.roots, (path) => { $("open-path").value = path; });
    $("demo-btn").onclick = () => this.useDemo();
    $("doctor-btn").onclick = () => this.doctor();
    $("save-btn").onclick = () => this.save(false);
    $("start-btn").onclick = () => this.start();
    $("extra").addEventListener("input", () => this.scheduleCheck());
    this.scheduleCheck();
  },

  show() {},

  buildForm() {
    const form = $("config-form");
    const open = new Set(["model", "dataset", "network", "optimizer", "training"]);
    for (const g of this.schema.groups) {
      const fields = this.schema.fields.filter((f) => f.group === g.id);
      if (!fields.length) continue;
      const box = el("details", { class: "group", open: open.has(g.id), id: "group-" + g.id },
        el("summary", {}, `${g.title} (${fields.length})`));
      for (const f of fields) box.append(this.fieldRow(f));
      form.append(box);
    }
  },

  fieldRow(f) {
    const id = "f-" + f.name;
    let input;
    if (f.kind === "bool") {
      input = el("input", { type: "checkbox", id, name: f.name });
      input.checked = f.default === true;
    } else if (f.kind === "choice") {
      input = el("select", { id, name: f.name },
        f.choices.map((c) => el("option", { value: c }, c === "" ? "(unset)" : c)));
      input.value = f.default;
    } else if (f.kind === "json" || f.name === "sample_prompts") {
      input = el("textarea", { id, name: f.name, rows: 2, placeholder: String(f.default) });
    } else {
      input = el("input", { type: "text", id, name: f.name, inputmode: f.kind === "text" ? null : "decimal",
        placeholder: f.default === "" ? "(unset)" : String(f.default) });
    }
    input.addEventListener(f.kind === "bool" || f.kind === "choice" ? "change" : "input", () => this.edited(f, input));
    this.inputs[f.name] = input;
    const meta = [`default ${f.default === "" ? "unset" : JSON.stringify(f.default)}`];
    if (f.range) meta.push(f.range);
    return el("div", { class: "field", id: "row-" + f.name },
      el("label", { for: id, title: f.name }, f.name), input,
      el("div", { class: "help" }, `${f.help} (${meta.join("; ")})`),
      el("div", { class: "err", id: "err-" + f.name }));
  },

  edited(f, input) {
    const v = f.kind === "bool" ? input.checked : input.value;
    if (f.kind !== "bool" && f.kind !== "choice" && v.trim() === "") delete this.values[f.name];
    else this.values[f.name] = v;
    $("row-" + f.name).classList.toggle("set", f.name in this.values);
    this.scheduleCheck();
  },

  setValues(values, replace) {
    if (replace) this.values = {};
    for (const [k, v] of Object.entries(values)) {
      if (v === "" || v === null) delete this.values[k];
      else this.values[k] = v;
    }
    for (const f of this.schema.fields) {
      const input = this.inputs[f.name], has = f.name in this.values, v = this.values[f.name];
      if (f.kind === "bool") input.checked = has ? ["true", "1"].includes(String(v).toLowerCase()) : f.default === true;
      else if (f.kind === "choice") input.value = has ? String(v) : f.default;
      else input.value = has ? (typeof v === "string" ? v : JSON.stringify(v)) : "";
      $("row-" + f.name).classList.toggle("set", has);
      if (has) $("row-" + f.name).closest("details").open = true;  // what the file sets is in view
    }
    this.scheduleCheck();
  },

  payload() { return { values: this.values, extra: $("extra").value }; },

  async open(req) {
    try {
      const r = await api("/api/config/open", req);
      this.setValues(r.values, true);
      $("config-source").textContent = "from " + r.file.split("/").pop();
      toast("loaded " + r.file);
    } catch (e) { toast(e.message, true); }
  },

  scheduleCheck() {
    clearTimeout(this.checkTimer);
    this.checkTimer = setTimeout(() => this.check(), 250);
  },

  async check() {
    const seq = ++this.checkSeq;
    try {
      const r = await api("/api/config/check", this.payload());
      if (seq !== this.checkSeq) return;  // a newer edit is on its way
      this.showProblems(r.problems);
      this.showPlan(r.plan);
      $("first-run").classList.toggle("hidden", !r.needs_model);
    } catch (e) { toast(e.message, true); }
  },

  showProblems(problems) {
    for (const f of this.schema.fields) {
      $("err-" + f.name).textContent = "";
      $("row-" + f.name).classList.remove("bad");
    }
    const list = $("problems");
    list.textContent = "";
    if (!problems.length) { list.append(el("li", { class: "ok" }, "no problems")); return; }
    for (const p of problems) {
      list.append(el("li", {}, p.message));
      const key = p.key && p.key.split(".")[0];
      if (key && $("err-" + key)) {
        $("err-" + key).textContent = p.message;
        $("row-" + key).classList.add("bad");
        $("row-" + key).closest("details").open = true;
      }
    }
  },

  showPlan(plan) {
    const nums = $("plan-numbers");
    nums.textContent = "";
    if (plan.error) { $("plan").textContent = plan.error; return; }
    const cells = [["images x repeats", plan.train_images], ["samples/epoch", plan.samples_per_epoch],
      ["batches/epoch", plan.batches_per_epoch], ["steps/epoch", plan.steps_per_epoch],
      ["total steps", plan.total_steps], ["epochs", plan.epochs], ["warm-up", plan.warmup_steps],
      ["T_max", plan.t_max]];
    for (const [label, v] of cells) nums.append(el("div", { "data-k": label }, el("b", {}, fmtNum(v)), label));
    $("plan").textContent = plan.lines.join("\n");
  },

  async useDemo() {
    $("demo-btn").disabled = true;
    try {
      const r = await api("/api/demo", {});
      this.setValues(r.values, false);
      toast("tiny model and demo dataset set (resolution 64, 60 steps, samples)");
    } catch (e) { toast(e.message, true); }
    $("demo-btn").disabled = false;
  },

  async doctor() {
    $("doctor").textContent = "checking…";
    $("doctor-thumbs").textContent = "";
    try {
      const r = await api("/api/config/doctor", this.payload());
      $("doctor").textContent = r.text;
      for (const f of r.flagged) {
        $("doctor-thumbs").append(el("figure", { title: f.path },
          el("img", { src: "/api/thumb?path=" + encodeURIComponent(f.path), alt: f.path }),
          el("figcaption", {}, `${f.path.split("/").pop()}: ${f.why}`)));
      }
    } catch (e) { $("doctor").textContent = e.message; }
  },

  async save(overwrite) {
    const body = { ...this.payload(), path: $("save-path").value, format: $("save-format").value, overwrite };
    try {
      const r = await api("/api/config/save", body);
      toast("saved " + r.path);
    } catch (e) {
      if (e.status === 409 && !overwrite && confirm(e.message + "\nOverwrite it?")) return this.save(true);
      toast(e.message, true);
    }
  },

  async start() {
    $("start-btn").disabled = true;
    try {
      const run = await api("/api/runs", { ...this.payload(), overwrite: $("overwrite").checked });
      location.hash = "#run/" + run.id;
    } catch (e) {
      if (e.body && e.body.problems) this.showProblems(e.body.problems);
      toast(e.message, true);
    }
    $("start-btn").disabled = false;
  },
};

// A small file chooser over /api/fs (only the UI's folders are listed).
const Browser = {
  async show(roots, pick) {
    this.pick = pick;
    $("browser-close").onclick = () => $("browser").close();
    await this.list(null);
    $("browser").showModal();
  },
  async list(path) {
    const r = await api("/api/fs" + (path ? "?path=" + encodeURIComponent(path) : ""));
    $("browser-path").textContent = r.path || "folders this UI may use";
    const ul = $("browser-list");
    ul.textContent = "";
    if (r.parent) ul.append(el("li", { onclick: () => this.list(r.parent) }, ".."));
    for (const e of r.entries) {
      ul.append(el("li", { onclick: () => (e.dir ? this.list(e.path) : this.choose(e.path)) },
        e.dir ? e.name + "/" : e.name));
    }
  },
  choose(path) { $("browser").close(); this.pick(path); },
};

App.register("setup", Setup);
