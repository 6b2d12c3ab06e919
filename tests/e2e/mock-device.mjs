// A stand-in device built from a headless Chromium page: it serves web/, answers WHEP with H.264 + Opus
// and reports /api/settings, drawing the same test pattern timestamp code as the real testsrc.
// Uses: developing the page and these tests without the Rust build (PEERCAM_MOCK=1 ./run.sh), and a
// Chromium→Chromium reference point for latency. It is NOT the device: Chromium encodes once per viewer,
// and "encoded_frames" here counts drawn frames.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, ROOT } from './lib.mjs';

const TYPES = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };

// Runs in the device page. Draws the pattern on a canvas, makes a beeping tone, answers offers.
function devicePage({ width: W, height: H, fps }) {
  const canvas = Object.assign(document.createElement('canvas'), { width: W, height: H });
  const ctx = canvas.getContext('2d');
  const b = Math.max(8, Math.floor(W / 40));
  window.drawn = 0;
  setInterval(() => {
    const now = Date.now();
    ctx.fillStyle = '#1d2b3a'; ctx.fillRect(0, 0, W, H);
    ctx.fillStyle = '#d08a3c'; ctx.fillRect((now / 4) % W, H / 2 - 60, 120, 120);   // moving, so it encodes
    ctx.fillStyle = '#eee'; ctx.font = `${Math.round(H / 14)}px sans-serif`;
    ctx.fillText(`MOCK ${new Date(now).toISOString()}`, b, H - b);
    const code = now % 2 ** 32;
    for (let i = 0; i < 34; i++) {
      const bit = i === 0 ? 1 : i === 1 ? 0 : Math.floor(code / 2 ** (33 - i)) % 2;
      ctx.fillStyle = bit ? 'rgb(235,235,235)' : 'rgb(16,16,16)';
      ctx.fillRect(i * b, 0, b, b);
    }
    window.drawn++;
  }, 1000 / fps);
  const video = canvas.captureStream(fps).getVideoTracks()[0];
  video.contentHint = 'detail';   // keep 1280x720 (Chromium otherwise scales down while its bandwidth estimate ramps up)

  const ac = new AudioContext({ sampleRate: 48000 });
  const osc = ac.createOscillator(), gain = ac.createGain(), dest = ac.createMediaStreamDestination();
  osc.frequency.value = 440; gain.gain.value = 0;
  osc.connect(gain).connect(dest); osc.start();
  setInterval(() => {   // 200 ms beep every second
    const t = ac.currentTime;
    gain.gain.setValueAtTime(0.5, t); gain.gain.setValueAtTime(0, t + 0.2);
  }, 1000);
  const audio = dest.stream.getAudioTracks()[0];

  // Keep only H.264 constrained baseline (packetization-mode 1) and its RTX in the offer's video section,
  // as the device does. (setCodecPreferences on the answerer changes the answer, yet Chromium then sends VP8.)
  function onlyH264(sdp) {
    const [head, ...sections] = sdp.split(/\r\n(?=m=)/);
    return [head, ...sections.map((sec) => {
      if (!sec.startsWith('m=video')) return sec;
      const lines = sec.split('\r\n');
      const fmtp = (pt) => lines.find((l) => l.startsWith(`a=fmtp:${pt} `)) || '';
      const keep = new Set();
      for (const l of lines) {
        const m = /^a=rtpmap:(\d+) H264\//.exec(l);
        if (m && /profile-level-id=42e01f/i.test(fmtp(m[1])) && /packetization-mode=1/.test(fmtp(m[1]))) keep.add(m[1]);
      }
      for (const l of lines) {
        const m = /^a=fmtp:(\d+) apt=(\d+)/.exec(l);
        if (m && keep.has(m[2])) keep.add(m[1]);
      }
      return lines.filter((l) => {
        const m = /^a=(?:rtpmap|fmtp|rtcp-fb):(\d+)/.exec(l);
        return !m || keep.has(m[1]);
      }).map((l) => (l.startsWith('m=video') ? l.split(' ').slice(0, 3).concat([...keep]).join(' ') : l)).join('\r\n');
    })].join('\r\n');
  }

  const pcs = new Map();
  let next = 0;
  window.viewers = () => pcs.size;
  window.answer = async (offer) => {
    // A getUserMedia grant lifts mDNS obfuscation of our host candidates: the viewer must reach 127.0.0.1.
    if (!window.granted) { (await navigator.mediaDevices.getUserMedia({ audio: true })).getTracks().forEach((t) => t.stop()); window.granted = true; }
    const pc = new RTCPeerConnection();
    await pc.setRemoteDescription({ type: 'offer', sdp: onlyH264(offer) });
    for (const tr of pc.getTransceivers()) {
      const kind = tr.receiver.track.kind;
      tr.direction = 'sendonly';
      await tr.sender.replaceTrack(kind === 'video' ? video : audio);
    }
    await pc.setLocalDescription();
    await new Promise((r) => { if (pc.iceGatheringState === 'complete') r(); pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && r(); });
    const id = String(++next);
    pcs.set(id, pc);
    pc.onconnectionstatechange = () => { if (['failed', 'closed'].includes(pc.connectionState)) pcs.delete(id); };
    return { id, sdp: pc.localDescription.sdp };
  };
  window.hangup = (id) => { const pc = pcs.get(id); if (!pc) return false; pc.close(); pcs.delete(id); return true; };
}

export async function startMockDevice(config) {
  const [host, port] = config.http.listen.split(':');
  const browser = await chromium.launch({
    executablePath: CHROMIUM, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--allow-loopback-in-peer-connection', '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream', '--autoplay-policy=no-user-gesture-required'],
  });
  let device = null, stopped = false;
  const server = createServer(async (req, res) => {
    const send = (status, body, type = 'text/plain; charset=utf-8', headers = {}) => {
      res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store', ...headers }); res.end(body);
    };
    try {
      const path = new URL(req.url, 'http://x').pathname;
      if (req.method === 'GET' && path === '/__device') return send(200, '<!doctype html><title>device</title>', TYPES.html);
      if (req.method === 'GET' && /^\/(index\.html|app\.js|style\.css)?$/.test(path)) {
        const file = path === '/' ? 'index.html' : path.slice(1);
        return send(200, await readFile(join(ROOT, 'web', file)), TYPES[file.split('.').pop()]);
      }
      if (req.method === 'POST' && path === '/whep') {
        if (!String(req.headers['content-type']).startsWith('application/sdp')) return send(415, 'expected Content-Type: application/sdp');
        let body = '';
        for await (const chunk of req) body += chunk;
        const { id, sdp } = await device.evaluate((offer) => window.answer(offer), body);
        return send(201, sdp, 'application/sdp', { Location: `/whep/${id}` });
      }
      const m = /^\/whep\/([^/]+)$/.exec(path);
      if (req.method === 'DELETE' && m) {
        return (await device.evaluate((id) => window.hangup(id), m[1])) ? send(200, '') : send(404, 'no such session');
      }
      if (req.method === 'GET' && path === '/api/settings') {
        const { drawn, viewers } = await device.evaluate(() => ({ drawn: window.drawn, viewers: window.viewers() }));
        const v = config.video;
        return send(200, JSON.stringify({
          video: { source: 'mock', codec: 'H264', width: v.width, height: v.height, fps: v.fps, bitrate_kbps: v.bitrate_kbps, encoded_frames: drawn, encoders_started: 1 },
          audio: { source: 'mock', codec: 'opus', sample_rate: 48000, encoded_frames: 0 },
          viewers,
        }), 'application/json');
      }
      send(404, 'not found');
    } catch (err) {
      send(500, String(err?.message || err));
    }
  });
  await new Promise((r) => server.listen(Number(port), host, r));
  const url = `http://${host}:${port}/`;
  device = await browser.newPage();
  await device.goto(`${url}__device`);
  await device.evaluate(devicePage, config.video);
  console.log(`     mock device listening on ${url}`);
  return {
    url, logPath: null,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      server.closeAllConnections(); server.close(); await browser.close();
    },
  };
}
