// Code that runs inside the Chromium pages of the link rig (each function is passed to page.evaluate,
// so it must be self-contained).
//
// Timestamp code (DESIGN.md; same decoder as tests/e2e/lib.mjs and bench/page.mjs): row 0 of the
// picture, block size b = max(8, floor(width / 40)) from the *current* frame width (the picture may
// get smaller on a poor link), 34 blocks: block 0 white, block 1 black (reference levels), blocks
// 2..33 = bits 31..0 of (Unix ms at capture) mod 2^32. Latency = Date.now() at render − code; the
// sender and the viewers run on this one machine, so they share the clock.

// The receiver probe, for the peercam page (`mode` 'peercam': <video id=video>, window.peercam.pc) or
// the Chromium→Chromium receiver page ('c2c': <video id=v>, window.rx). It records
//   frames: [wall ms, latency ms | null (no readable code), width, height, presentedFrames, steady ms]
//           for every requestVideoFrameCallback (presentedFrames counts frames a late callback skipped;
//           steady: performance.now(), which a wall-clock step does not move — links.mjs, the rig's clock)
//   stats:  one getStats() digest per second (inbound-rtp video + audio, candidate pair, transport)
export function installCollector(mode) {
  if (window.__links) return;
  const video = document.getElementById(mode === 'peercam' ? 'video' : 'v');
  const pcOf = () => (mode === 'peercam' ? window.peercam?.pc : window.rx);
  const genOf = () => (mode === 'peercam' ? window.peercam?.attempts ?? 0 : 1);
  const M = 2 ** 32;
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const L = window.__links = { frames: [], stats: [], bad: 0, errors: [] };

  const read = (width) => {
    const b = Math.max(8, Math.floor(width / 40));
    if (canvas.width !== 34 * b || canvas.height !== b) { canvas.width = 34 * b; canvas.height = b; }
    ctx.drawImage(video, 0, 0, 34 * b, b, 0, 0, 34 * b, b);
    const px = ctx.getImageData(0, 0, 34 * b, b).data;
    const luma = (i) => {   // mean luma of the central third of block i (robust to ringing at edges)
      let sum = 0, n = 0;
      const lo = Math.floor(b / 3), hi = Math.ceil((2 * b) / 3);
      for (let y = lo; y < hi; y++) {
        for (let x = i * b + lo; x < i * b + hi; x++) {
          const o = (y * 34 * b + x) * 4;
          sum += 0.299 * px[o] + 0.587 * px[o + 1] + 0.114 * px[o + 2]; n++;
        }
      }
      return sum / n;
    };
    const white = luma(0), black = luma(1);
    if (white - black < 64) return null;
    const threshold = (white + black) / 2;
    let code = 0;
    for (let i = 2; i < 34; i++) code = code * 2 + (luma(i) > threshold ? 1 : 0);   // * 2: stays unsigned
    return code;
  };

  const onFrame = (_now, meta) => {
    const wall = Date.now();
    video.requestVideoFrameCallback(onFrame);
    let latency = null;
    try {
      const code = read(meta.width);
      if (code == null) L.bad++;
      else {
        latency = (wall % M) - code;
        if (latency > M / 2) latency -= M; else if (latency < -M / 2) latency += M;
      }
    } catch (e) { L.bad++; if (L.errors.length < 5) L.errors.push(String(e)); }
    L.frames.push([wall, latency, meta.width, meta.height, meta.presentedFrames, performance.now()]);
  };
  video.requestVideoFrameCallback(onFrame);

  const pick = (s, keys) => Object.fromEntries(keys.filter((k) => s[k] !== undefined).map((k) => [k, s[k]]));
  const VIDEO = ['framesDecoded', 'framesReceived', 'framesDropped', 'framesPerSecond', 'freezeCount', 'totalFreezesDuration',
    'pauseCount', 'totalPausesDuration', 'packetsLost', 'packetsReceived', 'bytesReceived', 'headerBytesReceived',
    'frameWidth', 'frameHeight', 'jitterBufferDelay', 'jitterBufferEmittedCount', 'jitterBufferTargetDelay', 'nackCount',
    'pliCount', 'firCount', 'keyFramesDecoded', 'jitter', 'retransmittedPacketsReceived'];
  const AUDIO = ['packetsLost', 'packetsReceived', 'bytesReceived', 'headerBytesReceived', 'concealedSamples', 'totalSamplesReceived'];
  const sample = async () => {
    const pc = pcOf();
    const out = { t: Date.now(), steady: performance.now(), gen: genOf(), state: pc?.connectionState ?? 'none' };
    if (pc) {
      try {
        const st = await pc.getStats();
        let transport = null;
        st.forEach((s) => {
          if (s.type === 'inbound-rtp' && s.kind === 'video') out.v = pick(s, VIDEO);
          if (s.type === 'inbound-rtp' && s.kind === 'audio') out.a = pick(s, AUDIO);
          if (s.type === 'transport') transport = s;
        });
        if (transport) {
          out.transportBytesReceived = transport.bytesReceived;
          const pair = st.get(transport.selectedCandidatePairId);
          if (pair) out.pair = pick(pair, ['currentRoundTripTime', 'availableIncomingBitrate', 'bytesReceived', 'state']);
        }
      } catch (e) { out.error = String(e); }
    }
    L.stats.push(out);
  };
  sample();
  setInterval(sample, 1000);
}

// Everything recorded so far (frames since index `from`, so long runs can be read in pieces).
export function readCollector(from) {
  const L = window.__links;
  if (!L) return null;
  return { frames: L.frames.slice(from.frames), stats: L.stats.slice(from.stats), bad: L.bad, errors: L.errors };
}

// ---- Chromium → Chromium reference ----------------------------------------------------------------

// The sender page (device namespace): a 1280x720 canvas at 30 fps with moving content, a clock and the
// timestamp code (Date.now() when drawn), captureStream(30), plus a beeping Web Audio tone in its own
// stream (the page's sync=0 mode: audio and video not lip-synced). window.S.answer(offer) makes one
// sending RTCPeerConnection per receiver (H.264 as the receiver prefers, maxBitrate = the device's
// configured 2500 kbit/s) and returns its answer, after complete ICE gathering.
export function installSender({ width, height, fps, maxBitrateKbps, noisePercent = 0 }) {
  if (window.S) return;
  const M = 2 ** 32;
  document.body.style.cssText = 'margin:0;background:#222';
  const canvas = document.createElement('canvas');
  canvas.width = width; canvas.height = height;
  canvas.style.cssText = 'width:640px;height:360px;display:block';
  document.body.append(canvas);
  const ctx = canvas.getContext('2d');
  const b = Math.max(8, Math.floor(width / 40));
  let n = 0, last = -1e9;
  // The same sensor-like noise band as peercam's test pattern (test_pattern_noise_percent):
  // low-amplitude grey noise over the bottom of the picture, different every frame.
  const bandH = Math.floor((height * noisePercent) / 100);
  const noise = [];
  for (let k = 0; bandH > 0 && k < 6; k++) {
    const c = document.createElement('canvas'); c.width = width; c.height = bandH;
    const cx = c.getContext('2d'), img = cx.createImageData(width, bandH);
    for (let i = 0; i < img.data.length; i += 4) {
      const v = Math.random() < 0.5 ? 0 : 255;
      img.data[i] = img.data[i + 1] = img.data[i + 2] = v; img.data[i + 3] = 16;   // ±~8 % of range
    }
    cx.putImageData(img, 0, 0); noise.push(c);
  }
  const draw = (ts) => {
    requestAnimationFrame(draw);
    if (ts - last < 1000 / fps - 4) return;   // rAF runs at the display rate: keep `fps`
    last = ts;
    const code = Date.now() % M;
    const g = ctx.createLinearGradient((n * 8) % width, 0, ((n * 8) % width) + width, height);
    g.addColorStop(0, '#305080'); g.addColorStop(0.5, '#a06030'); g.addColorStop(1, '#305080');
    ctx.fillStyle = g; ctx.fillRect(0, 0, width, height);
    for (let i = 0; i < 8; i++) {   // colour bars, like the test pattern
      ctx.fillStyle = ['#c0c0c0', '#c0c000', '#00c0c0', '#00c000', '#c000c0', '#c00000', '#0000c0', '#101010'][i];
      ctx.fillRect((i * width) / 8, height - 160, width / 8, 120);
    }
    ctx.fillStyle = '#e0e040'; ctx.fillRect((n * 12) % (width - 160), 200 + ((n * 5) % 300), 160, 160);
    ctx.fillStyle = '#fff'; ctx.font = '64px monospace'; ctx.fillText(new Date().toISOString().slice(11, 23), 80, 140);
    if (noise.length) {   // a random one of the noise tiles, at a random offset: new noise each frame
      const dx = Math.floor(Math.random() * 64) - 64;
      ctx.drawImage(noise[n % noise.length], dx, height - bandH);
      ctx.drawImage(noise[(n + 3) % noise.length], dx + width, height - bandH);
    }
    for (let i = 0; i < 34; i++) {
      const bit = i === 0 ? 1 : i === 1 ? 0 : Math.floor(code / 2 ** (33 - i)) % 2;
      ctx.fillStyle = bit ? '#fff' : '#000';
      ctx.fillRect(i * b, 0, b, b);
    }
    n++;
  };
  requestAnimationFrame(draw);
  const stream = canvas.captureStream(fps);
  let audioStream = null;
  try {
    const ac = new AudioContext({ sampleRate: 48000 });
    const osc = ac.createOscillator(), gain = ac.createGain(), dst = ac.createMediaStreamDestination();
    osc.frequency.value = 440; gain.gain.value = 0;
    osc.connect(gain).connect(dst); osc.start();
    const beep = () => {
      const t = ac.currentTime + (1000 - (Date.now() % 1000)) / 1000;
      gain.gain.setValueAtTime(0.25, t); gain.gain.setValueAtTime(0, t + 0.2);
    };
    beep(); setInterval(beep, 1000);
    ac.resume();
    audioStream = dst.stream;
  } catch { /* no Web Audio: video only */ }

  const gathered = (pc) => new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    const timer = setTimeout(resolve, 3000);
    pc.addEventListener('icegatheringstatechange', () => { if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); } });
  });
  const S = window.S = { pcs: {}, stats: [], audio: !!audioStream };
  S.answer = async (id, offer) => {
    const pc = new RTCPeerConnection();
    S.pcs[id] = pc;
    const sender = pc.addTrack(stream.getVideoTracks()[0], stream);
    if (audioStream) pc.addTrack(audioStream.getAudioTracks()[0], audioStream);
    await pc.setRemoteDescription({ type: 'offer', sdp: offer });
    const p = sender.getParameters();
    if (p.encodings?.[0]) p.encodings[0].maxBitrate = maxBitrateKbps * 1000;
    await sender.setParameters(p);
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    return pc.localDescription.sdp;
  };
  const sample = async () => {
    const out = { t: Date.now(), steady: performance.now() };
    for (const [id, pc] of Object.entries(S.pcs)) {
      try {
        const st = await pc.getStats();
        const o = {};
        let transport = null;
        st.forEach((s) => {
          if (s.type === 'outbound-rtp' && s.kind === 'video') {
            Object.assign(o, { targetBitrate: s.targetBitrate, bytesSent: s.bytesSent, framesEncoded: s.framesEncoded,
              framesPerSecond: s.framesPerSecond, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
              qualityLimitationReason: s.qualityLimitationReason, encoderImplementation: s.encoderImplementation,
              retransmittedBytesSent: s.retransmittedBytesSent, nackCount: s.nackCount, pliCount: s.pliCount });
          }
          if (s.type === 'transport') transport = s;
        });
        const pair = transport && st.get(transport.selectedCandidatePairId);
        if (pair) Object.assign(o, { availableOutgoingBitrate: pair.availableOutgoingBitrate, rtt: pair.currentRoundTripTime });
        out[id] = o;
      } catch (e) { out[id] = { error: String(e) }; }
    }
    S.stats.push(out);
  };
  setInterval(sample, 1000);
}

// The receiver page (viewer namespace): window.rx offers recvonly video (H.264 first, like the
// device's answer) + audio, like a WHEP client; the answer comes back through the test.
export async function receiverOffer() {
  document.body.style.cssText = 'margin:0;background:#222';
  const v = document.createElement('video');
  Object.assign(v, { id: 'v', muted: true, autoplay: true, playsInline: true });
  v.style.cssText = 'width:1280px;height:720px;display:block';
  const a = document.createElement('audio');
  a.autoplay = true;
  document.body.append(v, a);
  const rx = window.rx = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
  const tv = rx.addTransceiver('video', { direction: 'recvonly' });
  const score = (c) => (c.mimeType !== 'video/H264' ? 3
    : /profile-level-id=42e01f/.test(c.sdpFmtpLine || '') && /packetization-mode=1/.test(c.sdpFmtpLine || '') ? 0
      : /packetization-mode=1/.test(c.sdpFmtpLine || '') ? 1 : 2);
  tv.setCodecPreferences([...RTCRtpReceiver.getCapabilities('video').codecs].sort((x, y) => score(x) - score(y)));
  rx.addTransceiver('audio', { direction: 'recvonly' });
  rx.ontrack = (e) => {
    const el = e.track.kind === 'video' ? v : a;
    el.srcObject = new MediaStream([e.track]);
    el.play().catch(() => {});
  };
  await rx.setLocalDescription(await rx.createOffer());
  await new Promise((resolve) => {
    if (rx.iceGatheringState === 'complete') return resolve();
    const timer = setTimeout(resolve, 3000);
    rx.addEventListener('icegatheringstatechange', () => { if (rx.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); } });
  });
  return rx.localDescription.sdp;
}

export async function receiverAccept(answer) {
  await window.rx.setRemoteDescription({ type: 'answer', sdp: answer });
}
