// adclick advertiser dashboard.
//
// Plain ES2020, no build step. Served at /assets/app.js next to the vendored
// uPlot (/assets/uplot.min.js), which defines the global `uPlot`.
//
// Every 2 s the page refreshes five panels: the clicks-per-minute chart
// (billable and invalid), the traffic-quality table over the chart's range, the
// top-ads table, the pipeline-health panel and the traffic alerts (admin keys;
// an advertiser's key is told so). The report table runs only when
// its form is submitted. After the first refresh in which all four panels
// loaded, <body data-ready="1"> is set; what the panels show is mirrored on
// window.__dashboard for tests.
//
// Every id and reason name comes from the server (ids from click traffic, so
// from anyone): the page shows them with textContent, never as HTML.
"use strict";

const REFRESH_MS = 2000;
const FETCH_TIMEOUT_MS = 8000;
const MINUTE_MS = 60_000;
const CHART_MINUTES = 60;
const TOP_COUNT = 10;
const KEY_STORAGE = "adclick.apiKey";

// Report dimensions: the groupBy value sent to the server, the key it uses in
// result rows, and the column header shown.
const DIMENSIONS = [
  { param: "minute", key: "minute", label: "Minute (UTC)", time: true },
  { param: "hour", key: "hour", label: "Hour (UTC)", time: true },
  { param: "day", key: "day", label: "Day (UTC)", time: true },
  { param: "ad_id", key: "adId", label: "Ad" },
  { param: "campaign_id", key: "campaignId", label: "Campaign" },
  { param: "advertiser_id", key: "advertiserId", label: "Advertiser" }, // admin keys only
  { param: "publisher_id", key: "publisherId", label: "Publisher" },
  { param: "country", key: "country", label: "Country" },
  { param: "device", key: "device", label: "Device" },
];
// Filter query parameters (same names as the groupBy values).
const FILTERS = ["ad_id", "campaign_id", "publisher_id", "country", "device"];

// Invalid-traffic reasons in precedence order: a click with several counts
// under the first. The server leaves out reasons with no clicks; a reason this
// page does not know (a newer server's) is shown after these.
const REASONS = ["known_bot", "datacenter", "no_user_agent", "headless", "ip_flood", "user_flood", "too_fast"];

// Traffic-quality groupings: the groupBy value, the row key, the column header.
const QUALITY_GROUPS = {
  publisher_id: { key: "publisherId", label: "Publisher" },
  campaign_id: { key: "campaignId", label: "Campaign" },
  country: { key: "country", label: "Country" },
};
// Rows shown at most (the server ranks by invalid share, highest first).
const QUALITY_ROWS = 50;

const state = {
  key: "",
  generation: 0, // bumped when the key changes; older answers are dropped
  filters: {}, // filters applied by the last report submit; the chart uses them too
  timer: null,
  running: false,
  rerun: false,
  ready: false,
  keyRejected: false, // the server answered 401: polling pauses until a key is submitted
  refreshes: 0,
  plot: null,
  resizeObserver: null,
  lastHealth: null,
};

// What the page shows, for tests and the curious.
window.__dashboard = { chart: [], plotted: null, top: [], health: null, quality: null, alerts: null, reach: null, report: null };

// ---------------------------------------------------------------- helpers

const $ = (selector) => document.querySelector(selector);
const intFmt = new Intl.NumberFormat("en-US");

function fmtInt(n) {
  return typeof n === "number" && Number.isFinite(n) ? intFmt.format(n) : "–";
}

/** RFC 3339 in UTC, without milliseconds when they are zero. */
function iso(ms) {
  return new Date(ms).toISOString().replace(".000Z", "Z");
}

function ceilMinute(ms) {
  return Math.ceil(ms / MINUTE_MS) * MINUTE_MS;
}

/** "2026-04-20T12:34" (UTC) for a datetime-local input. */
function toInputValue(ms) {
  return iso(ms).slice(0, 16);
}

/** Reads a datetime-local value as UTC; NaN when empty or malformed. */
function fromInputValue(value) {
  if (!value) return NaN;
  return Date.parse(value.length === 16 ? `${value}:00Z` : `${value}Z`);
}

/** "12:34:56" UTC. */
function clockUtc(ms) {
  return iso(ms).slice(11, 19);
}

/** Shows a server time string compactly: "2026-04-20 12:00", or a date for days. */
function fmtTimeCell(value, param) {
  if (typeof value !== "string") return String(value ?? "–");
  if (param === "day") return value.slice(0, 10);
  return value.replace("T", " ").replace(/(:00)?(\.0+)?Z$/, "");
}

/** A server instant (e.g. a watermark) to the second: "2026-04-20 12:34:56". */
function fmtInstant(value) {
  const ms = typeof value === "string" ? Date.parse(value) : NaN;
  return Number.isFinite(ms) ? iso(ms).slice(0, 19).replace("T", " ") : String(value ?? "–");
}

function fmtDuration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60_000);
  const seconds = Math.round((ms % 60_000) / 1000);
  return `${minutes} min ${seconds} s`;
}

/** Creates an element with text content and optional class. */
function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.append(cell);
  return tr;
}

function numCell(n) {
  return el("td", fmtInt(n), "num");
}

/** "12.5 %" for a share in [0, 1]. */
function fmtShare(share) {
  if (typeof share !== "number" || !Number.isFinite(share)) return "–";
  const pct = share * 100;
  return `${pct === 0 || pct === 100 ? pct.toFixed(0) : pct.toFixed(1)} %`;
}

/** An invalid-by-reason map as [[reason, n], ...]: precedence order, unknown reasons last. */
function reasonEntries(invalid) {
  if (!invalid || typeof invalid !== "object") return [];
  const entries = Object.entries(invalid).filter(([, n]) => typeof n === "number" && n !== 0);
  const rank = (r) => {
    const i = REASONS.indexOf(r);
    return i < 0 ? REASONS.length : i;
  };
  return entries.sort(([a], [b]) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
}

/** Invalid clicks of all reasons. */
function invalidTotal(invalid) {
  return reasonEntries(invalid).reduce((sum, [, n]) => sum + n, 0);
}

/** "ip_flood 3 · known_bot 1", or `none` when there are none. */
function fmtReasons(invalid, none = "none") {
  const entries = reasonEntries(invalid);
  return entries.length ? entries.map(([r, n]) => `${r} ${fmtInt(n)}`).join(" · ") : none;
}

/** Adds reason maps: {a: 1} + {a: 2, b: 1} = {a: 3, b: 1}. */
function addReasons(into, invalid) {
  for (const [r, n] of reasonEntries(invalid)) into[r] = (into[r] || 0) + n;
  return into;
}

/** Shows a panel's own error; a rejected key is said once, in the banner. */
function showPanelError(id, message) {
  if (message === "invalid API key") message = "";
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

function showBanner(message) {
  const node = $("#banner");
  node.textContent = message || "";
  node.hidden = !message;
}

function setStatus(message, isError = false) {
  const node = $("#status");
  node.textContent = message;
  node.classList.toggle("status-error", isError);
}

// ------------------------------------------------------------------- API

// ':' and ',' are legal in a query string; keeping them makes URLs readable.
function encodeParam(value) {
  return encodeURIComponent(value).replace(/%3A/gi, ":").replace(/%2C/gi, ",");
}

function buildUrl(path, params) {
  const parts = [];
  for (const [name, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    parts.push(`${encodeURIComponent(name)}=${encodeParam(String(value))}`);
  }
  return parts.length ? `${path}?${parts.join("&")}` : path;
}

/**
 * GETs a JSON API path with the bearer key. Never throws: resolves to
 * {ok: true, data} or {ok: false, status, message}. status 0 means the
 * request did not reach the server (or timed out).
 */
async function apiGet(path, params) {
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(buildUrl(path, params), {
      headers: { Authorization: `Bearer ${state.key}`, Accept: "application/json" },
      cache: "no-store",
      signal: controller.signal,
    });
  } catch (_) {
    clearTimeout(timeout);
    const message = controller.signal.aborted ? "request timed out" : "server unreachable";
    return { ok: false, status: 0, message };
  }
  let body = null;
  try {
    const text = await response.text();
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  } finally {
    clearTimeout(timeout);
  }
  if (response.status === 401) return { ok: false, status: 401, message: "invalid API key" };
  if (!response.ok) {
    const detail = body && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
    return { ok: false, status: response.status, message: detail };
  }
  if (body === null || typeof body !== "object") {
    return { ok: false, status: response.status, message: "unexpected answer (not JSON)" };
  }
  return { ok: true, status: response.status, data: body };
}

// ---------------------------------------------------------- health panel

async function refreshHealth(gen) {
  const result = await apiGet("/api/v1/health");
  if (gen !== state.generation) return { ...result, stale: true };
  if (!result.ok) {
    showPanelError("#health-error", result.message);
    return result;
  }
  showPanelError("#health-error", "");
  state.lastHealth = result.data;
  renderHealth(result.data);
  prefillReportRange(result.data);
  return result;
}

function renderHealth(health) {
  const tallies = health.tallies || {};
  const partitions = Array.isArray(health.partitions) ? health.partitions : [];
  const delay = health.watermark_delay_ms;

  const delayNode = $("#h-delay");
  delayNode.textContent = delay == null ? "no data yet" : fmtDuration(delay);
  delayNode.classList.toggle("warn", typeof delay === "number" && delay > 30_000);
  $("#h-watermark").textContent = health.watermark ? fmtInstant(health.watermark) : "none yet";
  $("#h-received").textContent = fmtInt(tallies.received);
  $("#h-counted").textContent = fmtInt(tallies.counted);
  $("#h-invalid").textContent = fmtInt(tallies.invalid);
  const byReason = tallies.invalid_by_reason || {};
  $("#h-invalid-reasons").textContent =
    typeof tallies.invalid === "number" ? `Invalid by reason (finalized windows): ${fmtReasons(byReason)}` : "";
  $("#h-duplicates").textContent = fmtInt(tallies.duplicates);
  $("#h-late").textContent = fmtInt(tallies.late);
  $("#h-dead").textContent = fmtInt(tallies.dead_lettered);
  $("#h-dead").classList.toggle("warn", (tallies.dead_lettered || 0) > 0);
  $("#h-workers").textContent = `${fmtInt(health.workers)} × ${fmtInt(health.processes)}`;
  // A supervised cluster restarts whole when a process dies: how often, and the last cause.
  const restarts = health.restarts || 0;
  const restartsNode = $("#h-restarts");
  restartsNode.textContent = health.supervised ? fmtInt(restarts) : "not supervised";
  restartsNode.title = health.last_restart_cause || "";
  restartsNode.classList.toggle("warn", restarts > 0);
  // Records deleted before they were read: counts are short of the topic, and nobody may miss it.
  const lost = health.lost_records || 0;
  const gaps = Array.isArray(health.gaps) ? health.gaps : [];
  $("#h-lost").textContent = fmtInt(lost);
  $("#h-lost").classList.toggle("warn", lost > 0);
  const warning = $("#gap-warning");
  warning.hidden = gaps.length === 0;
  warning.textContent = gaps.length
    ? `Degraded: ${fmtInt(lost)} records were deleted before they were read (` +
      gaps.map((g) => `${g.partition} offsets ${g.from}–${g.to}`).join(", ") +
      "). Counts are short of the topic."
    : "";

  const tbody = $("#partitions-table tbody");
  tbody.replaceChildren(
    ...partitions.map((p) => {
      const lag = numCell(p.lag);
      if ((p.lag || 0) > 10_000) lag.classList.add("warn");
      return row([numCell(p.partition), numCell(p.offset), numCell(p.high_watermark), lag]);
    }),
  );
  if (!partitions.length) {
    tbody.append(row([Object.assign(el("td", "no partitions assigned", "empty"), { colSpan: 4 })]));
  }
  $("#health-sub").textContent = `${partitions.length} partition${partitions.length === 1 ? "" : "s"}`;

  window.__dashboard.health = {
    watermark: health.watermark ?? null,
    watermark_delay_ms: delay ?? null,
    tallies: {
      received: tallies.received ?? null,
      counted: tallies.counted ?? null,
      invalid: tallies.invalid ?? null,
      invalid_by_reason: Object.fromEntries(reasonEntries(byReason)),
      duplicates: tallies.duplicates ?? null,
      late: tallies.late ?? null,
      dead_lettered: tallies.dead_lettered ?? null,
    },
    partitions: partitions.map((p) => ({
      partition: p.partition,
      offset: p.offset,
      high_watermark: p.high_watermark,
      lag: p.lag,
    })),
    workers: health.workers ?? null,
    processes: health.processes ?? null,
    status: health.status ?? null,
    lost_records: lost,
    supervised: health.supervised ?? null,
    restarts: health.supervised ? restarts : null,
    last_restart_cause: health.last_restart_cause ?? null,
    gap_warning: gaps.length ? warning.textContent : null,
  };
}

// ----------------------------------------------------------- chart panel

/** The chart covers the 60 minutes ending at the watermark rounded up to a minute. */
function chartRange(health) {
  const watermark = health && health.watermark ? Date.parse(health.watermark) : NaN;
  const to = ceilMinute(Number.isFinite(watermark) ? watermark : Date.now());
  return { from: to - CHART_MINUTES * MINUTE_MS, to, atWatermark: Number.isFinite(watermark) };
}

async function refreshChart(gen, health) {
  const range = chartRange(health);
  const params = { from: iso(range.from), to: iso(range.to), groupBy: "minute", ...state.filters };
  const result = await apiGet("/api/v1/reports/clicks", params);
  if (gen !== state.generation) return { ...result, stale: true };
  if (result.ok && !Array.isArray(result.data.rows)) {
    result.ok = false;
    result.message = "unexpected answer (no rows)";
  }
  if (!result.ok) {
    showPanelError("#chart-error", result.message);
    return result;
  }
  showPanelError("#chart-error", "");
  renderChart(result.data, range);
  return result;
}

/**
 * Turns the API rows into uPlot's columns. Minutes without a row had no
 * clicks and are plotted as 0; every row the API returned is plotted at its
 * own minute.
 */
function chartColumns(rows, range) {
  const byMinute = new Map();
  for (const r of rows) byMinute.set(Date.parse(r.minute), r);
  const minutes = new Set();
  for (let t = range.from; t < range.to; t += MINUTE_MS) minutes.add(t);
  for (const t of byMinute.keys()) if (Number.isFinite(t)) minutes.add(t);
  const xs = [...minutes].sort((a, b) => a - b);
  const clicks = xs.map((t) => byMinute.get(t)?.clicks ?? 0);
  const duplicates = xs.map((t) => byMinute.get(t)?.duplicates ?? 0);
  const invalid = xs.map((t) => invalidTotal(byMinute.get(t)?.invalid));
  return [xs.map((t) => t / 1000), clicks, invalid, duplicates];
}

function renderChart(data, range) {
  const rows = data.rows;
  const columns = chartColumns(rows, range);
  drawPlot(columns);

  const filters = Object.entries(state.filters).map(([k, v]) => `${k}=${v}`);
  const parts = [
    `${fmtTimeCell(iso(range.from))} – ${fmtTimeCell(iso(range.to))} UTC`,
    range.atWatermark ? "ending at the watermark" : "no watermark yet: ending now",
  ];
  if (filters.length) parts.push(`filtered by ${filters.join(", ")}`);
  if (data.complete === false) parts.push("latest minute still filling");
  const total = rows.reduce((sum, r) => sum + (r.clicks || 0), 0);
  const invalid = rows.reduce((sum, r) => sum + invalidTotal(r.invalid), 0);
  parts.push(`${fmtInt(total)} billable clicks`, `${fmtInt(invalid)} invalid`);
  $("#chart-sub").textContent = parts.join(" · ");

  window.__dashboard.chart = rows.map((r) => [r.minute, r.clicks]);
  window.__dashboard.plotted = {
    minutes: columns[0].map((s) => iso(s * 1000)),
    clicks: columns[1],
    invalid: columns[2],
    duplicates: columns[3],
  };
}

function plotSize() {
  const width = Math.max(320, $("#chart").clientWidth);
  return { width, height: 280 };
}

function drawPlot(columns) {
  if (typeof window.uPlot !== "function") throw new Error("uPlot did not load");
  if (state.plot) {
    state.plot.setData(columns);
    return;
  }
  const value = (u, v) => (v == null ? "–" : fmtInt(v));
  const options = {
    ...plotSize(),
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: true },
      y: { range: (u, min, max) => [0, Math.max(1, Math.ceil((max || 0) * 1.1))] },
    },
    series: [
      { label: "minute (UTC)", value: (u, ts) => (ts == null ? "–" : fmtTimeCell(iso(ts * 1000))) },
      { label: "billable clicks", stroke: "#2563eb", width: 2, fill: "rgba(37, 99, 235, 0.08)", value },
      { label: "invalid", stroke: "#dc2626", width: 1.5, fill: "rgba(220, 38, 38, 0.06)", points: { show: false }, value },
      { label: "duplicates", stroke: "#d97706", width: 1.5, dash: [4, 3], points: { show: false }, value },
    ],
    axes: [
      { stroke: "#475569", grid: { stroke: "#e2e8f0" }, values: (u, ticks) => ticks.map((t) => iso(t * 1000).slice(11, 16)) },
      { stroke: "#475569", grid: { stroke: "#e2e8f0" }, size: 64, values: (u, ticks) => ticks.map((t) => fmtInt(t)) },
    ],
  };
  state.plot = new uPlot(options, columns, $("#chart"));
  if (!state.resizeObserver) {
    state.resizeObserver = new ResizeObserver(resizePlot);
    state.resizeObserver.observe($("#chart"));
  }
}

function resizePlot() {
  if (!state.plot) return;
  const size = plotSize();
  if (size.width !== state.plot.width) state.plot.setSize(size);
}

function clearChart() {
  if (state.plot) {
    state.plot.destroy();
    state.plot = null;
  }
  $("#chart-sub").textContent = "last 60 minutes";
  window.__dashboard.chart = [];
  window.__dashboard.plotted = null;
}

// ------------------------------------------------ traffic-quality panel

function qualityGroup() {
  const checked = document.querySelector('#quality-by input[name="quality-by"]:checked');
  return checked && QUALITY_GROUPS[checked.value] ? checked.value : "publisher_id";
}

/** The invalid share per group over the chart's range, with the chart's filters. */
async function refreshQuality(gen, health) {
  const range = chartRange(health);
  const groupBy = qualityGroup();
  const params = { from: iso(range.from), to: iso(range.to), groupBy, ...state.filters };
  const result = await apiGet("/api/v1/reports/traffic_quality", params);
  if (gen !== state.generation) return { ...result, stale: true };
  if (result.ok && !Array.isArray(result.data.rows)) {
    result.ok = false;
    result.message = "unexpected answer (no rows)";
  }
  if (!result.ok) {
    showPanelError("#quality-error", result.message);
    return result;
  }
  showPanelError("#quality-error", "");
  renderQuality(result.data, params, range);
  return result;
}

/** A share as a number and a small bar (widths set as styles, text as text). */
function shareCell(share) {
  const td = el("td", null, "num");
  const wrap = el("span", null, "share");
  const bar = el("span", null, "share-bar");
  const fill = el("span", null, "share-fill");
  const value = typeof share === "number" && Number.isFinite(share) ? Math.min(1, Math.max(0, share)) : 0;
  fill.style.width = `${(value * 100).toFixed(1)}%`;
  if (value >= 0.5) fill.classList.add("share-high");
  bar.append(fill);
  wrap.append(bar, el("span", fmtShare(share), "share-text"));
  td.append(wrap);
  return td;
}

function renderQuality(data, params, range) {
  const group = QUALITY_GROUPS[params.groupBy];
  const all = data.rows;
  const rows = all.slice(0, QUALITY_ROWS);
  $("#quality-dim").textContent = group.label;

  const tbody = $("#quality-table tbody");
  tbody.replaceChildren(
    ...rows.map((r) => {
      const invalid = typeof r.invalidClicks === "number" ? r.invalidClicks : invalidTotal(r.invalid);
      const reasons = el("td", fmtReasons(r.invalid, "–"), "reasons");
      return row([el("td", r[group.key] ?? "–"), numCell(r.clicks), numCell(invalid), shareCell(r.invalidShare), reasons]);
    }),
  );
  if (!rows.length) {
    tbody.append(row([Object.assign(el("td", "no clicks in this range", "empty"), { colSpan: 5 })]));
  }

  const billable = all.reduce((s, r) => s + (r.clicks || 0), 0);
  const byReason = all.reduce((acc, r) => addReasons(acc, r.invalid), {});
  const invalid = invalidTotal(byReason);
  const share = billable + invalid > 0 ? invalid / (billable + invalid) : 0;
  const filters = Object.entries(state.filters).map(([k, v]) => `${k}=${v}`);
  const parts = [
    `${fmtTimeCell(iso(range.from))} – ${fmtTimeCell(iso(range.to))} UTC (the chart's range)`,
    `${fmtInt(invalid)} invalid of ${fmtInt(billable + invalid)} clicks: ${fmtShare(share)}`,
  ];
  if (all.length > rows.length) parts.push(`the ${fmtInt(rows.length)} highest shares of ${fmtInt(all.length)}`);
  if (filters.length) parts.push(`filtered by ${filters.join(", ")}`);
  if (data.complete === false) parts.push("latest minute still filling");
  $("#quality-sub").textContent = parts.join(" · ");
  $("#quality-reasons").textContent = `Invalid by reason: ${fmtReasons(byReason)}`;

  window.__dashboard.quality = {
    params,
    rows: rows.map((r) => ({
      id: r[group.key] ?? null,
      clicks: r.clicks ?? null,
      invalid: Object.fromEntries(reasonEntries(r.invalid)),
      invalidClicks: r.invalidClicks ?? null,
      invalidShare: r.invalidShare ?? null,
    })),
    total: all.length,
    shown: tbody.querySelectorAll("tr").length,
  };
}

function clearQuality() {
  $("#quality-table tbody").replaceChildren();
  $("#quality-sub").textContent = "the chart's range";
  $("#quality-reasons").textContent = "";
  window.__dashboard.quality = null;
}

// ----------------------------------------------------------- reach panel

const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;
const REACH_ROWS = 50;

/** Today's (UTC) distinct users per campaign, billable, up to the watermark's next hour:
 * reach is kept by the hour, from minutes once they are final. */
async function refreshReach(gen, health) {
  const watermark = health && health.watermark ? Date.parse(health.watermark) : Date.now();
  const from = Math.floor(watermark / DAY_MS) * DAY_MS;
  const to = Math.max(from + HOUR_MS, Math.ceil(watermark / HOUR_MS) * HOUR_MS);
  const params = { from: iso(from), to: iso(to), groupBy: "campaign_id" };
  // Reach is off in this aggregator (aggregator.reach = false): health says so, and reach
  // queries would answer 409.
  const off = health && health.reach === false;
  const result = off ? { ok: false, status: 409, message: "reach is off" } : await apiGet("/api/v1/reports/reach", params);
  if (gen !== state.generation) return { ...result, stale: true };
  if (result.ok && !Array.isArray(result.data.rows)) {
    result.ok = false;
    result.message = "unexpected answer (no rows)";
  }
  if (!result.ok && result.status === 409) {
    // The card says reach is off.
    showPanelError("#reach-error", "");
    const cell = el("td", "reach is off in this aggregator (aggregator.reach = false)", "empty");
    $("#reach-table tbody").replaceChildren(row([Object.assign(cell, { colSpan: 3 })]));
    $("#reach-sub").textContent = "off: no distinct users are kept";
    window.__dashboard.reach = { params, off: true, message: result.message, rows: [] };
    return { ok: true, status: result.status };
  }
  if (!result.ok) {
    showPanelError("#reach-error", result.message);
    return result;
  }
  showPanelError("#reach-error", "");
  const rows = [...result.data.rows].sort((a, b) => (b.uniqueUsers || 0) - (a.uniqueUsers || 0));
  const shown = rows.slice(0, REACH_ROWS);
  const tbody = $("#reach-table tbody");
  tbody.replaceChildren(
    ...shown.map((r) => row([el("td", r.campaignId ?? "–"), numCell(r.uniqueUsers), el("td", r.exact ? "yes" : "±0.6 %")])),
  );
  if (!shown.length) {
    tbody.append(row([Object.assign(el("td", "no users yet today", "empty"), { colSpan: 3 })]));
  }
  const parts = [`${fmtTimeCell(iso(from))} – ${fmtTimeCell(iso(to))} UTC`, "billable clicks' users, final minutes"];
  if (rows.length > shown.length) parts.push(`the ${fmtInt(shown.length)} largest of ${fmtInt(rows.length)}`);
  $("#reach-sub").textContent = parts.join(" · ");
  window.__dashboard.reach = { params, rows: shown.map((r) => ({ campaignId: r.campaignId, uniqueUsers: r.uniqueUsers, exact: r.exact })) };
  return result;
}

function clearReach() {
  $("#reach-table tbody").replaceChildren();
  window.__dashboard.reach = null;
}

// ---------------------------------------------------------- alerts panel

const ALERT_HOURS = 24;
const ALERT_ROWS = 100;

/** Traffic alerts of the 24 h of event time up to the chart's end, newest first. */
async function refreshAlerts(gen, health) {
  const range = chartRange(health);
  const params = { from: iso(range.to - ALERT_HOURS * 60 * MINUTE_MS), to: iso(range.to) };
  const result = await apiGet("/api/v1/alerts", params);
  if (gen !== state.generation) return { ...result, stale: true };
  if (result.status === 403) {
    // An advertiser's key: alerts span advertisers. Not a failure of the page.
    clearAlerts("traffic alerts need an admin key");
    return { ok: true, status: 403 };
  }
  if (result.ok && !Array.isArray(result.data.alerts)) {
    result.ok = false;
    result.message = "unexpected answer (no alerts)";
  }
  if (!result.ok) {
    showPanelError("#alerts-error", result.message);
    return result;
  }
  showPanelError("#alerts-error", "");
  renderAlerts(result.data.alerts, params);
  return result;
}

function fmtNumber(x) {
  return typeof x === "number" && Number.isFinite(x) ? x.toLocaleString("en-US", { maximumFractionDigits: 3 }) : "–";
}

function renderAlerts(alerts, params) {
  const newest = alerts.slice().reverse().slice(0, ALERT_ROWS);
  const tbody = $("#alerts-table tbody");
  tbody.replaceChildren(
    ...newest.map((a) => {
      const where = `${a.dimension} ${Array.isArray(a.key) ? a.key.join(" × ") : ""}`;
      const severity = el("td", a.severity, a.severity === "critical" ? "severity-critical" : "severity-warning");
      return row([
        el("td", fmtTimeCell(a.minute, "minute")),
        el("td", a.kind),
        severity,
        el("td", where),
        el("td", fmtNumber(a.observed), "num"),
        el("td", fmtNumber(a.baseline), "num"),
        el("td", fmtNumber(a.ratio), "num"),
      ]);
    }),
  );
  if (!newest.length) {
    tbody.append(row([Object.assign(el("td", "no alerts", "empty"), { colSpan: 7 })]));
  }
  const critical = alerts.filter((a) => a.severity === "critical").length;
  $("#alerts-sub").textContent = `last ${ALERT_HOURS} hours of event time · ${fmtInt(alerts.length)} alerts, ${fmtInt(critical)} critical`;
  window.__dashboard.alerts = {
    params,
    rows: newest.map((a) => ({
      kind: a.kind,
      severity: a.severity,
      dimension: a.dimension,
      key: a.key,
      minute_ms: a.minute_ms,
      observed: a.observed,
      baseline: a.baseline,
    })),
    total: alerts.length,
    shown: tbody.querySelectorAll("tr").length,
  };
}

function clearAlerts(note = "last 24 hours of event time") {
  $("#alerts-table tbody").replaceChildren();
  $("#alerts-sub").textContent = note;
  window.__dashboard.alerts = null;
}

// -------------------------------------------------------- top-ads panel

function topParams() {
  const country = $("#top-country").value.trim();
  return {
    count: TOP_COUNT,
    window: $("#top-window").value,
    filter: country ? `country:${country}` : "",
  };
}

async function refreshTop(gen) {
  const params = topParams();
  const result = await apiGet("/ads/popular_ads", params);
  if (gen !== state.generation) return { ...result, stale: true };
  if (result.ok && !(Array.isArray(result.data.ad_ids) && Array.isArray(result.data.counts))) {
    result.ok = false;
    result.message = "unexpected answer (no ad_ids/counts)";
  }
  if (!result.ok) {
    showPanelError("#top-error", result.message);
    return result;
  }
  showPanelError("#top-error", "");
  renderTop(result.data, params);
  return result;
}

function renderTop(data, params) {
  const top = data.ad_ids.map((id, i) => [id, data.counts[i]]);
  const tbody = $("#top-table tbody");
  tbody.replaceChildren(...top.map(([id, count], i) => row([numCell(i + 1), el("td", id), numCell(count)])));
  if (!top.length) {
    tbody.append(row([Object.assign(el("td", "no clicks in this window", "empty"), { colSpan: 3 })]));
  }
  const minutes = data.window_minutes ?? Number(params.window);
  const parts = [`last ${minutes} min`];
  if (params.filter) parts.push(params.filter.replace(":", " "));
  if (data.update_time_minute) parts.push(`as of ${fmtTimeCell(data.update_time_minute)} UTC`);
  $("#top-sub").textContent = parts.join(" · ");
  window.__dashboard.top = top;
}

function clearTop() {
  $("#top-table tbody").replaceChildren();
  $("#top-sub").textContent = "";
  window.__dashboard.top = [];
}

// --------------------------------------------------------- report panel

/** Fills the report range with the chart's hour, once, when it is still empty. */
function prefillReportRange(health) {
  const fromInput = $("#r-from");
  const toInput = $("#r-to");
  if (fromInput.value || toInput.value) return;
  const range = chartRange(health);
  fromInput.value = toInputValue(range.from);
  toInput.value = toInputValue(range.to);
}

function readReportForm() {
  const form = $("#report-form");
  const from = fromInputValue($("#r-from").value);
  const to = fromInputValue($("#r-to").value);
  const groupBy = [...form.querySelectorAll('input[name="groupBy"]:checked')].map((c) => c.value);
  const filters = {};
  for (const name of FILTERS) {
    const value = form.elements[name].value.trim();
    if (value) filters[name] = value;
  }
  return { from, to, groupBy, filters };
}

async function runReport(event) {
  event.preventDefault();
  const { from, to, groupBy, filters } = readReportForm();
  state.filters = filters;
  requestRefresh(); // the chart follows the filters

  if (!Number.isFinite(from) || !Number.isFinite(to)) {
    showPanelError("#report-error", "enter both a start and an end time");
    return;
  }
  if (from >= to) {
    showPanelError("#report-error", "the start must be before the end");
    return;
  }
  const params = { from: iso(from), to: iso(to), groupBy: groupBy.join(","), ...filters };
  const gen = state.generation;
  const button = $('#report-form button[type="submit"]');
  button.disabled = true;
  $("#report-sub").textContent = "running…";
  const result = await apiGet("/api/v1/reports/clicks", params);
  button.disabled = false;
  if (gen !== state.generation) return;
  if (result.ok && !Array.isArray(result.data.rows)) {
    result.ok = false;
    result.message = "unexpected answer (no rows)";
  }
  if (!result.ok) {
    showPanelError("#report-error", result.message);
    $("#report-sub").textContent = "";
    if (result.status === 401) showBanner("invalid API key");
    return;
  }
  showPanelError("#report-error", "");
  renderReport(result.data, groupBy, params);
}

/** Columns: the chosen dimensions (and any other the rows carry), then counts. */
function reportColumns(rows, groupBy) {
  return DIMENSIONS.filter((d) => groupBy.includes(d.param) || rows.some((r) => d.key in r));
}

function renderReport(data, groupBy, params) {
  const rows = data.rows;
  const dims = reportColumns(rows, groupBy);
  const thead = $("#report-table thead");
  const headers = [
    ...dims.map((d) => el("th", d.label)),
    el("th", "Billable", "num"),
    el("th", "Invalid", "num"),
    el("th", "Duplicates", "num"),
  ];
  thead.replaceChildren(row(headers));

  const tbody = $("#report-table tbody");
  tbody.replaceChildren(
    ...rows.map((r) =>
      row([
        ...dims.map((d) => el("td", d.time ? fmtTimeCell(r[d.key], d.param) : r[d.key] ?? "–")),
        numCell(r.clicks),
        Object.assign(numCell(invalidTotal(r.invalid)), { title: fmtReasons(r.invalid) }),
        numCell(r.duplicates),
      ]),
    ),
  );
  if (!rows.length) {
    tbody.append(row([Object.assign(el("td", "no clicks match", "empty"), { colSpan: dims.length + 3 })]));
  }

  const clicks = rows.reduce((s, r) => s + (r.clicks || 0), 0);
  const duplicates = rows.reduce((s, r) => s + (r.duplicates || 0), 0);
  const invalid = rows.reduce((s, r) => s + invalidTotal(r.invalid), 0);
  const parts = [
    `${fmtInt(rows.length)} row${rows.length === 1 ? "" : "s"}`,
    `${fmtInt(clicks)} billable clicks`,
    `${fmtInt(invalid)} invalid`,
    `${fmtInt(duplicates)} duplicates`,
  ];
  if (data.complete === false) {
    parts.push(data.watermark ? `partial: final up to ${fmtInstant(data.watermark)} UTC` : "partial");
  } else if (data.complete === true) {
    parts.push("complete");
  }
  $("#report-sub").textContent = parts.join(" · ");
  window.__dashboard.report = { params, rows };
}

function clearReport() {
  $("#report-table thead").replaceChildren();
  $("#report-table tbody").replaceChildren();
  $("#report-sub").textContent = "";
  showPanelError("#report-error", "");
  window.__dashboard.report = null;
}

/** The server groups by at most one of minute, hour and day. */
function keepOneTimeGrouping(event) {
  const box = event.target;
  if (!box.checked || !["minute", "hour", "day"].includes(box.value)) return;
  for (const other of $("#report-form").querySelectorAll('input[name="groupBy"]')) {
    if (other !== box && ["minute", "hour", "day"].includes(other.value)) other.checked = false;
  }
}

function clearFilters() {
  const form = $("#report-form");
  for (const name of FILTERS) form.elements[name].value = "";
  state.filters = {};
  requestRefresh();
}

// ------------------------------------------------------------ refreshing

async function refreshHealthAndChart(gen) {
  const health = await refreshHealth(gen);
  const data = health.ok ? health.data : null;
  const [chart, quality, alerts, reach] = await Promise.all([
    refreshChart(gen, data),
    refreshQuality(gen, data),
    refreshAlerts(gen, data),
    refreshReach(gen, data),
  ]);
  return [health, chart, quality, alerts, reach];
}

async function refreshAll() {
  if (!state.key) {
    setStatus("enter an API key to see your clicks");
    return;
  }
  const gen = state.generation;
  const [[health, chart, quality, alerts, reach], top] = await Promise.all([refreshHealthAndChart(gen), refreshTop(gen)]);
  const results = [health, chart, quality, alerts, reach, top];
  if (results.some((r) => r.stale)) return;

  if (results.some((r) => r.status === 401)) {
    // Stop polling with a key the server rejects; "Use key" tries again.
    state.keyRejected = true;
    showBanner("invalid API key");
    setStatus("invalid API key", true);
    return;
  }
  showBanner("");
  const failed = results.filter((r) => !r.ok);
  if (failed.length) {
    setStatus(`refresh failed: ${failed[0].message}`, true);
    return;
  }
  state.refreshes += 1;
  document.body.dataset.refreshes = String(state.refreshes);
  setStatus(`updated ${clockUtc(Date.now())} UTC`);
  if (!state.ready) {
    state.ready = true;
    document.body.dataset.ready = "1";
  }
}

/** One refresh at a time; a request during a refresh runs right after it. */
async function tick() {
  clearTimeout(state.timer);
  if (state.running) {
    state.rerun = true;
    return;
  }
  state.running = true;
  try {
    await refreshAll();
  } catch (err) {
    // A bug in this page, not a server answer: say so, and let tests see it.
    console.error("dashboard refresh failed:", err);
    setStatus(`page error: ${err && err.message}`, true);
  } finally {
    state.running = false;
    const delay = state.rerun ? 0 : REFRESH_MS;
    state.rerun = false;
    if (!state.keyRejected || delay === 0) state.timer = setTimeout(tick, delay);
  }
}

function requestRefresh() {
  tick();
}

// ------------------------------------------------------------------- key

function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch (_) {
    // storage may be disabled; the key then lasts for this page only
  }
}

function loadKey() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("key");
  if (fromUrl) {
    storeKey(fromUrl);
    // Keep the key out of the address bar and history.
    params.delete("key");
    const query = params.toString();
    history.replaceState(null, "", `${location.pathname}${query ? `?${query}` : ""}${location.hash}`);
    return fromUrl;
  }
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch (_) {
    return "";
  }
}

function clearPanels() {
  clearChart();
  clearTop();
  clearQuality();
  clearReach();
  clearAlerts();
  clearReport();
  window.__dashboard.health = null;
  $("#partitions-table tbody").replaceChildren();
  for (const id of ["#h-delay", "#h-watermark", "#h-received", "#h-counted", "#h-invalid", "#h-duplicates", "#h-late", "#h-dead", "#h-lost", "#h-workers"]) {
    $(id).textContent = "–";
  }
  $("#h-invalid-reasons").textContent = "";
  for (const id of ["#chart-error", "#top-error", "#health-error", "#quality-error", "#alerts-error", "#reach-error"]) {
    showPanelError(id, "");
  }
}

function useKey(event) {
  event.preventDefault();
  const key = $("#api-key").value.trim();
  state.keyRejected = false;
  if (key === state.key) {
    requestRefresh();
    return;
  }
  state.key = key;
  state.generation += 1;
  storeKey(key);
  showBanner("");
  clearPanels();
  requestRefresh();
}

// ------------------------------------------------------------------ start

function start() {
  state.key = loadKey();
  $("#api-key").value = state.key;

  $("#key-form").addEventListener("submit", useKey);
  $("#report-form").addEventListener("submit", runReport);
  $("#report-reset").addEventListener("click", clearFilters);
  for (const box of document.querySelectorAll('#report-form input[name="groupBy"]')) {
    box.addEventListener("change", keepOneTimeGrouping);
  }
  $("#top-form").addEventListener("submit", (e) => {
    e.preventDefault();
    requestRefresh();
  });
  $("#top-window").addEventListener("change", requestRefresh);
  for (const radio of document.querySelectorAll('#quality-by input[name="quality-by"]')) {
    radio.addEventListener("change", requestRefresh);
  }
  $("#top-country").addEventListener("change", requestRefresh);

  if (typeof window.uPlot !== "function") {
    showBanner("the chart library did not load (/assets/uplot.min.js)");
  }
  requestRefresh();
}

start();
