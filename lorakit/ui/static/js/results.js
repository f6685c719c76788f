// Results: a run's files with downloads and `inspect`, and the loss history of past runs.
"use strict";

const Results = {
  chart: null,

  init() {
    $("results-run").onchange = () => { location.hash = "#results/" + $("results-run").value; };
    $("past-btn").onclick = async () => {
      try {
        const run = await api("/api/runs/open", { path: $("past-path").value });
        location.hash = "#results/" + run.id;
      } catch (e) { toast(e.message, true); }
    };
  },

  async show(id) {
    const { runs } = await api("/api/runs");
    const sel = $("results-run");
    sel.textContent = "";
    for (const r of runs) sel.append(el("option", { value: r.id }, `${r.output_dir} (${r.status})`));
    if (!id && runs.length) { location.replace("#results/" + runs[0].id); return; }
    if (!id) return;
    sel.value = id;
    try {
      this.render(await api("/api/runs/" + id));
    } catch (e) { toast(e.message, true); }
  },

  render(run) {
    const table = $("files");
    table.textContent = "";
    table.append(el("tr", {}, el("th", {}, "file"), el("th", {}, "size"), el("th", {}, "")));
    for (const f of run.files) {
      table.append(el("tr", {},
        el("td", {}, f.name),
        el("td", {}, f.size === null ? "" : `${(f.size / 1024).toFixed(1)} KiB`),
        el("td", {},
          f.size === null ? "state (resume)" : el("a", { href: fileUrl(f.path, true), download: f.name }, "download"),
          " ",
          f.adapter ? el("button", { type: "button", class: "inspect-btn", "data-name": f.name,
            onclick: () => this.inspect(f.path) }, "inspect") : "")));
    }
    if (!this.chart) this.chart = new LineChart($("history-chart"));
    this.chart.clear();
    const smooth = smoother(0.9);
    const steps = run.metrics.filter((r) => "loss" in r);
    for (const r of steps) this.chart.add(r.step, { loss: r.loss, "loss smoothed": smooth(r.loss) });
    for (const r of run.metrics.filter((x) => "validation_loss" in x)) {
      this.chart.add(r.step, { validation: r.validation_loss });
    }
    this.chart.update();
    const last = steps[steps.length - 1];
    const epochs = run.metrics.filter((r) => "loss_epoch" in r);
    $("history-text").textContent = last
      ? `${steps.length} steps; last loss ${fmtNum(last.loss)}, average ${fmtNum(last.loss_avg)}` +
        (epochs.length ? `; epoch losses ${epochs.map((r) => fmtNum(r.loss_epoch)).join(", ")}` : "")
      : "no metrics yet";
  },

  async inspect(path) {
    try {
      const r = await api("/api/inspect?path=" + encodeURIComponent(path));
      $("inspect").classList.remove("hidden");
      $("inspect-name").textContent = path.split("/").pop();
      $("inspect-text").textContent = r.text;
      const t = $("loaders");
      t.textContent = "";
      t.append(el("tr", {}, el("th", {}, "loads in"), el("th", {}, "")));
      for (const [ui, ans] of Object.entries(r.loaders)) t.append(el("tr", {}, el("td", {}, ui), el("td", {}, ans)));
    } catch (e) { toast(e.message, true); }
  },
};

App.register("results", Results);
