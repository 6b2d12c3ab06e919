// Browser E2E over HTTPS (issue 5): the device's self-signed certificate on a non-localhost name,
// login → live video → talk-back (secure context, microphone, hold Talk → the speaker PCM) → logout.
//
//   tests/service/run.sh https_login     (a loopback-only network namespace + its own PID namespace)
//
// camera.test is mapped to 127.0.0.1 with --host-resolver-rules, so the origin is an ordinary LAN-style
// name (not localhost, which would be a secure context even over plain http). --ignore-certificate-errors
// stands for the user's one-time "accept this certificate" click on the browser's warning page: the
// certificate is the device's own self-signed one, made on first start.
// Reuses tests/e2e/lib.mjs: the service launcher, reporting, cleanup, the timestamp-code probe.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from '../e2e/node_modules/playwright-core/index.mjs';
import {
  main, sleep, onCleanup, startService, waitForLive, installProbe, probeFor, checkFrames, rtcStats, inbound, remoteCandidate,
} from '../e2e/lib.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../..');
const ARTIFACTS = join(HERE, 'artifacts');
mkdirSync(ARTIFACTS, { recursive: true });
const BIN = resolve(ROOT, process.env.PEERCAM_BIN || 'target/release/peercam');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const PORT = 18443;
const ORIGIN = `https://camera.test:${PORT}`;
const PASSWORD = 'kitten-monitor-42';
const FPS = 30;
let SPEAKER_RAW = null;

// The device through the shared launcher (tests/e2e/lib.mjs startService): HTTPS with a password,
// and a speaker that is an ALSA file-plugin PCM (real alsa-lib, no sound card) recording what plays.
async function startDevice() {
  const hash = spawnSync(BIN, ['hash-password'], { input: `${PASSWORD}\n`, encoding: 'utf8' });
  if (hash.status !== 0) throw new Error(`peercam hash-password failed: ${hash.stderr}`);
  const dir = mkdtempSync(join(tmpdir(), 'peercam-https-'));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));   // runs after the service stopped
  SPEAKER_RAW = join(dir, 'speaker.raw');
  writeFileSync(join(dir, 'asound.conf'),
    `pcm.peercam_test_speaker {\n  type file\n  slave.pcm { type null }\n  file "${SPEAKER_RAW}"\n  format "raw"\n}\n`);
  const svc = await startService({
    name: 'https_login',
    artifacts: ARTIFACTS,
    config: {
      http: { listen: `127.0.0.1:${PORT}`, tls: true, state_dir: join(dir, 'state') },
      auth: { password_hash: hash.stdout.trim() },
      video: { source: 'testsrc', width: 640, height: 480, fps: FPS, bitrate_kbps: 1000 },
      audio: { source: 'tone' },
      webrtc: { udp_port: 18489, include_loopback: true },
      speaker: { device: 'peercam_test_speaker' },
    },
    env: { ALSA_CONFIG_PATH: join(dir, 'asound.conf') },
  });
  return Object.assign(svc, { certPath: join(dir, 'state', 'tls-cert.pem') });
}

await main('https_login', async (t) => {
  const svc = await startDevice();
  const url = svc.url;
  t.check(url.startsWith('https://'), 'service listens on HTTPS', url);

  const browser = await chromium.launch({
    executablePath: CHROMIUM, headless: true, ignoreDefaultArgs: ['--mute-audio'],
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--allow-loopback-in-peer-connection', '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      '--autoplay-policy=no-user-gesture-required',   // this test is not about autoplay
      `--host-resolver-rules=MAP camera.test 127.0.0.1`,
      // Stands for the user's one-time "accept" of the device's self-signed certificate.
      '--ignore-certificate-errors',
    ],
  });
  onCleanup(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  const whepAuth = [];
  page.on('request', (r) => {
    if (r.url().startsWith(`${ORIGIN}/whep`) && r.method() === 'POST') {
      const h = r.headers();
      whepAuth.push({ authorization: h.authorization || '', cookie: h.cookie || '' });
    }
  });

  // ---- not logged in: / sends us to /login -------------------------------------------------------
  const first = await page.goto(`${ORIGIN}/`);
  const chain = [];
  for (let r = first.request(); r; r = r.redirectedFrom()) chain.unshift(`${(await r.response())?.status()} ${new URL(r.url()).pathname}`);
  t.check(page.url() === `${ORIGIN}/login`, 'https://camera.test:18443/ redirects to /login', `${chain.join(' → ')}; now at ${page.url()}`);
  const cert = await first.securityDetails();
  t.check(cert?.protocol?.startsWith('TLS'), 'the page came over TLS', `${cert?.protocol}, issuer "${cert?.issuer}", subject "${cert?.subjectName}"`);
  await page.screenshot({ path: join(ARTIFACTS, 'https_login-1-login.png') });

  // ---- a wrong password first, then the right one ------------------------------------------------
  await page.fill('#password', 'not-the-password');
  await Promise.all([page.waitForLoadState('load'), page.click('button[type=submit]')]);
  const message = await page.textContent('#message');
  t.check(page.url().startsWith(`${ORIGIN}/login`) && /wrong/i.test(message), 'a wrong password stays on the login page with a message',
    `${page.url()} "${message.trim()}"`);
  await page.fill('#password', PASSWORD);
  await Promise.all([page.waitForURL(`${ORIGIN}/`, { timeout: 15000 }), page.click('button[type=submit]')]);
  t.check(page.url() === `${ORIGIN}/`, 'the right password leads to the viewer page', page.url());

  const cookies = await context.cookies(ORIGIN);
  const session = cookies.find((c) => c.name === '__Host-peercam_session');
  t.check(session && session.httpOnly && session.secure && session.sameSite === 'Strict' && session.path === '/',
    'the browser stores the session cookie HttpOnly, Secure, SameSite=Strict, Path=/',
    session ? `httpOnly ${session.httpOnly}, secure ${session.secure}, sameSite ${session.sameSite}, path ${session.path}` : 'no cookie');
  const docCookie = await page.evaluate(() => document.cookie);
  t.check(!docCookie.includes('peercam_session'), 'page scripts cannot read the session cookie', JSON.stringify(docCookie));

  // ---- live video --------------------------------------------------------------------------------
  const live = await waitForLive(page, 20000);
  t.check(true, 'the page goes live', `after ${live.waitedMs} ms (first frame ${live.firstFrame ?? '?'} ms into the attempt, ${live.attempts} WHEP POST)`);
  t.check(whepAuth.length > 0 && whepAuth.every((a) => /^Bearer \S{32,}$/.test(a.authorization)),
    'the page POSTs /whep with a minted bearer token', `${whepAuth.length} POST(s), Authorization: ${whepAuth.map((a) => a.authorization.replace(/(Bearer \S{6})\S+/, '$1…')).join(', ')}`);
  await installProbe(page);
  const result = await probeFor(page, 3000);
  checkFrames(t, 'https', result, { fps: FPS, minRatio: 0.5, maxLatencyMs: 1000 });
  const stats = await rtcStats(page);
  const v = inbound(stats, 'video');
  t.check(v.framesDecoded > 30, 'getStats: framesDecoded > 30', `framesDecoded ${v.framesDecoded}, ${v.frameWidth}x${v.frameHeight}, codec ${stats.find((s) => s.id === v.codecId)?.mimeType}`);
  const rc = remoteCandidate(stats);
  t.info(`media via ${rc.address}:${rc.port} (${rc.protocol}, ${rc.candidateType})`);

  // ---- talk-back prerequisites: a secure context with a microphone -------------------------------
  const secure = await page.evaluate(async () => {
    const out = { isSecureContext: window.isSecureContext, mediaDevices: !!navigator.mediaDevices, origin: location.origin };
    try {
      const s = await navigator.mediaDevices.getUserMedia({ audio: true });
      out.mic = s.getAudioTracks().map((tr) => `${tr.kind}:${tr.readyState}:${tr.label}`);
      s.getTracks().forEach((tr) => tr.stop());
    } catch (e) { out.micError = `${e.name}: ${e.message}`; }
    return out;
  });
  t.check(secure.isSecureContext === true, 'window.isSecureContext on https://camera.test', JSON.stringify(secure.origin));
  t.check(secure.mediaDevices, 'navigator.mediaDevices exists (talk-back prerequisite)');
  t.check(!!secure.mic?.length, 'getUserMedia({audio}) gives a microphone track', secure.mic?.join(', ') || secure.micError);

  // ---- talk: hold the page's Talk button; the fake mic's beeps must come out of the speaker -------
  const talkBox = await page.locator('#btn-talk').boundingBox();
  await page.mouse.move(talkBox.x + talkBox.width / 2, talkBox.y + talkBox.height / 2);
  await page.mouse.down();
  const granted = await page.waitForFunction(() => window.peercam.talking === true, null, { timeout: 5000 }).then(() => true, () => false);
  await sleep(2500);
  await page.mouse.up();
  t.check(granted, 'holding Talk over HTTPS takes the speaker', await page.evaluate(() => JSON.stringify({ talking: window.peercam.talking, error: window.peercam.talkError })));
  await sleep(500);
  let pcm = new Int16Array(0);
  try { const raw = readFileSync(SPEAKER_RAW); pcm = new Int16Array(raw.buffer, raw.byteOffset, Math.floor(raw.length / 2)); } catch { /* nothing written */ }
  let peak = 0;
  for (const x of pcm) peak = Math.max(peak, Math.abs(x));
  t.check(pcm.length > 48000 && peak > 3000, "the browser's microphone comes out of the device's speaker (talk-back over HTTPS)",
    `${(pcm.length / 48000).toFixed(1)} s written, peak ${peak}`);
  await page.mouse.move(640, 360);   // the controls (with "Log out") show on pointer activity
  await sleep(300);
  await page.screenshot({ path: join(ARTIFACTS, 'https_login-2-live.png') });

  // ---- logout --------------------------------------------------------------------------------------
  const token = whepAuth.at(-1)?.authorization.replace(/^Bearer /, '');
  const logoutVisible = await page.isVisible('#logout-form button');
  t.check(logoutVisible, 'a "Log out" button is shown');
  await Promise.all([page.waitForURL(`${ORIGIN}/login`, { timeout: 10000 }), page.click('#logout-form button')]);
  t.check(page.url() === `${ORIGIN}/login`, 'Log out → back at /login', page.url());
  const after = (await context.cookies(ORIGIN)).find((c) => c.name === '__Host-peercam_session');
  t.check(!after, 'the session cookie is gone from the browser', after ? JSON.stringify(after) : '');
  await page.screenshot({ path: join(ARTIFACTS, 'https_login-3-logged-out.png') });
  await page.goto(`${ORIGIN}/`);
  t.check(page.url() === `${ORIGIN}/login`, 'reloading / after logout → /login again', page.url());
  // The token the page minted died with the session.
  const whep = await page.evaluate(async (tok) => {
    const r = await fetch('/whep', { method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${tok}` }, body: 'v=0\r\n' });
    return r.status;
  }, token || 'none');
  t.check(whep === 401, "the page's minted WHEP token is refused after logout", `POST /whep → ${whep}`);
  const api = await page.evaluate(async () => (await fetch('/api/settings')).status);
  t.check(api === 401, '/api/settings is closed to the logged-out browser', `GET /api/settings → ${api}`);

  // The 401s this test provokes on purpose (after logout) show up as "Failed to load resource" lines.
  const unexpected = errors.filter((e) => !/Failed to load resource: the server responded with a status of 401/.test(e));
  t.check(unexpected.length === 0, 'no page errors', unexpected.length ? unexpected.slice(0, 5).join(' | ')
    : `${errors.length} expected 401 console lines after logout`);
  const stopped = await svc.stop();
  t.check(stopped.code === 0 && !stopped.killed, 'SIGTERM → exit 0', JSON.stringify(stopped));
  const log = svc.logText();
  t.check(!log.includes(PASSWORD) && !(token && log.includes(token)), 'no password or token in the service log',
    `${log.split('\n').length} lines`);
}, { timeoutMs: 150000 });
