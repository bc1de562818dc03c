// Tapeline dashboard: panels read once, then kept current by events pushed over /api/stream (SSE).
"use strict";
const LW = window.LightweightCharts;
const $ = (sel) => document.querySelector(sel);
const state = { symbol: "", interval: "", latest: {}, chart: null, candles: null, markers: null, markerList: [], lastCandle: 0, control: null, pending: null };
window.tapelineSeen = {}; // decision event id -> Date.now() when shown (the browser test reads it)

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

const nsTime = (ns) => new Date(ns / 1e6).toISOString().replace("T", " ").slice(0, 19);
const fmt = (v) => (typeof v === "number" && !Number.isInteger(v) ? v.toFixed(Math.abs(v) < 10 ? 4 : 2) : v === null ? "—" : String(v));
const pct = (v) => (v === null || v === undefined ? "—" : (v * 100).toFixed(2) + "%");

function renderTable(target, panel, onRow) {
  target.replaceChildren();
  if (panel.error) { target.append(el("p", { class: "error" }, panel.error)); return; }
  if (!panel.rows.length) { target.append(el("p", { class: "empty" }, panel.empty || "nothing yet")); return; }
  const t = el("table", {}, el("tr", {}, ...panel.columns.filter((c) => c !== "event_id").map((c) => el("th", {}, c))));
  for (const row of panel.rows) {
    const tr = el("tr", {});
    panel.columns.forEach((c, i) => {
      if (c === "event_id") return;
      const v = row[i];
      const cls = typeof v === "number" ? "num" : ["BUY", "SELL", "HOLD", "BULLISH", "BEARISH", "NEUTRAL"].includes(v) ? v : "";
      tr.append(el("td", { class: cls }, fmt(v)));
    });
    if (onRow) { tr.style.cursor = "pointer"; tr.addEventListener("click", () => onRow(row, panel.columns)); }
    t.append(tr);
  }
  target.append(t);
}

// ---------------------------------------------------------------- panels, reloaded at most once a second each
const PANELS = ["positions", "orders", "fills", "breakers", "feeds", "alerts", "dead_letters", "news", "controls"];
const reloading = {};
async function reload(name) {
  if (reloading[name]) { reloading[name] = "again"; return; }
  reloading[name] = true;
  try {
    const target = $("#p-" + name);
    if (target) renderTable(target, await api("/api/panel/" + name));
  } catch (e) { console.warn(name, e); }
  setTimeout(() => { const again = reloading[name] === "again"; reloading[name] = false; if (again) reload(name); }, 1000);
}

// ---------------------------------------------------------------- decisions
function symbolCard(ticker) {
  let card = state.latest[ticker];
  if (!card) {
    card = el("div", { class: "sym", "data-ticker": ticker, onclick: () => selectSymbol(ticker) });
    state.latest[ticker] = card;
    const all = Object.keys(state.latest).sort();
    const box = $("#latest");
    box.replaceChildren(...all.map((t) => state.latest[t]));
    const sel = $("#symbol");
    sel.replaceChildren(...all.map((t) => el("option", { value: t }, t)));
    if (state.symbol) sel.value = state.symbol;
  }
  return card;
}

function showLatest(d) {
  const card = symbolCard(d.ticker);
  card.replaceChildren(
    el("b", {}, d.ticker), " ",
    el("span", { class: d.verdict }, d.verdict), " ",
    el("span", {}, (+d.confidence).toFixed(2)),
    el("div", { class: "why" }, el("small", {}, d.as_of)),
  );
  card.dataset.verdict = d.verdict;
  card.title = d.reasoning || "";
  if (state.symbol === d.ticker) card.classList.add("selected");
}

function signalsTable(signals) {
  if (!signals.length) return el("p", { class: "empty" }, "no agent signals");
  const panel = { columns: ["agent", "domain", "signal", "confidence", "summary", "key_factors"], rows: signals.map((s) => [s.agent, s.domain, s.signal, s.confidence, s.summary, (s.key_factors || []).join("; ")]) };
  const box = el("div", {});
  renderTable(box, panel);
  return box;
}

function decisionItem(id, ticker, asOf, verdict, confidence, reasoning, signals) {
  const det = el("details", {}, el("summary", {}, "agent signals"));
  det.addEventListener("toggle", async () => {
    if (!det.open || det.dataset.loaded) return;
    det.dataset.loaded = "1";
    if (signals) { det.append(signalsTable(signals)); return; }
    const box = el("div", {}); det.append(box);
    renderTable(box, await api("/api/panel/signals?arg=" + encodeURIComponent(id)));
  });
  return el("li", { "data-id": id, "data-ticker": ticker },
    el("b", {}, ticker), " ", el("span", { class: verdict }, verdict), " ", (+confidence).toFixed(2), " ",
    el("small", {}, asOf), el("div", { class: "why" }, reasoning), det);
}

function onDecision(env) {
  const y = env.synthesis, t = env.target.ticker, asOf = nsTime(env.ts_event);
  const li = decisionItem(env.event_id, t, asOf, y.verdict, y.confidence, y.reasoning, env.agent_signals || []);
  li.classList.add("fresh");
  const list = $("#live");
  list.prepend(li);
  while (list.children.length > 200) list.lastChild.remove();
  showLatest({ ticker: t, verdict: y.verdict, confidence: y.confidence, as_of: asOf, reasoning: y.reasoning });
  window.tapelineSeen[env.event_id] = Date.now();
  if (t === state.symbol && y.verdict !== "HOLD" && state.lastCandle) {
    state.markerList.push(marker({ time: state.lastCandle, verdict: y.verdict, confidence: y.confidence }));
    state.markers.setMarkers(state.markerList);
  }
}

async function loadDecisions() {
  const latest = await api("/api/panel/latest");
  if (!latest.rows.length) $("#latest").replaceChildren(el("p", { class: "empty" }, latest.empty || latest.error));
  for (const r of latest.rows) showLatest(Object.fromEntries(latest.columns.map((c, i) => [c, r[i]])));
  const recent = await api("/api/panel/decisions");
  const c = recent.columns;
  const items = recent.rows.map((r) => { const d = Object.fromEntries(c.map((k, i) => [k, r[i]])); return decisionItem(d.event_id, d.ticker, d.as_of, d.verdict, d.confidence, d.reasoning, null); });
  const list = $("#live");
  const live = [...list.children]; // pushed while loading: keep them on top
  list.replaceChildren(...live, ...items.filter((i) => !live.some((l) => l.dataset.id === i.dataset.id)));
  if (!state.symbol && latest.rows.length) selectSymbol(latest.rows[0][0]);
}

// ---------------------------------------------------------------- price chart
const chartOptions = { layout: { background: { color: "#171d24" }, textColor: "#d8dee6" }, grid: { vertLines: { color: "#222b36" }, horzLines: { color: "#222b36" } }, timeScale: { timeVisible: true, secondsVisible: false }, autoSize: true };
const marker = (m) => (m.verdict === "BUY"
  ? { time: m.time, position: "belowBar", color: "#26a69a", shape: "arrowUp", text: "B" }
  : { time: m.time, position: "aboveBar", color: "#ef5350", shape: "arrowDown", text: "S" });

async function selectSymbol(ticker) {
  state.symbol = ticker;
  $("#symbol").value = ticker;
  for (const [t, card] of Object.entries(state.latest)) card.classList.toggle("selected", t === ticker);
  const c = await api("/api/chart?symbol=" + encodeURIComponent(ticker));
  if (!state.chart) {
    state.chart = LW.createChart($("#chart"), chartOptions);
    state.candles = state.chart.addSeries(LW.CandlestickSeries, { upColor: "#26a69a", downColor: "#ef5350", wickUpColor: "#26a69a", wickDownColor: "#ef5350", borderVisible: false });
    state.markers = LW.createSeriesMarkers(state.candles, []);
  }
  state.candles.setData(c.candles);
  state.markerList = c.markers.map(marker);
  state.markers.setMarkers(state.markerList);
  state.lastCandle = c.candles.length ? c.candles[c.candles.length - 1].time : 0;
  state.interval = c.interval;
  state.chart.timeScale().fitContent();
  $("#chart-info").textContent = c.empty || `${c.interval} bars, ${c.markers.length} BUY/SELL decisions`;
  loadSimilar(ticker);
}

function onBar(b) {
  if (!state.chart || b.symbol !== state.symbol || b.interval !== state.interval) return;
  const time = Math.floor(b.start_ns / 1e9);
  if (time < state.lastCandle) return; // the series only takes the newest bar (or an update of it)
  state.candles.update({ time, open: b.open, high: b.high, low: b.low, close: b.close });
  state.lastCandle = time;
}

async function loadSimilar(ticker) {
  const box = $("#similar");
  box.replaceChildren(el("p", { class: "empty" }, "searching…"));
  try { renderTable(box, await api("/api/similar?symbol=" + encodeURIComponent(ticker))); } catch (e) { box.replaceChildren(el("p", { class: "error" }, e.message)); }
}

// ---------------------------------------------------------------- performance
let perfCharts = null;
async function loadPerformance() {
  const [p] = await api("/api/performance");
  const empty = $("#perf-empty");
  const none = !p || p.empty;
  for (const id of ["#equity", "#pnl", "#figures"]) $(id).hidden = none;
  if (none) { empty.hidden = false; empty.textContent = p ? p.empty : "no accounts"; return; }
  empty.hidden = true;
  $("#perf-account").textContent = "account " + p.account;
  const f = p.figures;
  $("#figures").replaceChildren(...[["P&L", f.pnl.toFixed(2)], ["return", pct(f.return)], ["max drawdown", pct(f.max_drawdown)], ["Sharpe", f.sharpe.toFixed(2)], ["Sortino", f.sortino.toFixed(2)], ["Calmar", f.calmar.toFixed(2)]].map(([k, v]) => el("div", {}, el("span", {}, k), el("b", {}, v))));
  if (!perfCharts) {
    const eq = LW.createChart($("#equity"), chartOptions), pnl = LW.createChart($("#pnl"), chartOptions);
    perfCharts = { equity: eq.addSeries(LW.LineSeries, { color: "#5b8def", lineWidth: 2 }), dd: eq.addSeries(LW.AreaSeries, { lineColor: "#ef5350", topColor: "rgba(239,83,80,0.05)", bottomColor: "rgba(239,83,80,0.4)", priceScaleId: "dd" }), pnl: pnl.addSeries(LW.HistogramSeries, {}) };
    eq.priceScale("dd").applyOptions({ scaleMargins: { top: 0.75, bottom: 0 } });
  }
  perfCharts.equity.setData(p.curve.map((c) => ({ time: c.time, value: c.equity })));
  perfCharts.dd.setData(p.curve.map((c) => ({ time: c.time, value: c.drawdown })));
  perfCharts.pnl.setData(p.curve.map((c) => ({ time: c.time, value: c.pnl, color: c.pnl >= 0 ? "#26a69a" : "#ef5350" })));
}

// ---------------------------------------------------------------- control (operator token, confirmation)
async function control(action, note, confirm) {
  const body = { action, operator: $("#operator").value, token: $("#token").value, note, confirm: confirm || "" };
  return api("/api/control", body);
}

async function askControl(action) {
  try {
    const r = await control(action, "", "");
    state.pending = { action, nonce: r.confirm };
    $("#confirm-text").textContent = r.summary;
    $("#confirm-note").value = "";
    $("#confirm").hidden = false;
  } catch (e) { alert(e.message); }
}

async function confirmControl() {
  const p = state.pending; state.pending = null;
  $("#confirm").hidden = true;
  try { const r = await control(p.action, $("#confirm-note").value, p.nonce); chatLine("a", r.detail); } catch (e) { alert(e.message); }
  reload("breakers"); reload("controls");
}

// ---------------------------------------------------------------- ask
function chatLine(cls, text) { const log = $("#chat-log"); log.append(el("div", { class: cls }, text)); log.scrollTop = log.scrollHeight; }
async function ask(ev) {
  ev.preventDefault();
  const q = $("#chat-input").value.trim();
  if (!q) return;
  $("#chat-input").value = "";
  chatLine("q", q);
  try {
    const r = await api("/api/ask", { question: q });
    chatLine("a", r.answer);
    if (r.control && state.control) askControl(r.control);
  } catch (e) { chatLine("a error", e.message); }
}

// ---------------------------------------------------------------- live stream
function connect() {
  const es = new EventSource("/api/stream");
  const pill = $("#live-state");
  es.onopen = () => { pill.textContent = "live"; pill.className = "pill on"; document.body.dataset.live = "1"; loadDecisions(); };
  es.onerror = () => { pill.textContent = "reconnecting…"; pill.className = "pill off"; document.body.dataset.live = ""; };
  es.addEventListener("decision", (e) => onDecision(JSON.parse(e.data)));
  es.addEventListener("bar", (e) => onBar(JSON.parse(e.data)));
  const on = (type, ...panels) => es.addEventListener(type, () => panels.forEach((p) => (p === "performance" ? loadPerformance() : reload(p))));
  on("breaker_tripped", "breakers"); on("breaker_resumed", "breakers");
  on("alert", "alerts"); on("heartbeat", "feeds");
  on("order_filled", "fills", "positions", "orders", "performance");
  on("operator_action", "controls");
}

async function main() {
  const info = await api("/api/control/info");
  state.control = info.enabled;
  $("#mode").textContent = info.enabled ? "operator controls on" : "view-only";
  $("#mode").className = "pill" + (info.enabled ? " operator" : "");
  $("#controls").hidden = !info.enabled;
  $("#mode").title = info.enabled ? "" : info.why;
  document.querySelectorAll("#controls button").forEach((b) => b.addEventListener("click", () => askControl(b.dataset.action)));
  $("#confirm-yes").addEventListener("click", confirmControl);
  $("#confirm-no").addEventListener("click", () => { state.pending = null; $("#confirm").hidden = true; });
  $("#symbol").addEventListener("change", (e) => selectSymbol(e.target.value));
  $("#chat-form").addEventListener("submit", ask);
  connect();
  PANELS.forEach(reload);
  loadPerformance();
}
main();
