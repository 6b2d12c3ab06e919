// peercam viewer: a plain WHEP (draft-ietf-wish-whep) client plus the `control` data channel (src/rtc/CONTROL.md):
// talk-back, live settings, privacy, chat. No framework and no build step, because the page is embedded
// in the device's binary and must load instantly from a small ARM board.
'use strict';

const $ = (id) => document.getElementById(id);
$('noapp')?.remove();   // the script did load (index.html: the hint for when it does not)
const stage = $('stage'), video = $('video'), statusEl = $('status'), statusText = $('status-text');
const unmuteBtn = $('unmute'), unmuteText = $('unmute-text'), statsEl = $('stats');
const statsBtn = $('btn-stats'), fullscreenBtn = $('btn-fullscreen');

// Relative, so the page keeps working behind a reverse proxy that mounts the device under a sub-path.
// sync=0 (a peercam extension): video and audio in separate streams, so Chromium shows each picture
// as soon as it is decoded instead of holding it back to its audio jitter buffer (~30 ms less latency).
const WHEP_URL = new URL('whep?sync=0', location.href).href;
// With auth on, open the page as …/#token=SECRET: a fragment is never sent to servers or proxies' logs.
const HASH = new URLSearchParams(location.hash.slice(1));
const TOKEN = HASH.get('token');
let AUTH = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};

// Remote mode (docs/remote.md): the same page hosted anywhere (`peercam export-page DIR`), opened as
// …/#device=ID&token=VIEWER_TOKEN&server=wss://peers.example.org/&key=KEY[&ice=stun:host:3478,…][&ice_user=&ice_credential=].
// It then calls the device through that external PeerServer with PeerJS (the viewer token goes in
// the call's metadata) instead of WHEP to its own origin; the control channel is a PeerJS data
// connection. `server` is the device's `[remote] peerserver`, `key` its `[remote] key`.
const REMOTE = HASH.get('device') ? remoteOptions(HASH) : null;
function remoteOptions(h) {
  let url = null;
  try { url = new URL(h.get('server') || ''); } catch { /* said below */ }
  const secure = url?.protocol === 'wss:' || url?.protocol === 'https:';
  return {
    device: h.get('device'),
    token: h.get('token') || '',
    error: url ? null : 'The link has no valid server= (the PeerServer URL, e.g. wss://peers.example.org/)',
    peer: url && { host: url.hostname, port: Number(url.port) || (secure ? 443 : 80), path: url.pathname, secure, key: h.get('key') || 'peerjs', debug: 1 },
    // STUN/TURN URLs (comma-separated, URL-encoded); `ice_user`/`ice_credential` go with the TURN ones
    // (credentials from the device's GET /api/ice, valid for its turn_ttl_s).
    ice: (h.get('ice') || '').split(',').map((u) => u.trim()).filter(Boolean).map((urls) => (/^turns?:/.test(urls) && h.get('ice_user')
      ? { urls, username: h.get('ice_user'), credential: h.get('ice_credential') || '' } : { urls })),
  };
}

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
  call: null,                // remote mode: the PeerJS MediaConnection
  remote: null,              // remote mode: { device, server } (see REMOTE)
  timing: {},                // ms since the attempt started: answered, connected, firstFrame
  // The control channel (see "control channel" below).
  channel: null,             // the current RTCDataChannel 'control'
  control: 'closed',         // its state: closed | connecting | open
  viewerId: null,            // our public handle on the device (v1, v2, …), from 'hello'
  viewers: null,             // how many watch, from hello / viewer_joined / viewer_left
  talker: null,              // who holds the speaker (viewer id) or null
  talkerName: null,
  talking: false,            // our microphone goes to the device's speaker
  talkError: null,           // last talk message shown (permission denied, busy, …)
  talkback: null,            // whether the camera has a speaker (from 'hello')
  micLevel: 0,               // 0..1, the meter's value while talking
  settings: null,            // the device's actual settings (get_settings / settings_changed)
  tracks: { video: true, audio: true },   // privacy: enabled for everyone?
  camera: 'online',          // camera event: online | offline
  events: [],                // the last 100 events, each with `received` (Date.now())
  request: (msg, timeoutMs) => request(msg, timeoutMs),   // control request → promise of the reply
};

let generation = 0;   // bumped per attempt: events from an older peer connection are ignored
let retryTimer = 0, retryIndex = 0, graceTimer = 0, stallTimer = 0, stopped = false;
let liveGeneration = -1;   // the attempt that reached 'connected' (for lossOfConnectionCount)

function setState(state, text) {
  peercam.state = state;
  statusEl.dataset.state = state;
  statusText.textContent = text;
}

// ICE servers for the peer connection (GET /api/ice: STUN/TURN from the device's config, TURN
// credentials minted for this login). Fetched once and again shortly before the credentials
// expire; without them (an older device, an error) the connection uses host candidates only.
let ice = { servers: [], expires: 0, pending: null };
function iceServers() {
  const fresh = ice.expires === 0 ? ice.fetched : Date.now() / 1000 < ice.expires - 60;
  if (!fresh && !ice.pending) {
    ice.pending = fetch('/api/ice', { signal: AbortSignal.timeout(2000) })
      .then((r) => (r.ok ? r.json() : null))
      .then((j) => { if (j) ice = { servers: j.iceServers || [], expires: j.expires_unix || 0, fetched: true, pending: null }; })
      .catch(() => {})
      .finally(() => { ice.pending = null; ice.fetched = true; });
  }
  return ice.pending ? Promise.race([ice.pending, new Promise((r) => setTimeout(r, 2000))]).then(() => ice.servers) : Promise.resolve(ice.servers);
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
  if (REMOTE) return connectRemote(gen, t0, timing);

  const iceList = await iceServers();
  if (gen !== generation) return;
  const pc = peercam.pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', iceServers: iceList });
  pc.addTransceiver('video', { direction: 'recvonly' });
  // sendrecv from the start, with no track: talking is a replaceTrack(), never a renegotiation.
  audioSender = pc.addTransceiver('audio', { direction: 'sendrecv' }).sender;
  openControl(pc, gen);

  // One stream for both tracks, whatever stream ids the device puts in its answer.
  const stream = new MediaStream();
  pc.ontrack = ({ track }) => {
    stream.addTrack(track);
    if (video.srcObject !== stream) video.srcObject = stream;
    startPlayback();
  };
  watchConnection(pc, gen, t0, timing);

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

// Live / interrupted / lost, from the peer connection's state (the WHEP and the remote path alike).
function watchConnection(pc, gen, t0, timing) {
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
}

// ---- remote mode: PeerJS through an external PeerServer -----------------------------------------

const remote = { peer: null, opening: null, onError: null };

function loadPeerJs() {
  if (typeof window.Peer === 'function') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const s = document.createElement('script');
    s.src = new URL('vendor/peerjs.min.js', location.href).href;
    s.onload = resolve;
    s.onerror = () => reject(new Error('The PeerJS library (vendor/peerjs.min.js next to this page) did not load'));
    document.head.append(s);
  });
}

// One PeerJS peer (a random ID) on the PeerServer for the page; opened again when it was lost.
function remotePeer() {
  if (remote.peer?.open) return Promise.resolve(remote.peer);
  remote.opening ??= (async () => {
    await loadPeerJs();
    if (remote.peer && !remote.peer.destroyed) remote.peer.destroy();
    const peer = remote.peer = new Peer(undefined, { ...REMOTE.peer, config: { iceServers: REMOTE.ice } });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('The PeerServer did not answer')), POST_TIMEOUT_MS);
      peer.on('open', () => { clearTimeout(timer); resolve(); });
      peer.on('error', (e) => { clearTimeout(timer); reject(new Error(`PeerServer: ${e.message || e.type}`)); });
    });
    peer.on('error', (e) => remote.onError?.(e));   // one listener; the current attempt's handler
    return peer;
  })().finally(() => { remote.opening = null; });
  return remote.opening;
}

async function connectRemote(gen, t0, timing) {
  try {
    if (REMOTE.error) throw new Error(REMOTE.error);
    const peer = await remotePeer();
    if (gen !== generation) return;
    // Nothing to send (talk-back needs the device's own page): the call only receives.
    const call = peercam.call = peer.call(REMOTE.device, new MediaStream(), {
      metadata: { token: REMOTE.token },
      constraints: { offerToReceiveVideo: true, offerToReceiveAudio: true },
    });
    const pc = peercam.pc = call?.peerConnection;
    if (!pc) throw new Error('PeerJS could not start the call');
    watchConnection(pc, gen, t0, timing);
    call.on('stream', (stream) => {
      if (gen !== generation) return;
      timing.answered ??= Math.round(performance.now() - t0);
      if (video.srcObject !== stream) video.srcObject = stream;
      startPlayback();
    });
    call.on('close', () => gen === generation && lost('The camera ended the call'));
    // The device refuses a call without a valid viewer token by leaving it: PeerJS then closes
    // the peer connection, which fires no event (and a call that never opened emits no 'close').
    const refused = setInterval(() => {
      if (gen !== generation || peercam.state === 'live') { clearInterval(refused); return; }
      if (pc.signalingState === 'closed') {
        clearInterval(refused);
        failed(new Error('The camera refused the call: the link\'s token is missing, wrong or revoked'));
      }
    }, 200);
    remote.onError = (e) => {
      if (gen !== generation) return;
      failed(new Error(e.type === 'peer-unavailable' ? `The camera “${REMOTE.device}” is not connected to the PeerServer` : `PeerServer: ${e.message || e.type}`));
    };
    useControl(remoteChannel(peer.connect(REMOTE.device, { serialization: 'raw', reliable: true, metadata: { token: REMOTE.token } })), gen);
  } catch (err) {
    if (gen === generation) failed(err);
  }
}

// A PeerJS data connection dressed as the RTCDataChannel the control code expects.
function remoteChannel(conn) {
  const ch = { readyState: 'connecting', onopen: null, onclose: null, onmessage: null, send: (s) => conn.send(s), close: () => conn.close() };
  conn.on('open', () => { ch.readyState = 'open'; ch.onopen?.(); });
  conn.on('data', (d) => ch.onmessage?.({ data: typeof d === 'string' ? d : JSON.stringify(d) }));
  conn.on('close', () => { ch.readyState = 'closed'; ch.onclose?.(); });
  return ch;
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
  closeControl();
  const pc = peercam.pc;
  if (pc) {
    pc.ontrack = pc.onconnectionstatechange = null;
    pc.close();
    peercam.pc = null;
  }
  if (peercam.call) { peercam.call.close(); peercam.call = null; }
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
let myLink = null, linkAsked = 0;   // this viewer's link as the device's congestion control sees it

async function refreshLink() {
  if (peercam.control !== 'open' || performance.now() - linkAsked < 2000) return;
  linkAsked = performance.now();
  const r = await request({ type: 'get_settings' });
  if (r.ok) myLink = (r.result.links || []).find((l) => l.viewer === peercam.viewerId) || null;
}

async function updateStats() {
  const pc = peercam.pc;
  if (statsEl.hidden) return;
  refreshLink().catch(() => {});
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
  // Direct or through a TURN relay: the selected pair's candidate types (either end relayed = relayed).
  const local = pair && report.get(pair.localCandidateId), remote = pair && report.get(pair.remoteCandidateId);
  const relayed = local?.candidateType === 'relay' || remote?.candidateType === 'relay';
  peercam.path = pair ? (relayed ? 'relayed' : 'direct') : null;
  const path = pair ? `${relayed ? 'relayed (TURN)' : 'direct'} · ${local?.candidateType ?? '?'} ↔ ${remote?.candidateType ?? '?'}` : '–';
  statsEl.textContent = [
    `video   ${codec(v)} ${v.frameWidth ?? '–'}×${v.frameHeight ?? '–'} @ ${v.framesPerSecond ?? 0} fps`,
    `audio   ${codec(a)}`,
    `bitrate ${kbps.toFixed(0)} kbit/s`,
    `rtt     ${ms(pair?.currentRoundTripTime)}`,
    `link    ${path}`,
    `        ${myLink ? `${Math.round(myLink.estimate_bps / 1000)} kbit/s estimated · ${myLink.rung} picture · loss ${(myLink.loss * 100).toFixed(1)} %` : '–'}`,
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
const typing = (e) => /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName);
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
  if (e.key === 't' && !e.repeat) talkPress();   // hold T to talk
  else if (e.key === 'f') toggleFullscreen();
  else if (e.key === 's') toggleStats();
  else if (e.key === 'm') { if (video.muted) unmute(); else video.muted = true; }
  else if (e.key === 'n') setListenOnly(!peercam.listenOnly);
});

document.addEventListener('keyup', (e) => { if (e.key === 't' && !typing(e)) talkRelease(); });

// Controls fade out while the mouse rests, so the picture is unobstructed.
let idleTimer = 0;
function wake() {
  document.body.classList.remove('idle');
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => document.body.classList.add('idle'), 3000);
}
for (const ev of ['mousemove', 'touchstart', 'keydown']) document.addEventListener(ev, wake, { passive: true });
wake();

// ---- control channel (src/rtc/CONTROL.md) ---------------------------------------------------

const MAX_EVENTS = 100;
const REQUEST_TIMEOUT_MS = 5000;
let audioSender = null;          // the sendrecv audio transceiver's sender of the current connection
let nextRequestId = 1;
const pending = new Map();       // request id → { resolve, reject, timer }

// Created before the offer, so the device answers an m=application line: reliable and ordered.
function openControl(pc, gen) {
  useControl(pc.createDataChannel('control', { ordered: true }), gen);
}

function useControl(ch, gen) {
  peercam.channel = ch;
  peercam.control = 'connecting';
  ch.onopen = () => { if (gen === generation) peercam.control = 'open'; updateTalkUi(); };
  ch.onclose = () => { if (peercam.channel === ch) closeControl(); };
  ch.onmessage = (e) => { if (gen === generation) onControlMessage(e.data); };
}

// The connection ended: replies will never come, and the device has already given our speaker back.
function closeControl() {
  const ch = peercam.channel;
  if (ch) { ch.onopen = ch.onclose = ch.onmessage = null; ch.close(); }
  peercam.channel = null;
  peercam.control = 'closed';
  for (const [id, p] of pending) { clearTimeout(p.timer); p.reject(new Error('Connection to the camera lost')); pending.delete(id); }
  if (peercam.talking || wantTalk) talkStopped();
  peercam.viewerId = null;
  setViewers(null);
  setTalker(null);
}

// Sends `{v: 1, id, ...msg}`; resolves with the device's reply object ({ok, result} or {ok: false, error}).
function request(msg, timeoutMs = REQUEST_TIMEOUT_MS) {
  const ch = peercam.channel;
  if (!ch || ch.readyState !== 'open') return Promise.reject(new Error('Not connected to the camera yet'));
  const id = nextRequestId++;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { pending.delete(id); reject(new Error('The camera did not answer')); }, timeoutMs);
    pending.set(id, { resolve, reject, timer });
    ch.send(JSON.stringify({ v: 1, id, ...msg }));
  });
}

// A failed reply as a sentence for people.
function errorText(error) {
  if (!error) return 'Failed';
  return error.message || `${error.code}${error.constraint ? ` (${error.constraint})` : ''}${error.field ? ` (${error.field})` : ''}`;
}

function onControlMessage(data) {
  let m;
  try { m = JSON.parse(data); } catch { return; }
  if (!m || typeof m !== 'object') return;
  if (m.type === 'reply') {
    const p = pending.get(m.id);
    if (p) { pending.delete(m.id); clearTimeout(p.timer); p.resolve(m); }
    return;
  }
  if (m.type !== 'event') return;
  // Levels come four times a second: kept apart so they do not push the other events out.
  if (m.event === 'sound_level') { setSoundLevel(m); return; }
  peercam.events.push({ ...m, received: Date.now() });
  if (peercam.events.length > MAX_EVENTS) peercam.events.shift();
  switch (m.event) {
    case 'hello':
      peercam.viewerId = m.viewer;
      if (typeof m.talkback === 'boolean') peercam.talkback = m.talkback;
      setViewers(m.viewers);
      setTalker(m.talker, m.name);
      if (m.settings) showSettings(m.settings);
      if (m.camera) setCamera(m.camera);
      if (chatName.value.trim()) request({ type: 'set_name', name: chatName.value.trim() }).catch(() => {});
      if (peercam.listenOnly) sendListenOnly();   // a new connection starts with video: ask again
      break;
    case 'viewer_joined': case 'viewer_left': setViewers(m.viewers); break;
    case 'talker_changed': setTalker(m.talker, m.name); break;
    case 'track_enabled': setTrackEnabled(m.kind, m.enabled, m.by); break;
    case 'settings_changed': showSettings(m.settings); break;
    case 'camera': setCamera(m.state); break;
    case 'chat': addChat(m); break;
    case 'noise': case 'cry': onSoundAlert(m); break;
    case 'recording': if (!recEl.hidden) loadRecordings(); break;
    case 'record_error': recState.textContent = `Recording stopped: ${m.message}`; break;
    case 'lullaby': showLullaby(m.lullaby, m.reason === 'failed' ? m.message : null); break;
    case 'night': showNightVision({ ...(peercam.settings?.night || {}), mode: m.mode, state: m.state, luma: m.luma }, m.reason); break;
    default: break;
  }
}

// ---- sound: the level meter and the noise / cry alerts (issue 14) ----------------------------

const soundEl = $('sound'), soundLevelEl = $('sound-level'), soundDb = $('sound-db');
const alertEl = $('alert'), alertsBtn = $('btn-alerts');
const MAX_ALERTS = 50;
peercam.sound = { level: null, alerts: [], announced: 0 };
let alertCtx = null, alertHide = null;

function setSoundLevel(m) {
  peercam.sound.level = { ...m, received: Date.now() };
  soundEl.hidden = false;
  // −70 dBFS (a quiet room) … 0 dBFS on the bar.
  const frac = Math.max(0, Math.min(1, (m.level_db + 70) / 70));
  soundLevelEl.style.transform = `scaleX(${frac.toFixed(3)})`;
  soundDb.textContent = `${Math.round(m.level_db)} dB`;
  soundEl.dataset.loud = m.peak_db >= -32 ? 'yes' : 'no';
}

function onSoundAlert(m) {
  peercam.sound.alerts.push({ ...m, received: Date.now() });
  if (peercam.sound.alerts.length > MAX_ALERTS) peercam.sound.alerts.shift();
  const what = m.event === 'cry' ? 'Crying' : 'Noise';
  const at = new Date(m.start).toLocaleTimeString();
  clearTimeout(alertHide);
  alertEl.hidden = false;
  alertEl.dataset.kind = m.event;
  alertEl.dataset.state = m.state;
  if (m.state === 'start') {
    alertEl.textContent = `${what} at the camera since ${at}`;
    announce(what, at);
  } else {
    const secs = Math.max(1, Math.round((m.end - m.start) / 1000));
    alertEl.textContent = `${what} stopped (${secs} s, loudest ${Math.round(m.peak_db)} dB)`;
    alertHide = setTimeout(() => { alertEl.hidden = true; }, 15000);
  }
}

// A notification when permitted, a vibration on phones, a short two-tone chime.
function announce(what, at) {
  peercam.sound.announced++;
  try { if (navigator.vibrate) navigator.vibrate([300, 150, 300]); } catch { /* not allowed without a gesture */ }
  if ('Notification' in window && Notification.permission === 'granted') {
    try { new Notification(`peercam: ${what}`, { body: `${what} at the camera since ${at}`, tag: `peercam-${what}` }); } catch { /* e.g. Android needs a service worker */ }
  }
  chime();
}

// The one audio context of the alert chime and the link alarm, running (or null: no Web Audio).
function alertAudio() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return null;
  alertCtx = alertCtx || new Ctx();
  if (alertCtx.state === 'suspended') alertCtx.resume().catch(() => {});
  return alertCtx;
}

function chime() {
  try {
    if (!alertAudio()) return;
    const t = alertCtx.currentTime;
    [[880, 0], [660, 0.22]].forEach(([f, d]) => {
      const o = alertCtx.createOscillator(), g = alertCtx.createGain();
      o.frequency.value = f;
      g.gain.setValueAtTime(0.0001, t + d);
      g.gain.exponentialRampToValueAtTime(0.3, t + d + 0.02);
      g.gain.exponentialRampToValueAtTime(0.0001, t + d + 0.2);
      o.connect(g).connect(alertCtx.destination);
      o.start(t + d); o.stop(t + d + 0.21);
    });
  } catch { /* no audio output */ }
}

// Permission and the audio context need a user gesture: the Alerts button.
alertsBtn.addEventListener('click', async () => {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (Ctx) { alertCtx = alertCtx || new Ctx(); alertCtx.resume().catch(() => {}); }
  let ok = true;
  if ('Notification' in window && Notification.permission === 'default') {
    try { ok = (await Notification.requestPermission()) === 'granted'; } catch { ok = false; }
  }
  alertsBtn.setAttribute('aria-pressed', 'true');
  alertsBtn.title = ok ? 'Alerts on: notification, vibration and a sound' : 'Notifications blocked: alerts show here with a sound';
  chime();
});

// ---- the link alarm: the camera went silent ---------------------------------------------------
// Media (audio or video bytes) or the control channel stopped for ALARM_MS after the page had been
// live: a loud local alarm, a red message and a notification, repeated until the camera is back.
// The page keeps reconnecting by itself meanwhile (see connect / retry).

const ALARM_MS = 5000;            // media or control silent this long → alarm (checked every second)
const ALARM_REPEAT_MS = 2000;     // the alarm tone repeats this often while it lasts
const alarmEl = $('link-alarm');
peercam.alarm = { on: false, since: null, raised: 0, cleared: 0, tones: 0, reason: null, lastMediaAt: null };
let alarmLastBytes = -1, alarmPc = null, controlDownSince = null, alarmTimer = 0;

async function checkLink() {
  const now = Date.now(), pc = peercam.pc, a = peercam.alarm;
  if (pc && pc.connectionState === 'connected') {
    if (pc !== alarmPc) { alarmPc = pc; alarmLastBytes = -1; }
    const bytes = await bytesReceived(pc).catch(() => alarmLastBytes);
    if (bytes > alarmLastBytes) { if (alarmLastBytes >= 0 || a.lastMediaAt == null) a.lastMediaAt = now; alarmLastBytes = bytes; }
  }
  if (peercam.control === 'open') controlDownSince = null; else controlDownSince ??= now;
  if (a.lastMediaAt == null) return;   // never live yet: the status line says what is happening
  const mediaGone = now - a.lastMediaAt >= ALARM_MS;
  const controlGone = controlDownSince != null && now - controlDownSince >= ALARM_MS;
  if ((mediaGone || controlGone) && !a.on) raiseAlarm(mediaGone ? 'no sound or picture' : 'no control connection');
  else if (!mediaGone && !controlGone && a.on) clearAlarm();
  if (a.on) {
    const secs = Math.round((now - a.since) / 1000);
    alarmEl.textContent = `No connection to the camera for ${secs} s (${a.reason}). Check the camera — reconnecting…`;
  }
}

function raiseAlarm(reason) {
  const a = peercam.alarm;
  Object.assign(a, { on: true, since: Math.min(a.lastMediaAt, controlDownSince ?? Infinity), reason });
  a.raised++;
  alarmEl.hidden = false;
  document.body.classList.add('alarm');
  try { if (navigator.vibrate) navigator.vibrate([600, 200, 600, 200, 600]); } catch { /* no gesture yet */ }
  if ('Notification' in window && Notification.permission === 'granted') {
    try { new Notification('peercam: camera not reachable', { body: `No sound or picture since ${new Date(a.since).toLocaleTimeString()}`, tag: 'peercam-link', requireInteraction: true }); } catch { /* needs a service worker */ }
  }
  alarmTone();
  clearInterval(alarmTimer);
  alarmTimer = setInterval(alarmTone, ALARM_REPEAT_MS);
}

function clearAlarm() {
  const a = peercam.alarm;
  a.on = false;
  a.cleared++;
  clearInterval(alarmTimer);
  alarmEl.hidden = true;
  document.body.classList.remove('alarm');
}

// Three loud square-wave beeps: unlike the alert chime, this must wake a sleeping parent.
function alarmTone() {
  try {
    if (!alertAudio()) return;
    const t = alertCtx.currentTime;
    for (let i = 0; i < 3; i++) {
      const o = alertCtx.createOscillator(), g = alertCtx.createGain();
      o.type = 'square';
      o.frequency.value = 1000;
      g.gain.setValueAtTime(0.25, t + i * 0.3);
      g.gain.setValueAtTime(0.0001, t + i * 0.3 + 0.18);
      o.connect(g).connect(alertCtx.destination);
      o.start(t + i * 0.3); o.stop(t + i * 0.3 + 0.2);
    }
    peercam.alarm.tones++;
    peercam.alarm.audio = alertCtx.state;
  } catch { /* no audio output */ }
}

setInterval(checkLink, 1000);

// ---- listen-only (night) ---------------------------------------------------------------------
// The device stops sending this page video (and stops the camera if nobody else watches); the
// sound goes on, the OS shows it as playing (Media Session), and the screen may be kept on.

const nightEl = $('night'), nightBtn = $('btn-night'), nightWake = $('night-wake');
peercam.listenOnly = false;       // what this page wants
peercam.listenOnlyDevice = null;  // what the device confirmed (true / false), null before it answered
let wakeLock = null;

async function sendListenOnly() {
  const on = peercam.listenOnly;
  try {
    const r = await request({ type: 'listen_only', on });
    if (r.ok && peercam.listenOnly === on) peercam.listenOnlyDevice = r.result.listen_only;
  } catch { /* not connected: sent again on the next hello */ }
}

function setListenOnly(on) {
  peercam.listenOnly = on;
  document.body.classList.toggle('night', on);
  nightEl.hidden = !on;
  nightBtn.setAttribute('aria-pressed', String(on));
  if ('mediaSession' in navigator) {
    try {
      navigator.mediaSession.metadata = on ? new MediaMetadata({ title: 'Listening to the camera', artist: 'peercam', album: location.host }) : null;
      navigator.mediaSession.playbackState = on ? 'playing' : 'none';
      // Lock-screen controls: pause mutes, play unmutes (the stream itself never stops).
      navigator.mediaSession.setActionHandler('pause', on ? () => { video.muted = true; navigator.mediaSession.playbackState = 'paused'; } : null);
      navigator.mediaSession.setActionHandler('play', on ? () => { unmute(); navigator.mediaSession.playbackState = 'playing'; } : null);
    } catch { /* older browsers: no metadata */ }
  }
  if (!on) setWakeLock(false);
  else if (nightWake.checked) setWakeLock(true);
  if (peercam.control === 'open') sendListenOnly();
}

async function setWakeLock(on) {
  if (!on) { if (wakeLock) { wakeLock.release().catch(() => {}); wakeLock = null; } peercam.wakeLock = false; return; }
  if (!('wakeLock' in navigator)) { nightWake.checked = false; nightWake.disabled = true; nightWake.parentElement.title = 'This browser cannot keep the screen on'; return; }
  try {
    wakeLock = await navigator.wakeLock.request('screen');
    peercam.wakeLock = true;
    wakeLock.addEventListener('release', () => { peercam.wakeLock = false; });
  } catch { peercam.wakeLock = false; }
}

// A wake lock ends when the page is hidden; take it again when the parent comes back.
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && peercam.listenOnly && nightWake.checked && (!wakeLock || wakeLock.released)) setWakeLock(true);
});
nightBtn.addEventListener('click', () => setListenOnly(!peercam.listenOnly));
$('night-off').addEventListener('click', () => setListenOnly(false));
nightWake.addEventListener('change', () => setWakeLock(nightWake.checked && peercam.listenOnly));

// ---- presence and banner ---------------------------------------------------------------------

const viewersEl = $('viewers'), banner = $('banner');
let pausedBy = { video: null, audio: null };

function setViewers(n) {
  peercam.viewers = typeof n === 'number' ? n : null;
  viewersEl.hidden = peercam.viewers == null;
  viewersEl.textContent = `· ${n} watching`;
}

function setCamera(state) { peercam.camera = state; updateBanner(); }

function setTrackEnabled(kind, enabled, by) {
  if (kind !== 'video' && kind !== 'audio') return;
  peercam.tracks[kind] = !!enabled;
  pausedBy[kind] = by ?? null;
  privacy[kind].checked = !enabled;
  updateBanner();
}

const who = (id, name) => (id === peercam.viewerId ? 'you' : id === 'api' ? 'a script' : name ? `${name}` : id || 'someone');

function updateBanner() {
  const lines = [];
  if (peercam.camera === 'offline') lines.push('Camera offline — waiting for it to come back');
  if (!peercam.tracks.video) lines.push(`Video paused for everyone${pausedBy.video ? ` by ${who(pausedBy.video)}` : ''}`);
  if (!peercam.tracks.audio) lines.push(`Camera microphone muted for everyone${pausedBy.audio ? ` by ${who(pausedBy.audio)}` : ''}`);
  banner.textContent = lines.join(' · ');
  banner.hidden = !lines.length;
}

// ---- talk-back -------------------------------------------------------------------------------

const talkBtn = $('btn-talk'), talkLabel = $('talk-label'), talkHint = $('talk-hint'), talkLevel = $('talk-level');
const talkMsg = $('talk-msg');
const TAP_MS = 250;              // a press shorter than this locks talking on; the next press ends it
let micTrack = null, wantTalk = false, talkStarting = false, latched = false, pressed = false, pressStops = false, downAt = 0;
let meterCtx = null, analyser = null, meterTimer = 0;

// Why this browser cannot use a microphone here, or null.
function micUnavailable() {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    return 'Talking needs a secure connection: browsers only allow the microphone on HTTPS pages ' +
      `(or http://localhost), and this page is ${location.protocol}//${location.host}. ` +
      'Turn on HTTPS on the camera (in peercam.toml: [http] tls = true, then restart it) and open https://' +
      `${location.hostname}${location.port ? `:${location.port}` : ''}/ instead.`;
  }
  return null;
}

async function getMic() {
  if (micTrack && micTrack.readyState === 'live') return micTrack;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    micTrack = peercam.micTrack = stream.getAudioTracks()[0];
    return micTrack;
  } catch (err) {
    if (err.name === 'NotAllowedError' || err.name === 'SecurityError') {
      throw new Error('Microphone permission denied. Allow the microphone for this site (the icon in the address bar), then try again.');
    }
    if (err.name === 'NotFoundError' || err.name === 'OverconstrainedError') {
      throw new Error('No microphone found. Connect one (or turn it on in the system settings) to talk.');
    }
    if (err.name === 'NotReadableError') throw new Error('The microphone is busy or broken (another app may be using it).');
    throw new Error(`Microphone unavailable: ${err.message || err.name}`);
  }
}

function talkMessage(text, kind = 'error') {
  peercam.talkError = kind === 'error' ? text : null;
  talkMsg.textContent = text || '';
  talkMsg.dataset.kind = kind;
  talkMsg.hidden = !text;
}

async function talkStart() {
  wantTalk = true;
  if (peercam.talking || talkStarting) return;
  talkStarting = true;
  updateTalkUi();
  try {
    const why = micUnavailable();
    if (why) throw new Error(why);
    const track = await getMic();
    if (!wantTalk) return;
    const reply = await request({ type: 'talk', action: 'request' });
    if (!reply.ok) {
      const e = reply.error || {};
      if (e.code === 'busy' && e.talker) setTalker(e.talker);
      throw new Error(e.code === 'busy' ? `${who(peercam.talker, peercam.talkerName)} is talking — wait until they finish.`
        : e.code === 'unavailable' ? `The camera cannot play sound: ${e.message || 'no speaker configured'}.`
        : errorText(e));
    }
    peercam.talking = true;
    track.enabled = true;
    await audioSender.replaceTrack(track);
    talkMessage(null);
    startMeter(track);
  } catch (err) {
    wantTalk = latched = false;
    talkMessage(err.message || String(err));
  } finally {
    talkStarting = false;
    if (!wantTalk && peercam.talking) talkStop();   // released while we were starting
    updateTalkUi();
  }
}

// Stop sending and give the speaker back.
async function talkStop() {
  wantTalk = latched = false;
  if (!peercam.talking) { updateTalkUi(); return; }   // a start in progress sees wantTalk = false
  const sender = audioSender;
  talkStopped();
  await sender?.replaceTrack(null).catch(() => {});
  await request({ type: 'talk', action: 'release' }).catch(() => {});
}

// Local side of stopping (also when the device took the speaker away, or the connection ended).
function talkStopped() {
  wantTalk = latched = false;
  peercam.talking = false;
  if (micTrack) micTrack.enabled = false;
  if (audioSender && peercam.pc) audioSender.replaceTrack(null).catch(() => {});
  stopMeter();
  updateTalkUi();
}

// A talker is "v3" (+ a separate name) or {viewer: "v3", name: "Mum"}; null when nobody talks.
const talkerId = (t) => (t && typeof t === 'object' ? t.viewer ?? null : t ?? null);

function setTalker(talker, name) {
  const id = talkerId(talker);
  peercam.talker = id;
  peercam.talkerName = id ? (typeof talker === 'object' ? talker.name : name) ?? null : null;
  name = peercam.talkerName;
  if (peercam.talking && id !== peercam.viewerId && !talkStarting) talkStopped();   // the device ended our turn
  if (id && id !== peercam.viewerId) talkMessage(`${who(id, name)} is talking`, 'info');
  else if (talkMsg.dataset.kind === 'info') talkMessage(null);
  updateTalkUi();
}

function updateTalkUi() {
  const other = peercam.talker && peercam.talker !== peercam.viewerId;
  const off = peercam.talkback === false;
  const insecure = !!micUnavailable();   // stays pressable: a press explains what is missing
  talkBtn.disabled = !!REMOTE || (!insecure && (!!other || off || peercam.control !== 'open'));
  talkBtn.setAttribute('aria-pressed', String(peercam.talking));
  talkBtn.classList.toggle('talking', peercam.talking);
  document.body.classList.toggle('talking', peercam.talking);
  talkLabel.textContent = peercam.talking ? 'Talking…' : talkStarting ? 'Starting…' : other ? 'Someone is talking' : 'Hold to talk';
  talkHint.textContent = peercam.talking ? (latched ? 'tap to stop' : 'release to stop')
    : REMOTE ? 'on the camera\'s own page' : insecure ? 'needs HTTPS' : off ? 'no speaker on this camera' : 'tap to lock';
}

// Hold: talk while pressed. Tap (< 250 ms): stays on; the next press turns it off.
function talkPress() {
  if (pressed) return;
  pressed = true;
  downAt = performance.now();
  pressStops = latched || (peercam.talking && !wantTalk);
  if (pressStops) talkStop(); else talkStart();
}
function talkRelease() {
  if (!pressed) return;
  pressed = false;
  if (pressStops) return;
  if (performance.now() - downAt < TAP_MS && wantTalk) { latched = true; updateTalkUi(); } else talkStop();
}
function talkCancel() { if (!pressed) return; pressed = false; if (!latched && !pressStops) talkStop(); }

talkBtn.addEventListener('pointerdown', (e) => {
  if (e.button !== 0) return;
  e.preventDefault();              // no text selection / focus dance on long presses
  talkBtn.setPointerCapture?.(e.pointerId);
  talkPress();
});
talkBtn.addEventListener('pointerup', talkRelease);
talkBtn.addEventListener('pointercancel', talkCancel);
talkBtn.addEventListener('lostpointercapture', talkCancel);
talkBtn.addEventListener('contextmenu', (e) => e.preventDefault());   // long press on phones
talkBtn.addEventListener('keydown', (e) => {
  if ((e.key === ' ' || e.key === 'Enter') && !e.repeat) { e.preventDefault(); e.stopPropagation(); talkPress(); }
});
talkBtn.addEventListener('keyup', (e) => { if (e.key === ' ' || e.key === 'Enter') { e.preventDefault(); talkRelease(); } });
talkBtn.addEventListener('blur', talkCancel);

// Level meter: peak of the last ~20 ms, on a 60 dB scale.
function startMeter(track) {
  try {
    if (!meterCtx) {
      meterCtx = new AudioContext();
      analyser = meterCtx.createAnalyser();
      analyser.fftSize = 1024;
      meterCtx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
    }
    meterCtx.resume().catch(() => {});
  } catch { return; }
  const buf = new Float32Array(analyser.fftSize);
  clearInterval(meterTimer);
  meterTimer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let peak = 0;
    for (const x of buf) peak = Math.max(peak, Math.abs(x));
    const level = peak > 0 ? Math.min(1, Math.max(0, (20 * Math.log10(peak) + 60) / 60)) : 0;
    peercam.micLevel = Math.max(level, peercam.micLevel * 0.85);   // fast attack, slow fall
    talkLevel.style.transform = `scaleX(${peercam.micLevel.toFixed(3)})`;
  }, 50);
}
function stopMeter() {
  clearInterval(meterTimer);
  peercam.micLevel = 0;
  talkLevel.style.transform = 'scaleX(0)';
}

// ---- settings and privacy --------------------------------------------------------------------

const settingsEl = $('settings'), settingsBtn = $('btn-settings'), sizeSel = $('set-size'), fpsSel = $('set-fps');
const bitrateIn = $('set-bitrate'), actualEl = $('settings-actual'), settingsErr = $('settings-error');
const privacy = { video: $('priv-video'), audio: $('priv-audio') };

function showSettings(s) {
  if (!s) return;
  peercam.settings = s;
  if (s.night) showNightVision(s.night);
  const v = s.video || {}, a = s.audio || {};
  if (typeof v.enabled === 'boolean') setTrackEnabled('video', v.enabled, pausedBy.video);
  if (typeof a.enabled === 'boolean') setTrackEnabled('audio', a.enabled, pausedBy.audio);
  actualEl.textContent = `Now: ${v.width ?? '?'}×${v.height ?? '?'} @ ${v.fps ?? '?'} fps, ${v.bitrate_kbps ?? '?'} kbit/s` +
    ` · audio ${a.bitrate_kbps ?? '?'} kbit/s${v.problem ? ` · ${v.problem}` : ''}`;
  if (settingsEl.contains(document.activeElement)) return;   // don't change what someone is editing
  const size = `${v.width}x${v.height}`;
  if (![...sizeSel.options].some((o) => o.value === size) && v.width) sizeSel.add(new Option(`${v.width}×${v.height}`, size));
  if (v.width) sizeSel.value = size;
  if (v.fps && ![...fpsSel.options].some((o) => o.value === String(v.fps))) fpsSel.add(new Option(String(v.fps)));
  if (v.fps) fpsSel.value = String(v.fps);
  if (v.bitrate_kbps) bitrateIn.value = v.bitrate_kbps;
}

// ---- night vision: IR LEDs / IR-cut filter and greyscale (control protocol `night`) ------------

const nv = { mode: $('nv-mode'), state: $('nv-state') };
peercam.night = null;
const NV_REASONS = { mode: 'mode changed', dark: 'it got dark', bright: 'it got light', watched: 'someone watches', unwatched: 'nobody watches' };

function showNightVision(n, reason) {
  if (!n || !n.mode) return;
  peercam.night = n;
  if (peercam.settings) peercam.settings.night = n;
  if (document.activeElement !== nv.mode) nv.mode.value = n.mode;
  const lines = [n.ir_led && 'IR LEDs', n.ir_cut && 'IR-cut filter'].filter(Boolean).join(' + ') || 'no IR lines configured';
  nv.state.textContent = `Now: ${n.state === 'night' ? 'night (infrared' + (n.greyscale ? ', greyscale' : '') + ')' : 'day'}` +
    `${reason ? ` — ${NV_REASONS[reason] || reason}` : ''} · ${lines}${n.luma != null ? ` · brightness ${n.luma}` : ''}` +
    `${n.error ? ` · problem: ${n.error}` : ''}`;
}

nv.mode.addEventListener('change', async () => {
  try {
    const r = await request({ type: 'night', mode: nv.mode.value });
    if (!r.ok) { nv.state.textContent = errorText(r.error); return; }
    showNightVision(r.result);
  } catch (e) { nv.state.textContent = e.message; }
});

function settingsError(text) { settingsErr.textContent = text || ''; settingsErr.hidden = !text; }

// ---- lullaby: a noise or sound file on the camera's speaker (control protocol `lullaby`) -------

const lull = { box: $('lullaby'), sound: $('lull-sound'), volume: $('lull-volume'), timer: $('lull-timer'), state: $('lull-state') };
peercam.lullaby = null;

let lullRefresh = null;
function showLullaby(l, problem) {
  peercam.lullaby = l || null;
  // A stop fades out for 2 s with no event at its end: ask again once it is over.
  clearTimeout(lullRefresh);
  if (l?.stopping) lullRefresh = setTimeout(() => lullabyRequest({ action: 'status' }), 2500);
  lull.state.textContent = problem ? `Stopped: ${problem}`
    : l ? `Playing ${l.sound} at ${l.volume_percent} %${l.remaining_s != null ? `, ${Math.ceil(l.remaining_s / 60)} min left` : ''}${l.stopping ? ' (fading out)' : ''}${l.ducked ? ' (quieter while someone talks)' : ''}`
    : 'Not playing';
}

async function lullabyRequest(body) {
  try {
    const r = await request({ type: 'lullaby', ...body });
    if (!r.ok) { lull.state.textContent = errorText(r.error); return; }
    const files = (r.result?.sounds || []).filter((s) => s.kind === 'file');
    for (const f of files) if (![...lull.sound.options].some((o) => o.value === f.name)) lull.sound.add(new Option(f.name, f.name));
    showLullaby(r.result?.lullaby);
  } catch (e) { lull.state.textContent = e.message; }
}

$('lull-start').addEventListener('click', () => {
  const body = { action: 'start', sound: lull.sound.value, volume_percent: Number(lull.volume.value) };
  if (lull.timer.value) body.timer_min = Number(lull.timer.value);
  lullabyRequest(body);
});
$('lull-stop').addEventListener('click', () => lullabyRequest({ action: 'stop' }));

$('constraints-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const [width, height] = sizeSel.value.split('x').map(Number);
  const video = { width, height, frame_rate: Number(fpsSel.value) };
  if (bitrateIn.value) video.bitrate_kbps = Number(bitrateIn.value);
  settingsError(null);
  try {
    const r = await request({ type: 'apply_constraints', video });
    if (r.ok) showSettings(r.result); else settingsError(`Not applied: ${errorText(r.error)}`);
  } catch (err) { settingsError(err.message); }
});

for (const kind of ['video', 'audio']) {
  privacy[kind].addEventListener('change', async () => {
    const enabled = !privacy[kind].checked;
    settingsError(null);
    try {
      const r = await request({ type: 'set_track_enabled', kind, enabled });
      if (!r.ok) throw new Error(errorText(r.error));
      setTrackEnabled(kind, enabled, peercam.viewerId);
      if (r.result) showSettings(r.result);
    } catch (err) {
      privacy[kind].checked = !peercam.tracks[kind];
      settingsError(err.message);
    }
  });
}

// ---- chat ------------------------------------------------------------------------------------

const chatEl = $('chat'), chatBtn = $('btn-chat'), chatLog = $('chat-log'), chatName = $('chat-name');
const chatText = $('chat-text'), chatUnread = $('chat-unread');
let unread = 0;
try { chatName.value = localStorage.getItem('peercam.name') || ''; } catch { /* storage off */ }

// User text only ever goes through textContent.
function addChat(m) {
  const li = document.createElement('li');
  const time = document.createElement('time');
  const at = new Date(typeof m.at === 'number' ? m.at : Date.now());
  time.textContent = at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const name = document.createElement('b');
  name.textContent = m.from === peercam.viewerId ? 'You' : m.name || m.from || '?';
  const text = document.createElement('span');
  text.textContent = String(m.text ?? '');
  li.append(time, ' ', name, ' ', text);
  if (m.from === peercam.viewerId) li.className = 'mine';
  chatLog.append(li);
  while (chatLog.children.length > 200) chatLog.firstElementChild.remove();
  chatLog.scrollTop = chatLog.scrollHeight;
  if (chatEl.hidden && m.from !== peercam.viewerId) { unread++; chatUnread.textContent = ` ${unread}`; chatUnread.hidden = false; }
}

chatName.addEventListener('change', () => {
  const name = chatName.value.trim();
  try { localStorage.setItem('peercam.name', name); } catch { /* storage off */ }
  request({ type: 'set_name', name }).catch(() => {});
});

$('chat-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const text = chatText.value.trim();
  if (!text) return;
  const msg = { type: 'chat', text };
  if (chatName.value.trim()) msg.name = chatName.value.trim();
  try {
    const r = await request(msg);
    if (!r.ok) throw new Error(errorText(r.error));
    chatText.value = '';
  } catch (err) {
    addChat({ from: '', name: '⚠', text: `Not sent: ${err.message}` });
  }
});

// ---- recordings (issue 15): list, play, download, delete ------------------------------------

const recEl = $('recordings'), recBtn = $('btn-recordings'), recList = $('rec-list'), recState = $('rec-state');
const recPlayer = $('rec-player');
let recUrl = null;   // the object URL playing now (revoked when another one plays)

function recApi(name, init = {}) {
  const path = name ? `api/recordings/${encodeURIComponent(name)}` : 'api/recordings';
  return fetch(new URL(path, location.href), { credentials: 'same-origin', ...init, headers: { ...AUTH, ...(init.headers || {}) } });
}

// The file is fetched with the page's credentials (a <video src> could not send the bearer token)
// and played from a blob: clips are short; Chromium plays fragmented MP4 with H.264 + Opus.
async function recBlob(name) {
  const r = await recApi(name);
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  return URL.createObjectURL(await r.blob());
}

function fmtClip(c) {
  const when = new Date(c.start).toLocaleString();
  const secs = Math.round(c.duration_ms / 1000);
  return `${when} · ${c.trigger} · ${secs} s · ${(c.bytes / 1e6).toFixed(1)} MB${c.recording ? ' · recording' : ''}`;
}

async function loadRecordings() {
  try {
    await ensureToken();
    const r = await recApi();
    if (r.status === 404) { recState.textContent = 'Recording is off ([record] mode in the configuration).'; recList.replaceChildren(); return; }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const info = await r.json();
    recState.textContent = info.clips.length ? `${info.clips.length} clip(s), mode ${info.mode}` : `No clips yet (mode ${info.mode}).`;
    recList.replaceChildren(...info.clips.map((c) => {
      const li = document.createElement('li');
      li.dataset.name = c.name;
      const label = document.createElement('span');
      label.textContent = fmtClip(c);
      const play = document.createElement('button');
      play.type = 'button'; play.textContent = 'Play'; play.className = 'rec-play';
      play.addEventListener('click', async () => {
        try {
          const url = await recBlob(c.name);
          if (recUrl) URL.revokeObjectURL(recUrl);
          recUrl = url;
          recPlayer.hidden = false;
          recPlayer.src = url;
          await recPlayer.play();
        } catch (err) { recState.textContent = `Cannot play: ${err.message}`; }
      });
      const dl = document.createElement('button');
      dl.type = 'button'; dl.textContent = 'Download';
      dl.addEventListener('click', async () => {
        try {
          const url = await recBlob(c.name);
          const a = document.createElement('a');
          a.href = url; a.download = c.name; a.click();
          setTimeout(() => URL.revokeObjectURL(url), 60000);
        } catch (err) { recState.textContent = `Cannot download: ${err.message}`; }
      });
      const del = document.createElement('button');
      del.type = 'button'; del.textContent = 'Delete'; del.disabled = c.recording;
      del.addEventListener('click', async () => {
        if (!confirm(`Delete ${c.name}?`)) return;
        const r = await recApi(c.name, { method: 'DELETE' });
        if (!r.ok && r.status !== 404) recState.textContent = `Cannot delete: HTTP ${r.status}`;
        loadRecordings();
      });
      li.append(label, play, dl, del);
      return li;
    }));
  } catch (err) {
    recState.textContent = `Cannot list recordings: ${err.message}`;
  }
}

// One sheet at a time; they stay open while the rest of the chrome fades.
function toggleSheet(sheet, btn) {
  const open = sheet.hidden;
  for (const [s, b] of [[settingsEl, settingsBtn], [chatEl, chatBtn], [recEl, recBtn]]) { s.hidden = true; b.setAttribute('aria-pressed', 'false'); }
  sheet.hidden = !open;
  btn.setAttribute('aria-pressed', String(open));
  document.body.classList.toggle('sheet-open', open);
  if (open && sheet === chatEl) { unread = 0; chatUnread.hidden = true; chatText.focus(); }
  if (open && sheet === settingsEl) { showSettings(peercam.settings); if (peercam.control === 'open') request({ type: 'get_settings' }).then((r) => r.ok && showSettings(r.result)).catch(() => {}); }
}
settingsBtn.addEventListener('click', () => {
  toggleSheet(settingsEl, settingsBtn);
  // The lullaby needs the camera's speaker; its state and the sound files come from the device.
  lull.box.hidden = peercam.talkback === false;
  if (!settingsEl.hidden && !lull.box.hidden) lullabyRequest({ action: 'status' });
});
chatBtn.addEventListener('click', () => toggleSheet(chatEl, chatBtn));
recBtn.addEventListener('click', () => { toggleSheet(recEl, recBtn); if (!recEl.hidden) loadRecordings(); });
// Recordings are files on the device's own web server: not reachable from a page hosted elsewhere.
if (REMOTE) recBtn.hidden = true;
updateTalkUi();

// ---- lifecycle -------------------------------------------------------------------------------

// Leaving the page frees the device's session at once instead of waiting for ICE to time out.
// We deliberately keep watching in background tabs: a parent listening to a baby monitor expects that.
addEventListener('pagehide', () => { stopped = true; generation++; clearTimeout(retryTimer); teardown(); });
addEventListener('pageshow', (e) => { if (e.persisted) connect(); });   // restored from the back/forward cache
addEventListener('online', () => { if (peercam.state === 'reconnecting' || peercam.state === 'error') connect(); });

if (REMOTE) peercam.remote = { device: REMOTE.device, server: REMOTE.peer && `${REMOTE.peer.host}:${REMOTE.peer.port}${REMOTE.peer.path}` };
connect();
