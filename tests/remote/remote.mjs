// Remote viewing through a small internet of network namespaces (issue 16, parts 1–2):
//
//   <p>-home (device)      <p>-hgw (NAT)            <p>-inet                     <p>-rgw (NAT)         <p>-rem (Chromium)
//   192.168.1.2 ── veth ── 192.168.1.1              10.88.0.1 (lo): npm peer     192.168.2.1 ── veth ── 192.168.2.2
//                          10.88.1.2 ── veth ──     10.88.1.1   PeerServer + coturn
//                          MASQUERADE               10.88.2.1 ── veth ──         10.88.2.2 MASQUERADE
//
// inet also serves the device's exported page (python http.server, :18794; case `page`), runs coturn's TLS listener (:18792) and a second PeerServer with TLS (https/wss, :18793), both
// with a certificate for 10.88.0.1 from a test CA made at run time (openssl, in the tmp dir).
//
// Nothing can leave: the namespaces are joined only to each other, `inet` has no default route
// (anything not 10.88.x or the two NATs' 192.168.x dies there), and no veth reaches the root namespace.
// Cases (names for run.sh): direct (a), refuse (c), reconnect (d), turn (e), relay (b), tcp (f), tls (g).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { installProbe, probeFor, checkFrames, evaluate, sleep } from '../e2e/lib.mjs';
import { addNetns, netns, run, nsx } from '../lib/netns.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '../..');
const BIN = process.env.PEERCAM_BIN || join(ROOT, 'target/release/peercam');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.REMOTE_ARTIFACTS || join(HERE, 'artifacts');
const P = process.env.REMOTE_PREFIX || 'pcr0';
const CASES = process.argv.slice(2).length ? process.argv.slice(2) : ['turn', 'direct', 'page', 'refuse', 'reconnect', 'relay', 'tcp', 'tls'];
const HTTP_PORT = 18780, UDP_PORT = 18789, PEER_PORT = 18790, TURN_PORT = 18791, TURNS_PORT = 18792, PEERS_PORT = 18793, SITE_PORT = 18794;
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
    addNetns(ns);
    cleanups.push(async () => run(['ip', 'netns', 'del', ns], { quiet: true }));
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

// ---- a test CA ------------------------------------------------------------------------------------
// Made at run time in TMP (openssl, P-256): `ca` signed the server certificate (IP SAN 10.88.0.1) that
// coturn's TLS listener and the wss:// PeerServer present; `otherCa` signed nothing of ours (the
// device's negative case).
function makeCerts() {
  const f = (n) => join(TMP, n);
  const ssl = (...a) => run(['openssl', ...a]);
  const newCa = (name, cn) => {
    ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f(`${name}.key`), '-out', f(`${name}.pem`),
      '-days', '2', '-subj', `/CN=${cn}`, '-config', '/dev/null', '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-addext', 'subjectKeyIdentifier=hash');
  };
  newCa('ca', 'peercam remote test CA');
  newCa('other-ca', 'peercam remote test CA (another)');
  writeFileSync(f('server.ext'), `subjectAltName=IP:${INET}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid\n`);
  ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', `/CN=${INET}`, '-config', '/dev/null');
  ssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2', '-out', f('server.pem'), '-extfile', f('server.ext'));
  return { ca: f('ca.pem'), otherCa: f('other-ca.pem'), cert: f('server.pem'), key: f('server.key') };
}
let CERTS = null;   // made at the start of the run

// ---- processes ------------------------------------------------------------------------------------
// UDP and TCP on TURN_PORT, TLS on TURNS_PORT (the test CA's certificate); no DTLS.
function startCoturn(certs) {
  return startInNs(NS.inet, 'coturn', 'turnserver', [
    '-n', '--listening-ip', INET, '--relay-ip', INET, '--listening-port', String(TURN_PORT),
    '--tls-listening-port', String(TURNS_PORT), '--cert', certs.cert, '--pkey', certs.key,
    '--min-port', '49160', '--max-port', '49400', '--use-auth-secret', '--static-auth-secret', TURN_SECRET,
    '--realm', 'peercam.test', '--no-dtls', '--no-cli', '--fingerprint', '--no-tcp-relay',
    // As production configs do: no relaying into private networks (the viewers' and the device's
    // LANs), except the rig's "internet". Needed here too: inet has no route to those LANs, and
    // coturn's sendto() to one (a peer's host candidate) failed with ENETUNREACH, after which coturn
    // dropped the whole relay endpoint — its port went dead (every later packet a UDP NoPorts in
    // inet) and the relayed call froze after ~0.2 s.
    '--denied-peer-ip', '192.168.0.0-192.168.255.255', '--allowed-peer-ip', '10.88.0.0-10.88.255.255', '--log-file', 'stdout', '--simple-log', '--verbose',
    '--pidfile', join(TMP, 'turnserver.pid'), '--userdb', join(TMP, 'turndb'),
  ], /IPv4. UDP listener opened|listener opened on/);
}
// `tls`: the second PeerServer, https/wss on PEERS_PORT with the test CA's certificate.
function startPeerServer({ tls } = {}) {
  return startInNs(NS.inet, tls ? 'peerserver-tls' : 'peerserver', process.execPath, [join(HERE, 'node_modules/peer/dist/bin/peerjs.js'),
    '--host', INET, '--port', String(tls ? PEERS_PORT : PEER_PORT), '--key', KEY, '--path', '/', '--alive_timeout', '60000',
    ...(tls ? ['--sslkey', tls.key, '--sslcert', tls.cert] : [])], /Started PeerServer/);
}

// The device: test pattern + tone, a password (so /api needs credentials), one API token.
const apiToken = (() => {
  const out = run([BIN, 'new-token']);
  return { token: /shown once\): ([0-9a-f]{64})/.exec(out)[1], hash: /token_sha256 = \["([0-9a-f]{64})"\]/.exec(out)[1] };
})();
// `name`: its log (<artifacts>/<name>.log) and state dir; the tls case runs a second device
// (other ports and ID, wss:// PeerServer, `env` SSL_CERT_FILE) beside the first.
function startDevice({ name = 'device', httpPort = HTTP_PORT, udpPort = UDP_PORT, peerserver = `ws://${INET}:${PEER_PORT}/`,
  deviceId = DEVICE_ID, env = {}, readyRe = /connected to the PeerServer/, timeoutMs = 30000 } = {}) {
  const pw = execFileSync('head', ['-c', '12', '/dev/urandom']).toString('hex');
  const hash = run([BIN, 'hash-password'], { input: `${pw}\n${pw}\n` }).trim();
  const cfg = `[http]
listen = "127.0.0.1:${httpPort}"
state_dir = "${join(TMP, name === 'device' ? 'state' : `state-${name}`)}"

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
udp_port = ${udpPort}

[auth]
password_hash = "${hash}"
token_sha256 = ["${apiToken.hash}"]

[remote]
peerserver = "${peerserver}"
key = "${KEY}"
device_id = "${deviceId}"
heartbeat_s = 2
max_backoff_s = 4

[ice]
servers = [{ urls = ["stun:${INET}:${TURN_PORT}"] }]
turn_secret = "${TURN_SECRET}"
turn_urls = ["turn:${INET}:${TURN_PORT}?transport=udp", "turn:${INET}:${TURN_PORT}?transport=tcp", "turns:${INET}:${TURNS_PORT}?transport=tcp"]
turn_ttl_s = ${TURN_TTL}
`;
  const file = name === 'device' ? 'peercam.toml' : `peercam-${name}.toml`;
  writeFileSync(join(TMP, file), cfg);
  writeFileSync(join(ARTIFACTS, file), cfg.replace(TURN_SECRET, '<secret>').replace(hash, '<argon2 hash>'));
  return startInNs(NS.home, name, BIN, ['run', '--config', join(TMP, file)], readyRe, { extraEnv: env, timeoutMs });
}
// The device's API, from inside its namespace (loopback).
function api(method, path, { token = apiToken.token, body, port = HTTP_PORT } = {}) {
  const args = ['curl', '-s', '-o', '-', '-w', '\n%{http_code}', '-X', method, `http://127.0.0.1:${port}${path}`];
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
// `args`: more Chromium flags; `env`: its environment (HOME: where its NSS database is, ~/.pki/nssdb).
async function launchRemote({ args = [], env = {} } = {}) {
  const browser = await chromium.launch({
    executablePath: chromiumWrapper(NS.rem, CHROMIUM), headless: true, ignoreDefaultArgs: ['--mute-audio'], env: { ...process.env, ...env },
    args: [...args, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
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
// `server`: another PeerServer and device ({ port, secure, deviceId }; default the ws:// one and pcr-cam).
const callDevice = (page, { token, iceServers, ms = 15000, id, server = {} }) => evaluate(page, async ({ token, iceServers, ms, id, opts }) => {
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
}, { token, iceServers, ms, id, opts: { host: INET, port: PEER_PORT, path: '/', key: KEY, secure: false, debug: 1, deviceId: DEVICE_ID, policy: process.env.REMOTE_POLICY, ...server } });

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
    localType: l.candidateType, remoteType: r.candidateType, relayed: l.candidateType === 'relay' || r.candidateType === 'relay',
    ...(l.relayProtocol ? { relayProtocol: l.relayProtocol } : {}) };
});
// Every pair Chromium checked, for a failure message: which direct pairs were tried and how far they
// got; then every local and remote candidate it knows (did it gather a srflx, what did the device offer).
const allPairs = (page) => evaluate(page, async () => {
  const stats = await window.call.peerConnection.getStats();
  const byId = {}; stats.forEach((s) => { byId[s.id] = s; });
  const out = [];
  stats.forEach((s) => {
    if (s.type !== 'candidate-pair') return;
    const l = byId[s.localCandidateId] || {}, r = byId[s.remoteCandidateId] || {};
    out.push(`${l.candidateType}>${r.candidateType} ${r.address}:${r.port} ${s.state}${s.nominated ? ' nominated' : ''} req ${s.requestsSent}/resp ${s.responsesReceived}`);
  });
  stats.forEach((s) => { if (s.type === 'local-candidate' || s.type === 'remote-candidate') out.push(`${s.type} ${s.candidateType} ${s.protocol} ${s.address}:${s.port} ${s.relayProtocol || ''} ${s.url || ''}`); });
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

// A second remote Chromium that trusts the test CA — as a browser trusts a real server's CA: an NSS
// database (certutil) in its own HOME (~/.pki/nssdb, which Chromium on Linux reads for local trust
// anchors). Launched on first use; one page.
let trusting = null;
async function trustingPage() {
  if (trusting) return trusting;
  const home = join(TMP, 'chromium-home'), db = `sql:${join(home, '.pki/nssdb')}`;
  mkdirSync(join(home, '.pki/nssdb'), { recursive: true });
  run(['certutil', '-d', db, '-N', '--empty-password']);
  run(['certutil', '-d', db, '-A', '-t', 'C,,', '-n', 'peercam remote test CA', '-i', CERTS.ca]);
  const browser = await launchRemote({ env: { HOME: home } });
  trusting = await remotePage(browser);
  return trusting;
}

// ICE gathering alone (no call): a fresh RTCPeerConnection with `iceServers`, relay only; resolves the
// relay candidates it gathered ({ address, port, relayProtocol, url }) and its icecandidateerror
// events, once gathering completes (or after `ms`).
const gatherRelay = (page, iceServers, ms = 15000) => evaluate(page, async ({ iceServers, ms }) => {
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
  const relays = [], errors = [];
  pc.onicecandidate = (e) => { if (e.candidate?.type === 'relay') relays.push({ address: e.candidate.address, port: e.candidate.port, relayProtocol: e.candidate.relayProtocol, url: e.candidate.url }); };
  pc.onicecandidateerror = (e) => errors.push(`${e.url}: ${e.errorCode} ${e.errorText}`);
  pc.createDataChannel('probe');
  const t0 = performance.now();
  await pc.setLocalDescription(await pc.createOffer());
  while (pc.iceGatheringState !== 'complete' && performance.now() - t0 < ms) await new Promise((r) => setTimeout(r, 50));
  const out = { relays, errors, state: pc.iceGatheringState, ms: Math.round(performance.now() - t0) };
  pc.close();
  return out;
}, { iceServers, ms });
// The remote network without UDP (case f): its gateway drops every UDP packet from and to the remote
// LAN, forwarded or addressed to itself; blockRemoteUdp(false) removes the rules again;
// remoteUdpDropped() counts the packets they dropped.
const REMOTE_UDP_BLOCK = [['FORWARD', '-i', `${P}r1`], ['FORWARD', '-o', `${P}r1`], ['INPUT', '-i', `${P}r1`]];
function blockRemoteUdp(on = true) {
  for (const [chain, ...rule] of REMOTE_UDP_BLOCK) nsx(NS.rgw, 'iptables', '-w', on ? '-I' : '-D', chain, ...rule, '-p', 'udp', '-j', 'DROP');
  if (on) nsx(NS.rgw, 'sh', '-c', 'command -v conntrack >/dev/null && conntrack -F 2>/dev/null || true');
}
const remoteUdpDropped = () => ['FORWARD', 'INPUT'].reduce((n, chain) => n + nsx(NS.rgw, 'iptables', '-w', '-L', chain, '-v', '-n', '-x').split('\n')
  .filter((l) => /DROP\s+(17|udp)\s/.test(l) && l.includes(`${P}r1`)).reduce((m, l) => m + Number(l.trim().split(/\s+/)[0] || 0), 0), 0);

// ---- the run --------------------------------------------------------------------------------------
async function body() {
  const t0 = Date.now();
  buildNet();
  CERTS = makeCerts();
  const coturn = startCoturn(CERTS);
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

  // (h) the device's own page, exported (`peercam export-page`) and hosted on a plain static web
  // server on the internet (python's http.server in inet), opened as …/#device=&token=&server=:
  // it calls the device through the external PeerServer with PeerJS, its control channel is a
  // PeerJS data connection.
  if (CASES.includes('page')) {
    const site = join(TMP, 'site');
    const exported = run([BIN, 'export-page', site], { quiet: true });
    t.check(/index\.html/.test(exported) && /peerjs\.min\.js/.test(exported), '(h) peercam export-page writes the page and the PeerJS client', exported.replace(/\s+/g, ' ').trim());
    const server = startInNs(NS.inet, 'static-site', 'python3', ['-u', '-m', 'http.server', String(SITE_PORT), '--bind', INET, '--directory', site], /Serving HTTP/);
    await server.ready;
    const base = `http://${INET}:${SITE_PORT}/index.html`;
    const link = (token) => `${base}#device=${DEVICE_ID}&token=${token}&server=ws://${INET}:${PEER_PORT}/&key=${KEY}&ice=stun:${INET}:${TURN_PORT}`;
    const ctx = await browser.newContext({ viewport: { width: 800, height: 600 } });
    const viewer = await ctx.newPage();
    const pageErrors = [];
    viewer.on('pageerror', (e) => pageErrors.push(e.message));
    const from = device.text.length;
    const t1 = Date.now();
    await viewer.goto(link(a.json.token));
    let live = true;
    try { await viewer.waitForFunction(() => window.peercam?.state === 'live', null, { timeout: 15000 }); } catch { live = false; }
    const st = await evaluate(viewer, () => ({ state: peercam.state, lastError: peercam.lastError, remote: peercam.remote, timing: peercam.timing }));
    t.check(live && st.remote?.device === DEVICE_ID, '(h) the exported page, hosted elsewhere, goes live through the external PeerServer', `${Date.now() - t1} ms; ${JSON.stringify(st)}${pageErrors.length ? `; errors: ${pageErrors.join(' | ')}` : ''}`);
    if (live) {
      await installProbe(viewer);
      const probe = await probeFor(viewer, 4000);
      checkFrames(t, '(h) the exported page: H.264', probe, { fps: FPS, minRatio: 0.6, maxLatencyMs: 1500 });
      let control = true;
      try { await viewer.waitForFunction(() => window.peercam.control === 'open', null, { timeout: 10000 }); } catch { control = false; }
      const r = control ? await evaluate(viewer, () => peercam.request({ type: 'get_settings' })) : null;
      t.check(control && r?.ok && r.result?.video?.width === 640, '(h) its control channel (a PeerJS data connection) answers get_settings',
        control ? JSON.stringify({ ok: r?.ok, width: r?.result?.video?.width }) : 'the control channel did not open');
      const ui = await evaluate(viewer, () => ({ talk: document.getElementById('btn-talk').disabled, rec: document.getElementById('btn-recordings').hidden }));
      t.check(ui.talk && ui.rec, '(h) talk-back and recordings, which need the device\'s own page, are off', JSON.stringify(ui));
    }
    t.check(/answered \(session/.test(device.text.slice(from)), '(h) the device answered the page\'s call');
    await viewer.close();
    // A link with a wrong token: the page says the camera refused it.
    const bad = await ctx.newPage();
    const fromBad = device.text.length;
    await bad.goto(link('f'.repeat(64)));
    let said = true;
    try { await bad.waitForFunction(() => /refused/.test(window.peercam?.lastError || ''), null, { timeout: 10000 }); } catch { said = false; }
    const badState = await evaluate(bad, () => ({ state: peercam.state, lastError: peercam.lastError, status: document.getElementById('status-text').textContent }));
    t.check(said && badState.state !== 'live' && /unknown or revoked viewer token/.test(device.text.slice(fromBad)),
      '(h) the exported page with a wrong token: refused, and the page says so', JSON.stringify(badState));
    await bad.close();
    await ctx.close();
    await server.stop();
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
  // (f) a remote network that blocks all UDP: the viewer's TURN over TCP, then over TLS
  if (CASES.includes('tcp')) {
    // Over TCP a late segment holds back the ones behind it; on a loaded 2-core machine the device's
    // link control reads that as congestion and may step down (seen: "link degraded", the low rung,
    // once half the frame rate for a while). Without TCP/TLS TURN nothing renders at all.
    const TCP_MIN_RATIO = 0.4;
    const turnOnly = (pred) => ice.filter((s) => s.username).map((s) => ({ ...s, urls: s.urls.filter(pred) }));
    const tlsIce = turnOnly((u) => u.startsWith('turns:'));
    const urls = ice.flatMap((s) => s.urls);
    t.check(urls.includes(`turn:${INET}:${TURN_PORT}?transport=tcp`) && tlsIce[0]?.urls.length === 1,
      '(f) GET /api/ice hands the viewer the TURN-over-TCP and TURN-over-TLS URLs with its minted credentials', urls.join(' '));
    blockRemoteUdp();
    await page.evaluate(() => { window.peer?.destroy(); window.peer = null; });
    const from = device.text.length;
    // everything GET /api/ice gave: UDP TURN and STUN die in the gateway, the turns: URL fails on the
    // certificate (this browser does not trust the test CA, see below), TURN over TCP is what is left
    const r = await callDevice(page, { token: a.json.token, iceServers: ice, id: 'remote-viewer-5', ms: 20000 });
    t.check(r.stream && r.width === 640, '(f) with all UDP blocked in the remote network the call renders (TURN over TCP)', JSON.stringify(r));
    if (r.stream) {
      await installProbe(page);
      const probe = await probeFor(page, 4000);
      checkFrames(t, '(f) H.264 over TURN/TCP', probe, { fps: FPS, minRatio: TCP_MIN_RATIO, maxLatencyMs: 1500 });
      const pair = await selectedPair(page);
      t.check(pair?.localType === 'relay' && pair.relayProtocol === 'tcp', '(f) the selected pair\'s local candidate is relay, relayProtocol tcp',
        `${JSON.stringify(pair)}${pair?.relayProtocol === 'tcp' ? '' : `; pairs: ${await allPairs(page)}`}`);
      const deviceRelay = await evaluate(page, async () => { const o = []; (await window.call.peerConnection.getStats()).forEach((s) => { if (s.type === 'remote-candidate' && s.candidateType === 'relay') o.push(`${s.protocol} ${s.address}:${s.port}`); }); return o; });
      t.check(deviceRelay.length > 0, '(f) the device\'s answer still carries its own (UDP) relay candidate', deviceRelay.join(', ') || 'none');
    }
    await hangUp(page);
    if (!tlsIce[0]?.urls.length) t.check(false, '(f) the same over TLS', 'GET /api/ice gave no turns: URL');
    else {
      // Chromium checks the TURN server's certificate: untrusted, no TLS allocation at all
      const untrusted = await gatherRelay(page, tlsIce);
      t.check(untrusted.relays.length === 0 && untrusted.errors.some((e) => / 701 /.test(e)),
        '(f) Chromium validates the TURN server\'s TLS certificate: a CA it does not trust → no relay candidate (error 701)', JSON.stringify(untrusted));
      // a viewer whose Chromium trusts the test CA (its NSS database), with only the turns: URL
      const trusted = await trustingPage();
      const r2 = await callDevice(trusted.page, { token: a.json.token, iceServers: tlsIce, id: 'remote-viewer-6', ms: 20000 });
      t.check(r2.stream && r2.width === 640, '(f) the same over TLS (turns:, a browser that trusts the CA) renders', JSON.stringify(r2));
      if (r2.stream) {
        await installProbe(trusted.page);
        const probe = await probeFor(trusted.page, 4000);
        checkFrames(t, '(f) H.264 over TURN/TLS', probe, { fps: FPS, minRatio: TCP_MIN_RATIO, maxLatencyMs: 1500 });
        const pair = await selectedPair(trusted.page);
        t.check(pair?.localType === 'relay' && pair.relayProtocol === 'tls', '(f) the selected pair\'s local candidate is relay, relayProtocol tls',
          `${JSON.stringify(pair)}${pair?.relayProtocol === 'tls' ? '' : `; pairs: ${await allPairs(trusted.page)}`}`);
      }
      await hangUp(trusted.page);
      await trusted.page.evaluate(() => { window.peer?.destroy(); window.peer = null; });
    }
    const dropped = remoteUdpDropped();
    t.check(dropped > 0, '(f) the remote gateway did drop the viewer\'s UDP (it was tried, and blocked)', `${dropped} UDP packets dropped`);
    blockRemoteUdp(false);
    // The device's own relay stays UDP (webrtc-rs 0.17 has no TCP/TLS TURN client): it must not hand
    // those URLs to webrtc-rs, which would warn "Unable to handle URL in gather_candidates_relay" for
    // each, in every peer connection.
    const turnWarn = device.text.slice(from).split('\n').filter((l) => /gather_candidates_relay|turn\.Client|relay candidates/.test(l));
    t.check(turnWarn.length === 0, '(f) the device gathers its own relay over UDP only: nothing logged about the tcp/turns URLs',
      turnWarn.length ? `${turnWarn.length} lines, e.g. ${turnWarn[0]}` : 'no such line in its log');
  }

  // (g) the device on a wss:// PeerServer with a real certificate chain (the test CA's)
  if (CASES.includes('tls')) {
    const ps = startPeerServer({ tls: CERTS });
    await ps.ready;
    const wss = `wss://${INET}:${PEERS_PORT}/`;
    const https = run(['ip', 'netns', 'exec', NS.home, 'curl', '-s', '-m', '3', '--cacert', CERTS.ca, `https://${INET}:${PEERS_PORT}/`], { quiet: true });
    t.check(/PeerJS/.test(https), '(g) the second PeerServer serves https/wss with a certificate the test CA signed (curl --cacert from the home)', https.slice(0, 60));
    const tlsDev = { httpPort: HTTP_PORT + 1, udpPort: UDP_PORT - 1, peerserver: wss, deviceId: `${DEVICE_ID}-tls` };
    // SSL_CERT_FILE = a CA that did not sign the server's certificate: refused, retried, never connected
    const wrong = startDevice({ ...tlsDev, name: 'device-wrong-ca', env: { SSL_CERT_FILE: CERTS.otherCa }, readyRe: /peerjs remote: (cannot connect|connected)/ });
    await wrong.ready;
    const failRe = /peerjs remote: cannot connect to the PeerServer[^\n]*/g;
    const t1 = Date.now();
    while ((wrong.text.match(failRe) || []).length < 3 && Date.now() - t1 < 10000) await sleep(100);
    const fails = wrong.text.match(failRe) || [];
    t.check(fails.length >= 3 && !/connected to the PeerServer/.test(wrong.text.replace(failRe, '')) && /reconnecting in/.test(wrong.text) && wrong.proc.exitCode === null,
      '(g) with SSL_CERT_FILE = another CA the device does not connect, and keeps retrying (running)',
      `${fails.length} failed attempts in ${((Date.now() - t1) / 1000).toFixed(1)} s after the first, exit code ${wrong.proc.exitCode}`);
    t.check(fails.length > 0 && fails.every((l) => /invalid peer certificate: UnknownIssuer/.test(l)), '(g) …and logs why: the certificate\'s issuer is unknown', fails[0] || 'no failure logged');
    await wrong.stop();
    // SSL_CERT_FILE = the test CA: connected, and a remote call through the wss:// PeerServer works
    const t2 = Date.now();
    const dev = startDevice({ ...tlsDev, name: 'device-tls', env: { SSL_CERT_FILE: CERTS.ca }, timeoutMs: 15000 });
    let up = false;
    try { await dev.ready; up = true; } catch (e) { t.info(String(e.message).slice(0, 500)); }
    const line = /peerjs remote: connected to the PeerServer [^\n]*/.exec(dev.text)?.[0];
    t.check(up && line?.includes(`${wss} as "${tlsDev.deviceId}"`) && ps.text.includes(`Client connected: ${tlsDev.deviceId}`),
      '(g) with SSL_CERT_FILE = the test CA the device connects to the wss:// PeerServer', `${line} — ${Date.now() - t2} ms after its start`);
    if (up) {
      const vt = api('POST', '/api/viewer-tokens', { body: { name: 'wss tester' }, port: tlsDev.httpPort });
      const trusted = await trustingPage();
      await trusted.page.evaluate(() => { window.peer?.destroy(); window.peer = null; });
      const r = await callDevice(trusted.page, { token: vt.json?.token, iceServers: ice, id: 'remote-viewer-7', ms: 20000,
        server: { port: PEERS_PORT, secure: true, deviceId: tlsDev.deviceId } });
      t.check(r.stream && r.width === 640, '(g) a remote call through the wss:// PeerServer renders', JSON.stringify(r));
      if (r.stream) {
        await installProbe(trusted.page);
        const probe = await probeFor(trusted.page, 4000);
        checkFrames(t, '(g) H.264 via the wss:// PeerServer', probe, { fps: FPS, minRatio: 0.6, maxLatencyMs: 1500 });
        t.info(`(g) selected pair: ${JSON.stringify(await selectedPair(trusted.page))}`);
      }
      await hangUp(trusted.page);
      await trusted.page.evaluate(() => { window.peer?.destroy(); window.peer = null; });
    }
    t.check(dev.proc.exitCode === null, '(g) the wss:// device kept running');
    await dev.stop();
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
