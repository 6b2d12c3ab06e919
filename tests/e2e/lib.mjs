// Shared helpers for the browser end-to-end tests: start the device with a temporary config, launch
// Debian's Chromium through playwright-core, read the test pattern's timestamp code from rendered frames,
// report PASS/FAIL lines, and clean up whatever happens.
//
// Every test runs inside a loopback-only network namespace made by run.sh (unshare -n); otherwise ICE
// would pick this machine's real interfaces. assertLoopbackOnly() refuses to run anywhere else.
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, '../..');
export const ARTIFACTS = join(HERE, 'artifacts');
export const BIN = resolve(ROOT, process.env.PEERCAM_BIN || 'target/release/peercam');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
mkdirSync(ARTIFACTS, { recursive: true });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- cleanup: runs on normal end, exceptions and signals ------------------------------------

const cleanups = [];
const children = new Set();
const crashes = [];   // service exits that no stop() asked for
export const onCleanup = (fn) => cleanups.push(fn);

export async function cleanup() {
  while (cleanups.length) {
    const fn = cleanups.pop();
    try { await Promise.race([fn(), sleep(5000)]); } catch { /* best effort */ }
  }
}
// Last resort (also covers process.exit from anywhere): no child may outlive the test.
process.on('exit', () => { for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } } });
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => { console.log(`\n${sig}: cleaning up`); cleanup().finally(() => process.exit(130)); });
}

// ---- reporting -------------------------------------------------------------------------------

// Runs one test file: `body(t)` uses t.check(); prints "name: N passed, M failed" last and exits 0/1.
export async function main(name, body, { timeoutMs = 120000 } = {}) {
  const counts = { passed: 0, failed: 0 };
  const t = {
    check(ok, label, detail = '') {
      counts[ok ? 'passed' : 'failed']++;
      console.log(`${ok ? 'PASS' : 'FAIL'} ${label}${detail ? ` — ${detail}` : ''}`);
      return ok;
    },
    info: (msg) => console.log(`     ${msg}`),
  };
  const cpuAtStart = machineCpu();
  const watchdog = setTimeout(() => {
    console.log(`FAIL ${name}: timed out after ${timeoutMs / 1000} s`);
    cleanup().finally(() => process.exit(1));
  }, timeoutMs);
  try {
    assertLoopbackOnly();
    await body(t);
  } catch (err) {
    t.check(false, `${name} aborted`, err?.stack || String(err));
  } finally {
    for (const c of crashes) t.check(false, 'service kept running', `it exited on its own: ${JSON.stringify(c)}`);
    clearTimeout(watchdog);
    await cleanup();
  }
  if (counts.passed + counts.failed === 0) t.check(false, `${name} made no checks`);
  // Frame-rate checks share 2 cores with whatever else runs (builds!): say how busy the machine was.
  // Steal is time the host did not give this VM (a noisy neighbour): no test here can make up for it.
  const cpu = machineCpu(), span = Math.max(1, cpu.total - cpuAtStart.total);
  t.info(`load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} (${availableParallelism()} cores); ` +
    `over the test: busy ${((100 * (cpu.busy - cpuAtStart.busy)) / span).toFixed(0)} %, steal ${((100 * (cpu.steal - cpuAtStart.steal)) / span).toFixed(1)} % of all CPU time`);
  console.log(`${name}: ${counts.passed} passed, ${counts.failed} failed`);
  process.exit(counts.failed ? 1 : 0);
}

// The machine's CPU time so far (/proc/stat's first line, in ticks): all of it, busy (not idle or
// waiting for I/O), and stolen by the host.
function machineCpu() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f;
  return { total: f.slice(0, 8).reduce((a, b) => a + b, 0), busy: user + nice + system + irq + softirq, steal };
}

// The namespace must hold nothing but a working loopback (network rule of this project's tests).
export function assertLoopbackOnly() {
  const ifaces = readFileSync('/proc/net/dev', 'utf8').split('\n').slice(2)
    .map((l) => l.split(':')[0].trim()).filter(Boolean);
  if (ifaces.join() !== 'lo') {
    throw new Error(`not in a loopback-only network namespace (interfaces: ${ifaces.join(', ')}); use run.sh`);
  }
}

// CPU seconds (user + system) used so far, summed by command name, over every process we can see
// (run.sh gives each test its own PID namespace and /proc, so that is the service and the browser).
export function cpuSeconds() {
  const out = {};
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out[name] = (out[name] || 0) + (Number(f[11]) + Number(f[12])) / 100;   // utime + stime, in USER_HZ
    } catch { /* exited meanwhile */ }
  }
  return out;
}

export function percentile(values, p) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

// ---- the device ------------------------------------------------------------------------------

export const DEFAULT_CONFIG = {
  http: { listen: '127.0.0.1:18080' },
  video: { source: 'testsrc', width: 1280, height: 720, fps: 30, bitrate_kbps: 2500 },
  audio: { source: 'tone' },
  webrtc: { udp_port: 18189, include_loopback: true },
};

function toToml(config) {
  const value = (v) => (typeof v === 'string' ? JSON.stringify(v) : String(v));
  return Object.entries(config).map(([table, kv]) =>
    `[${table}]\n${Object.entries(kv).map(([k, v]) => `${k} = ${value(v)}`).join('\n')}\n`).join('\n');
}

// The one JavaScript launcher of the service (e2e, peerjs and tests/service/https_login.mjs use it).
// Starts `peercam run --config <temp>.toml` and resolves once it logs "listening on http(s)://HOST:PORT/".
// `config` is merged table by table into DEFAULT_CONFIG. The log goes to <artifacts>/<name>-service.log
// (default tests/e2e/artifacts) and its last LOG_KEEP_BYTES stay in memory (`logText()`).
// PEERCAM_MOCK=1 starts the Chromium stand-in device instead (mock-device.mjs), to develop the page
// and these tests without the Rust build.
// `env` adds variables to the service's environment (e.g. ALSA_CONFIG_PATH for a file-plugin speaker).
const LOG_KEEP_BYTES = 8 << 20;
export async function startService({ name = 'service', config = {}, env = {}, readyTimeoutMs = 30000, artifacts = ARTIFACTS } = {}) {
  const merged = structuredClone(DEFAULT_CONFIG);
  for (const [table, kv] of Object.entries(config)) merged[table] = { ...merged[table], ...kv };
  if (process.env.PEERCAM_MOCK === '1') {
    const { startMockDevice } = await import('./mock-device.mjs');
    let dev = await startMockDevice(merged);
    onCleanup(() => dev.stop());
    return {
      url: dev.url, logPath: null, settings: () => getJson(`${dev.url}api/settings`),
      stop: () => dev.stop(), start: async () => { dev = await startMockDevice(merged); return dev.url; },
    };
  }
  if (!existsSync(BIN)) throw new Error(`peercam binary not found at ${BIN} (build it, or set PEERCAM_BIN)`);

  const dir = mkdtempSync(join(tmpdir(), 'peercam-e2e-'));
  const configPath = join(dir, 'peercam.toml');
  writeFileSync(configPath, toToml(merged));
  mkdirSync(artifacts, { recursive: true });
  const logPath = join(artifacts, `${name}-service.log`);
  const log = createWriteStream(logPath);
  let proc = null, exitPromise = null, exited = null, url = null, runs = 0, stopping = false;
  let kept = '';   // the log's tail, for checks on what the service printed

  // (Re)starts the process with the same config; the log file gets every run, separated by a marker.
  const start = async () => {
    runs++;
    if (runs > 1) log.write(`\n===== restart ${runs - 1} =====\n`);
    exited = null;
    stopping = false;
    proc = spawn(BIN, ['run', '--config', configPath], {
      stdio: ['ignore', 'pipe', 'pipe'],
      // Logs to our pipe (we wait for `listening on`), never to the journal: no JOURNAL_STREAM.
      env: Object.fromEntries(Object.entries({ ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', RUST_BACKTRACE: '1', ...env })
        .filter(([k]) => k !== 'JOURNAL_STREAM')),
    });
    const me = proc;
    children.add(me);
    exitPromise = new Promise((r) => me.on('exit', (code, signal) => {
      exited = { code, signal };
      children.delete(me);
      if (!stopping) crashes.push({ ...exited, log: logPath });
      r(exited);
    }));
    let buffered = '', ready = false;
    url = await new Promise((resolveUrl, reject) => {
      const timer = setTimeout(() => reject(new Error(`service not ready after ${readyTimeoutMs} ms; log: ${logPath}\n${tail(buffered)}`)), readyTimeoutMs);
      const onData = (chunk) => {
        log.write(chunk);
        kept += chunk;
        if (kept.length > LOG_KEEP_BYTES) kept = kept.slice(-LOG_KEEP_BYTES / 2);
        if (ready) return;   // after startup, only the log keeps the text
        buffered += chunk;
        const m = /listening on (https?:\/\/[^\s/]+\/)/.exec(buffered);
        if (m) { ready = true; buffered = ''; clearTimeout(timer); resolveUrl(m[1]); }
      };
      me.stdout.on('data', onData);
      me.stderr.on('data', onData);
      exitPromise.then((e) => { if (!ready) { clearTimeout(timer); reject(new Error(`service exited (${JSON.stringify(e)}) before listening; log: ${logPath}\n${tail(buffered)}`)); } });
    });
    return url;
  };

  // SIGTERM, then SIGKILL after 5 s. Resolves to the exit status (killed: true if it needed SIGKILL).
  const stop = async ({ signal = 'SIGTERM' } = {}) => {
    if (!proc || exited) return exited;
    stopping = true;
    proc.kill(signal);
    const e = await Promise.race([exitPromise, sleep(5000).then(() => null)]);
    if (e) return e;
    proc.kill('SIGKILL');
    return { ...(await exitPromise), killed: true };
  };

  onCleanup(async () => { await stop(); log.end(); rmSync(dir, { recursive: true, force: true }); });
  await start();
  // PEERCAM_WEB_FROM_DISK=1 (page development only): the page's files come from web/ on disk through a
  // small proxy in front of the device, so a page edit needs no Rust rebuild. Results that count are
  // taken without it (the binary embeds web/ at build time).
  if (process.env.PEERCAM_WEB_FROM_DISK === '1') {
    const proxyUrl = await webFromDisk(() => url);
    return {
      get url() { return proxyUrl; }, get proc() { return proc; }, logPath, configPath, start: async () => { await start(); return proxyUrl; }, stop,
      exited: () => exited, settings: () => getJson(`${url}api/settings`), logText: () => kept,
    };
  }
  return {
    get url() { return url; }, get proc() { return proc; }, logPath, configPath, start, stop,
    exited: () => exited, settings: () => getJson(`${url}api/settings`), logText: () => kept,
  };
}

async function webFromDisk(deviceUrl) {
  const { createServer, request: httpRequest } = await import('node:http');
  const TYPES = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const m = /^\/(index\.html|app\.js|style\.css)?$/.exec(path);
    if (req.method === 'GET' && m) {
      const file = m[1] || 'index.html';
      res.writeHead(200, { 'Content-Type': TYPES[file.split('.').pop()], 'Cache-Control': 'no-store' });
      return res.end(readFileSync(join(ROOT, 'web', file)));
    }
    const target = new URL(req.url, deviceUrl());
    const up = httpRequest(target, { method: req.method, headers: req.headers }, (r) => { res.writeHead(r.statusCode, r.headers); r.pipe(res); });
    up.on('error', () => { res.writeHead(502); res.end('device unreachable'); });
    req.pipe(up);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  onCleanup(() => new Promise((r) => { server.closeAllConnections(); server.close(r); }));
  console.log(`     (page served from web/ on disk through http://127.0.0.1:${server.address().port}/)`);
  return `http://127.0.0.1:${server.address().port}/`;
}

const tail = (text, lines = 30) => text.split('\n').slice(-lines).join('\n');

export async function getJson(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

// ---- the browser -----------------------------------------------------------------------------

// Flags from docs/test-rigs.md, rig 1. playwright-core already gives every launch a fresh temporary
// --user-data-dir (and refuses one in `args`). We drop its default --mute-audio: a muted browser is
// not what a viewer has, and audio playout is what feeds the receiver's audio level statistics.
// `autoplay: true` only for tests that are not about autoplay (it hides autoplay failures).
// `fakeUi: false` leaves out --use-fake-ui-for-media-stream: headless Chromium then denies microphone
// requests (what a user who clicks "Block" gets). `extraArgs` are appended.
export async function launchBrowser({ autoplay = true, fakeUi = true, extraArgs = [] } = {}) {
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--allow-loopback-in-peer-connection', '--use-fake-device-for-media-stream',
  ];
  if (fakeUi) args.push('--use-fake-ui-for-media-stream');
  if (autoplay) args.push('--autoplay-policy=no-user-gesture-required');
  args.push(...extraArgs);
  const browser = await chromium.launch({
    executablePath: CHROMIUM, headless: true, args, ignoreDefaultArgs: ['--mute-audio'],
  });
  onCleanup(() => browser.close());
  return browser;
}

// playwright's page.evaluate() runs with a user gesture (CDP userGesture: true), which gives the page
// sticky user activation and so unlocks autoplay. Pages opened with { quiet: true } are read through a
// CDP Runtime.evaluate without a gesture instead, so a test can observe the page without helping it.
const quietSessions = new WeakMap();

export async function evaluate(page, fn, arg) {
  const cdp = quietSessions.get(page);
  if (!cdp) return page.evaluate(fn, arg);
  const r = await cdp.send('Runtime.evaluate', {
    expression: `(${fn})(${arg === undefined ? '' : JSON.stringify(arg)})`,
    awaitPromise: true, returnByValue: true, userGesture: false,
  });
  if (r.exceptionDetails) throw new Error(`evaluate: ${r.exceptionDetails.exception?.description || r.exceptionDetails.text}`);
  return r.result.value;
}

// Opens the page in its own context (own cookies, own window) and collects page errors.
export async function openViewer(browser, url, { viewport = { width: 1280, height: 720 }, quiet = false } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  if (quiet) quietSessions.set(page, await context.newCDPSession(page));
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  await page.goto(url);
  return { context, page, errors };
}

// Waits for the page's own state to say live and for the <video> to hold a decoded frame.
export async function waitForLive(page, timeoutMs = 15000) {
  const t0 = Date.now();
  for (;;) {
    const s = await evaluate(page, () => ({
      live: window.peercam?.state === 'live' && document.getElementById('video').readyState >= 2,
      state: window.peercam?.state, lastError: window.peercam?.lastError,
    }));
    if (s.live) break;
    if (Date.now() - t0 > timeoutMs) throw new Error(`page not live after ${timeoutMs} ms: ${JSON.stringify(s)}`);
    await sleep(50);
  }
  return { waitedMs: Date.now() - t0, ...(await evaluate(page, () => ({ ...window.peercam.timing, attempts: window.peercam.attempts }))) };
}

export const pageState = (page) => evaluate(page, () => {
  const v = document.getElementById('video');
  const p = window.peercam;
  return {
    state: p.state, lastError: p.lastError, lossOfConnectionCount: p.lossOfConnectionCount, attempts: p.attempts,
    muted: v.muted, paused: v.paused, videoWidth: v.videoWidth, videoHeight: v.videoHeight,
    unmuteVisible: !document.getElementById('unmute').hidden,
    statusText: document.getElementById('status-text').textContent,
    unmuteText: document.getElementById('unmute').textContent.trim(),
    userActivated: navigator.userActivation?.hasBeenActive,
  };
});

// getStats() as a plain array (RTCStatsReport does not cross the CDP boundary).
export const rtcStats = (page) => evaluate(page, async () => {
  const out = [];
  (await window.peercam.pc.getStats()).forEach((s) => out.push({ ...s }));
  return out;
});
export const inbound = (stats, kind) => stats.find((s) => s.type === 'inbound-rtp' && s.kind === kind) || {};
export const byId = (stats, id) => stats.find((s) => s.id === id) || {};
// The device's end of the ICE candidate pair in use: { address, port, protocol, candidateType }.
export function remoteCandidate(stats) {
  const transport = stats.find((s) => s.type === 'transport') || {};
  const pair = byId(stats, transport.selectedCandidatePairId);
  return byId(stats, pair.remoteCandidateId);
}

// ---- the timestamp code ----------------------------------------------------------------------

// Installs a requestVideoFrameCallback probe in the page. For each rendered frame it copies row 0 of the
// picture to a canvas and decodes the timestamp code (docs/interfaces.md, "Test pattern timestamp code"):
// block size b = max(8, floor(width / 40)); 34 blocks; block 0 white, block 1 black are the reference
// levels; blocks 2..33 are bits 31..0 of (Unix ms at capture) mod 2^32. Latency = now − code (mod 2^32),
// less what the wall clock moved since the page loaded (a step before the page loaded is not seen).
// `every`: decode the code on every n-th rendered frame only (all frames are counted); the canvas copy
// costs CPU that several viewers on one 2-core machine would otherwise take from the renderer.
export const installProbe = (page, { every = 1 } = {}) => evaluate(page, (every) => {
  if (window.__probe) return;
  const video = document.getElementById('video');
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const probe = window.__probe = { running: false, frames: 0, bad: 0, samples: [], t0: 0, every };
  const M = 2 ** 32;
  const onFrame = (_now, meta) => {
    const wall = Date.now();
    video.requestVideoFrameCallback(onFrame);
    if (!probe.running) return;
    if (probe.frames++ % every) return;
    const b = Math.max(8, Math.floor(meta.width / 40));
    if (canvas.width !== 34 * b || canvas.height !== b) { canvas.width = 34 * b; canvas.height = b; }
    ctx.drawImage(video, 0, 0, 34 * b, b, 0, 0, 34 * b, b);
    const px = ctx.getImageData(0, 0, 34 * b, b).data;
    // Mean luma of the central third of block i (robust to ringing at block edges).
    const luma = (i) => {
      let sum = 0, n = 0;
      for (let y = Math.floor(b / 3); y < Math.ceil((2 * b) / 3); y++) {
        for (let x = i * b + Math.floor(b / 3); x < i * b + Math.ceil((2 * b) / 3); x++) {
          const o = (y * 34 * b + x) * 4;
          sum += 0.299 * px[o] + 0.587 * px[o + 1] + 0.114 * px[o + 2]; n++;
        }
      }
      return sum / n;
    };
    const hi = luma(0), lo = luma(1);
    if (hi - lo < 64) { probe.bad++; return; }     // no code here (wrong picture or garbage)
    const threshold = (hi + lo) / 2;
    let code = 0, margin = Infinity;
    for (let i = 2; i < 34; i++) {
      const l = luma(i);
      margin = Math.min(margin, Math.abs(l - threshold));
      code = code * 2 + (l > threshold ? 1 : 0);      // * 2, not <<: stays an unsigned 32-bit number
    }
    let latency = (wall % M) - code;
    if (latency > M / 2) latency -= M; else if (latency < -M / 2) latency += M;
    // How far the wall clock moved against the steady one since the page loaded (a step or a slew
    // on this machine: seen 1 s during one test): the device's code follows its own steady clock,
    // so that much of `wall - code` is the clock, not latency (tests/links does the same).
    const drift = Math.round(wall - (performance.timeOrigin + performance.now()));
    latency -= drift;
    probe.samples.push({ code, latency, drift, margin: Math.round(margin), width: meta.width, height: meta.height });
  };
  video.requestVideoFrameCallback(onFrame);
}, every);

// Runs the probe for `ms` and returns what it saw: `painted` and `delivered` from the compositor's
// counters (getVideoPlaybackQuality), `frames` and the decoded codes from the page's frame callback.
export async function probeFor(page, ms) {
  await evaluate(page, () => { Object.assign(window.__probe, { running: true, frames: 0, bad: 0, samples: [], t0: performance.now(), q0: document.getElementById('video').getVideoPlaybackQuality() }); });
  await sleep(ms);
  return evaluate(page, () => {
    const p = window.__probe;
    p.running = false;
    const q = document.getElementById('video').getVideoPlaybackQuality();
    const painted = (q.totalVideoFrames - q.droppedVideoFrames) - (p.q0.totalVideoFrames - p.q0.droppedVideoFrames);
    return { painted, delivered: q.totalVideoFrames - p.q0.totalVideoFrames, frames: p.frames, bad: p.bad, samples: p.samples, every: p.every, elapsedMs: performance.now() - p.t0 };
  });
}

// Checks a probe result: enough frames rendered, codes increase, latency within bounds.
// "Rendered" is what the compositor painted: frames handed to the <video> minus those it replaced
// before painting them (getVideoPlaybackQuality; bursty or late delivery shows as dropped there). The
// page's requestVideoFrameCallback count is printed beside it but not judged: those callbacks run on
// the page's main thread, which a starved machine holds up while the compositor keeps painting (seen:
// 149 of 153 frames painted, 90 callbacks).
export function checkFrames(t, label, result, { fps, minRatio = 0.8, maxLatencyMs = 1000 }) {
  const seconds = result.elapsedMs / 1000;
  const expected = fps * seconds;
  t.check(result.painted >= minRatio * expected, `${label}: rendered frames`,
    `${result.painted} painted in ${seconds.toFixed(2)} s = ${(result.painted / seconds).toFixed(1)} fps, ` +
    `${((100 * result.painted) / expected).toFixed(0)} % of ${expected.toFixed(0)} expected (need ≥ ${minRatio * 100} %); ` +
    `${result.delivered} handed to the video element, ${result.frames} seen by the page's frame callback`);
  const s = result.samples;
  const read = Math.ceil(result.frames / (result.every || 1));
  t.check(s.length >= 0.95 * read && s.length > 0, `${label}: timestamp code readable`,
    `${s.length} of ${read} frames read${result.every > 1 ? ` (every ${result.every}. frame)` : ''}, ${result.bad} without reference levels, ` +
    `min bit margin ${Math.min(...s.map((x) => x.margin))} (luma units)`);
  let decreasing = 0, repeated = 0;   // (with `every` > 1 a repeat still shows: the same frame rendered twice)
  for (let i = 1; i < s.length; i++) {
    const d = (s[i].code - s[i - 1].code + 2 ** 32) % 2 ** 32;   // wrap-safe difference
    if (d === 0) repeated++; else if (d > 2 ** 31) decreasing++;
  }
  const steps = s.slice(1).map((x, i) => (x.code - s[i].code + 2 ** 32) % 2 ** 32).filter((d) => d < 2 ** 31);
  t.check(decreasing === 0 && repeated <= 0.05 * s.length, `${label}: timestamp codes increase`,
    `${decreasing} decreasing, ${repeated} repeated; code step p50 ${percentile(steps, 50)} ms, max ${Math.max(...steps)} ms`);
  const lat = s.map((x) => x.latency);
  const lo = Math.min(...lat), hi = Math.max(...lat);
  const drifts = s.map((x) => x.drift);
  const moved = drifts.length ? Math.max(...drifts.map(Math.abs)) : 0;
  t.check(lat.length > 0 && lo >= -50 && hi <= maxLatencyMs, `${label}: latency within ${maxLatencyMs} ms of now`,
    `p50 ${percentile(lat, 50)} ms, p90 ${percentile(lat, 90)} ms, p99 ${percentile(lat, 99)} ms, min ${lo}, max ${hi}` +
    (moved >= 20 ? `; the wall clock moved ${Math.min(...drifts)}..${Math.max(...drifts)} ms against the steady clock since the page loaded (taken off)` : ''));
  return { lat, frames: result.painted, seconds };
}

// ---- the control channel (src/rtc/CONTROL.md) -------------------------------------------------

// Polls `fn(arg)` in the page until it returns something truthy; resolves { value, ms } or throws.
export async function waitFor(page, fn, arg, { timeoutMs = 5000, what = 'condition', intervalMs = 20 } = {}) {
  const t0 = Date.now();
  for (;;) {
    const value = await evaluate(page, fn, arg);
    if (value) return { value, ms: Date.now() - t0 };
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(intervalMs);
  }
}

// Waits for the page's control channel to be open and the device's 'hello' (our viewer id).
export async function waitForControl(page, timeoutMs = 10000) {
  const r = await waitFor(page, () => window.peercam?.control === 'open' && window.peercam.viewerId &&
    { viewerId: window.peercam.viewerId, viewers: window.peercam.viewers },
  undefined, { timeoutMs, what: 'control channel open + hello' }).catch(async (err) => {
    const st = await evaluate(page, () => ({ control: window.peercam?.control, state: window.peercam?.state, events: window.peercam?.events }));
    throw new Error(`${err.message}: ${JSON.stringify(st)}`);
  });
  return { ...r.value, ms: r.ms };
}

// One request through the page's helper: resolves the device's reply ({ok, result} / {ok: false, error}).
export const request = (page, msg, timeoutMs = 5000) =>
  evaluate(page, ([m, t]) => window.peercam.request(m, t), [msg, timeoutMs]);

// Events the page has seen (optionally only those named `name`).
export const pageEvents = (page, name) => evaluate(page, (n) => window.peercam.events.filter((e) => !n || e.event === n), name);

// Waits until the page has seen an event matching `pred` (a function source run in the page on each event).
export async function waitForEvent(page, name, pred = 'true', timeoutMs = 5000) {
  const r = await waitFor(page, ([n, p]) => {
    const test = new Function('e', `return (${p});`);
    return window.peercam.events.find((e) => e.event === n && test(e)) || null;
  }, [name, pred], { timeoutMs, what: `event ${name} where ${pred}` });
  return { event: r.value, ms: r.ms };
}

// HTTP POST of JSON to the device: { status, body (parsed if JSON) }.
export async function postJson(url, body) {
  const res = await fetch(url, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, body: parsed };
}
