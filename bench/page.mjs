// Code that runs inside the Chromium pages of the benchmark (installed with page.evaluate(pageLib)).
// Kept as one function so playwright can serialize it; it defines window.B.
//
//   B.setup()                   a <video id=v> (and the page body) for a viewer page
//   B.probe(video)              requestVideoFrameCallback probe: reads the timestamp code of rendered frames
//   B.whep({url, video, ...})   one WHEP session: offer → POST → answer → first rendered frame, with timings
//   B.c2c({...})                the Chromium→Chromium reference: canvas with the same code → pc → pc → <video>
//
// Timestamp code (docs/interfaces.md): block size b = max(8, floor(width / 40)); row 0; 34 blocks:
// block 0 white, block 1 black (reference levels), blocks 2..33 = bits 31..0 of (Unix ms mod 2^32).
export function pageLib() {
  if (window.B) return;
  const M = 2 ** 32;
  // a − b for two (ms mod 2^32) values, into (−2^31, 2^31]
  const wrap = (d) => (d > M / 2 ? d - M : d < -M / 2 ? d + M : d);
  const r1 = (x) => Math.round(x * 10) / 10;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function setup() {
    document.head.innerHTML = '<title>peercam bench</title>';
    document.body.innerHTML = '';
    document.body.style.cssText = 'margin:0;background:#222';
    const v = document.createElement('video');
    Object.assign(v, { id: 'v', muted: true, autoplay: true, playsInline: true });
    v.style.cssText = 'width:640px;height:360px;display:block';
    document.body.append(v);
    return v;
  }

  // Reads the code from the top rows of a drawable (a <video>) whose intrinsic width is `width`.
  function makeReader() {
    const canvas = document.createElement('canvas');
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    return (src, width) => {
      const b = Math.max(8, Math.floor(width / 40));
      if (canvas.width !== 34 * b || canvas.height !== b) { canvas.width = 34 * b; canvas.height = b; }
      ctx.drawImage(src, 0, 0, 34 * b, b, 0, 0, 34 * b, b);
      const px = ctx.getImageData(0, 0, 34 * b, b).data;
      // mean luma of the central third of block i (block centre; robust to ringing at the edges)
      const luma = (i) => {
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
      if (white - black < 64) return null;            // no code here
      const threshold = (white + black) / 2;
      let code = 0, margin = Infinity;
      for (let i = 2; i < 34; i++) {
        const l = luma(i);
        margin = Math.min(margin, Math.abs(l - threshold));
        code = code * 2 + (l > threshold ? 1 : 0);     // * 2, not <<: stays unsigned
      }
      return { code, margin };
    };
  }

  // Probe on a <video>: every rendered frame (rVFC) is counted; when `decode`, its code is read and
  // a sample [latency, recvLatency, recvToRender, processingMs, code, width, margin, rtpTimestamp] is kept:
  //   latency      = Date.now() in the rVFC callback − code   (the headline, as in tests/e2e)
  //   recvLatency  = (timeOrigin + metadata.receiveTime) − code   (sender side + network: the frame's
  //                   last packet arrived)
  //   recvToRender = latency − recvLatency   (receiver: jitter buffer, decode, render)
  //   processingMs = metadata.processingDuration × 1000 (Chromium: decode time)
  //   rtpTimestamp = metadata.rtpTimestamp: lets the bench drop samples where drawImage() already got a
  //                  newer frame than the one this callback is about (the main thread ran late)
  function probe(video, { decode = true } = {}) {
    const read = makeReader();
    const p = { running: false, frames: 0, bad: 0, samples: [], t0: 0, decode, widths: {} };
    const onFrame = (_now, meta) => {
      const wall = Date.now();
      video.requestVideoFrameCallback(onFrame);
      if (!p.running) return;
      p.frames++;
      p.widths[`${meta.width}x${meta.height}`] = (p.widths[`${meta.width}x${meta.height}`] || 0) + 1;
      if (!p.decode) return;
      const r = read(video, meta.width);
      if (!r) { p.bad++; return; }
      const lat = wrap((wall % M) - r.code);
      const recv = meta.receiveTime != null ? r1(wrap(((performance.timeOrigin + meta.receiveTime) % M) - r.code)) : null;
      p.samples.push([lat, recv, recv == null ? null : r1(lat - recv),
        meta.processingDuration != null ? r1(meta.processingDuration * 1000) : null, r.code, meta.width, Math.round(r.margin),
        meta.rtpTimestamp ?? null]);
    };
    video.requestVideoFrameCallback(onFrame);
    p.start = () => Object.assign(p, { running: true, frames: 0, bad: 0, samples: [], widths: {}, t0: performance.now() });
    p.stop = () => { p.running = false; return { frames: p.frames, bad: p.bad, samples: p.samples, widths: p.widths, seconds: (performance.now() - p.t0) / 1000 }; };
    return p;
  }

  function gatheringDone(pc, ms) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), ms);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(true); }
      });
    });
  }

  // Event marks for a connection, in ms since T0 (createOffer start). Only the first time of each.
  function marker(T0) {
    const t = {};
    const mark = (k) => { if (t[k] === undefined) t[k] = r1(performance.now() - T0); };
    return { t, mark };
  }

  function watchPc(pc, mark) {
    pc.addEventListener('iceconnectionstatechange', () => mark(`ice_${pc.iceConnectionState}`));
    pc.addEventListener('connectionstatechange', () => mark(`pc_${pc.connectionState}`));
  }

  // The first rendered frame: when it was rendered (rVFC), when its last packet arrived
  // (metadata.receiveTime) and when it was captured (its timestamp code), all in ms since T0.
  function firstFrame(video, T0, t, mark) {
    const read = makeReader();
    return new Promise((res) => video.requestVideoFrameCallback((_n, meta) => {
      mark('first_frame');
      if (meta.receiveTime != null) t.first_frame_received = r1(meta.receiveTime - T0);
      const r = read(video, meta.width);
      if (r) t.first_frame_captured = r1(wrap(r.code - Math.round((performance.timeOrigin + T0) % M)));
      if (meta.processingDuration != null) t.first_frame_decode_ms = r1(meta.processingDuration * 1000);
      res(meta);
    }));
  }

  // One getStats() after the first frame: what it took on the wire.
  async function afterFirst(pc) {
    const out = {};
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp') {
        out[s.kind] = s.kind === 'video'
          ? { packets: s.packetsReceived, framesReceived: s.framesReceived, framesDecoded: s.framesDecoded, keyFramesDecoded: s.keyFramesDecoded, pli: s.pliCount, fir: s.firCount, nack: s.nackCount, dropped: s.framesDropped }
          : { packets: s.packetsReceived };
      }
    });
    return out;
  }

  // A getUserMedia grant (auto-accepted by --use-fake-ui-for-media-stream) makes Chromium show its
  // real host addresses instead of mDNS names, which cannot resolve in a loopback-only namespace.
  async function grantMedia() {
    const s = await navigator.mediaDevices.getUserMedia({ video: true });
    s.getTracks().forEach((x) => x.stop());
  }

  // Two local RTCPeerConnections with a data channel, connected and closed: the first connection a
  // fresh browser makes pays one-off costs (certificates, threads) that are not the device's doing.
  async function warmup() {
    const a = new RTCPeerConnection(), b = new RTCPeerConnection();
    const open = new Promise((r) => { b.ondatachannel = (e) => { e.channel.onopen = r; }; });
    a.createDataChannel('warmup');
    a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
    b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    await Promise.race([open, sleep(5000)]);
    a.close(); b.close();
  }

  const sessions = {};
  let nextId = 1;

  // One WHEP viewer. Waits for ICE gathering before POST (like web/app.js), then for the first
  // rendered frame (rVFC) when `video` is given. Returns {id, t, info}.
  async function whep({ url = '/whep', video = null, gather = true, audio = true, timeoutMs = 10000 } = {}) {
    const T0 = performance.now();
    const { t, mark } = marker(T0);
    const info = {};
    const pc = new RTCPeerConnection();
    watchPc(pc, mark);
    pc.addTransceiver('video', { direction: 'recvonly' });
    if (audio) pc.addTransceiver('audio', { direction: 'recvonly' });
    const stream = new MediaStream();
    pc.ontrack = (e) => {
      stream.addTrack(e.track);
      mark(`track_${e.track.kind}`);
      if (video && e.track.kind === 'video') { video.srcObject = stream; video.play().catch(() => {}); }
    };
    const first = video ? firstFrame(video, T0, t, mark) : null;
    const id = nextId++;
    sessions[id] = { pc, video, stream, location: null };
    try {
      const offer = await pc.createOffer(); mark('offer_created');
      await pc.setLocalDescription(offer); mark('local_set');
      if (gather) info.gathered = await gatheringDone(pc, 2000);
      mark('gathered');
      info.offerCandidates = (pc.localDescription.sdp.match(/^a=candidate:.*$/gm) || []).map((c) => c.split(' ').slice(2, 8).join(' '));
      const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
      const sdp = await res.text(); mark('answer');
      if (res.status !== 201) throw new Error(`POST ${url}: HTTP ${res.status}: ${sdp.slice(0, 200)}`);
      sessions[id].location = new URL(res.headers.get('Location'), res.url).href;
      info.answerCandidates = (sdp.match(/^a=candidate:.*$/gm) || []).map((c) => c.split(' ').slice(4, 8).join(' '));
      info.answerVideoCodec = (/m=video[^]*?a=rtpmap:\d+ ([^\r\n]+)/.exec(sdp) || [])[1];
      info.answerFmtp = (/m=video[^]*?a=fmtp:\d+ ([^\r\n]+)/.exec(sdp) || [])[1];
      info.answerMsid = sdp.match(/^a=msid:.*$/gm) || [];
      await pc.setRemoteDescription({ type: 'answer', sdp }); mark('remote_set');
      if (first) {
        const meta = await Promise.race([first, sleep(timeoutMs).then(() => null)]);
        if (!meta) throw new Error(`no frame rendered within ${timeoutMs} ms (marks ${JSON.stringify(t)})`);
        info.firstWidth = meta.width; info.firstHeight = meta.height;
        info.atFirstFrame = await afterFirst(pc);
      }
    } catch (e) {
      await close(id);
      throw e;
    }
    return { id, t, info };
  }

  async function close(id) {
    const s = sessions[id];
    if (!s) return;
    delete sessions[id];
    if (s.location) { try { await fetch(s.location, { method: 'DELETE' }); } catch { /* best effort */ } }
    s.pc.close();
    if (s.video) s.video.srcObject = null;
  }

  // Receiver statistics of a session (video and audio inbound-rtp), reduced to what explains latency.
  async function inboundVideo(id) {
    const s = sessions[id];
    const st = await s.pc.getStats();
    const out = {};
    st.forEach((x) => {
      if (x.type !== 'inbound-rtp') return;
      const jb = x.jitterBufferEmittedCount ? {
        jitterBufferDelayMs: r1((1000 * x.jitterBufferDelay) / x.jitterBufferEmittedCount),
        jitterBufferTargetDelayMs: r1((1000 * x.jitterBufferTargetDelay) / x.jitterBufferEmittedCount),
        jitterBufferMinimumDelayMs: x.jitterBufferMinimumDelay != null ? r1((1000 * x.jitterBufferMinimumDelay) / x.jitterBufferEmittedCount) : null,
      } : {};
      const codec = x.codecId ? st.get(x.codecId) : null;
      if (x.kind === 'audio') {
        out.audio = { packetsReceived: x.packetsReceived, packetsLost: x.packetsLost, jitterMs: r1(1000 * x.jitter), ...jb,
          concealedPct: x.totalSamplesReceived ? r1((100 * x.concealedSamples) / x.totalSamplesReceived) : null,
          concealmentEventsPerS: x.totalSamplesReceived ? r1(x.concealmentEvents / (x.totalSamplesReceived / 48000)) : null,
          insertedForDeceleration: x.insertedSamplesForDeceleration, removedForAcceleration: x.removedSamplesForAcceleration,
          codec: codec ? codec.mimeType : null };
        return;
      }
      Object.assign(out, {
        framesDecoded: x.framesDecoded, framesDropped: x.framesDropped, keyFramesDecoded: x.keyFramesDecoded,
        packetsLost: x.packetsLost, nackCount: x.nackCount, pliCount: x.pliCount, firCount: x.firCount,
        frameWidth: x.frameWidth, frameHeight: x.frameHeight, bytesReceived: x.bytesReceived, jitterMs: r1(1000 * x.jitter), ...jb,
        decodeMsPerFrame: x.framesDecoded ? r1((1000 * x.totalDecodeTime) / x.framesDecoded) : null,
        assemblyMsPerFrame: x.framesAssembledFromMultiplePackets ? r1((1000 * x.totalAssemblyTime) / x.framesAssembledFromMultiplePackets) : null,
        interFrameDelayStdMs: x.framesDecoded > 1 && x.totalSquaredInterFrameDelay != null
          ? r1(1000 * Math.sqrt(Math.max(0, x.totalSquaredInterFrameDelay / (x.framesDecoded - 1) - (x.totalInterFrameDelay / (x.framesDecoded - 1)) ** 2))) : null,
        decoderImplementation: x.decoderImplementation, codec: codec ? `${codec.mimeType} ${codec.sdpFmtpLine || ''}` : null,
      });
    });
    return out;
  }

  // ---- Chromium → Chromium reference ----------------------------------------------------------

  // A 1280x720 canvas drawn at 30 fps from requestAnimationFrame with the same timestamp code
  // (Date.now() at draw time) and moving content, captured with captureStream(30).
  function canvasSource(width = 1280, height = 720, fps = 30) {
    if (window.__src) return window.__src;
    const canvas = document.createElement('canvas');
    canvas.width = width; canvas.height = height;
    canvas.style.cssText = 'width:320px;height:180px;display:block';
    document.body.append(canvas);
    const ctx = canvas.getContext('2d');
    const b = Math.max(8, Math.floor(width / 40));
    let n = 0, last = -1e9;
    const draw = (ts) => {
      requestAnimationFrame(draw);
      if (ts - last < 1000 / fps - 4) return;          // rAF runs at the display rate: keep 30 fps
      last = ts;
      const code = Date.now() % M;
      // moving content: a scrolling gradient, a moving box and a clock (the encoder has real work)
      const g = ctx.createLinearGradient((n * 8) % width, 0, ((n * 8) % width) + width, height);
      g.addColorStop(0, '#305080'); g.addColorStop(0.5, '#a06030'); g.addColorStop(1, '#305080');
      ctx.fillStyle = g; ctx.fillRect(0, 0, width, height);
      ctx.fillStyle = '#e0e040'; ctx.fillRect((n * 12) % (width - 160), 200 + ((n * 5) % 300), 160, 160);
      ctx.fillStyle = '#fff'; ctx.font = '64px monospace'; ctx.fillText(new Date().toISOString().slice(11, 23), 80, 140);
      for (let i = 0; i < 34; i++) {
        const bit = i === 0 ? 1 : i === 1 ? 0 : Math.floor(code / 2 ** (33 - i)) % 2;
        ctx.fillStyle = bit ? '#fff' : '#000';
        ctx.fillRect(i * b, 0, b, b);
      }
      n++;
    };
    requestAnimationFrame(draw);
    const stream = canvas.captureStream(fps);
    // audio like the device's tone: a 440 Hz beep of 200 ms at the start of every second
    let audioTrack = null;
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
      audioTrack = dst.stream.getAudioTracks()[0];
    } catch { /* no Web Audio: video only */ }
    window.__src = { canvas, stream, audioTrack };
    return window.__src;
  }

  // H.264 (constrained baseline, packetization-mode=1, 42e01f first) ahead of every other codec.
  function h264First() {
    const codecs = RTCRtpReceiver.getCapabilities('video').codecs;
    const score = (c) => {
      if (c.mimeType !== 'video/H264') return 3;
      const f = c.sdpFmtpLine || '';
      if (/profile-level-id=42e01f/.test(f) && /packetization-mode=1/.test(f)) return 0;
      return /packetization-mode=1/.test(f) ? 1 : 2;
    };
    return [...codecs].sort((a, b) => score(a) - score(b));
  }

  // One receiver-offers (like WHEP) connection between two RTCPeerConnections in this page, non-trickle
  // (both sides gather completely before the exchange, like the WHEP flow). Waits for the first frame.
  async function c2c({ video, audio = true, timeoutMs = 10000, maxBitrate = 2500000 } = {}) {
    const { stream, audioTrack } = canvasSource();
    const T0 = performance.now();
    const { t, mark } = marker(T0);
    const info = {};
    const rx = new RTCPeerConnection(), tx = new RTCPeerConnection();
    // (the audio transceiver, if any, is added after the video one: same m-line order as WHEP)
    watchPc(rx, mark);
    const tr = rx.addTransceiver('video', { direction: 'recvonly' });
    tr.setCodecPreferences(h264First());
    const sender = tx.addTrack(stream.getVideoTracks()[0], stream);
    const withAudio = audio && audioTrack;
    if (withAudio) {   // same stream as the video (like the device's answer): Chromium lip-syncs them
      rx.addTransceiver('audio', { direction: 'recvonly' });
      tx.addTrack(audioTrack, stream);
    }
    info.audio = !!withAudio;
    const out = new MediaStream();
    rx.ontrack = (e) => {
      mark(`track_${e.track.kind}`);
      out.addTrack(e.track);
      if (e.track.kind === 'video') { video.srcObject = out; video.play().catch(() => {}); }
    };
    const first = firstFrame(video, T0, t, mark);
    const id = nextId++;
    sessions[id] = { pc: rx, tx, video, location: null };
    try {
      await rx.setLocalDescription(await rx.createOffer()); mark('local_set');
      await gatheringDone(rx, 2000); mark('gathered');
      await tx.setRemoteDescription(rx.localDescription);
      const p = sender.getParameters();
      p.degradationPreference = 'maintain-resolution';
      if (p.encodings?.[0]) p.encodings[0].maxBitrate = maxBitrate;
      await sender.setParameters(p).catch((e) => { info.setParametersError = String(e); });
      await tx.setLocalDescription(await tx.createAnswer());
      await gatheringDone(tx, 2000); mark('answer');
      await rx.setRemoteDescription(tx.localDescription); mark('remote_set');
      info.answerVideoCodec = (/a=rtpmap:\d+ ([^\r\n]+)/.exec(tx.localDescription.sdp) || [])[1];
      const meta = await Promise.race([first, sleep(timeoutMs).then(() => null)]);
      if (!meta) throw new Error(`no frame rendered within ${timeoutMs} ms (marks ${JSON.stringify(t)})`);
      info.firstWidth = meta.width; info.firstHeight = meta.height;
      info.atFirstFrame = await afterFirst(rx);
      info.offerCandidates = (rx.localDescription.sdp.match(/^a=candidate:.*$/gm) || []).map((c) => c.split(' ').slice(2, 8).join(' '));
    } catch (e) {
      closeC2c(id);
      throw e;
    }
    return { id, t, info };
  }

  function closeC2c(id) {
    const s = sessions[id];
    if (!s) return;
    delete sessions[id];
    s.pc.close(); s.tx.close();
    s.video.srcObject = null;
  }

  async function outboundVideo(id) {
    const s = sessions[id];
    const st = await s.tx.getStats();
    let out = null;
    st.forEach((x) => { if (x.type === 'outbound-rtp' && x.kind === 'video') out = x; });
    return out && {
      encoderImplementation: out.encoderImplementation, frameWidth: out.frameWidth, frameHeight: out.frameHeight,
      framesEncoded: out.framesEncoded, encodeMsPerFrame: out.framesEncoded ? r1((1000 * out.totalEncodeTime) / out.framesEncoded) : null,
      qualityLimitationReason: out.qualityLimitationReason, targetBitrate: out.targetBitrate,
      framesPerSecond: out.framesPerSecond,
    };
  }

  window.B = { setup, grantMedia, warmup, probe, whep, close, inboundVideo, c2c, closeC2c, outboundVideo, canvasSource, sessions };
}
