// Watch a run: progress, live charts from metrics.jsonl (server-sent events), warnings, samples.
"use strict";

const LR_PREFIX = "lr/", DLR_PREFIX = "dlr/";
const GRAD_PREFIXES = ["max_norm/", "norm/", "grad"];

const Watch = {
  runId: null,
  source: null,
  charts: null,
  rows: [],
  run: null,

  init() {
    $("stop-btn").onclick = () => this.action("stop");
    $("resume-btn").onclick = () => this.action("resume");
  },

  async show(id) {
    const { runs } = await api("/api/runs");
    this.listRuns(runs);
    if (!id && runs.length) { location.replace("#run/" + runs[0].id); return; }
    $("no-run").classList.toggle("hidden", !!id);
    $("run-main").classList.toggle("hidden", !id);
    if (id && id !== this.runId) this.open(id);
  },

  listRuns(runs) {
    const ul = $("runs");
    ul.textContent = "";
    for (const r of runs) {
      ul.append(el("li", { class: r.id === this.runId ? "current" : "", "data-id": r.id,
        onclick: () => { location.hash = "#run/" + r.id; } },
        el("span", { class: "badge " + r.status }, r.status), " ", r.output_dir.split("/").slice(-2).join("/")));
    }
  },

  resetView() {
    if (!this.charts) {
      this.charts = {
        loss: new LineChart($("chart-loss")), lr: new LineChart($("chart-lr")),
        dlr: new LineChart($("chart-dlr"), { log: true }), grad: new LineChart($("chart-grad")),
        val: new LineChart($("chart-val")),
      };
    }
    for (const c of Object.values(this.charts)) c.clear();
    this.rows = [];
    this.smooth = smoother(0.9);
    this.warnings = [];
    this.samples = [];
    $("warnings").textContent = "";
    $("warnings").append(el("li", { class: "muted" }, "none"));
    $("samples").textContent = "";
    $("samples").append(el("p", { class: "muted" }, "none yet"));
  },

  open(id) {
    if (this.source) this.source.close();
    this.runId = id;
    this.resetView();
    for (const li of $("runs").children) li.classList.toggle("current", li.dataset.id === id);
    $("results-link").href = "#results/" + id;
    this.connect();
  },

  connect() {
    if (this.source) this.source.close();
    const src = new EventSource(`/api/runs/${this.runId}/events`);
    this.source = src;
    src.addEventListener("reset", () => { const id = this.runId; this.runId = null; this.open(id); });
    src.addEventListener("metrics", (e) => this.addRows(JSON.parse(e.data)));
    src.addEventListener("samples", (e) => this.addSamples(JSON.parse(e.data)));
    src.addEventListener("status", (e) => this.status(JSON.parse(e.data)));
    src.addEventListener("end", () => { src.close(); this.source = null; });
    src.onerror = () => {
      if (src.readyState === EventSource.CLOSED) { this.source = null; }
      api(`/api/runs/${this.runId}`).catch((err) => { toast(err.message, true); src.close(); });
    };
  },

  addRows(rows) {
    const c = this.charts;
    for (const r of rows) {
      this.rows.push(r);
      if ("warning" in r) { this.addWarning(r); continue; }
      if ("validation_loss" in r) { c.val.add(r.step, { [`validation (${r.validation_trigger})`]: r.validation_loss }); continue; }
      if (!("loss" in r)) continue;
      c.loss.add(r.step, { loss: r.loss, "loss smoothed": this.smooth(r.loss) });
      const lr = {}, dlr = {}, grad = {};
      for (const [k, v] of Object.entries(r)) {
        if (k.startsWith(LR_PREFIX)) lr[k.slice(3)] = v;
        else if (k.startsWith(DLR_PREFIX)) dlr["d*lr " + k.slice(4)] = v;
        else if (GRAD_PREFIXES.some((p) => k.startsWith(p))) grad[k] = v;
      }
      c.lr.add(r.step, lr);
      c.dlr.add(r.step, dlr);
      c.grad.add(r.step, grad);
    }
    $("box-dlr").classList.toggle("hidden", !c.dlr.names.length);
    $("box-grad").classList.toggle("hidden", !c.grad.names.length);
    $("box-val").classList.toggle("hidden", !c.val.names.length);
    for (const chart of Object.values(c)) chart.update();
    this.progress();
  },

  addWarning(r) {
    // a resumed run repeats its start-up warnings at step 0: show each once
    if (this.warnings.some((w) => w.step === r.step && w.warning === r.warning)) return;
    if (!this.warnings.length) $("warnings").textContent = "";
    this.warnings.push(r);
    $("warnings").append(el("li", {}, `step ${r.step}: ${r.warning}`));
    if (/d\*lr/i.test(r.warning) && /spike/i.test(r.warning)) {
      this.charts.dlr.mark(r.step, "spike");
      this.charts.dlr.destroy();  // redraw with the mark
    }
  },

  progress() {
    const steps = this.rows.filter((r) => "loss" in r && !("warning" in r));
    if (!steps.length) return;
    const last = steps[steps.length - 1];
    const total = (this.run && this.run.total_steps) || last.step;
    const recent = steps.slice(-20);
    let rate = NaN;
    if (recent.length > 1) rate = (recent.length - 1) / (recent[recent.length - 1].time - recent[0].time);
    const ips = recent.reduce((a, r) => a + (r.images_per_s || 0), 0) / recent.length;
    const active = this.run && ["running", "stopping"].includes(this.run.status);
    const eta = active ? `ETA ${fmtTime((total - last.step) / rate)}` : "";
    $("progress-bar").style.width = `${Math.min(100, (100 * last.step) / total)}%`;
    $("progress-text").textContent = `step ${last.step} / ${total}, epoch ${last.epoch} · loss ${fmtNum(last.loss)} · ` +
      `${ips.toFixed(1)} img/s · ${fmtNum(rate)} steps/s ${eta}`;
    $("progress-text").dataset.step = String(last.step);
  },

  addSamples(list) {
    if (!this.samples.length) $("samples").textContent = "";
    this.samples.push(...list);
    const at = (s) => (s.step !== null ? `step ${s.step}` : `epoch ${s.epoch}`);
    const rows = [...new Set(this.samples.map(at))];
    const cols = [...new Set(this.samples.map((s) => s.index))].sort((a, b) => a - b);
    const table = el("table", {}, el("tr", {}, el("th", {}, ""), cols.map((c) => el("th", {}, `prompt ${c}`))));
    for (const row of rows) {
      const tr = el("tr", {}, el("th", {}, row));
      for (const c of cols) {
        const s = [...this.samples].reverse().find((x) => at(x) === row && x.index === c);
        tr.append(el("td", {}, s ? el("img", { src: fileUrl(s.path), alt: s.name, title: s.name, class: "sample" }) : ""));
      }
      table.append(tr);
    }
    $("samples").textContent = "";
    $("samples").append(table);
  },

  status(run) {
    this.run = run;
    $("run-title").textContent = run.output_dir;
    $("run-status").textContent = run.status;
    $("run-status").className = "badge " + run.status;
    $("stop-btn").disabled = run.status !== "running";
    $("resume-btn").disabled = !["stopped", "failed"].includes(run.status);
    $("run-log").textContent = (run.log_tail || []).join("\n");
    if (run.status === "failed") toast("the run failed: " + (run.log_tail || []).slice(-3).join(" "), true);
    for (const li of $("runs").children) {
      if (li.dataset.id === run.id) li.querySelector(".badge").textContent = run.status;
    }
    this.progress();
  },

  async action(what) {
    try {
      const run = await api(`/api/runs/${this.runId}/${what}`, {});
      if (what === "resume") { this.runId = null; this.open(run.id); }  // the stream starts from the top
      this.status(run);
      toast(what === "stop" ? "stopping: the adapter and state are being saved" : "resumed");
    } catch (e) { toast(e.message, true); }
  },
};

App.register("run", Watch);
