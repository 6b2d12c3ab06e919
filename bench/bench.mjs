// peercam benchmark (bench/README.md). Run through bench/run.sh, which puts this script in a
// loopback-only network namespace (and its own PID namespace) — it refuses to run anywhere else.
//
// Measures, on this machine:
//   1. glass-to-glass latency p50/p90/p99 at 1280x720@30, one viewer, ~15 s (timestamp code read in Chromium)
//   2. createOffer start → first rendered frame (rVFC), median of 5 fresh connections, with a breakdown;
//      "cold" (no other viewer: the encoder is idle) and "warm" (one viewer already watching)
//   3. service CPU (% of one core, /proc/<pid>/stat utime+stime over 10 s) and RSS with 0, 1, 2, 4, 8 viewers
//   4. Chromium→Chromium reference (canvas with the same code → RTCPeerConnection → RTCPeerConnection)
//   5. aiortc reference server (tests/interop/reference_whep_server.py, when bench/.venv exists)
//   6. aarch64 stripped binary size
// Writes bench/results/latest.{json,md} and the plot data in bench/out/; run.sh draws latest.png.
import { spawn, execFileSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { pageLib } from './page.mjs';
import { PHASES, writeReport } from './report.mjs';
import { CLK_TCK, statTicks, threadTicks } from '../tests/lib/proc.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..');
const OUT = join(HERE, 'out');
const RESULTS = join(HERE, 'results');
const BIN = resolve(ROOT, process.env.PEERCAM_BIN || 'target/release/peercam');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const HTTP_PORT = 18280, UDP_PORT = 18289, AIORTC_PORT = 18380, C2C_PORT = 18281;
const W = 1280, H = 720, FPS = 30;
const LATENCY_S = Number(process.env.BENCH_LATENCY_S || 15);
const CPU_S = Number(process.env.BENCH_CPU_S || 10);
const FIRST_N = Number(process.env.BENCH_FIRST_N || 5);
const VIEWERS = (process.env.BENCH_VIEWERS || '1,2,4,8').split(',').map(Number);
const BUDGET_S = Number(process.env.BENCH_BUDGET_S || 300);
const MARKS = { p50: 35, firstFrame: 300, perViewer: 3 };
mkdirSync(OUT, { recursive: true });
mkdirSync(RESULTS, { recursive: true });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const T_START = Date.now();
const elapsed = () => ((Date.now() - T_START) / 1000).toFixed(1);
const log = (msg) => console.log(`[${elapsed().padStart(5)} s] ${msg}`);
const r1 = (x) => (x == null || Number.isNaN(x) ? null : Math.round(x * 10) / 10);

// ---- cleanup, whatever happens ----------------------------------------------------------------
const cleanups = [];
const children = new Set();
async function cleanup() {
  while (cleanups.length) {
    const fn = cleanups.pop();
    try { await Promise.race([fn(), sleep(5000)]); } catch { /* best effort */ }
  }
}
process.on('exit', () => { for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } } });
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => { console.log(`\n${sig}: cleaning up`); cleanup().finally(() => process.exit(130)); });
}
const watchdog = setTimeout(() => {
  console.log(`bench: over the ${BUDGET_S} s budget, stopping (partial results)`);
  R.errors.push(`stopped after the ${BUDGET_S} s budget: results are partial`);
  cleanup().finally(() => { try { writeReport(R, { RESULTS, OUT }); } finally { process.exit(3); } });
}, BUDGET_S * 1000);

function assertLoopbackOnly() {
  const ifaces = readFileSync('/proc/net/dev', 'utf8').split('\n').slice(2).map((l) => l.split(':')[0].trim()).filter(Boolean);
  if (ifaces.join() !== 'lo') throw new Error(`not in a loopback-only network namespace (interfaces: ${ifaces.join(', ')}); use bench/run.sh`);
}

// ---- statistics ---------------------------------------------------------------------------------
function percentile(values, p) {
  const v = values.filter((x) => x != null && !Number.isNaN(x));
  if (!v.length) return null;
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}
const median = (v) => percentile(v, 50);
const pcts = (v) => ({ p50: r1(percentile(v, 50)), p90: r1(percentile(v, 90)), p99: r1(percentile(v, 99)), min: r1(percentile(v, 0)), max: r1(percentile(v, 100)), n: v.length });

// ---- /proc --------------------------------------------------------------------------------------
const CORES = readFileSync('/proc/cpuinfo', 'utf8').split('\n').filter((l) => l.startsWith('processor')).length || 1;
function status(pid) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k) => Number((new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s) || [])[1]);
  return { rssKiB: kb('VmRSS'), hwmKiB: kb('VmHWM'), threadCount: kb('Threads') };
}
function machine() {
  const l = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return { total: l.reduce((a, b) => a + b, 0), idle: l[3] + l[4] };
}
// Threads whose work does not depend on the number of viewers (capture, encode once, audio). The rest
// (tokio runtime: sessions, packetization, SRTP, sockets) is the per-viewer fan-out.
const MEDIA_THREADS = /^(capture-|encode-|audio)/;
// A CPU window over `seconds` for pid: % of one core, per-thread %, machine busy %, RSS at the end.
async function cpuWindow(pid, seconds, during = null) {
  const a = statTicks(`/proc/${pid}/stat`).ticks, at = threadTicks(pid), am = machine(), t0 = process.hrtime.bigint();
  const sa = during ? await during.before() : null;
  await sleep(seconds * 1000);
  const b = statTicks(`/proc/${pid}/stat`).ticks, bt = threadTicks(pid), bm = machine();
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const sb = during ? await during.after() : null;
  const threads = {};
  for (const [k, v] of Object.entries(bt)) {
    const d = v - (at[k] ?? 0);
    if (d > 0) threads[k] = r1((100 * d) / CLK_TCK / wall);
  }
  const mediaTicks = Object.entries(bt).filter(([k]) => MEDIA_THREADS.test(k)).reduce((sum, [k, v]) => sum + v - (at[k] ?? 0), 0);
  return {
    cpuPct: r1((100 * (b - a)) / CLK_TCK / wall), seconds: r1(wall), threads,
    fanoutCpuPct: r1((100 * (b - a - mediaTicks)) / CLK_TCK / wall),
    machineBusyPct: r1(100 * CORES * (1 - (bm.idle - am.idle) / (bm.total - am.total))),   // % of one core, whole machine (2 cores = 200)
    loadavg: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
    ...status(pid), settingsBefore: sa, settingsAfter: sb,
  };
}

// ---- processes ----------------------------------------------------------------------------------
async function startProcess(name, cmd, args, readyRe, { env = {}, timeoutMs = 30000 } = {}) {
  const logPath = join(OUT, `${name}.log`);
  const logf = createWriteStream(logPath);
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  children.add(proc);
  const exited = new Promise((r) => proc.on('exit', (code, signal) => { children.delete(proc); r({ code, signal }); }));
  let buf = '';
  const url = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${name}: not ready after ${timeoutMs} ms; log ${logPath}`)), timeoutMs);
    const onData = (c) => {
      logf.write(c);
      if (buf === null) return;
      buf += c;
      const m = readyRe.exec(buf);
      if (m) { buf = null; clearTimeout(timer); res(m[1]); }
    };
    proc.stdout.on('data', onData); proc.stderr.on('data', onData);
    exited.then((e) => { clearTimeout(timer); rej(new Error(`${name} exited ${JSON.stringify(e)} before ready; log ${logPath}\n${(buf || '').slice(-2000)}`)); });
  });
  const stop = async () => {
    if (!children.has(proc)) return exited;
    proc.kill('SIGTERM');
    const e = await Promise.race([exited, sleep(5000).then(() => null)]);
    if (!e) { proc.kill('SIGKILL'); await exited; }
    logf.end();
    return e;
  };
  cleanups.push(stop);
  return { proc, pid: proc.pid, url, stop, logPath, exited };
}

async function getJson(url) {
  const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  return res.json();
}

// ---- browser ------------------------------------------------------------------------------------
async function launchBrowser() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM, headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--allow-loopback-in-peer-connection', '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      '--autoplay-policy=no-user-gesture-required'],
  });
  cleanups.push(() => browser.close());
  return browser;
}
// A page in the service's origin (POST /whep needs no CORS then), with window.B and a <video id=v>.
async function openPage(browser, origin) {
  const context = await browser.newContext({ viewport: { width: 800, height: 450 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(new URL('/api/settings', origin).href);
  await page.evaluate(pageLib);
  await page.evaluate(() => { window.B.setup(); window.P = window.B.probe(document.getElementById('v')); });
  return { context, page, errors };
}
const probeStart = (page) => page.evaluate(() => window.P.start());
const probeStop = (page) => page.evaluate(() => window.P.stop());

// rVFC's metadata describes the frame presented, but drawImage(video) copies the video's *current* frame,
// which can already be a newer one when the callback runs late. The RTP timestamp of the presented frame
// tells: rtpTimestamp − 90 × code is constant (± a few ms) for a sender whose RTP clock follows capture
// time (peercam, Chromium; aiortc within its pacing jitter). Samples off by more than 12 ms are dropped.
function matchFrames(samples) {
  const M = 2 ** 32;
  const withTs = samples.filter((x) => x[7] != null);
  if (withTs.length < 10) return { kept: samples, mismatched: 0, note: 'no rtpTimestamp in rVFC metadata: not checked' };
  const o0 = ((withTs[0][7] - 90 * withTs[0][4]) % M + M) % M;
  const rel = (x) => { const o = ((x[7] - 90 * x[4]) % M + M) % M; return (((o - o0) % M) + M + M / 2) % M - M / 2; };
  const med = median(withTs.map(rel));
  const ok = (x) => x[7] == null || Math.abs(rel(x) - med) <= 12 * 90;
  const kept = samples.filter(ok);
  if (kept.length < 0.7 * samples.length) return { kept: samples, mismatched: 0, note: `RTP timestamps do not follow the code (${samples.length - kept.length} of ${samples.length} off): not filtered` };
  return { kept, mismatched: samples.length - kept.length, note: null };
}

// Latency samples → summary (also checks the code is sane: increasing, readable).
function summarize(res) {
  const m = matchFrames(res.samples);
  const s = m.kept;
  const lat = s.map((x) => x[0]);
  let decreasing = 0, repeated = 0;
  for (let i = 1; i < s.length; i++) {
    const d = (s[i][4] - s[i - 1][4] + 2 ** 32) % 2 ** 32;
    if (d === 0) repeated++; else if (d > 2 ** 31) decreasing++;
  }
  const steps = s.slice(1).map((x, i) => (x[4] - s[i][4] + 2 ** 32) % 2 ** 32).filter((d) => d > 0 && d < 2 ** 31);
  return {
    latency: pcts(lat),
    recvLatency: pcts(s.map((x) => x[1])),          // code → last packet of the frame received
    recvToRender: pcts(s.map((x) => x[2])),         // receive → rVFC (jitter buffer + decode + render)
    decodeMs: pcts(s.map((x) => x[3])),
    renderedFps: r1(res.frames / res.seconds),
    readRatio: r1((100 * res.samples.length) / Math.max(1, res.frames)),
    codeStepMs: { p50: percentile(steps, 50), max: steps.length ? Math.max(...steps) : null },
    mismatchedDropped: m.mismatched, matchNote: m.note, samplesRead: res.samples.length,
    decreasing, repeated, bad: res.bad, minMargin: s.length ? Math.min(...s.map((x) => x[6])) : null,
    sizes: res.widths, seconds: r1(res.seconds),
  };
}

// Breakdown of a first-frame timeline (marks in ms since createOffer start). The first frame's capture
// time comes from its own timestamp code: "connected → captured" is negative when the frame was captured
// before DTLS completed (the service had it ready), positive when the service captured/encoded it later.
function phases(t) {
  const d = (a, b) => (t[a] != null && t[b] != null ? r1(t[b] - t[a]) : null);
  return {
    offer_to_post: t.gathered ?? null,
    post_to_answer: d('gathered', 'answer'),
    answer_to_ice_connected: d('answer', 'ice_connected'),
    ice_to_dtls_connected: d('ice_connected', 'pc_connected'),
    connected_to_captured: d('pc_connected', 'first_frame_captured'),
    captured_to_received: d('first_frame_captured', 'first_frame_received'),
    received_to_rendered: d('first_frame_received', 'first_frame'),
    total: t.first_frame ?? null,
  };
}
const ffSummary = (list) => {
  const ph = list.map((r) => phases(r.t));
  return {
    n: list.length, median: r1(median(list.map((r) => r.t.first_frame))), all: list.map((r) => r.t.first_frame),
    phasesMedian: Object.fromEntries(PHASES.map(([k]) => [k, r1(median(ph.map((p) => p[k])))])),
    runs: list.map((r) => ({ t: r.t, info: r.info })),
  };
};

// RTP headers on the wire (bench/rtpwatch.py: AF_PACKET on lo, needs root; we are in our own namespace).
function rtpWatch(seconds, port) {
  return new Promise((res) => {
    const p = spawn('python3', [join(HERE, 'rtpwatch.py'), String(seconds), String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(p);
    let out = '', err = '';
    p.stdout.on('data', (c) => { out += c; });
    p.stderr.on('data', (c) => { err += c; });
    p.on('exit', () => { children.delete(p); try { res(JSON.parse(out)); } catch { res({ error: err.trim().split('\n').pop() || 'no output' }); } });
  });
}

// ---- the benchmark ------------------------------------------------------------------------------
const R = {
  date: new Date().toISOString(), machine: {}, config: { width: W, height: H, fps: FPS, bitrate_kbps: 2500, latencySeconds: LATENCY_S, cpuWindowSeconds: CPU_S },
  peercam: {}, c2c: {}, aiortc: {}, errors: [], marks: MARKS,
};
function note(section, err) {
  const msg = `${section}: ${err?.message || err}`;
  R.errors.push(msg);
  log(`ERROR ${msg}`);
}

async function viewerConnect(v, opts = {}) {
  return v.page.evaluate((o) => window.B.whep({ ...o, video: document.getElementById('v') }), opts);
}
const viewerClose = (v, id) => v.page.evaluate((i) => window.B.close(i), id);

async function waitViewers(url, n, ms = 5000) {
  const t0 = Date.now();
  for (;;) {
    const s = await getJson(`${url}api/settings`);
    if (s.viewers === n) return s;
    if (Date.now() - t0 > ms) return s;
    await sleep(50);
  }
}

async function benchPeercam(browser) {
  const P = R.peercam;
  const cfgPath = join(OUT, 'peercam.toml');
  writeFileSync(cfgPath, `[http]\nlisten = "127.0.0.1:${HTTP_PORT}"\n[video]\nsource = "testsrc"\nwidth = ${W}\nheight = ${H}\nfps = ${FPS}\nbitrate_kbps = 2500\n` +
    `[audio]\nsource = "tone"\n[webrtc]\nudp_port = ${UDP_PORT}\ninclude_loopback = true\nmax_viewers = 32\n`);
  const svc = await startProcess('peercam', BIN, ['run', '--config', cfgPath], /listening on (http:\/\/[^\s/]+\/)/, { env: { RUST_LOG: process.env.RUST_LOG || 'info' } });
  const url = svc.url;
  const settings = () => getJson(`${url}api/settings`);
  log(`peercam pid ${svc.pid} at ${url}`);
  P.version = (await settings()).version;
  P.startupRss = status(svc.pid);
  const enc = {   // encoder activity over a CPU window
    before: async () => (await settings()).video,
    after: async () => (await settings()).video,
  };
  const encStats = (w) => {
    const a = w.settingsBefore, b = w.settingsAfter;
    w.encodedFps = r1((b.encoded_frames - a.encoded_frames) / w.seconds);
    w.capturedFps = b.frames_captured != null ? r1((b.frames_captured - a.frames_captured) / w.seconds) : null;
    w.droppedFrames = b.frames_dropped != null ? b.frames_dropped - a.frames_dropped : null;
    w.keyframes = b.keyframes != null ? b.keyframes - a.keyframes : null;
    w.encodeMs = b.encode_ms;
    delete w.settingsBefore; delete w.settingsAfter;
    return w;
  };

  // 3a. idle
  await sleep(1000);
  log(`idle CPU window ${CPU_S} s`);
  P.cpu = { 0: encStats(await cpuWindow(svc.pid, CPU_S, enc)) };
  log(`  idle: ${P.cpu[0].cpuPct} % of a core, RSS ${P.cpu[0].rssKiB} KiB`);

  // 2. first frame, cold (the only viewer) and warm (one other viewer watching)
  const v1 = await openPage(browser, url);
  await v1.page.evaluate(() => window.B.warmup());
  P.firstFrame = { cold: [], warm: [], coldNoWait: [], firstAfterStart: [] };
  // the very first viewer after the service started (reported apart: one-off costs inside the service)
  try {
    const r = await viewerConnect(v1);
    P.firstFrame.firstAfterStart.push(r);
    log(`  first viewer after service start: ${r.t.first_frame} ms ${JSON.stringify(phases(r.t))}`);
    await sleep(300);
    await viewerClose(v1, r.id);
  } catch (e) { note('peercam first viewer after start', e); }
  await waitViewers(url, 0);
  await sleep(700);
  for (let i = 0; i < FIRST_N; i++) {
    const before = await settings();
    try {
      const r = await viewerConnect(v1);
      r.encodersStartedBefore = before.video.encoders_started;
      P.firstFrame.cold.push(r);
      log(`  cold first frame #${i + 1}: ${r.t.first_frame} ms ${JSON.stringify(phases(r.t))}`);
      await sleep(300);
      await viewerClose(v1, r.id);
    } catch (e) { note(`peercam cold first frame #${i + 1}`, e); }
    await waitViewers(url, 0);
    await sleep(700);   // let the pipeline go idle again
  }
  // the same without waiting for the browser's ICE gathering (offer without candidates; the service
  // must learn the browser's address from its connectivity checks: peer-reflexive)
  P.firstFrame.coldNoWait = [];
  for (let i = 0; i < Math.min(3, FIRST_N); i++) {
    try {
      const r = await viewerConnect(v1, { gather: false });
      P.firstFrame.coldNoWait.push(r);
      log(`  cold, no gathering wait, first frame #${i + 1}: ${r.t.first_frame} ms ${JSON.stringify(phases(r.t))}`);
      await sleep(300);
      await viewerClose(v1, r.id);
    } catch (e) { note(`peercam cold no-wait first frame #${i + 1}`, e); }
    await waitViewers(url, 0);
    await sleep(700);
  }
  const holder = await viewerConnect(v1);   // viewer 1 stays for the rest
  const v2 = await openPage(browser, url);
  for (let i = 0; i < FIRST_N; i++) {
    try {
      const r = await viewerConnect(v2);
      P.firstFrame.warm.push(r);
      log(`  warm first frame #${i + 1}: ${r.t.first_frame} ms ${JSON.stringify(phases(r.t))}`);
      await sleep(300);
      await viewerClose(v2, r.id);
    } catch (e) { note(`peercam warm first frame #${i + 1}`, e); }
    await waitViewers(url, 1);
    await sleep(300);
  }
  await v2.context.close();
  P.firstFrameSummary = { cold: ffSummary(P.firstFrame.cold), warm: ffSummary(P.firstFrame.warm), coldNoWait: ffSummary(P.firstFrame.coldNoWait), firstAfterStart: ffSummary(P.firstFrame.firstAfterStart) };
  delete P.firstFrame;

  // 1. latency with one viewer (+ CPU window for 1 viewer inside it)
  await sleep(1000);
  log(`latency, 1 viewer, ${LATENCY_S} s (CPU window ${CPU_S} s inside)`);
  await probeStart(v1.page);
  const wire = rtpWatch(Math.min(8, LATENCY_S - 1), UDP_PORT);
  await sleep(Math.max(0, (LATENCY_S - CPU_S) / 2) * 1000);
  const w1 = cpuWindow(svc.pid, CPU_S, enc);
  await sleep(LATENCY_S * 1000 - Math.max(0, (LATENCY_S - CPU_S) / 2) * 1000);
  const lat1 = await probeStop(v1.page);
  P.cpu[1] = encStats(await w1);
  P.latency = summarize(lat1);
  P.latencyRaw = matchFrames(lat1.samples).kept;
  P.inbound = await v1.page.evaluate((id) => window.B.inboundVideo(id), holder.id);
  P.wire = await wire;
  log(`  latency ${JSON.stringify(P.latency.latency)} recv ${JSON.stringify(P.latency.recvLatency)} fps ${P.latency.renderedFps}; jitter buffer video ${P.inbound.jitterBufferDelayMs} ms (target ${P.inbound.jitterBufferTargetDelayMs}), audio ${P.inbound.audio?.jitterBufferDelayMs} ms, audio concealed ${P.inbound.audio?.concealedPct} %`);
  log(`  wire: ${JSON.stringify(P.wire)}`);
  log(`  1 viewer: ${P.cpu[1].cpuPct} % of a core, encoded ${P.cpu[1].encodedFps} fps, RSS ${P.cpu[1].rssKiB} KiB`);

  // 3b. more viewers. Viewer 1 stays the page with a visible <video> and the latency probe; viewers
  // 2..n are RTCPeerConnections (video + audio, WHEP) in one more page, without a <video>: Chromium still
  // receives, decrypts and decodes every stream (framesDecoded is checked) but does not render them.
  // Rendering 8 × 720p in pages took ~2× the browser CPU and saturated this 2-core machine, which made
  // the service drop frames and so look *cheaper*. Only the service pid is counted either way.
  const loadPage = await openPage(browser, url);
  const loadIds = [];
  const decoded = async () => loadPage.page.evaluate(async (ids) => {
    const out = [];
    for (const id of ids) out.push((await window.B.inboundVideo(id))?.framesDecoded ?? 0);
    return out;
  }, loadIds);
  for (const n of VIEWERS.filter((x) => x > 1)) {
    try {
      while (loadIds.length < n - 1) loadIds.push((await loadPage.page.evaluate(() => window.B.whep({}))).id);
      await waitViewers(url, n);
      await sleep(2500);
      await probeStart(v1.page);
      const d0 = await decoded();
      log(`${n} viewers: CPU window ${CPU_S} s`);
      const w = encStats(await cpuWindow(svc.pid, CPU_S, enc));
      const d1 = await decoded();
      const l = summarize(await probeStop(v1.page));
      const fpsOthers = d1.map((x, i) => r1((x - d0[i]) / w.seconds));
      w.viewer1Latency = l.latency; w.viewer1RecvLatency = l.recvLatency; w.viewer1Fps = l.renderedFps; w.otherViewersFps = fpsOthers;
      w.viewer1Inbound = await v1.page.evaluate((id) => window.B.inboundVideo(id), holder.id);
      w.viewers = (await settings()).viewers;
      P.cpu[n] = w;
      log(`  ${n} viewers (service says ${w.viewers}): ${w.cpuPct} % of a core (without encoder/capture threads ${w.fanoutCpuPct}), machine ${w.machineBusyPct} %/200, encoded ${w.encodedFps} fps, RSS ${w.rssKiB} KiB, viewer-1 p50 ${l.latency.p50} ms (code→received ${l.recvLatency.p50}, video jitter buffer ${w.viewer1Inbound?.jitterBufferDelayMs} ms, audio ${w.viewer1Inbound?.audio?.jitterBufferDelayMs} ms), fps ${l.renderedFps}; others decode ${fpsOthers.join(' ')} fps`);
    } catch (e) { note(`peercam ${n} viewers`, e); break; }
  }
  for (const id of loadIds) await loadPage.page.evaluate((i) => window.B.close(i), id).catch(() => {});
  await loadPage.context.close();
  await viewerClose(v1, holder.id);
  await v1.context.close();
  const c1 = P.cpu[1]?.cpuPct, f1 = P.cpu[1]?.fanoutCpuPct;
  P.perViewer = {};
  P.perViewerFanout = {};
  for (const n of VIEWERS.filter((x) => x > 1)) {
    if (P.cpu[n] && c1 != null) P.perViewer[n] = r1((P.cpu[n].cpuPct - c1) / (n - 1));
    if (P.cpu[n] && f1 != null) P.perViewerFanout[n] = r1((P.cpu[n].fanoutCpuPct - f1) / (n - 1));
  }

  // diagnostic: the same viewer without an audio m-line (Chromium then has no audio stream to
  // lip-sync the video with), to see how much of the latency is audio/video synchronisation
  try {
    await waitViewers(url, 0);
    const v = await openPage(browser, url);
    const r = await viewerConnect(v, { audio: false });
    await sleep(2000);
    const secs = Math.min(8, LATENCY_S);
    log(`latency, 1 viewer, video-only offer, ${secs} s`);
    await probeStart(v.page);
    await sleep(secs * 1000);
    P.videoOnly = summarize(await probeStop(v.page));
    P.videoOnly.inbound = await v.page.evaluate((id) => window.B.inboundVideo(id), r.id);
    P.videoOnly.firstFrame = r.t.first_frame;
    log(`  video-only latency ${JSON.stringify(P.videoOnly.latency)} recv→render ${P.videoOnly.recvToRender.p50}; jitter buffer ${P.videoOnly.inbound.jitterBufferDelayMs} ms`);
    await viewerClose(v, r.id);
    await v.context.close();
  } catch (e) { note('peercam video-only', e); }

  // what the built-in page does: audio + video, but not lip-synced (POST /whep?sync=0: separate
  // streams, so Chromium shows the picture without waiting for its audio jitter buffer)
  try {
    await waitViewers(url, 0);
    const v = await openPage(browser, url);
    const r = await viewerConnect(v, { url: '/whep?sync=0' });
    await sleep(2000);
    const secs = Math.min(10, LATENCY_S);
    log(`latency, 1 viewer, audio + video not lip-synced (the page's mode), ${secs} s`);
    await probeStart(v.page);
    await sleep(secs * 1000);
    P.unsynced = summarize(await probeStop(v.page));
    P.unsynced.inbound = await v.page.evaluate((id) => window.B.inboundVideo(id), r.id);
    log(`  unsynced latency ${JSON.stringify(P.unsynced.latency)}; jitter buffer video ${P.unsynced.inbound.jitterBufferDelayMs} ms, audio ${P.unsynced.inbound.audio?.jitterBufferDelayMs} ms`);
    await viewerClose(v, r.id);
    await v.context.close();
  } catch (e) { note('peercam unsynced', e); }

  // back to idle?
  await waitViewers(url, 0);
  await sleep(1500);
  log(`idle again: ${Math.min(5, CPU_S)} s`);
  P.cpuIdleAfter = encStats(await cpuWindow(svc.pid, Math.min(5, CPU_S), enc));
  P.finalSettings = await settings();
  await svc.stop();
}

async function benchC2c(browser) {
  const C = R.c2c;
  // an empty page on a loopback http origin (a secure context), with a getUserMedia grant so that
  // Chromium gathers its real 127.0.0.1 host candidate instead of an mDNS name nobody can resolve here
  const server = createServer((_req, res) => { res.writeHead(200, { 'Content-Type': 'text/html' }); res.end('<!doctype html><title>c2c</title><body></body>'); });
  await new Promise((r) => server.listen(C2C_PORT, '127.0.0.1', r));
  cleanups.push(() => new Promise((r) => server.close(r)));
  const context = await browser.newContext({ viewport: { width: 800, height: 700 } });
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${C2C_PORT}/`);
  await page.evaluate(pageLib);
  await page.evaluate(() => window.B.grantMedia());
  await page.evaluate(() => { window.B.setup(); window.P = window.B.probe(document.getElementById('v')); window.B.canvasSource(); });
  await sleep(1000);
  C.firstFrame = [];
  for (let i = 0; i < FIRST_N; i++) {
    try {
      const r = await page.evaluate(() => window.B.c2c({ video: document.getElementById('v') }));
      C.firstFrame.push(r);
      log(`  C→C first frame #${i + 1}: ${r.t.first_frame} ms (${r.info.answerVideoCodec}, ${r.info.firstWidth}x${r.info.firstHeight}) ${JSON.stringify(phases(r.t))}`);
      if (i < FIRST_N - 1) { await sleep(300); await page.evaluate((id) => window.B.closeC2c(id), r.id); await sleep(300); }
    } catch (e) { note(`C→C first frame #${i + 1}`, e); }
  }
  const last = C.firstFrame.at(-1);
  C.firstFrameSummary = ffSummary(C.firstFrame);
  delete C.firstFrame;
  if (!last) throw new Error('no C→C connection');
  await sleep(3000);   // let the sender's bandwidth estimate ramp up
  log(`C→C latency ${LATENCY_S} s`);
  await probeStart(page);
  await sleep(LATENCY_S * 1000);
  const res = await probeStop(page);
  C.latency = summarize(res);
  C.latencyRaw = matchFrames(res.samples).kept;
  C.inbound = await page.evaluate((id) => window.B.inboundVideo(id), last.id);
  C.outbound = await page.evaluate((id) => window.B.outboundVideo(id), last.id);
  log(`  latency ${JSON.stringify(C.latency.latency)} recv ${JSON.stringify(C.latency.recvLatency)} fps ${C.latency.renderedFps} ${JSON.stringify(C.latency.sizes)}; audio ${last.info.audio}; jitter buffer video ${C.inbound.jitterBufferDelayMs} ms, audio ${C.inbound.audio?.jitterBufferDelayMs} ms, audio concealed ${C.inbound.audio?.concealedPct} %`);
  log(`  sender ${JSON.stringify(C.outbound)}`);
  await page.evaluate((id) => window.B.closeC2c(id), last.id);
  // diagnostic, as for peercam: the same without audio (no lip sync)
  try {
    await sleep(300);
    const r = await page.evaluate(() => window.B.c2c({ video: document.getElementById('v'), audio: false }));
    await sleep(3000);
    const secs = Math.min(8, LATENCY_S);
    log(`C→C latency, video only, ${secs} s`);
    await probeStart(page);
    await sleep(secs * 1000);
    C.videoOnly = summarize(await probeStop(page));
    C.videoOnly.inbound = await page.evaluate((id) => window.B.inboundVideo(id), r.id);
    log(`  C→C video-only latency ${JSON.stringify(C.videoOnly.latency)}; jitter buffer ${C.videoOnly.inbound.jitterBufferDelayMs} ms`);
    await page.evaluate((id) => window.B.closeC2c(id), r.id);
  } catch (e) { note('C→C video-only', e); }
  await context.close();
}

async function benchAiortc(browser) {
  const A = R.aiortc;
  const py = join(HERE, '.venv/bin/python');
  if (!existsSync(py)) { A.skipped = 'bench/.venv missing (run.sh creates it; BENCH_AIORTC=0 skips it)'; log(`aiortc: skipped — ${A.skipped}`); return; }
  // The repo's one aiortc reference server (tests/interop), run with bench/.venv's Python.
  const svc = await startProcess('aiortc', py, [join(ROOT, 'tests/interop/reference_whep_server.py'), '--listen', `127.0.0.1:${AIORTC_PORT}`, '--width', W, '--height', H, '--fps', FPS].map(String),
    /listening on (http:\/\/[^\s/]+\/)/);
  const v = await openPage(browser, svc.url);
  A.firstFrame = [];
  const n = Math.min(3, FIRST_N);
  for (let i = 0; i < n; i++) {
    try {
      const r = await viewerConnect(v);
      A.firstFrame.push(r);
      log(`  aiortc first frame #${i + 1}: ${r.t.first_frame} ms ${JSON.stringify(phases(r.t))}`);
      if (i < n - 1) { await sleep(300); await viewerClose(v, r.id); await sleep(500); }
    } catch (e) { note(`aiortc first frame #${i + 1}`, e); }
  }
  A.firstFrameSummary = ffSummary(A.firstFrame);
  const last = A.firstFrame.at(-1);
  delete A.firstFrame;
  if (!last) throw new Error('no aiortc connection');
  await sleep(2000);
  const secs = Math.min(10, LATENCY_S);
  log(`aiortc latency ${secs} s`);
  await probeStart(v.page);
  const w = cpuWindow(svc.pid, secs);
  await sleep(secs * 1000);
  const res = await probeStop(v.page);
  A.cpu1 = await w;
  delete A.cpu1.settingsBefore; delete A.cpu1.settingsAfter;
  A.latency = summarize(res);
  A.latencyRaw = matchFrames(res.samples).kept;
  A.inbound = await v.page.evaluate((id) => window.B.inboundVideo(id), last.id);
  log(`  latency ${JSON.stringify(A.latency.latency)} recv ${JSON.stringify(A.latency.recvLatency)} fps ${A.latency.renderedFps}; server CPU ${A.cpu1.cpuPct} %; jitter buffer video ${A.inbound.jitterBufferDelayMs} ms, audio ${A.inbound.audio?.jitterBufferDelayMs} ms, audio concealed ${A.inbound.audio?.concealedPct} %`);
  await viewerClose(v, last.id);
  await v.context.close();
  await svc.stop();
}

function machineInfo() {
  const m = R.machine;
  m.cpu = (/model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8')) || [])[1];
  m.cores = readFileSync('/proc/cpuinfo', 'utf8').split('\n').filter((l) => l.startsWith('processor')).length;
  m.loadavgAtStart = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  try { m.chromium = execFileSync(CHROMIUM, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim(); } catch { m.chromium = '?'; }
  try { m.gitRev = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']).toString().trim(); } catch { m.gitRev = '?'; }
  m.binary = BIN; m.binaryMtime = statSync(BIN).mtime.toISOString(); m.binarySize = statSync(BIN).size;
  const cross = join(ROOT, 'target/aarch64-unknown-linux-gnu/release/peercam');
  if (existsSync(cross)) {
    R.aarch64 = { path: cross, bytes: statSync(cross).size };
    try { R.aarch64.file = execFileSync('file', ['-b', cross]).toString().trim(); } catch { /* no file(1) */ }
    R.aarch64.stripped = R.aarch64.file ? !/not stripped/.test(R.aarch64.file) : null;
  } else R.aarch64 = null;
}

async function main() {
  assertLoopbackOnly();
  if (!existsSync(BIN)) throw new Error(`no peercam binary at ${BIN}`);
  machineInfo();
  log(`machine: ${R.machine.cpu} x${R.machine.cores}, load ${R.machine.loadavgAtStart}; ${R.machine.chromium}`);
  const browser = await launchBrowser();
  try { await benchPeercam(browser); } catch (e) { note('peercam', e); }
  try { await benchC2c(browser); } catch (e) { note('Chromium→Chromium', e); }
  if (process.env.BENCH_AIORTC === '0') R.aiortc.skipped = 'BENCH_AIORTC=0';
  else if (process.env.BENCH_AIORTC_SKIP) R.aiortc.skipped = process.env.BENCH_AIORTC_SKIP;
  else { try { await benchAiortc(browser); } catch (e) { note('aiortc', e); R.aiortc.skipped = R.aiortc.skipped || `failed: ${e.message}`; } }
  R.machine.loadavgAtEnd = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  R.durationS = Number(elapsed());
}

try {
  await main();
} catch (e) {
  note('bench', e);
} finally {
  clearTimeout(watchdog);
  await cleanup();
}
writeReport(R, { RESULTS, OUT });
process.exit(R.peercam.latency ? 0 : 1);
