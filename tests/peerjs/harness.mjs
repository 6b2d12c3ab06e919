// Helpers shared by the PeerJS tests: a page from the device with the real PeerJS client loaded
// (the demo page, which loads /vendor/peerjs.min.js), and an in-page harness around `Peer` that
// records what PeerJS reports, so tests can wait for events and read them back.
import { evaluate, openViewer, sleep } from '../e2e/lib.mjs';

// Opens /peerjs-demo in its own browser context and installs window.T.
export async function peerPage(browser, url, { path = 'peerjs-demo' } = {}) {
  const v = await openViewer(browser, url + path, { viewport: { width: 1000, height: 800 } });
  await v.page.waitForFunction(() => typeof window.Peer === 'function', null, { timeout: 10000 });
  await evaluate(v.page, installHarness);
  return v;
}

function installHarness() {
  const T = window.T = { peers: {} };
  T.options = (extra = {}) => ({
    host: location.hostname, port: Number(location.port), path: '/peerjs', secure: false, key: 'peerjs',
    debug: 1, ...extra,
  });
  // Creates a Peer and resolves on `open` ({id}) or the first `error` ({error: type, message}).
  T.create = (name, id, extra) => new Promise((resolve) => {
    const peer = id ? new Peer(id, T.options(extra)) : new Peer(T.options(extra));
    const rec = T.peers[name] = { peer, errors: [], data: [], conns: [], calls: [], streams: [], closed: false };
    peer.on('error', (e) => { rec.errors.push({ type: e.type, message: e.message, at: performance.now() }); resolve({ error: e.type, message: e.message }); });
    peer.on('open', (got) => resolve({ id: got }));
    peer.on('close', () => { rec.closed = true; });
    peer.on('connection', (c) => { rec.conns.push(c); c.on('data', (d) => rec.data.push(d)); });
    peer.on('call', (call) => rec.calls.push(call));
    setTimeout(() => resolve({ timeout: true }), 10000);
  });
  // Counts rendered frames of a stream for `ms`.
  T.render = async (stream, ms) => {
    const v = document.createElement('video');
    v.muted = true; v.playsInline = true; v.srcObject = stream;
    document.body.append(v);
    await v.play().catch(() => {});
    let frames = 0;
    const on = () => { frames++; v.requestVideoFrameCallback(on); };
    v.requestVideoFrameCallback(on);
    await new Promise((r) => setTimeout(r, ms));
    return { frames, width: v.videoWidth, height: v.videoHeight, tracks: stream.getTracks().map((t) => t.kind) };
  };
  // The fake camera + mic (also lifts Chromium's mDNS hiding of host candidates, which a
  // loopback-only namespace could not resolve).
  T.media = async () => (T.stream ??= await navigator.mediaDevices.getUserMedia({ video: true, audio: true }));
}

// Waits until fn(page state) is truthy; returns its value or throws after timeoutMs.
export async function until(page, fn, arg, { timeoutMs = 10000, what = 'condition' } = {}) {
  const t0 = Date.now();
  for (;;) {
    const v = await evaluate(page, fn, arg);
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

// A TOML value written as is (lib.mjs quotes strings and knows no arrays).
export const rawToml = (text) => ({ toString: () => text });
