// Line charts on uPlot: one x axis (optimizer step), any number of named series, optional marks
// (vertical lines at steps, e.g. d*lr spike warnings).
"use strict";

const PALETTE = ["#2f6fde", "#e0582b", "#1d9a5a", "#8a4fd1", "#c7961a", "#0f8fa3"];

class LineChart {
  constructor(container, { log = false, height = 220 } = {}) {
    this.container = container;
    this.log = log;
    this.height = height;
    this.names = [];
    this.points = new Map();   // x -> {name: y}
    this.marks = [];
    this.plot = null;
  }

  add(x, values) {
    const row = this.points.get(x) || {};
    for (const [name, y] of Object.entries(values)) {
      if (typeof y !== "number" || !isFinite(y) || (this.log && y <= 0)) continue;
      if (!this.names.includes(name)) { this.names.push(name); this.destroy(); }
      row[name] = y;
    }
    if (Object.keys(row).length) this.points.set(x, row);
  }

  mark(x, label) {
    this.marks.push({ x, label });
    this.container.dataset.marks = String(this.marks.length);
  }

  clear() {
    this.points.clear(); this.marks = []; this.names = []; this.destroy();
    this.container.textContent = "";
    this.container.dataset.marks = "0";
  }

  destroy() { if (this.plot) { this.plot.destroy(); this.plot = null; } }

  get count() { return this.points.size; }

  data() {
    const xs = [...this.points.keys()].sort((a, b) => a - b);
    return [xs, ...this.names.map((n) => xs.map((x) => this.points.get(x)[n] ?? null))];
  }

  render() {
    if (!this.names.length) return;
    const data = this.data();
    if (this.plot) { this.plot.setData(data); return; }
    const marks = this.marks;
    const width = Math.max(300, this.container.clientWidth || 420);
    const opts = {
      width, height: this.height,
      scales: { x: { time: false }, y: this.log ? { distr: 3 } : {} },
      axes: [{ label: "step" }, { size: 60 }],
      series: [{ label: "step" }, ...this.names.map((n, i) => ({
        label: n, stroke: PALETTE[i % PALETTE.length], width: n.endsWith("smoothed") ? 2 : 1, spanGaps: true,
        points: { show: false },
      }))],
      hooks: {
        draw: [(u) => {  // marks: dashed vertical lines with their label
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#b3261e"; ctx.fillStyle = "#b3261e"; ctx.setLineDash([4, 3]);
          ctx.font = `${11 * devicePixelRatio}px sans-serif`;
          for (const m of marks) {
            const px = u.valToPos(m.x, "x", true);
            if (px < u.bbox.left || px > u.bbox.left + u.bbox.width) continue;
            ctx.beginPath(); ctx.moveTo(px, u.bbox.top); ctx.lineTo(px, u.bbox.top + u.bbox.height); ctx.stroke();
            ctx.fillText(m.label, px + 3, u.bbox.top + 12 * devicePixelRatio);
          }
          ctx.restore();
        }],
      },
    };
    this.container.textContent = "";
    this.plot = new uPlot(opts, data, this.container);
    this.container.dataset.points = String(data[0].length);
  }

  update() {
    this.render();
    this.container.dataset.points = String(this.points.size);
  }
}

// Exponential moving average, as TensorBoard's smoothing: weight 0.9 on the past.
function smoother(weight = 0.9) {
  let last = null;
  return (v) => {
    last = last === null ? v : last * weight + (1 - weight) * v;
    return last;
  };
}
