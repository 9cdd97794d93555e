#!/usr/bin/env node
// Opens the adclick dashboard in Debian's headless Chromium, waits until the
// page has loaded its data, takes a full-page screenshot and prints what the
// page shows as one line of JSON:
//
//   {"chart": [[minuteIso, clicks], ...],
//    "plotted": {"minutes": [iso, ...], "clicks": [n, ...], "invalid": [n, ...],
//                "duplicates": [n, ...]},
//    "top": [[adId, count], ...], "health": {...},
//    "quality": {"params": {from, to, groupBy, ...}, "rows": [{id, clicks, invalid,
//                invalidClicks, invalidShare}, ...], "total": n, "shown": n},
//    "reach": {"params": {from, to, groupBy}, "rows": [{campaignId, uniqueUsers, exact}, ...]},
//    "errors": [...]}
//
// Usage:
//   node tests/browser/dashboard.mjs --url http://127.0.0.1:PORT/ --key API_KEY \
//        --screenshot out.png [--timeout-ms 20000] [--chromium /usr/bin/chromium]
//
// Exits 1 (message on stderr) when the page never becomes ready, or when any
// page error or console error occurred; exits 2 on bad arguments. Uses
// playwright-core only: no browser is downloaded.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import process from "node:process";
import { chromium } from "playwright-core";

const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function usage(message) {
  if (message) process.stderr.write(`dashboard.mjs: ${message}\n`);
  process.stderr.write(
    "usage: node tests/browser/dashboard.mjs --url http://127.0.0.1:PORT/ --key API_KEY " +
      "--screenshot out.png [--timeout-ms 20000] [--chromium /usr/bin/chromium]\n",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { url: null, key: null, screenshot: null, timeoutMs: 20_000, chromium: "/usr/bin/chromium" };
  const names = { "--url": "url", "--key": "key", "--screenshot": "screenshot", "--timeout-ms": "timeoutMs", "--chromium": "chromium" };
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf("=");
    if (arg.startsWith("--") && eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === "--help" || arg === "-h") usage();
    const name = names[arg];
    if (!name) usage(`unknown argument ${arg}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      value = argv[++i];
    }
    opts[name] = value;
  }
  if (!opts.url) usage("--url is required");
  if (!opts.key) usage("--key is required");
  if (!opts.screenshot) usage("--screenshot is required");
  opts.timeoutMs = Number(opts.timeoutMs);
  if (!Number.isFinite(opts.timeoutMs) || opts.timeoutMs <= 0) usage("--timeout-ms must be a positive number");
  return opts;
}

function pageUrl(base, key) {
  const url = new URL(base);
  url.searchParams.set("key", key);
  return url.toString();
}

/** Collects console errors and uncaught page errors as readable strings. */
function watchErrors(page, errors) {
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const loc = msg.location();
    const where = loc && loc.url ? ` (${loc.url}${loc.lineNumber ? `:${loc.lineNumber}` : ""})` : "";
    errors.push(`console: ${msg.text()}${where}`);
  });
  page.on("pageerror", (err) => errors.push(`pageerror: ${err && err.message ? err.message : String(err)}`));
  page.on("crash", () => errors.push("page crashed"));
}

/** What the page shows, as exposed by app.js. */
async function readDashboard(page) {
  return page.evaluate(() => {
    const d = window.__dashboard || {};
    return {
      chart: d.chart ?? null,
      plotted: d.plotted ?? null,
      top: d.top ?? null,
      health: d.health ?? null,
      quality: d.quality ?? null,
      alerts: d.alerts ?? null,
      reach: d.reach ?? null,
    };
  });
}

/** Why the page is not ready, from what it says on screen. */
async function pageSays(page) {
  try {
    return await page.evaluate(() => {
      const text = (sel) => {
        const node = document.querySelector(sel);
        return node && !node.hidden ? node.textContent.trim() : "";
      };
      return ["#banner", "#status", "#chart-error", "#top-error", "#health-error", "#quality-error", "#alerts-error", "#reach-error"]
        .map((sel) => [sel, text(sel)])
        .filter(([, t]) => t)
        .map(([sel, t]) => `${sel}: ${t}`)
        .join("; ");
    });
  } catch (err) {
    return `(could not read the page: ${err.message})`;
  }
}

/**
 * Screenshot and data that match: the page refreshes every 2 s, so read the
 * data before and after the screenshot and retry if a refresh came between.
 */
async function captureConsistent(page, screenshotPath) {
  let last = null;
  for (let attempt = 0; attempt < 5; attempt++) {
    const before = await readDashboard(page);
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    await page.screenshot({ path: screenshotPath, fullPage: true });
    const after = await readDashboard(page);
    last = after;
    if (JSON.stringify(before) === JSON.stringify(after)) return after;
  }
  return last;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const screenshotPath = resolve(opts.screenshot);
  const userDataDir = await mkdtemp(join(tmpdir(), "adclick-chromium-"));
  const errors = [];
  let context = null;
  let exitCode = 0;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: opts.chromium,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 900 },
      timezoneId: "UTC",
      locale: "en-US",
    });
    const page = context.pages()[0] ?? (await context.newPage());
    watchErrors(page, errors);

    await page.goto(pageUrl(opts.url, opts.key), { waitUntil: "domcontentloaded", timeout: opts.timeoutMs });
    try {
      await page.waitForFunction(() => document.body && document.body.dataset.ready === "1", null, {
        timeout: opts.timeoutMs,
        polling: 100,
      });
    } catch (err) {
      const says = await pageSays(page);
      await page.screenshot({ path: screenshotPath, fullPage: true }).catch(() => {});
      throw new Error(`page never became ready within ${opts.timeoutMs} ms${says ? ` — page shows ${says}` : ""}`);
    }

    const shown = await captureConsistent(page, screenshotPath);
    process.stdout.write(`${JSON.stringify({ ...shown, errors })}\n`);
    if (errors.length) {
      process.stderr.write(`dashboard.mjs: ${errors.length} page/console error(s):\n  ${errors.join("\n  ")}\n`);
      exitCode = 1;
    }
  } catch (err) {
    process.stderr.write(`dashboard.mjs: ${err && err.message ? err.message : err}\n`);
    if (errors.length) process.stderr.write(`  page/console errors:\n  ${errors.join("\n  ")}\n`);
    exitCode = 1;
  } finally {
    if (context) await context.close().catch(() => {});
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
  }
  process.exit(exitCode);
}

main();
