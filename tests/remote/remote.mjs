// Remote viewing through a small internet of network namespaces (issue 16, parts 1–2):
//
//   <p>-home (device)      <p>-hgw (NAT)            <p>-inet                     <p>-rgw (NAT)         <p>-rem (Chromium)
//   192.168.1.2 ── veth ── 192.168.1.1              10.88.0.1 (lo): npm peer     192.168.2.1 ── veth ── 192.168.2.2
//                          10.88.1.2 ── veth ──     10.88.1.1   PeerServer + coturn
//                          MASQUERADE               10.88.2.1 ── veth ──         10.88.2.2 MASQUERADE
//
// Nothing can leave: the namespaces are joined only to each other, `inet` has no default route
// (anything not 10.88.x or the two NATs' 192.168.x dies there), and no veth reaches the root namespace.
// Cases (names for run.sh): direct (a), refuse (c), reconnect (d), turn (e), relay (b).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { installProbe, probeFor, checkFrames, evaluate, sleep } from '../e2e/lib.mjs';
import { netns, run, nsx } from '../lib/netns.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '../..');
const BIN = process.env.PEERCAM_BIN || join(ROOT, 'target/release/peercam');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.REMOTE_ARTIFACTS || join(HERE, 'artifacts');
const P = process.env.REMOTE_PREFIX || 'pcr0';
const CASES = process.argv.slice(2).length ? process.argv.slice(2) : ['turn', 'direct', 'refuse', 'reconnect', 'relay'];
const HTTP_PORT = 18780, UDP_PORT = 18789, PEER_PORT = 18790, TURN_PORT = 18791;
const INET = '10.88.0.1';
const KEY = 'pcrkey', DEVICE_ID = 'pcr-cam';
const TURN_SECRET = execFileSync('head', ['-c', '16', '/dev/urandom']).toString('hex');
const TURN_TTL = 600;
const FPS = 15;
mkdirSync(ARTIFACTS, { recursive: true });
const TMP = mkdtempSync(join(tmpdir(), 'peercam-remote-'));

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
const { startInNs, logWait, chromiumWrapper } = netns({ artifacts: ARTIFACTS, tmp: TMP, cleanups, env: { RUST_LOG: process.env.REMOTE_RUST_LOG || 'info' } });
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => { cleanup().finally(() => process.exit(130)); });

// ---- the network ----------------------------------------------------------------------------------
const NS = { home: `${P}-home`, hgw: `${P}-hgw`, inet: `${P}-inet`, rgw: `${P}-rgw`, rem: `${P}-rem` };
function buildNet() {
  for (const ns of Object.values(NS)) {
    run(['ip', 'netns', 'add', ns]);
    cleanups.push(async () => run(['ip', 'netns', 'del', ns], { quiet: true }));
    run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  }
  const link = (a, aIf, aAddr, b, bIf, bAddr) => {
    run(['ip', 'link', 'add', aIf, 'type', 'veth', 'peer', 'name', bIf]);
    run(['ip', 'link', 'set', aIf, 'netns', a]);
    run(['ip', 'link', 'set', bIf, 'netns', b]);
    run(['ip', '-n', a, 'addr', 'add', aAddr, 'dev', aIf]);
    run(['ip', '-n', b, 'addr', 'add', bAddr, 'dev', bIf]);
    run(['ip', '-n', a, 'link', 'set', aIf, 'up']);
    run(['ip', '-n', b, 'link', 'set', bIf, 'up']);
  };
  link(NS.home, `${P}h0`, '192.168.1.2/24', NS.hgw, `${P}h1`, '192.168.1.1/24');
  link(NS.hgw, `${P}h2`, '10.88.1.2/24', NS.inet, `${P}i1`, '10.88.1.1/24');
  link(NS.rgw, `${P}r2`, '10.88.2.2/24', NS.inet, `${P}i2`, '10.88.2.1/24');
  link(NS.rem, `${P}r0`, '192.168.2.2/24', NS.rgw, `${P}r1`, '192.168.2.1/24');
  run(['ip', '-n', NS.inet, 'addr', 'add', `${INET}/32`, 'dev', 'lo']);
  run(['ip', '-n', NS.home, 'route', 'add', 'default', 'via', '192.168.1.1']);
  run(['ip', '-n', NS.hgw, 'route', 'add', 'default', 'via', '10.88.1.1']);
  run(['ip', '-n', NS.rgw, 'route', 'add', 'default', 'via', '10.88.2.1']);
  run(['ip', '-n', NS.rem, 'route', 'add', 'default', 'via', '192.168.2.1']);
  for (const ns of [NS.hgw, NS.inet, NS.rgw]) nsx(ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
  nsx(NS.hgw, 'iptables', '-w', '-t', 'nat', '-A', 'POSTROUTING', '-o', `${P}h2`, '-j', 'MASQUERADE');
  nsx(NS.rgw, 'iptables', '-w', '-t', 'nat', '-A', 'POSTROUTING', '-o', `${P}r2`, '-j', 'MASQUERADE');
  // A home router drops unsolicited UDP to itself. This also matters for hole punching: a packet that
  // arrived before the inside host sent anything would otherwise leave a conntrack entry for that
  // 5-tuple, and the inside host's own packet would then be mapped to another port (no longer its
  // srflx address). Dropped in INPUT, the entry is never confirmed.
  nsx(NS.hgw, 'iptables', '-w', '-A', 'INPUT', '-i', `${P}h2`, '-p', 'udp', '-j', 'DROP');
  nsx(NS.rgw, 'iptables', '-w', '-A', 'INPUT', '-i', `${P}r2`, '-p', 'udp', '-j', 'DROP');
  // the home and remote LANs only ever reach the 10.88 internet (belt and braces: there is no other)
  for (const [ns, lan] of [[NS.home, '192.168.1.0/24'], [NS.rem, '192.168.2.0/24']]) {
    nsx(ns, 'iptables', '-w', '-A', 'OUTPUT', '-o', 'lo', '-j', 'ACCEPT');
    nsx(ns, 'iptables', '-w', '-A', 'OUTPUT', '-d', lan, '-j', 'ACCEPT');
    nsx(ns, 'iptables', '-w', '-A', 'OUTPUT', '-d', '10.88.0.0/16', '-j', 'ACCEPT');
    nsx(ns, 'iptables', '-w', '-A', 'OUTPUT', '-j', 'DROP');
  }
}
// Case (b): no UDP between the two homes' public addresses; only via coturn (10.88.0.1, local to inet).
function blockUdpBetweenHomes() {
  nsx(NS.inet, 'iptables', '-w', '-I', 'FORWARD', '-p', 'udp', '-s', '10.88.1.2', '-d', '10.88.2.2', '-j', 'DROP');
  nsx(NS.inet, 'iptables', '-w', '-I', 'FORWARD', '-p', 'udp', '-s', '10.88.2.2', '-d', '10.88.1.2', '-j', 'DROP');
  // and forget the NATs' existing mappings, so nothing rides on an earlier direct path
  nsx(NS.hgw, 'sh', '-c', 'command -v conntrack >/dev/null && conntrack -F 2>/dev/null || true');
  nsx(NS.rgw, 'sh', '-c', 'command -v conntrack >/dev/null && conntrack -F 2>/dev/null || true');
}
const blockedCount = () => nsx(NS.inet, 'iptables', '-w', '-L', 'FORWARD', '-v', '-n', '-x')
  .split('\n').filter((l) => /DROP/.test(l)).reduce((n, l) => n + Number(l.trim().split(/\s+/)[0] || 0), 0);

// ---- processes ------------------------------------------------------------------------------------
function startCoturn() {
  return startInNs(NS.inet, 'coturn', 'turnserver', [
    '-n', '--listening-ip', INET, '--relay-ip', INET, '--listening-port', String(TURN_PORT),
    '--min-port', '49160', '--max-port', '49400', '--use-auth-secret', '--static-auth-secret', TURN_SECRET,
    '--realm', 'peercam.test', '--no-tls', '--no-dtls', '--no-cli', '--fingerprint', '--no-tcp-relay',
    // As production configs do: no relaying into private networks (the viewers' and the device's
    // LANs), except the rig's "internet". Needed here too: inet has no route to those LANs, and
    // coturn's sendto() to one (a peer's host candidate) failed with ENETUNREACH, after which coturn
    // dropped the whole relay endpoint — its port went dead (every later packet a UDP NoPorts in
    // inet) and the relayed call froze after ~0.2 s.
    '--denied-peer-ip', '192.168.0.0-192.168.255.255', '--allowed-peer-ip', '10.88.0.0-10.88.255.255', '--log-file', 'stdout', '--simple-log', '--verbose',
    '--pidfile', join(TMP, 'turnserver.pid'), '--userdb', join(TMP, 'turndb'),
  ], /IPv4. UDP listener opened|listener opened on/);
}
function startPeerServer() {
  return startInNs(NS.inet, 'peerserver', process.execPath, [join(HERE, 'node_modules/peer/dist/bin/peerjs.js'),
    '--host', INET, '--port', String(PEER_PORT), '--key', KEY, '--path', '/', '--alive_timeout', '60000'], /Started PeerServer/);
}

// The device: test pattern + tone, a password (so /api needs credentials), one API token.
const apiToken = (() => {
  const out = run([BIN, 'new-token']);
  return { token: /shown once\): ([0-9a-f]{64})/.exec(out)[1], hash: /token_sha256 = \["([0-9a-f]{64})"\]/.exec(out)[1] };
})();
function startDevice() {
  const pw = execFileSync('head', ['-c', '12', '/dev/urandom']).toString('hex');
  const hash = run([BIN, 'hash-password'], { input: `${pw}\n${pw}\n` }).trim();
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

[auth]
password_hash = "${hash}"
token_sha256 = ["${apiToken.hash}"]

[remote]
peerserver = "ws://${INET}:${PEER_PORT}/"
key = "${KEY}"
device_id = "${DEVICE_ID}"
heartbeat_s = 2
max_backoff_s = 4

[ice]
servers = [{ urls = ["stun:${INET}:${TURN_PORT}"] }]
turn_secret = "${TURN_SECRET}"
turn_urls = ["turn:${INET}:${TURN_PORT}?transport=udp"]
turn_ttl_s = ${TURN_TTL}
`;
  writeFileSync(join(TMP, 'peercam.toml'), cfg);
  writeFileSync(join(ARTIFACTS, 'peercam.toml'), cfg.replace(TURN_SECRET, '<secret>').replace(hash, '<argon2 hash>'));
  return startInNs(NS.home, 'device', BIN, ['run', '--config', join(TMP, 'peercam.toml')], /connected to the PeerServer/);
}
// The device's API, from inside its namespace (loopback).
function api(method, path, { token = apiToken.token, body } = {}) {
  const args = ['curl', '-s', '-o', '-', '-w', '\n%{http_code}', '-X', method, `http://127.0.0.1:${HTTP_PORT}${path}`];
  if (token) args.push('-H', `Authorization: Bearer ${token}`);
  if (body !== undefined) args.push('-H', 'Content-Type: application/json', '--data', JSON.stringify(body));
  const out = nsx(NS.home, ...args);
  const i = out.lastIndexOf('\n');
  const text = out.slice(0, i);
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: Number(out.slice(i + 1)), text, json };
}

// ---- the remote browser ---------------------------------------------------------------------------
async function launchRemote() {
  const browser = await chromium.launch({
    executablePath: chromiumWrapper(NS.rem, CHROMIUM), headless: true, ignoreDefaultArgs: ['--mute-audio'],
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', '--autoplay-policy=no-user-gesture-required',
      // the page is served by playwright (no address), so Chromium counts it as public: let it reach the
      // PeerServer's private address without a Local Network Access prompt
      '--disable-features=WebRtcHideLocalIpsWithMdns,LocalNetworkAccessChecks'],
  });
  cleanups.push(() => browser.close());
  return browser;
}
// A page at http://localhost/remote (a secure context) served by playwright itself, with the PeerJS
// client the device embeds (web-vendor) — a stand-in for the static page a remote viewer opens.
const PEERJS = readFileSync(join(ROOT, 'web-vendor/node_modules/peerjs/dist/peerjs.min.js'));
async function remotePage(browser) {
  const context = await browser.newContext({ viewport: { width: 800, height: 600 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error' && errors.length < 20) errors.push(`console: ${m.text()}`); });
  await page.route('http://localhost/**', (r) => {
    if (r.request().url().endsWith('/peerjs.min.js')) return r.fulfill({ contentType: 'text/javascript', body: PEERJS });
    return r.fulfill({ contentType: 'text/html', body: '<!doctype html><title>remote</title><video id="video" muted playsinline autoplay></video><script src="/peerjs.min.js"></script>' });
  });
  await page.goto('http://localhost/remote');
  await page.waitForFunction(() => typeof window.Peer === 'function');
  return { page, errors };
}
// Opens a Peer on the external PeerServer and calls the device with `metadata`; resolves what happened
// within `ms`: {stream: true} once video renders, or {closed: true} / {error}.
const callDevice = (page, { token, iceServers, ms = 15000, id }) => evaluate(page, async ({ token, iceServers, ms, id, opts }) => {
  const peer = window.peer ??= new Peer(id, { ...opts, config: { iceServers, ...(opts.policy ? { iceTransportPolicy: opts.policy } : {}) } });
  await new Promise((res, rej) => {
    if (peer.open) return res();
    peer.on('open', res);
    peer.on('error', (e) => rej(new Error(`peer: ${e.type} ${e.message}`)));
    setTimeout(() => rej(new Error('peer did not open in 10 s')), 10000);
  });
  const mic = window.mic ??= await navigator.mediaDevices.getUserMedia({ audio: true });
  const metadata = token === undefined ? undefined : { token };
  const call = window.call = peer.call(opts.deviceId, mic, { metadata, constraints: { offerToReceiveVideo: true, offerToReceiveAudio: true } });
  return await new Promise((resolve) => {
    const t0 = performance.now();
    call.on('stream', async (stream) => {
      const v = document.getElementById('video');
      v.srcObject = stream;
      await v.play().catch(() => {});
      const until = performance.now() + 8000;
      while (v.readyState < 2 && performance.now() < until) await new Promise((r) => setTimeout(r, 50));
      resolve({ stream: true, ms: Math.round(performance.now() - t0), width: v.videoWidth, height: v.videoHeight });
    });
    call.on('close', () => resolve({ closed: true, ms: Math.round(performance.now() - t0) }));
    // A call that never opened emits no 'close' in PeerJS 1.5; the device's LEAVE shows as the call
    // being cleaned up (its peer connection closed and dropped).
    const poll = setInterval(() => {
      const pc = call.peerConnection;
      if (!pc || pc.signalingState === 'closed') { clearInterval(poll); resolve({ closedByDevice: true, ms: Math.round(performance.now() - t0) }); }
    }, 50);
    call.on('error', (e) => resolve({ error: String(e?.type || e) }));
    peer.on('error', (e) => resolve({ error: `${e.type}: ${e.message}` }));
    setTimeout(() => resolve({ timeout: true, iceState: call.peerConnection?.iceConnectionState }), ms);
  });
}, { token, iceServers, ms, id, opts: { host: INET, port: PEER_PORT, path: '/', key: KEY, secure: false, debug: 1, deviceId: DEVICE_ID, policy: process.env.REMOTE_POLICY } });

// A data connection to the device with `metadata` (json serialization): a get_settings round trip,
// or how it ended.
const dataConn = (page, { token, ms = 10000 }) => evaluate(page, async ({ token, ms, deviceId }) => {
  const conn = window.peer.connect(deviceId, { serialization: 'json', reliable: true, metadata: token === undefined ? undefined : { token } });
  return await new Promise((resolve) => {
    conn.on('open', () => conn.send({ v: 1, id: 7, type: 'get_settings' }));
    conn.on('data', (d) => { if (d?.type === 'reply' && d.id === 7) { resolve({ reply: d.ok, width: d.result?.video?.width }); conn.close(); } });
    conn.on('close', () => resolve({ closed: true }));
    const t0 = performance.now();
    const poll = setInterval(() => {
      const pc = conn.peerConnection;
      if (!pc || pc.signalingState === 'closed') { clearInterval(poll); resolve({ closedByDevice: true, ms: Math.round(performance.now() - t0) }); }
    }, 50);
    conn.on('error', (e) => resolve({ error: String(e?.type || e) }));
    setTimeout(() => { resolve({ timeout: true }); conn.close(); }, ms);
  });
}, { token, ms, deviceId: DEVICE_ID });

// The selected candidate pair of the current call, as the page's stats overlay reads it.
const selectedPair = (page) => evaluate(page, async () => {
  const stats = await window.call.peerConnection.getStats();
  let transport = null; const byId = {};
  stats.forEach((s) => { byId[s.id] = s; if (s.type === 'transport') transport = s; });
  let pair = transport && byId[transport.selectedCandidatePairId];
  if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
  if (!pair) return null;
  const l = byId[pair.localCandidateId] || {}, r = byId[pair.remoteCandidateId] || {};
  return { local: `${l.candidateType} ${l.address}:${l.port}`, remote: `${r.candidateType} ${r.address}:${r.port}`,
    localType: l.candidateType, remoteType: r.candidateType, relayed: l.candidateType === 'relay' || r.candidateType === 'relay' };
});
// Every pair Chromium checked, for a failure message: which direct pairs were tried and how far they got.
const allPairs = (page) => evaluate(page, async () => {
  const stats = await window.call.peerConnection.getStats();
  const byId = {}; stats.forEach((s) => { byId[s.id] = s; });
  const out = [];
  stats.forEach((s) => {
    if (s.type !== 'candidate-pair') return;
    const l = byId[s.localCandidateId] || {}, r = byId[s.remoteCandidateId] || {};
    out.push(`${l.candidateType}>${r.candidateType} ${r.address}:${r.port} ${s.state}${s.nominated ? ' nominated' : ''} req ${s.requestsSent}/resp ${s.responsesReceived}`);
  });
  return out.join('; ');
});
// Chromium may select a relayed pair first (it is writable first: the direct pair waits for both
// NATs to open) and switches when the direct one succeeds, so "direct" is judged after up to 10 s.
async function waitDirect(page, ms = 10000) {
  const t0 = Date.now();
  let pair = await selectedPair(page);
  while ((!pair || pair.relayed) && Date.now() - t0 < ms) {
    await new Promise((r) => setTimeout(r, 250));
    pair = await selectedPair(page);
  }
  return { pair, waitedMs: Date.now() - t0 };
}
const hangUp = (page) => evaluate(page, () => { window.call?.close(); window.call = null; });

// ---- the run --------------------------------------------------------------------------------------
async function body() {
  const t0 = Date.now();
  buildNet();
  const coturn = startCoturn();
  const peerserver = startPeerServer();
  await Promise.all([coturn.ready, peerserver.ready]);
  const device = startDevice();
  await device.ready;
  t.info(`net, coturn, PeerServer and device up in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const srflx = /ice: the UDP port \S+ is (\S+) as the STUN server sees it/.exec(device.text);
  t.check(srflx && srflx[1].startsWith('10.88.1.2:'), 'the device learns its public address through its NAT (STUN on its one UDP port)', srflx ? srflx[1] : 'no STUN answer in the log');

  // viewer tokens: one to watch with, one to revoke
  const a = api('POST', '/api/viewer-tokens', { body: { name: 'remote tester' } });
  const b = api('POST', '/api/viewer-tokens', { body: { name: 'to revoke' } });
  t.check(a.status === 201 && /^[0-9a-f]{64}$/.test(a.json?.token || '') && b.status === 201, 'viewer tokens are made through the API', `${a.status} ${a.json?.id} / ${b.status} ${b.json?.id}`);
  const list = api('GET', '/api/viewer-tokens');
  t.check(list.status === 200 && list.json.tokens.length === 2 && !list.text.includes(a.json.token), 'listed without the tokens themselves', list.text.slice(0, 200));
  const stored = readFileSync(join(TMP, 'state', 'viewer-tokens.json'), 'utf8');
  t.check(!stored.includes(a.json.token) && stored.includes('sha256'), 'stored hashed in the state dir');
  t.check(api('GET', '/api/viewer-tokens', { token: null }).status === 401 && api('POST', '/api/viewer-tokens', { token: a.json.token, body: {} }).status === 401,
    'the viewer-token API needs a login or an API token (a viewer token is not one)');

  // (e) TURN credentials
  let ice = null;
  {
    const anon = api('GET', '/api/ice', { token: null });
    t.check(anon.status === 401 && !anon.text.includes('credential'), 'TURN credentials: an unauthenticated GET /api/ice gets 401 and none', `HTTP ${anon.status}`);
    const now = Math.floor(Date.now() / 1000);
    const got = api('GET', '/api/ice');
    const turn = got.json?.iceServers?.find((s) => s.urls.some((u) => u.startsWith('turn:')));
    const expiry = Number((turn?.username || '').split(':')[0]);
    t.check(got.status === 200 && turn && Math.abs(expiry - (now + TURN_TTL)) <= 5 && /^[A-Za-z0-9+/]{27}=$/.test(turn.credential),
      'TURN credentials: an authenticated GET /api/ice gets a username whose expiry = now + turn_ttl_s', `username ${turn?.username}, expiry − now = ${expiry - now} s (ttl ${TURN_TTL})`);
    ice = got.json?.iceServers;
    t.check(!device.text.includes(TURN_SECRET) && !device.text.includes(turn?.credential || '#'), 'neither the TURN secret nor a credential is logged');
  }

  const reach = run(['ip', 'netns', 'exec', NS.rem, 'curl', '-s', '-m', '3', `http://${INET}:${PEER_PORT}/`], { quiet: true });
  t.check(/PeerJS/.test(reach), 'the remote network reaches the PeerServer through its NAT', reach.slice(0, 120));
  const browser = await launchRemote();
  const { page, errors } = await remotePage(browser);

  // (a) a direct call through the external PeerServer
  if (CASES.includes('direct')) {
    const from = device.text.length;
    const r = await callDevice(page, { token: a.json.token, iceServers: ice, id: 'remote-viewer-1' });
    if (!r.stream || !r.width) t.info(`page errors: ${errors.join(' | ')}; answer: ${await evaluate(page, () => window.call?.peerConnection?.remoteDescription?.sdp?.split('\r\n').filter((l) => /candidate|group|ice-/.test(l)).join(' ; '))}`);
    t.check(r.stream && r.width === 640, '(a) remote Chromium calls the device through the external PeerServer and gets video', JSON.stringify(r));
    if (r.stream) {
      await installProbe(page);
      const probe = await probeFor(page, 4000);
      checkFrames(t, '(a) remote H.264', probe, { fps: FPS, minRatio: 0.6, maxLatencyMs: 1500 });
      const { pair, waitedMs } = await waitDirect(page);
      t.check(pair && !pair.relayed, '(a) the selected candidate pair is direct (not relay)',
        `${JSON.stringify(pair)}, after ${waitedMs} ms more${pair && !pair.relayed ? '' : `; pairs: ${await allPairs(page)}`}`);
      const codec = await evaluate(page, async () => { let c = null; (await window.call.peerConnection.getStats()).forEach((s) => { if (s.type === 'codec' && /video/.test(s.mimeType)) c = s.mimeType; }); return c; });
      t.check(codec === 'video/H264', '(a) H.264', codec);
    }
    t.check(/answered \(session/.test(device.text.slice(from)), '(a) the device logs the answered call');
    await hangUp(page);
    const dc = await dataConn(page, { token: a.json.token });
    t.check(dc.reply === true && dc.width === 640, '(a) a data connection with the token: get_settings round-trips (control protocol)', JSON.stringify(dc));
  }

  // (c) no token, a wrong token, a revoked token
  if (CASES.includes('refuse')) {
    let from = device.text.length;
    const none = await callDevice(page, { iceServers: ice, ms: 10000, id: 'remote-viewer-1' });
    const noneLog = /refused mc_\S+ from "remote-viewer-1": no viewer token/.test(device.text.slice(from));
    t.check(!none.stream && none.closedByDevice && noneLog, '(c) no token → refused: the device\'s LEAVE closes the call at once, the reason is logged', `${JSON.stringify(none)}; log ${noneLog}`);
    from = device.text.length;
    const wrong = await callDevice(page, { token: 'f'.repeat(64), iceServers: ice, ms: 10000 });
    t.check(!wrong.stream && wrong.closedByDevice && /unknown or revoked viewer token/.test(device.text.slice(from)), '(c) a wrong token → refused', JSON.stringify(wrong));
    from = device.text.length;
    const dc = await dataConn(page, {});
    t.check(!dc.reply && dc.closedByDevice && /refused dc_\S+ from "remote-viewer-1": no viewer token/.test(device.text.slice(from)), '(c) a data connection without a token → refused', JSON.stringify(dc));
    // revoked while watching: the call ends; then calls with it are refused
    const live = await callDevice(page, { token: b.json.token, iceServers: ice });
    t.check(live.stream, '(c) the second token works before it is revoked', JSON.stringify(live));
    const rev = api('DELETE', `/api/viewer-tokens/${b.json.id}`);
    t.check(rev.status === 200 && rev.json.ended_sessions === 1, '(c) revoking it ends the call it opened', rev.text);
    await hangUp(page);
    from = device.text.length;
    const revoked = await callDevice(page, { token: b.json.token, iceServers: ice, ms: 10000 });
    t.check(!revoked.stream && revoked.closedByDevice && /unknown or revoked viewer token/.test(device.text.slice(from)), '(c) a revoked token → refused', JSON.stringify(revoked));
    t.check(!device.text.includes(a.json.token) && !device.text.includes(b.json.token), '(c) no viewer token appears in the log');
    const refusedAnswered = (device.text.slice(from).match(/answered \(session/g) || []).length;
    t.check(refusedAnswered === 0, '(c) nothing was answered for the refused calls (no session, no camera)');
    await hangUp(page);
  }

  // (d) the PeerServer restarts: the device is back with the same ID within the backoff
  if (CASES.includes('reconnect')) {
    const from = device.text.length;
    await peerserver.stop();
    const lostMs = await logWait(device, /lost the PeerServer/, from, 10000, 'the device to notice');
    await sleep(3000);
    const ps2 = startPeerServer();
    await ps2.ready;
    const restarted = Date.now();
    const back = device.text.length;
    await logWait(device, new RegExp(`connected to the PeerServer \\S+ as "${DEVICE_ID}"`), back, 15000, 'the device to reconnect');
    const ms = Date.now() - restarted;
    t.check(ms <= 4000 + 1500, '(d) after the PeerServer restarts the device reconnects with the same ID within the backoff (max_backoff_s = 4)',
      `noticed in ${lostMs} ms; reconnected ${ms} ms after the restart`);
    await page.evaluate(() => { window.peer?.destroy(); window.peer = null; });
    const r = await callDevice(page, { token: a.json.token, iceServers: ice, id: 'remote-viewer-2' });
    t.check(r.stream, '(d) a new remote call works through the restarted PeerServer', JSON.stringify(r));
    await hangUp(page);
  }

  // (b) UDP between the two homes blocked: only TURN works
  if (CASES.includes('relay')) {
    if (!process.env.REMOTE_NOBLOCK) blockUdpBetweenHomes();
    const counters = [
      [NS.rem, 'OUTPUT', '-p', 'udp', '-d', INET],
      [NS.rgw, 'FORWARD', '-p', 'udp', '-s', '192.168.2.2', '-d', INET],
      [NS.inet, 'INPUT', '-p', 'udp', '-s', '10.88.2.2', '--dport', String(TURN_PORT)],
      [NS.inet, 'INPUT', '-p', 'udp', '-s', '10.88.2.2', '!', '--dport', String(TURN_PORT)],
      [NS.inet, 'OUTPUT', '-p', 'udp', '-d', '10.88.1.2'],
      [NS.hgw, 'FORWARD', '-p', 'udp', '-s', INET, '-d', '192.168.1.2'],
      [NS.hgw, 'FORWARD', '-p', 'udp', '-s', '192.168.1.2', '-d', INET],
      [NS.inet, 'INPUT', '-p', 'udp', '-s', '10.88.1.2'],
      [NS.inet, 'OUTPUT', '-p', 'udp', '-d', '10.88.2.2'],
      [NS.rgw, 'FORWARD', '-p', 'udp', '-s', INET, '-d', '192.168.2.2'],
    ];
    if (process.env.REMOTE_DEBUG) for (const [ns, ...rule] of counters) nsx(ns, 'iptables', '-w', '-I', ...rule);
    await page.evaluate(() => { window.peer?.destroy(); window.peer = null; });
    await sleep(500);
    // First the viewer with what GET /api/ice gave (its own TURN credentials), then with STUN only:
    // the device's own relay candidate (credentials it minted itself) must carry the call alone.
    const viewerIce = ice;
    const r = await callDevice(page, { token: a.json.token, iceServers: viewerIce, id: 'remote-viewer-3', ms: 20000 });
    t.check(r.stream, '(b) with UDP between the homes blocked the call still renders', JSON.stringify(r));
    if (r.stream) {
      await installProbe(page);
      const probe = await probeFor(page, 4000);
      checkFrames(t, '(b) relayed H.264', probe, { fps: FPS, minRatio: 0.6, maxLatencyMs: 1500 });
      if (process.env.REMOTE_DEBUG) for (const ns of [NS.hgw, NS.rgw]) t.info(`${ns}: ${nsx(ns, 'iptables', '-w', '-L', 'INPUT', '-v', '-n', '-x').replace(/\s+/g, ' ')} | ${nsx(ns, 'sh', '-c', 'cat /proc/net/nf_conntrack 2>/dev/null | grep udp | head -20').replace(/\s+/g, ' ')}`);
      if (process.env.REMOTE_DEBUG) {
        for (const key of new Set(counters.map(([ns, chain]) => `${ns} ${chain}`))) {
          const [ns, chain] = key.split(' ');
          const lines = nsx(ns, 'iptables', '-w', '-L', chain, '-v', '-n', '-x').split('\n').slice(2).filter((l) => l.trim() && !/DROP|ACCEPT/.test(l));
          for (const l of lines) t.info(`count ${ns.split('-')[1]} ${chain}: ${l.trim().replace(/\s+/g, ' ')}`);
        }
        t.info(`inet udp: ${nsx(NS.inet, 'sh', '-c', 'grep Udp: /proc/net/snmp | tail -1; awk \'NR>1 && $NF>0 {print $2, $NF}\' /proc/net/udp').replace(/\n/g, ' | ')}`);
        t.info(`home udp: ${nsx(NS.home, 'sh', '-c', 'grep Udp: /proc/net/snmp | tail -1; awk \'NR>1 && $NF>0 {print $2, $NF}\' /proc/net/udp').replace(/\n/g, ' | ')}`);
      }
      const st = process.env.REMOTE_DEBUG && api('GET', '/api/settings').json;
      if (st) t.info(`device: links ${JSON.stringify(st?.links)}; encoded ${st?.video?.encoded_frames}`);
      if (st) t.info(`page inbound: ${JSON.stringify(await evaluate(page, async () => { const o = []; (await window.call.peerConnection.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' || s.type === 'candidate-pair' && s.nominated) o.push({ t: s.type, k: s.kind, p: s.packetsReceived, f: s.framesDecoded, st: s.state, bs: s.bytesSent, br: s.bytesReceived }); }); return o; }))}`);
      const pair = await selectedPair(page);
      t.check(pair && pair.relayed, '(b) the selected candidate pair is relay (coturn accepted the minted credentials)', JSON.stringify(pair));
    }
    await hangUp(page);
    await page.evaluate(() => { window.peer?.destroy(); window.peer = null; });
    const r2 = await callDevice(page, { token: a.json.token, iceServers: ice.filter((s) => !s.username), id: 'remote-viewer-4', ms: 20000 });
    let frames2 = null, pair2 = null;
    if (r2.stream) {
      // The stream arrives with the answer; ICE through the device's relay needs its TURN
      // permission first (slower on a loaded machine): frames are counted once a pair is selected.
      const t0 = Date.now();
      while (!(await selectedPair(page)) && Date.now() - t0 < 10000) await sleep(200);
      const probe = await probeFor(page, 3000);
      frames2 = `${probe.frames} frames in ${(probe.elapsedMs / 1000).toFixed(1)} s after a pair was selected (${Math.round(Date.now() - t0 - probe.elapsedMs)} ms after the stream), ${probe.samples.length} codes read`;
      pair2 = await selectedPair(page);
      t.check(probe.frames >= 0.6 * FPS * 3 && probe.samples.length >= 0.95 * probe.frames && pair2?.remoteType === 'relay',
        '(b) a viewer with STUN only: the device\'s own relay candidate (TURN credentials it minted itself) carries the call', `${frames2}; ${JSON.stringify(pair2)}`);
    } else t.check(false, '(b) a viewer with STUN only: the device\'s own relay candidate carries the call', JSON.stringify(r2));
    t.info(`UDP packets dropped between the homes: ${blockedCount()}`);
    await hangUp(page);
  }
  if (errors.length) t.info(`page errors: ${errors.slice(0, 5).join(' | ')}`);
  t.check(device.proc.exitCode === null, 'the device kept running');
}

const watchdog = setTimeout(() => { console.log('FAIL remote: timed out'); cleanup().finally(() => process.exit(1)); }, Number(process.env.REMOTE_TIMEOUT_MS || 220000));
try {
  await body();
} catch (err) {
  t.check(false, 'remote aborted', err?.stack || String(err));
} finally {
  clearTimeout(watchdog);
  await cleanup();
}
console.log(`     load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
console.log(`remote: ${counts.passed} passed, ${counts.failed} failed`);
process.exit(counts.failed ? 1 : 0);
