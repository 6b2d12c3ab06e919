// The PeerJS demo: choose an ID, call or chat with another ID, accept or reject what comes in.
// Plain PeerJS API (Peer, peer.call, peer.connect and their events) against the device's own
// PeerServer at path /peerjs. window.demo exposes the state for tests.
'use strict';

const $ = (id) => document.getElementById(id);
const demo = window.demo = {
  peer: null, call: null, conn: null, localStream: null, deviceId: 'peercam',
  errors: [], received: [], log: [],
};

function log(text, cls = 'sys') {
  demo.log.push({ cls, text });
  const line = document.createElement('div');
  line.className = cls;
  line.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $('log').append(line);
  $('log').scrollTop = $('log').scrollHeight;
}

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

// Where the device's PeerServer is: this page's own host and port, path "/peerjs" next to this
// page (relative, so the page also works under a reverse proxy's sub-path). `?key=` on this page's
// URL sets the PeerJS key: a bearer token works there for scripts without a login.
function peerOptions() {
  const secure = location.protocol === 'https:';
  return {
    host: location.hostname,
    port: Number(location.port) || (secure ? 443 : 80),
    path: new URL('peerjs', location.href).pathname,
    secure,
    key: new URLSearchParams(location.search).get('key') || 'peerjs',
    debug: 1,
  };
}

function enable(open) {
  for (const id of ['call', 'connect', 'call-camera']) $(id).disabled = !open;
  $('start').disabled = open;
  $('stop').disabled = !open;
  $('my-id').disabled = open;
}

function start() {
  if (typeof window.Peer !== 'function') {
    const why = window.PEERJS_MISSING || 'the PeerJS library (vendor/peerjs.min.js) did not load';
    setStatus('error', why);
    log(why, 'err');
    return;
  }
  const id = $('my-id').value.trim() || undefined;   // none: the server picks a random one
  setStatus('connecting', 'connecting…');
  const peer = demo.peer = new Peer(id, peerOptions());
  peer.on('open', (myId) => {
    $('my-id').value = myId;
    setStatus('open', `connected as “${myId}”`);
    log(`connected to the camera's PeerServer as “${myId}”`);
    enable(true);
  });
  peer.on('call', (call) => ask(`${call.peer} is calling you (video)`, async () => {
    call.answer(await localMedia());
    useCall(call);
  }, () => call.close()));
  peer.on('connection', (conn) => {
    // Messages may arrive before the user decides: keep them until then.
    const early = [];
    const keep = (d) => early.push(d);
    conn.on('data', keep);
    ask(`${conn.peer} wants to chat`, () => {
      conn.off('data', keep);
      useConn(conn);
      early.forEach((d) => received(conn, d));
    }, () => conn.close());
  });
  peer.on('disconnected', () => { setStatus('idle', 'disconnected from the server'); log('disconnected from the server'); });
  peer.on('close', () => { setStatus('idle', 'not connected'); enable(false); });
  peer.on('error', (err) => {
    demo.errors.push(err.type);
    log(`error (${err.type}): ${err.message}`, 'err');
    if (!peer.open) setStatus('error', `${err.type}: ${err.message}`);
  });
}

// An incoming call or chat: Accept / Reject buttons.
function ask(text, accept, reject) {
  const box = document.createElement('div');
  box.className = 'prompt';
  box.textContent = `${text} `;
  const button = (label, fn) => {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = label;
    b.onclick = () => { box.remove(); fn(); };
    box.append(b);
  };
  button('Accept', accept);
  button('Reject', () => { log(`rejected: ${text}`); reject(); });
  $('prompts').append(box);
  log(text);
}

async function localMedia() {
  if (demo.localStream) return demo.localStream;
  try {
    demo.localStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  } catch (e) {
    log(`no camera/microphone (${e.name}): sending silence`, 'err');
    demo.localStream = silence();
  }
  $('local-video').srcObject = demo.localStream;
  return demo.localStream;
}

// PeerJS needs a stream to call with; this one carries a silent audio track.
function silence() {
  const ctx = new AudioContext();
  return ctx.createMediaStreamDestination().stream;
}

function useCall(call) {
  if (demo.call && demo.call !== call) demo.call.close();
  demo.call = call;
  $('hangup').disabled = false;
  call.on('stream', (stream) => {
    if ($('remote-video').srcObject === stream) return;   // PeerJS fires this once per track
    $('remote-video').srcObject = stream;
    $('remote-label').textContent = `Remote: ${call.peer}`;
    log(`receiving ${stream.getTracks().map((t) => t.kind).join(' + ')} from ${call.peer}`);
  });
  call.on('close', () => {
    log(`call with ${call.peer} ended`);
    if (demo.call === call) { demo.call = null; $('remote-video').srcObject = null; }
  });
  call.on('error', (e) => log(`call error: ${e.message || e}`, 'err'));
}

function useConn(conn) {
  if (demo.conn && demo.conn !== conn) demo.conn.close();
  demo.conn = conn;
  $('hangup').disabled = false;
  const ready = () => {
    $('message').disabled = false;
    $('send').disabled = false;
    log(`chat with ${conn.peer} is open`);
  };
  if (conn.open) ready(); else conn.on('open', ready);
  conn.on('data', (d) => received(conn, d));
  conn.on('close', () => {
    log(`chat with ${conn.peer} closed`);
    if (demo.conn === conn) { demo.conn = null; $('message').disabled = true; $('send').disabled = true; }
  });
  conn.on('error', (e) => log(`chat error: ${e.message || e}`, 'err'));
}

function received(conn, data) {
  demo.received.push({ from: conn.peer, data });
  let text;
  if (typeof data === 'string') text = data;
  else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) text = `[${data.byteLength} bytes]`;
  else text = JSON.stringify(data);
  log(`${conn.peer}: ${text}`, 'in');
}

function target() {
  const id = $('peer-id').value.trim();
  if (!id) log('type the other peer’s ID first', 'err');
  return id;
}

$('start').onclick = start;
$('my-id').onkeydown = (e) => { if (e.key === 'Enter') start(); };
$('stop').onclick = () => { demo.peer?.destroy(); };
$('call').onclick = async () => {
  const id = target();
  if (id) useCall(demo.peer.call(id, await localMedia()));
};
$('connect').onclick = () => {
  const id = target();
  if (id) useConn(demo.peer.connect(id));
};
$('call-camera').onclick = async () => {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    log('calling the camera with your microphone (talk-back)');
  } catch (e) {
    stream = silence();
    log(`calling the camera without a microphone (${e.name}): watch only`);
  }
  // A mic-only (or silent) stream offers no video: ask for the camera's video (and audio) anyway.
  useCall(demo.peer.call(demo.deviceId, stream, {
    constraints: { offerToReceiveVideo: true, offerToReceiveAudio: true },
  }));
};
$('hangup').onclick = () => {
  demo.call?.close();
  demo.conn?.close();
  $('hangup').disabled = true;
};
$('chat').onsubmit = (e) => {
  e.preventDefault();
  const text = $('message').value;
  if (!text || !demo.conn?.open) return;
  demo.conn.send(text);
  log(`me: ${text}`, 'out');
  $('message').value = '';
};

// The camera's own peer ID, from the server's banner.
fetch('peerjs').then((r) => r.json()).then((info) => {
  if (info.device_id) { demo.deviceId = info.device_id; $('device-id').textContent = info.device_id; }
}).catch(() => { /* keep the default */ });
