// WHIP publishing to a real SFU (issue 16, part 3): the device publishes to Debian's Janus 1.1.2
// through a WHIP front end written with janode (whip-janus.mjs), a Chromium viewer subscribes
// through Janus' VideoRoom and reads the test pattern's timestamp code, the SFU is killed and
// restarted, and a local WHEP viewer watches the device all along.
//
//   <p>-dev                                   <p>-sfu
//   peercam (HTTP 127.0.0.1:18880,            Janus (WebSocket API on 127.0.0.1:8188, media on
//            UDP 18889)                              20000-20200) + whip-janus.mjs (:18870)
//   Chromium: the device's page (WHEP,
//     over loopback) and the SFU viewer
//   10.77.0.1 ───────────────── veth ───────────────── 10.77.0.2
//
// Nothing can leave: the two namespaces are joined only to each other (no route, no veth to the
// root namespace), and each drops any output that is not loopback or 10.77.0.0/24.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { installProbe, probeFor, checkFrames, evaluate, sleep, openViewer, waitForLive, percentile } from '../e2e/lib.mjs';
import { addNetns, netns, run, nsx } from '../lib/netns.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '../..');
const BIN = process.env.PEERCAM_BIN || join(ROOT, 'target/release/peercam');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.WHIP_ARTIFACTS || join(HERE, 'artifacts');
const P = process.env.WHIP_PREFIX || 'pcw0';
const HTTP_PORT = 18880, UDP_PORT = 18889, WHIP_PORT = 18870, ROOM = 7077;
const DEV_IP = '10.77.0.1', SFU_IP = '10.77.0.2';
const FPS = 15, MAX_BACKOFF_S = 4, PEER_TIMEOUT_S = 4, OUTAGE_MS = 7000;
const TOKEN = execFileSync('head', ['-c', '16', '/dev/urandom']).toString('hex');
const WRONG = execFileSync('head', ['-c', '16', '/dev/urandom']).toString('hex');
const JANUS_LIBS = process.env.JANUS_LIBS || '/usr/lib/x86_64-linux-gnu/janus';
mkdirSync(ARTIFACTS, { recursive: true });
const TMP = mkdtempSync(join(tmpdir(), 'peercam-whip-'));

// ---- reporting and cleanup ------------------------------------------------------------------------
const counts = { passed: 0, failed: 0 };
const t = {
  check(ok, label, detail = '') {
    counts[ok ? 'passed' : 'failed']++;
    console.log(`${ok ? 'PASS' : 'FAIL'} ${label}${detail ? ` — ${detail}` : ''}`);
    return ok;
  },
  info: (msg) => console.log(`     ${msg}`),
};
const cleanups = [];
async function cleanup() {
  while (cleanups.length) { try { await Promise.race([cleanups.pop()(), sleep(5000)]); } catch { /* best effort */ } }
}
process.on('exit', () => { rmSync(TMP, { recursive: true, force: true }); });
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => { cleanup().finally(() => process.exit(130)); });
const { startInNs, logWait, chromiumWrapper } = netns({ artifacts: ARTIFACTS, tmp: TMP, cleanups, env: { RUST_LOG: process.env.WHIP_RUST_LOG || 'info' } });

// ---- the network ----------------------------------------------------------------------------------
const NS = { dev: `${P}-dev`, sfu: `${P}-sfu` };
function buildNet() {
  for (const ns of Object.values(NS)) {
    addNetns(ns);
    cleanups.push(async () => run(['ip', 'netns', 'del', ns], { quiet: true }));
  }
  run(['ip', 'link', 'add', `${P}d0`, 'type', 'veth', 'peer', 'name', `${P}s0`]);
  run(['ip', 'link', 'set', `${P}d0`, 'netns', NS.dev]);
  run(['ip', 'link', 'set', `${P}s0`, 'netns', NS.sfu]);
  run(['ip', '-n', NS.dev, 'addr', 'add', `${DEV_IP}/24`, 'dev', `${P}d0`]);
  run(['ip', '-n', NS.sfu, 'addr', 'add', `${SFU_IP}/24`, 'dev', `${P}s0`]);
  run(['ip', '-n', NS.dev, 'link', 'set', `${P}d0`, 'up']);
  run(['ip', '-n', NS.sfu, 'link', 'set', `${P}s0`, 'up']);
  for (const ns of Object.values(NS)) {
    nsx(ns, 'iptables', '-w', '-A', 'OUTPUT', '-o', 'lo', '-j', 'ACCEPT');
    nsx(ns, 'iptables', '-w', '-A', 'OUTPUT', '-d', '10.77.0.0/24', '-j', 'ACCEPT');
    nsx(ns, 'iptables', '-w', '-A', 'OUTPUT', '-j', 'DROP');
  }
}

// ---- the SFU: Janus + the WHIP front end ---------------------------------------------------------
// Janus' own config, only what the test needs: the VideoRoom plugin and the WebSocket transport
// (on loopback: only the front end talks to it). docs/many-viewers.md shows the same files.
function writeJanusConfig() {
  const dir = join(TMP, 'janus');
  mkdirSync(dir, { recursive: true });
  const plugins = ['audiobridge', 'duktape', 'echotest', 'lua', 'nosip', 'recordplay', 'sip', 'streaming', 'textroom', 'videocall', 'voicemail'];
  const transports = ['http', 'mqtt', 'nanomsg', 'pfunix', 'rabbitmq'];
  writeFileSync(join(dir, 'janus.jcfg'), `general: {
	configs_folder = "${dir}"
	plugins_folder = "${JANUS_LIBS}/plugins"
	transports_folder = "${JANUS_LIBS}/transports"
	events_folder = "${JANUS_LIBS}/events"
	loggers_folder = "${JANUS_LIBS}/loggers"
	debug_level = 4
}
media: {
	rtp_port_range = "20000-20200"
}
nat: {
	ignore_mdns = true
}
plugins: {
	disable = "${plugins.map((p) => `libjanus_${p}.so`).join(',')}"
}
transports: {
	disable = "${transports.map((p) => `libjanus_${p}.so`).join(',')}"
}
loggers: {
	disable = "libjanus_jsonlog.so"
}
events: {
	broadcast = false
}
`);
  writeFileSync(join(dir, 'janus.transport.websockets.jcfg'), `general: {
	json = "compact"
	ws = true
	ws_port = 8188
	ws_ip = "127.0.0.1"
}
admin: {
	admin_ws = false
}
`);
  writeFileSync(join(dir, 'janus.plugin.videoroom.jcfg'), 'general: {\n}\n');
  return dir;
}
let janusDir;
const startJanus = (n) => startInNs(NS.sfu, `janus-${n}`, 'janus', ['-C', join(janusDir, 'janus.jcfg'), '-F', janusDir, '-o'], /WebSockets thread started/);
const startFrontEnd = () => startInNs(NS.sfu, 'whip-janus', process.execPath, [join(HERE, 'whip-janus.mjs'),
  '--listen', `0.0.0.0:${WHIP_PORT}`, '--janus', 'ws://127.0.0.1:8188', '--token', TOKEN, '--room', String(ROOM)], /listening on/);
const sfuState = () => JSON.parse(nsx(NS.sfu, 'curl', '-s', '-m', '3', `http://127.0.0.1:${WHIP_PORT}/state`) || '{}');

// ---- the device -----------------------------------------------------------------------------------
function startDevice(name, token) {
  const cfg = `[http]
listen = "127.0.0.1:${HTTP_PORT}"
state_dir = "${join(TMP, 'state')}"

[video]
source = "testsrc"
width = 640
height = 480
fps = ${FPS}
bitrate_kbps = 800

[audio]
source = "tone"

[speaker]
device = ""

[webrtc]
udp_port = ${UDP_PORT}
peer_timeout_s = ${PEER_TIMEOUT_S}

[publish]
whip_url = "http://${SFU_IP}:${WHIP_PORT}/whip/endpoint/${ROOM}"
bearer_token = "${token}"
max_backoff_s = ${MAX_BACKOFF_S}
`;
  writeFileSync(join(TMP, `${name}.toml`), cfg);
  writeFileSync(join(ARTIFACTS, `${name}.toml`), cfg.replace(token, '<token>'));
  return startInNs(NS.dev, name, BIN, ['run', '--config', join(TMP, `${name}.toml`)], /listening on/);
}
const settings = () => JSON.parse(nsx(NS.dev, 'curl', '-s', '-m', '3', `http://127.0.0.1:${HTTP_PORT}/api/settings`));
async function waitSettings(pred, timeoutMs, what) {
  const t0 = Date.now();
  for (;;) {
    const s = settings();
    if (pred(s)) return s;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}: publish ${JSON.stringify(s.publish)}`);
    await sleep(200);
  }
}
const count = (text, re) => (text.match(new RegExp(re.source, 'g')) || []).length;
// The publication's link as the ladder sees it (whipN in /api/settings links).
const publicationLink = () => (settings().links || []).find((l) => /^whip/.test(l.viewer));
// Waits (bounded) until the publication reads the main rung. Its estimate follows Janus'
// transport feedback: on a loaded machine a starved Janus reads packets late, which is a queue
// as far as the feedback shows, and the controller backs off to 0.85 x the acknowledged rate —
// for this cheap test picture (~250 kbit/s) below the ladder's switch point, so the publication
// reads the half-size, half-rate rung until the estimate climbs back and the ladder's hold (4 s)
// has passed. Frame rates are measured once it is back on main; how long that took is reported.
async function publicationOnMain(timeoutMs) {
  const t0 = Date.now();
  let link, lowest = Infinity;
  for (;;) {
    link = publicationLink();
    const now = Date.now();
    if (link) lowest = Math.min(lowest, link.estimate_bps);
    if (link?.rung === 'main') return { ok: true, ms: now - t0, lowest, link };
    if (now - t0 > timeoutMs) return { ok: false, ms: now - t0, lowest, link };
    await sleep(200);
  }
}
const mainInfo = (m) => `${m.ok ? `on main after ${m.ms} ms` : `not on main after ${m.ms} ms`} (lowest estimate seen ${Number.isFinite(m.lowest) ? Math.round(m.lowest / 1000) + ' kbit/s' : 'none'}); link ${JSON.stringify(m.link)}`;

// ---- the SFU viewer (Chromium, through Janus' VideoRoom) -----------------------------------------
async function sfuViewer(page) {
  await page.goto(`http://${SFU_IP}:${WHIP_PORT}/view`);
  const t0 = Date.now();
  await evaluate(page, () => window.subscribe());
  await page.waitForFunction(() => document.getElementById('video').readyState >= 2, null, { timeout: 10000 });
  return Date.now() - t0;
}
const videoCodec = (page) => evaluate(page, async () => {
  let c = null;
  (await window.pc.getStats()).forEach((s) => { if (s.type === 'codec' && /video/.test(s.mimeType)) c = s.mimeType; });
  return c;
});

// ---- the run --------------------------------------------------------------------------------------
async function body() {
  const t0 = Date.now();
  buildNet();
  janusDir = writeJanusConfig();
  let janus = startJanus(1);
  const front = startFrontEnd();
  await Promise.all([janus.ready, front.ready]);
  t.info(`net, Janus and the WHIP front end up in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  // 1. a wrong bearer token: refused, logged once, retried with the backoff
  {
    const dev = startDevice('device-wrong-token', WRONG);
    await dev.ready;
    await logWait(dev, /refused the bearer token \(401\)/, 0, 15000, 'the refusal in the log');
    const s = await waitSettings((x) => x.publish?.failures >= 3, 15000, 'three failed attempts');
    const said = count(dev.text, /refused the bearer token/);
    const p = s.publish;
    t.check(p.state !== 'publishing' && /401/.test(p.last_error || '') && said === 1,
      'a wrong bearer token is refused (401), logged once, and retried', `${p.failures} attempts, ${said} log line(s): "${(/whip: .*refused the bearer token[^\n]*/.exec(dev.text) || [''])[0].trim()}"`);
    // The front end's log comes through a pipe: its third line may trail the device's third failure.
    for (let i = 0; i < 20 && count(front.text, /wrong bearer token → 401/) < 3; i++) await sleep(100);
    t.check(count(front.text, /wrong bearer token → 401/) >= 3 && sfuState().publishers === 0, 'the SFU saw the wrong token and has no publisher', `front end: ${count(front.text, /wrong bearer token → 401/)} refusals`);
    t.check(!dev.text.includes(WRONG) && !JSON.stringify(s).includes(WRONG), 'the (wrong) token is neither logged nor in /api/settings',
      `publish: ${JSON.stringify(p)}`);
    await dev.stop();
  }

  // 2. the right token: published, and a Chromium viewer of the SFU decodes it
  const device = startDevice('device', TOKEN);
  await device.ready;
  const tPub = await logWait(device, /whip: publishing to/, 0, 15000, 'the publication');
  let s = settings();
  t.check(s.publish?.state === 'publishing' && s.publish.url_host === `http://${SFU_IP}:${WHIP_PORT}` && sfuState().publishers === 1,
    'with the right token the device publishes to Janus (201, ICE + DTLS up)', `${tPub} ms after start; publish ${JSON.stringify(s.publish)}`);

  const browser = await chromium.launch({
    executablePath: chromiumWrapper(NS.dev, CHROMIUM), headless: true, ignoreDefaultArgs: ['--mute-audio'],
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required', '--allow-loopback-in-peer-connection',
      // the SFU's page is on a private address: no Local Network Access prompt; real host candidates for Janus
      '--disable-features=WebRtcHideLocalIpsWithMdns,LocalNetworkAccessChecks'],
  });
  cleanups.push(() => browser.close());
  const local = await openViewer(browser, `http://127.0.0.1:${HTTP_PORT}/`, { viewport: { width: 800, height: 600 } });
  await waitForLive(local.page);
  await installProbe(local.page);
  const sfuCtx = await browser.newContext({ viewport: { width: 800, height: 600 } });
  const sfu = await sfuCtx.newPage();
  const sfuErrors = [];
  sfu.on('pageerror', (e) => sfuErrors.push(e.message));
  const firstMs = await sfuViewer(sfu);
  t.info(`SFU viewer: first frame ${firstMs} ms after subscribing`);
  const main1 = await publicationOnMain(15000);
  t.info(`the publication's link: ${mainInfo(main1)}`);
  t.check(main1.ok, 'the publication reports its link to the ladder like a viewer (whipN in links, on the main rung within 15 s)', mainInfo(main1));
  await installProbe(sfu);
  const probe1 = await probeFor(sfu, 4000);
  const r1 = checkFrames(t, 'SFU viewer (Chromium ← Janus ← device)', probe1, { fps: FPS, minRatio: 0.6, maxLatencyMs: 1500 });
  t.check(await videoCodec(sfu) === 'video/H264', 'the SFU viewer decodes H.264', await videoCodec(sfu));
  t.info(`SFU viewer glass-to-glass latency: p50 ${percentile(r1.lat, 50)} ms, p90 ${percentile(r1.lat, 90)} ms`);

  // 3. the network drops for longer than peer_timeout_s (UDP between the device and the SFU
  // blocked; HTTP still goes through, as when a Wi-Fi link flaps): the device restarts ICE on the
  // same resource (PATCH), and the SFU viewer that was watching goes on with the same subscription
  // — a new publication would be a new feed, and that viewer's picture would stop for good.
  {
    const from = device.text.length, fromFront = front.text.length;
    const uuid = sfuState().whip?.[0];
    const drop = (op) => {
      nsx(NS.dev, 'iptables', '-w', op, 'OUTPUT', '-p', 'udp', '-d', SFU_IP, '-j', 'DROP');
      nsx(NS.dev, 'iptables', '-w', op, 'INPUT', '-p', 'udp', '-s', SFU_IP, '-j', 'DROP');
    };
    drop('-I');
    const tDrop = Date.now();
    let lostMs = null;
    try { await logWait(device, /whip: ICE lost/, from, 15000, 'the device to notice ICE lost'); lostMs = Date.now() - tDrop; } catch { /* checked below */ }
    await sleep(Math.max(0, OUTAGE_MS - (Date.now() - tDrop)));
    drop('-D');
    const tUp = Date.now();
    let restartMs = null;
    try { await logWait(device, /whip: ICE restarted/, from, 15000, 'the ICE restart'); restartMs = Date.now() - tUp; } catch { /* checked below */ }
    const f = front.text.slice(fromFront);
    t.info(`UDP to the SFU dropped for ${OUTAGE_MS / 1000} s: ICE lost after ${lostMs} ms; up again ${restartMs} ms after the network was back; ` +
      `front end: ${(/PATCH [^\n]*/.exec(f) || ['no PATCH'])[0]}`);
    t.check(lostMs !== null && restartMs !== null && /PATCH \S+ → 200: ICE restart/.test(f) && count(f, /POST → 201/) === 0,
      'after a network outage the device restarts ICE on the same resource (PATCH → 200, no new POST)',
      `ICE lost after ${lostMs} ms (peer_timeout_s ${PEER_TIMEOUT_S}); back ${restartMs} ms after the network; ${count(f, /POST → 201/)} new publications`);
    // From 1 s after the restart: the first frame shown on resuming can be the one that was
    // incomplete when the network dropped (completed by a retransmission), 7 s old.
    await sleep(1000);
    // During the outage no feedback came, the estimate was cut and the publication went to the
    // low rung; the frame rate is measured once it is back on main (bounded, reported).
    const main2 = await publicationOnMain(15000);
    t.info(`after the ICE restart the publication's link is ${mainInfo(main2)}`);
    const probe = await probeFor(sfu, 3000);
    checkFrames(t, 'the same SFU viewer after the ICE restart (its subscription kept)', probe, { fps: FPS, minRatio: 0.6, maxLatencyMs: 1500 });
    const st = settings().publish;
    t.check(st.state === 'publishing' && st.ice_restarts === 1 && st.reconnects === 0 && sfuState().whip?.[0] === uuid,
      '/api/settings counts the ICE restart (ice_restarts 1, reconnects 0), the SFU keeps the resource', JSON.stringify(st));
  }

  // 4. kill the SFU and bring it back: the device republishes by itself; the local viewer goes on
  const before = settings();
  const from = device.text.length;
  const localProbe = probeFor(local.page, 14000);
  const tKill = Date.now();
  await janus.stop('SIGKILL');
  const noticedMs = await logWait(device, /whip: lost the publication/, from, 15000, 'the device to notice');
  t.info(`the device noticed the SFU gone after ${noticedMs} ms: ${(/whip: lost the publication[^\n]*/.exec(device.text.slice(from)) || [''])[0]}`);
  await sleep(1500);  // attempts meanwhile get 503 from the front end (Janus unreachable)
  janus = startJanus(2);
  await janus.ready;
  const restarted = Date.now();
  const back = device.text.length;
  await logWait(device, /whip: publishing to/, back, 20000, 'the device to republish');
  const republishMs = Date.now() - restarted;
  t.check(republishMs <= MAX_BACKOFF_S * 1000 + 3000, `after Janus restarts the device republishes by itself within the backoff (max_backoff_s = ${MAX_BACKOFF_S})`,
    `republished ${republishMs} ms after Janus was back (${((Date.now() - tKill) / 1000).toFixed(1)} s after the kill); ` +
    `${count(front.text.slice(0), /Janus is not reachable/)} attempts got 503 meanwhile`);
  const lp = await localProbe;
  checkFrames(t, 'local WHEP viewer while the SFU was down and back', lp, { fps: FPS, minRatio: 0.8, maxLatencyMs: 1000 });
  const after = settings();
  const seconds = (lp.elapsedMs) / 1000;
  const encoded = after.video.encoded_frames - before.video.encoded_frames;
  // One main encode for the local viewer and the SFU together. The ladder's half-size rung is a
  // different encoder: it starts when some link is limited (a loaded machine slows the SFU's
  // feedback) and is counted in encoders_started too, so the main rung's starts are counted from
  // the device's log ("H.264 encoder (main rung, <name>) started") — a publisher with an encoder of its
  // own would be a second one.
  const mainStarts = count(device.text, /H\.264 encoder \(main rung(, [a-z0-9]+)?\) started/);
  if (after.video.low_rung_frames > 0) t.info(`the ladder's half-size rung ran (${after.video.low_rung_frames} frames): links ${JSON.stringify(after.links)}`);
  t.check(mainStarts === 1 && encoded <= FPS * (seconds + 2) * 1.1
    && (after.video.low_rung_frames > 0 || after.video.encoders_started === 1),
    'one encoder throughout (local viewer + SFU share the encode)',
    `main rung started ${mainStarts}×; encoders_started ${before.video.encoders_started} → ${after.video.encoders_started}, ${encoded} frames encoded in ~${seconds.toFixed(1)} s (${FPS} fps), low rung frames ${before.video.low_rung_frames} → ${after.video.low_rung_frames}`);
  t.check(after.publish.state === 'publishing' && after.publish.reconnects === 1, '/api/settings shows the publication back (reconnects 1)', JSON.stringify(after.publish));
  t.check(/whip: ICE lost/.test(device.text.slice(from)) && /PATCH \S+ → 404/.test(front.text),
    'a server that lost its state answers the ICE restart 404, and the device publishes anew', (/whip: lost the publication[^\n]*/.exec(device.text.slice(from)) || [''])[0].trim());
  t.check(count(device.text.slice(from), /whip: .*(503|cannot reach)/) <= 2, 'the outage is logged once, not at every attempt',
    `${count(device.text.slice(from), /whip: /)} whip lines since the kill`);

  // 5. a new SFU viewer after the restart
  await sfu.reload();
  await sfuViewer(sfu);
  await installProbe(sfu);
  const probe2 = await probeFor(sfu, 3000);
  checkFrames(t, 'SFU viewer after the SFU restart', probe2, { fps: FPS, minRatio: 0.6, maxLatencyMs: 1500 });

  // 6. SIGTERM: the device DELETEs its resource
  const fromFront = front.text.length;
  const tStop = Date.now();
  await device.stop('SIGTERM');
  const stopMs = Date.now() - tStop;
  let deleted = false;
  try { await logWait(front, /DELETE \S+ → 200/, fromFront, 3000, 'the DELETE'); deleted = true; } catch { /* checked below */ }
  const exit = await device.exited;
  t.check(deleted && exit.code === 0 && stopMs < 2500, 'SIGTERM: the device DELETEs its WHIP resource and exits', `exit ${JSON.stringify(exit)} in ${stopMs} ms; front end: ${(/DELETE [^\n]*/.exec(front.text.slice(fromFront)) || ['no DELETE'])[0]}`);
  const logs = device.text + readFileSync(join(ARTIFACTS, 'device-wrong-token.log'), 'utf8');
  t.check(!logs.includes(TOKEN) && !logs.includes(WRONG), 'no bearer token in the device logs');
  if (sfuErrors.length || local.errors.length) t.info(`page errors: ${[...sfuErrors, ...local.errors].slice(0, 5).join(' | ')}`);
}

const watchdog = setTimeout(() => { console.log('FAIL whip: timed out'); cleanup().finally(() => process.exit(1)); }, Number(process.env.WHIP_TIMEOUT_MS || 110000));
try {
  await body();
} catch (err) {
  t.check(false, 'whip aborted', err?.stack || String(err));
} finally {
  clearTimeout(watchdog);
  await cleanup();
}
console.log(`     load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
console.log(`whip: ${counts.passed} passed, ${counts.failed} failed`);
process.exit(counts.failed ? 1 : 0);
