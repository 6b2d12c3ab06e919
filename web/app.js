// peercam viewer: a plain WHEP (RFC 9725) client. No framework and no build step, because the page is
// embedded in the device's binary and must load instantly from a small ARM board.
'use strict';

const $ = (id) => document.getElementById(id);
const stage = $('stage'), video = $('video'), statusEl = $('status'), statusText = $('status-text');
const unmuteBtn = $('unmute'), unmuteText = $('unmute-text'), statsEl = $('stats');
const statsBtn = $('btn-stats'), fullscreenBtn = $('btn-fullscreen');

// Relative, so the page keeps working behind a reverse proxy that mounts the device under a sub-path.
const WHEP_URL = new URL('whep', location.href).href;
// With auth on, open the page as …/#token=SECRET: a fragment is never sent to servers or proxies' logs.
const TOKEN = new URLSearchParams(location.hash.slice(1)).get('token');
let AUTH = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};

// A logged-in browser (session cookie) asks the device for a bearer token for its WHEP requests;
// on a device without a password (loopback only) there is none to get. Not logged in: go log in.
async function ensureToken() {
  if (AUTH.Authorization) return;
  const res = await fetch(new URL('api/token', location.href), { method: 'POST', credentials: 'same-origin' });
  if (res.status === 401) { location.href = new URL('login', location.href).href; throw new Error('Not logged in'); }
  if (!res.ok) return;
  const info = await res.json();
  if (info.token) AUTH = { Authorization: `Bearer ${info.token}` };
  const logout = document.getElementById('logout-form');
  if (logout) logout.hidden = !info.password_set;
}

const ICE_WAIT_MS = 50;         // host candidates arrive in a few ms; the device learns the rest from our checks (prflx)
const POST_TIMEOUT_MS = 10000;  // a half-dead device must not hang us forever
const GRACE_MS = 3000;          // 'disconnected' often heals by itself (Wi-Fi blip); give ICE a moment
const STALL_MS = 6000;          // ICE may look fine while the device's media pipeline is gone
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];   // then every ~8 s: a rebooting Pi is back in ~30 s

// State that tests and curious humans can read from the console.
const peercam = window.peercam = {
  pc: null,                  // current RTCPeerConnection
  state: 'connecting',       // connecting | live | reconnecting | error
  lastError: null,           // last failure message (the server's own text for HTTP errors)
  lossOfConnectionCount: 0,  // times an established connection was lost
  attempts: 0,               // WHEP POSTs tried
  session: null,             // WHEP session URL (the Location header)
  timing: {},                // ms since the attempt started: answered, connected, firstFrame
};

let generation = 0;   // bumped per attempt: events from an older peer connection are ignored
let retryTimer = 0, retryIndex = 0, graceTimer = 0, stallTimer = 0, stopped = false;
let liveGeneration = -1;   // the attempt that reached 'connected' (for lossOfConnectionCount)

function setState(state, text) {
  peercam.state = state;
  statusEl.dataset.state = state;
  statusText.textContent = text;
}

async function connect() {
  const gen = ++generation;
  clearTimeout(retryTimer);
  teardown();
  stopped = false;
  peercam.attempts++;
  if (peercam.state === 'error') setState('error', `${peercam.lastError} — retrying…`);
  else if (peercam.attempts > 1) setState('reconnecting', 'Reconnecting…');
  const t0 = performance.now();
  const timing = peercam.timing = {};

  const pc = peercam.pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });

  // One stream for both tracks, whatever stream ids the device puts in its answer.
  const stream = new MediaStream();
  pc.ontrack = ({ track }) => {
    stream.addTrack(track);
    if (video.srcObject !== stream) video.srcObject = stream;
    startPlayback();
  };
  pc.onconnectionstatechange = () => {
    if (gen !== generation) return;
    const s = pc.connectionState;
    clearTimeout(graceTimer);
    if (s === 'connected') {
      timing.connected ??= Math.round(performance.now() - t0);
      retryIndex = 0;
      liveGeneration = gen;
      peercam.lastError = null;
      setState('live', 'Live');
      watchForStall(pc, gen);
    } else if (s === 'disconnected') {
      setState('reconnecting', 'Connection interrupted…');
      graceTimer = setTimeout(() => gen === generation && lost('Connection lost'), GRACE_MS);
    } else if (s === 'failed' || s === 'closed') {   // 'closed' here: the device ended DTLS (we never do)
      lost('Connection failed');
    }
  };
  if (video.requestVideoFrameCallback) {
    video.requestVideoFrameCallback(() => { if (gen === generation) timing.firstFrame = Math.round(performance.now() - t0); });
  }

  try {
    await pc.setLocalDescription(await pc.createOffer());
    await Promise.all([iceGatheringDone(pc, ICE_WAIT_MS), ensureToken()]);
    const res = await fetch(WHEP_URL, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp', ...AUTH },
      body: pc.localDescription.sdp,
      signal: AbortSignal.timeout(POST_TIMEOUT_MS),
    });
    const body = await res.text();
    const location = res.headers.get('Location');
    const session = location ? new URL(location, res.url).href : null;
    if (gen !== generation) {               // superseded while the POST was in flight: free the device's slot
      if (res.status === 201 && session) deleteSession(session);
      return;
    }
    if (res.status !== 201) {
      if (res.status === 401 && !TOKEN) AUTH = {};   // the minted token died (logout elsewhere): get a new one
      const hint = res.status === 401 ? ' (log in again, or open the page as …/#token=YOUR_TOKEN)' : '';
      throw new Error(`${body.trim() || res.statusText || 'Request refused'} [HTTP ${res.status}]${hint}`);
    }
    peercam.session = session;
    timing.answered = Math.round(performance.now() - t0);
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
  } catch (err) {
    if (gen === generation) failed(err);
  }
}

// Post the offer once gathering completes, or after `ms` with whatever candidates we have:
// the device's answer carries its own candidates, and peer-reflexive discovery covers the rest.
function iceGatheringDone(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { clearTimeout(timer); pc.removeEventListener('icegatheringstatechange', check); resolve(); };
    const check = () => pc.iceGatheringState === 'complete' && done();
    const timer = setTimeout(done, ms);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

// Try with sound first; browsers that refuse unmuted autoplay without a gesture get a muted picture
// plus a clear button, rather than a black frame with a hidden play control.
async function startPlayback() {
  if (!video.paused) return;               // already playing (or a play() is pending)
  try {
    await video.play();
  } catch (err) {
    if (err.name !== 'NotAllowedError') return;   // AbortError: a newer srcObject took over
    video.muted = true;
    showUnmute('Tap to unmute');
    try { await video.play(); } catch { showUnmute('Tap to play'); }   // even muted refused (e.g. power saver)
  }
}

function showUnmute(text) { unmuteText.textContent = text; unmuteBtn.hidden = false; }

function unmute() {
  unmuteBtn.hidden = true;
  video.muted = false;
  video.play().catch(() => {});
}

// An established connection went away (device restart, network change): count it and start over.
function lost(reason) {
  if (liveGeneration === generation) peercam.lossOfConnectionCount++;
  peercam.lastError = reason;
  retry('reconnecting', reason);
}

// An attempt never got going: show why (for HTTP errors, the device's own words) and try again.
function failed(err) {
  const message = err.name === 'TimeoutError' ? 'Device did not answer'
    : err instanceof TypeError ? 'Device unreachable'      // fetch() network failure
    : err.message || String(err);
  peercam.lastError = message;
  // Unreachable is transient (reboot, Wi-Fi); a refusal or an unusable answer is an error worth reading.
  const transient = err.name === 'TimeoutError' || err instanceof TypeError;
  retry(transient ? 'reconnecting' : 'error', message);
}

function retry(state, message) {
  generation++;                 // silence the failed peer connection's late events
  teardown();
  clearTimeout(retryTimer);
  if (stopped) return;
  const base = BACKOFF_MS[Math.min(retryIndex++, BACKOFF_MS.length - 1)];
  const delay = Math.round(base * (0.8 + 0.4 * Math.random()));   // jitter: don't stampede a rebooted device
  setState(state, `${message} — retrying in ${Math.max(1, Math.round(delay / 1000))} s`);
  retryTimer = setTimeout(connect, delay);
}

function deleteSession(url) {
  // keepalive lets the request outlive the page during pagehide.
  fetch(url, { method: 'DELETE', headers: AUTH, keepalive: true }).catch(() => {});
}

function teardown() {
  clearTimeout(graceTimer);
  clearInterval(stallTimer);
  const pc = peercam.pc;
  if (pc) {
    pc.ontrack = pc.onconnectionstatechange = null;
    pc.close();
    peercam.pc = null;
  }
  if (peercam.session) deleteSession(peercam.session);
  peercam.session = null;
}

async function bytesReceived(pc) {
  let bytes = 0;
  (await pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp') bytes += s.bytesReceived || 0; });
  return bytes;
}

function watchForStall(pc, gen) {
  clearInterval(stallTimer);
  let last = -1, since = performance.now();
  stallTimer = setInterval(async () => {
    const bytes = await bytesReceived(pc).catch(() => last);
    if (gen !== generation) return;
    if (bytes !== last) { last = bytes; since = performance.now(); return; }
    if (performance.now() - since >= STALL_MS) lost('No media from the device');
  }, 1000);
}

// ---- stats overlay ---------------------------------------------------------------------------

let prevStats = null;

async function updateStats() {
  const pc = peercam.pc;
  if (statsEl.hidden) return;
  if (!pc) { statsEl.textContent = 'not connected'; return; }
  const report = await pc.getStats();
  let v = {}, a = {}, pair = null, transport = null, bytes = 0;
  report.forEach((s) => {
    if (s.type === 'inbound-rtp') { bytes += s.bytesReceived || 0; if (s.kind === 'video') v = s; else a = s; }
    if (s.type === 'transport') transport = s;
  });
  pair = transport && report.get(transport.selectedCandidatePairId);
  const now = performance.now();
  const kbps = prevStats ? ((bytes - prevStats.bytes) * 8) / (now - prevStats.now) : 0;
  prevStats = { bytes, now };
  const codec = (s) => (report.get(s.codecId)?.mimeType || '?').split('/')[1];
  const ms = (sec) => (sec == null ? '–' : `${(sec * 1000).toFixed(1)} ms`);
  const buffer = v.jitterBufferEmittedCount ? v.jitterBufferDelay / v.jitterBufferEmittedCount : null;
  statsEl.textContent = [
    `video   ${codec(v)} ${v.frameWidth ?? '–'}×${v.frameHeight ?? '–'} @ ${v.framesPerSecond ?? 0} fps`,
    `audio   ${codec(a)}`,
    `bitrate ${kbps.toFixed(0)} kbit/s`,
    `rtt     ${ms(pair?.currentRoundTripTime)}`,
    `lost    video ${v.packetsLost ?? 0} · audio ${a.packetsLost ?? 0} packets`,
    `jitter  video ${ms(v.jitter)} · audio ${ms(a.jitter)}`,
    `buffer  ${ms(buffer)} · dropped ${v.framesDropped ?? 0} frames`,
  ].join('\n');
}

function toggleStats() {
  statsEl.hidden = !statsEl.hidden;
  statsBtn.setAttribute('aria-pressed', String(!statsEl.hidden));
  prevStats = null;
  updateStats();
}
setInterval(() => updateStats().catch(() => {}), 1000);

// ---- controls --------------------------------------------------------------------------------

function toggleFullscreen() {
  if (document.fullscreenElement) document.exitFullscreen();
  else if (stage.requestFullscreen) stage.requestFullscreen().catch(() => {});
  else if (video.webkitEnterFullscreen) video.webkitEnterFullscreen();   // iPhone: only <video> can
}
if (!document.fullscreenEnabled && !video.webkitEnterFullscreen) fullscreenBtn.hidden = true;

fullscreenBtn.addEventListener('click', toggleFullscreen);
statsBtn.addEventListener('click', toggleStats);
unmuteBtn.addEventListener('click', (e) => { e.stopPropagation(); unmute(); });
// "Tap to unmute" means anywhere, not only on the button.
video.addEventListener('click', () => { if (!unmuteBtn.hidden) unmute(); });
video.addEventListener('dblclick', toggleFullscreen);
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === 'f') toggleFullscreen();
  else if (e.key === 's') toggleStats();
  else if (e.key === 'm') { if (video.muted) unmute(); else video.muted = true; }
});

// Controls fade out while the mouse rests, so the picture is unobstructed.
let idleTimer = 0;
function wake() {
  document.body.classList.remove('idle');
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => document.body.classList.add('idle'), 3000);
}
for (const ev of ['mousemove', 'touchstart', 'keydown']) document.addEventListener(ev, wake, { passive: true });
wake();

// ---- lifecycle -------------------------------------------------------------------------------

// Leaving the page frees the device's session at once instead of waiting for ICE to time out.
// We deliberately keep watching in background tabs: a parent listening to a baby monitor expects that.
addEventListener('pagehide', () => { stopped = true; generation++; clearTimeout(retryTimer); teardown(); });
addEventListener('pageshow', (e) => { if (e.persisted) connect(); });   // restored from the back/forward cache
addEventListener('online', () => { if (peercam.state === 'reconnecting' || peercam.state === 'error') connect(); });

connect();
