// A small WHIP front end (RFC 9725) for Janus' VideoRoom, written with janode — the SFU side of
// tests/whip, and the config docs/many-viewers.md describes. Runs next to Janus (here: in the
// test's "sfu" network namespace) and talks to it over its WebSocket API.
//
//   node whip-janus.mjs --listen 0.0.0.0:7080 --janus ws://127.0.0.1:8188 --token SECRET --room 7077
//
// WHIP (the device):
//   POST   /whip/endpoint/<room>   Content-Type: application/sdp, Authorization: Bearer <token>
//          → joins the room as a publisher with the offer (joinConfigurePublisher)
//          → 201, Location: /whip/resource/<uuid> (relative, as RFC 9725 allows), the SDP answer
//          401 wrong/missing token, 415 not application/sdp, 503 Janus not reachable, 400 Janus refused
//   PATCH  /whip/resource/<uuid>   ICE restart (RFC 9725 §4.4.1): Content-Type application/trickle-ice-sdpfrag,
//          If-Match: "*", new ice-ufrag/ice-pwd and candidates → the publisher's stored offer with those
//          credentials and candidates goes to Janus again (configure with a jsep offer: Janus restarts
//          ICE on the same PeerConnection, the feed and its subscribers stay) → 200, the answer's ICE
//          fragment, ETag. Same credentials: the candidates are trickled → 204. 404 unknown, 412 a
//          restart without If-Match "*", 415 not a fragment.
//   DELETE /whip/resource/<uuid>   → unpublish + detach (200), 404 unknown
// Viewers (the test's Chromium page; not part of WHIP):
//   GET  /view                     a page that subscribes to the room's publisher and plays it
//   POST /sub                      → {id, sdp}: Janus' offer for the newest publisher (joinSubscriber)
//   POST /sub/<id>                 body = the viewer's SDP answer → start
//   GET  /state                    {"janus": bool, "publishers": n, "whip": [uuid…]} (for the test)
//
// Janus is connected lazily: when it is down every request gets 503, and the next request after it
// is back reconnects and creates the room again (Janus keeps rooms in memory). Logs one line per
// request to stdout (never the token).
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import Janode from 'janode';
import VideoRoomPlugin from 'janode/plugins/videoroom';

const arg = (name, dflt) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : dflt; };
const [HOST, PORT] = arg('listen', '0.0.0.0:7080').split(':');
const JANUS = arg('janus', 'ws://127.0.0.1:8188');
const TOKEN = arg('token', process.env.WHIP_TOKEN || '');
const ROOM = Number(arg('room', '7077'));
const MAX_BODY = 64 * 1024;
Janode.Logger.setLevel('warning');

const log = (msg) => console.log(`${new Date().toISOString()} whip-janus: ${msg}`);
let janus = null;          // { connection, session, rooms: handle }
let connecting = null;
const resources = new Map();   // uuid -> { handle, feed }
const subscribers = new Map(); // id -> handle

async function ensureJanus() {
  if (janus) return janus;
  if (connecting) return connecting;
  connecting = (async () => {
    const connection = await Janode.connect({ is_admin: false, address: { url: JANUS }, max_retries: 1, retry_time_secs: 1 });
    const forget = (why) => () => {
      if (janus?.connection !== connection) return;
      log(`lost Janus (${why}); ${resources.size} publishers and ${subscribers.size} subscribers gone with it`);
      janus = null; resources.clear(); subscribers.clear();
    };
    connection.once(Janode.EVENT.CONNECTION_CLOSED, forget('closed'));
    connection.once(Janode.EVENT.CONNECTION_ERROR, forget('error'));
    const session = await connection.create();
    const admin = await session.attach(VideoRoomPlugin);
    // The room the device publishes to: H.264 + Opus (what peercam sends), a generous bitrate cap
    // (Janus sends it to the publisher as REMB), PLI to the publisher at most every 10 s by itself.
    const exists = await admin.exists({ room: ROOM });
    if (!exists.exists) {
      await admin.create({ room: ROOM, description: 'peercam', max_publishers: 4, permanent: false, videocodec: 'h264', audiocodec: 'opus', bitrate: 3_000_000, fir_freq: 10 });
    }
    log(`connected to Janus ${JANUS}, room ${ROOM} ready`);
    janus = { connection, session, admin };
    return janus;
  })().finally(() => { connecting = null; });
  return connecting;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = []; let size = 0;
    req.on('data', (c) => { size += c.length; if (size > MAX_BODY) { reject(new Error('body too large')); req.destroy(); } else chunks.push(c); });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const send = (res, status, body = '', headers = {}) => {
  res.writeHead(status, { 'Content-Type': 'text/plain', ...headers });
  res.end(body);
};

async function whipPost(req, res, room) {
  if (room !== ROOM) return send(res, 404, `no such endpoint (room ${room})\n`);
  const auth = req.headers.authorization || '';
  if (!TOKEN || auth !== `Bearer ${TOKEN}`) {
    log(`POST refused: ${auth ? 'wrong bearer token' : 'no bearer token'} → 401`);
    return send(res, 401, 'unauthorized\n', { 'WWW-Authenticate': 'Bearer realm="whip"' });
  }
  if (!/^application\/sdp\b/i.test(req.headers['content-type'] || '')) return send(res, 415, 'Content-Type must be application/sdp\n');
  const offer = await readBody(req);
  let j;
  try { j = await ensureJanus(); } catch (e) {
    log(`POST: Janus is not reachable (${e.message}) → 503`);
    return send(res, 503, 'the SFU is not available\n', { 'Retry-After': '1' });
  }
  const uuid = randomUUID();
  let handle;
  try {
    handle = await j.session.attach(VideoRoomPlugin);
    const r = await handle.joinConfigurePublisher({ room: ROOM, display: 'peercam', audio: true, video: true, jsep: { type: 'offer', sdp: offer } });
    resources.set(uuid, { handle, feed: r.feed, offer, ice: iceOf(offer) });
    handle.once(Janode.EVENT.HANDLE_HANGUP, () => { if (resources.delete(uuid)) log(`publisher ${uuid} hung up (Janus side)`); });
    log(`POST → 201: publisher ${uuid} is feed ${r.feed} in room ${ROOM}`);
    res.writeHead(201, { 'Content-Type': 'application/sdp', Location: `/whip/resource/${uuid}` });
    res.end(r.jsep.sdp);
  } catch (e) {
    log(`POST: Janus refused the offer: ${e.message} → 400`);
    handle?.detach().catch(() => {});
    send(res, 400, `the SFU refused the offer: ${e.message}\n`);
  }
}

// The ICE parts of an SDP or an RFC 8840 fragment: credentials (first wins) and candidate lines.
function iceOf(text) {
  const lines = text.split(/\r?\n/);
  const value = (p) => (lines.find((l) => l.startsWith(p)) || '').slice(p.length) || null;
  return { ufrag: value('a=ice-ufrag:'), pwd: value('a=ice-pwd:'), candidates: lines.filter((l) => l.startsWith('a=candidate:')) };
}

// `sdp` with other ICE credentials, its candidate lines replaced by `candidates` (in the first
// media section, the BUNDLE transport).
function withIce(sdp, { ufrag, pwd, candidates }) {
  const out = [];
  let sections = 0;
  for (const l of sdp.split(/\r?\n/).filter(Boolean)) {
    if (l.startsWith('m=') && ++sections === 2) out.push(...candidates, 'a=end-of-candidates');
    if (l.startsWith('a=candidate:') || l.startsWith('a=end-of-candidates')) continue;
    out.push(l.startsWith('a=ice-ufrag:') ? `a=ice-ufrag:${ufrag}` : l.startsWith('a=ice-pwd:') ? `a=ice-pwd:${pwd}` : l);
  }
  if (sections < 2) out.push(...candidates, 'a=end-of-candidates');
  return out.join('\r\n') + '\r\n';
}

// The fragment that answers a restart: Janus' new credentials, the BUNDLE group, the first media
// section's m= and mid, and its candidates.
function fragmentOf(sdp) {
  const lines = sdp.split(/\r?\n/);
  const first = lines.findIndex((l) => l.startsWith('m='));
  const next = lines.findIndex((l, i) => i > first && l.startsWith('m='));
  const section = lines.slice(first, next < 0 ? lines.length : next);
  const ice = iceOf(sdp);
  return [`a=ice-ufrag:${ice.ufrag}`, `a=ice-pwd:${ice.pwd}`, ...lines.filter((l) => l.startsWith('a=group:BUNDLE')),
    section[0], ...section.filter((l) => l.startsWith('a=mid:')), ...section.filter((l) => l.startsWith('a=candidate:')),
    'a=end-of-candidates'].join('\r\n') + '\r\n';
}

async function whipPatch(req, res, uuid) {
  if (!TOKEN || req.headers.authorization !== `Bearer ${TOKEN}`) return send(res, 401, 'unauthorized\n');
  const r = resources.get(uuid);
  if (!r) { log(`PATCH ${uuid} → 404`); return send(res, 404, 'no such resource\n'); }
  if (!/^application\/trickle-ice-sdpfrag\b/i.test(req.headers['content-type'] || '')) return send(res, 415, 'Content-Type must be application/trickle-ice-sdpfrag\n');
  const frag = iceOf(await readBody(req));
  if (!frag.ufrag || !frag.pwd) return send(res, 400, 'no a=ice-ufrag / a=ice-pwd\n');
  if (frag.ufrag === r.ice.ufrag && frag.pwd === r.ice.pwd) {
    for (const c of frag.candidates) await r.handle.trickle({ sdpMLineIndex: 0, candidate: c.slice(2) }).catch(() => {});
    log(`PATCH ${uuid} → 204 (${frag.candidates.length} candidates trickled)`);
    return send(res, 204);
  }
  if (req.headers['if-match'] !== '"*"') return send(res, 412, 'an ICE restart needs If-Match: "*"\n');
  const offer = withIce(r.offer, frag);
  let answer;
  try {
    answer = (await r.handle.configure({ jsep: { type: 'offer', sdp: offer } })).jsep?.sdp;
  } catch (e) {
    log(`PATCH ${uuid}: Janus refused the restart offer: ${e.message} → 400`);
    return send(res, 400, `the SFU refused the ICE restart: ${e.message}\n`);
  }
  if (!answer) { log(`PATCH ${uuid}: Janus sent no answer → 500`); return send(res, 500, 'no answer from the SFU\n'); }
  Object.assign(r, { offer, ice: frag, etag: randomUUID() });
  log(`PATCH ${uuid} → 200: ICE restart, feed ${r.feed} kept (${frag.candidates.length} candidates from the device, ${iceOf(answer).candidates.length} from Janus)`);
  res.writeHead(200, { 'Content-Type': 'application/trickle-ice-sdpfrag', ETag: `"${r.etag}"` });
  res.end(fragmentOf(answer));
}

async function whipDelete(req, res, uuid) {
  if (!TOKEN || req.headers.authorization !== `Bearer ${TOKEN}`) return send(res, 401, 'unauthorized\n');
  const r = resources.get(uuid);
  if (!r) { log(`DELETE ${uuid} → 404`); return send(res, 404, 'no such resource\n'); }
  resources.delete(uuid);
  await r.handle.unpublish().catch(() => {});
  await r.handle.detach().catch(() => {});
  log(`DELETE ${uuid} → 200 (unpublished)`);
  send(res, 200);
}

async function subscribe(res) {
  let j;
  try { j = await ensureJanus(); } catch (e) { return send(res, 503, `the SFU is not available: ${e.message}\n`); }
  const list = await j.admin.listParticipants({ room: ROOM });
  const pub = (list.participants || []).filter((p) => p.publisher).pop();
  if (!pub) return send(res, 404, 'nobody publishes in the room\n');
  const handle = await j.session.attach(VideoRoomPlugin);
  const r = await handle.joinSubscriber({ room: ROOM, streams: [{ feed: pub.feed ?? pub.id }] });
  const id = randomUUID();
  subscribers.set(id, handle);
  log(`subscriber ${id} for feed ${pub.feed ?? pub.id}`);
  send(res, 200, JSON.stringify({ id, sdp: r.jsep.sdp }), { 'Content-Type': 'application/json' });
}

async function startSubscriber(req, res, id) {
  const handle = subscribers.get(id);
  if (!handle) return send(res, 404, 'no such subscriber\n');
  const sdp = await readBody(req);
  await handle.start({ jsep: { type: 'answer', sdp } });
  send(res, 200, 'started\n');
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>SFU viewer</title>
<video id="video" muted playsinline autoplay style="width:640px"></video>
<script>
// Subscribes through the front end (Janus offers, the page answers), as an SFU's own page would.
window.subscribe = async () => {
  const r = await fetch('/sub', { method: 'POST' });
  if (!r.ok) throw new Error('subscribe: ' + r.status + ' ' + await r.text());
  const { id, sdp } = await r.json();
  const pc = window.pc = new RTCPeerConnection();
  const stream = new MediaStream();
  pc.ontrack = (e) => { stream.addTrack(e.track); const v = document.getElementById('video'); v.srcObject = stream; v.play().catch(() => {}); };
  await pc.setRemoteDescription({ type: 'offer', sdp });
  await pc.setLocalDescription(await pc.createAnswer());
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((res) => { pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res(); setTimeout(res, 3000); });
  }
  const s = await fetch('/sub/' + id, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  if (!s.ok) throw new Error('start: ' + s.status);
  return id;
};
</script>`;

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://x');
    let m;
    if (req.method === 'POST' && (m = /^\/whip\/endpoint\/(\d+)$/.exec(url.pathname))) return await whipPost(req, res, Number(m[1]));
    if (req.method === 'DELETE' && (m = /^\/whip\/resource\/([0-9a-f-]{36})$/.exec(url.pathname))) return await whipDelete(req, res, m[1]);
    if (req.method === 'PATCH' && (m = /^\/whip\/resource\/([0-9a-f-]{36})$/.exec(url.pathname))) {
      if (process.env.WHIP_NO_PATCH) return send(res, 405, 'no trickle / ICE restart here\n', { Allow: 'DELETE' });
      return await whipPatch(req, res, m[1]);
    }
    if (req.method === 'GET' && url.pathname === '/view') { res.writeHead(200, { 'Content-Type': 'text/html' }); return res.end(PAGE); }
    if (req.method === 'POST' && url.pathname === '/sub') return await subscribe(res);
    if (req.method === 'POST' && (m = /^\/sub\/([0-9a-f-]{36})$/.exec(url.pathname))) return await startSubscriber(req, res, m[1]);
    if (req.method === 'GET' && url.pathname === '/state') {
      let publishers = 0;
      try { if (janus) publishers = ((await janus.admin.listParticipants({ room: ROOM })).participants || []).filter((p) => p.publisher).length; } catch { /* down */ }
      return send(res, 200, JSON.stringify({ janus: !!janus, publishers, whip: [...resources.keys()] }), { 'Content-Type': 'application/json' });
    }
    send(res, 404, 'not found\n');
  } catch (e) {
    log(`${req.method} ${req.url}: ${e.message} → 500`);
    if (!res.headersSent) send(res, 500, `${e.message}\n`);
  }
});
server.listen(Number(PORT), HOST, () => log(`listening on http://${HOST}:${PORT} (Janus ${JANUS}, room ${ROOM})`));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { server.close(); process.exit(0); });
