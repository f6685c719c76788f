// Shared helpers: DOM building, the JSON API, messages and the page router (#setup, #run/ID, #results/ID).
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const resp = await fetch(path, opts);
  let data = {};
  try { data = await resp.json(); } catch (e) { data = { error: `HTTP ${resp.status}` }; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

function toast(message, isError) {
  const t = $("toast");
  t.textContent = message;
  t.className = isError ? "error" : "";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.textContent = ""; }, isError ? 12000 : 5000);
}

function fileUrl(path, download) {
  return "/api/file?path=" + encodeURIComponent(path) + (download ? "&download=1" : "");
}

function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  if (typeof v !== "number") return String(v);
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(2);
  return Number.isInteger(v) ? String(v) : v.toFixed(4);
}

function fmtTime(s) {
  if (!isFinite(s) || s < 0) return "-";
  s = Math.round(s);
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  return h ? `${h}h ${m % 60}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

const App = {
  info: null,
  pages: {},          // name -> { show(arg) }
  register(name, page) { this.pages[name] = page; },
  route() {
    const [name, arg] = (location.hash.slice(1) || "setup").split("/");
    const page = this.pages[name] ? name : "setup";
    for (const p of ["setup", "run", "results"]) {
      $("page-" + p).classList.toggle("hidden", p !== page);
      $("tab-" + p).classList.toggle("active", p === page);
    }
    this.pages[page].show(arg ? decodeURIComponent(arg) : null);
  },
  async start() {
    this.info = await api("/api/info");
    for (const page of Object.values(this.pages)) if (page.init) page.init(this.info);
    window.addEventListener("hashchange", () => this.route());
    this.route();
  },
};

window.addEventListener("DOMContentLoaded", () => {
  App.start().catch((e) => toast(e.message, true));
});
