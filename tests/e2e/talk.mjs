// Talk-back through the page: Chromium's fake microphone (a WAV: a short beep every 500 ms) → the
// page's Talk button (hold, then tap-to-lock) → the device → an ALSA `file` PCM (docs/test-rigs.md, rig 2). The
// written PCM must carry the beeps (energy, and the same period as the microphone); the delay from the
// browser's microphone to the bytes in the file is printed. One speaker at a time: a second viewer gets
// `busy` and sees `talker_changed`; the talker closing its page frees the speaker for the other. The
// page's own messages: microphone permission denied, and an insecure (plain http, non-localhost) origin.
import { mkdtempSync, readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ARTIFACTS, evaluate, launchBrowser, main, onCleanup, openViewer, percentile, request, sleep, startService,
  waitFor, waitForControl, waitForEvent, waitForLive,
} from './lib.mjs';

const HOLD_MS = 4000, GAP_MS = 2500;   // talk, mute the mic (a gap that aligns the two beep sequences), talk
const talkerId = (t) => (t && typeof t === 'object' ? t.viewer ?? null : t ?? null);

// ---- the ALSA side: a file-plugin speaker, and what it wrote --------------------------------------

function speakerConfig(dir) {
  const out = join(dir, 'speaker.raw');
  const conf = join(dir, 'asound.conf');
  // The system config first (so every usual name still exists), then the test speaker: the file plugin
  // on a null slave writes the raw samples the device plays (re-opened, and truncated, per talk).
  writeFileSync(conf, `${existsSync('/usr/share/alsa/alsa.conf') ? '</usr/share/alsa/alsa.conf>\n' : ''}` +
    `pcm.peercam_test_speaker {\n  type file\n  slave.pcm { type null }\n  file "${out}"\n  format "raw"\n}\n`);
  return { out, conf };
}

// The microphone: a WAV that Chromium's fake capture device loops (--use-file-for-fake-audio-capture):
// a 40 ms tone burst every 500 ms, each of the eight a different pitch. A source the test wrote lets the
// check name the period it expects (Chromium's own fake beep has no documented period).
const MIC_PERIOD_MS = 500;
function micWav(path) {
  const rate = 48000, n = rate * 4, burst = Math.round(rate * 0.04), fade = Math.round(rate * 0.005);
  const pitches = [400, 700, 1000, 1300, 500, 800, 1100, 600];
  const pcm = Buffer.alloc(44 + 2 * n);
  pcm.write('RIFF', 0); pcm.writeUInt32LE(36 + 2 * n, 4); pcm.write('WAVE', 8);
  pcm.write('fmt ', 12); pcm.writeUInt32LE(16, 16); pcm.writeUInt16LE(1, 20); pcm.writeUInt16LE(1, 22);
  pcm.writeUInt32LE(rate, 24); pcm.writeUInt32LE(2 * rate, 28); pcm.writeUInt16LE(2, 32); pcm.writeUInt16LE(16, 34);
  pcm.write('data', 36); pcm.writeUInt32LE(2 * n, 40);
  pitches.forEach((f, k) => {
    const start = (k * MIC_PERIOD_MS * rate) / 1000;
    for (let i = 0; i < burst; i++) {
      const env = Math.min(1, i / fade, (burst - 1 - i) / fade);
      pcm.writeInt16LE(Math.round(0.6 * 32767 * env * Math.sin((2 * Math.PI * f * i) / rate)), 44 + 2 * (start + i));
    }
  });
  writeFileSync(path, pcm);
  return path;
}

// Samples the output file's size against wall-clock time (a write of N bytes at t → bytes < size are in).
function sizeSampler(path) {
  const samples = [];
  let last = -1;
  const timer = setInterval(() => {
    let size = 0;
    try { size = statSync(path).size; } catch { return; }
    if (size !== last) { samples.push({ t: Date.now(), size }); last = size; }
  }, 2);
  return { samples, stop: () => clearInterval(timer) };
}

// Samples of channel 0 as floats (-1..1). Formats the device may pick for a plug/null PCM.
function decode(buf, { format, channels }) {
  const f = String(format || 'S16_LE').toUpperCase();
  const bps = f.startsWith('S16') ? 2 : f.startsWith('S32') || f.startsWith('FLOAT') ? 4 : 2;
  const frame = bps * channels;
  const n = Math.floor(buf.length / frame);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const o = i * frame;
    x[i] = f.startsWith('S16') ? buf.readInt16LE(o) / 32768 : f.startsWith('S32') ? buf.readInt32LE(o) / 2 ** 31 : buf.readFloatLE(o);
  }
  return { x, frameBytes: frame };
}

// RMS in 5 ms windows, and beep onsets: a window above `hi` after ≥ 150 ms below `lo`.
function onsets(x, rate, { hi = 0.05, lo = 0.01 } = {}) {
  const w = Math.round(rate * 0.005);
  const env = [];
  for (let i = 0; i + w <= x.length; i += w) {
    let s = 0;
    for (let j = i; j < i + w; j++) s += x[j] * x[j];
    env.push(Math.sqrt(s / w));
  }
  const found = [];
  let quiet = Infinity;   // windows below `lo` so far
  for (let k = 0; k < env.length; k++) {
    if (env[k] >= hi && quiet * 5 >= 150) found.push(k * w);   // sample index of the onset window
    quiet = env[k] < lo ? quiet + 1 : (env[k] >= hi ? 0 : quiet);
  }
  return { env, onsets: found, window: w };
}

// Beep onsets in the browser's envelope ([t, peak] per ~2.7 ms): above 10 % of the loudest after ≥ 150 ms
// below 3 % of it. A block between the two (a beep's rising edge) neither ends the quiet nor counts as the
// onset, as in onsets() above: resetting the quiet there lost every beep whose first block landed in that
// band (the page's audio processing makes some beeps much softer than others), which read as "every other
// beep" (1000 ms for a microphone that beeps every 500 ms) in CI and here.
function envelopeOnsets(env) {
  const max = Math.max(...env.map(([, p]) => p));
  const found = [];
  let quietSince = null;   // when the current stretch below 3 % began; null: none since the last loud block
  for (const [t, p] of env) {
    if (p >= 0.1 * max) {
      if (quietSince !== null && t - quietSince >= 150) found.push(t);
      quietSince = null;
    } else if (p < 0.03 * max && quietSince === null) quietSince = t;
  }
  return found;
}

// Pairs two onset sequences by their largest gap (the muted stretch), so a delay longer than the beep
// period cannot be mistaken for a short one.
// `shift` moves b's side by whole beeps: an onset lost next to the mute on one side moves the gap by one.
function alignByGap(a, b, shift = 0) {
  const gapIndex = (s) => { let best = 1, gap = -1; for (let i = 1; i < s.length; i++) if (s[i] - s[i - 1] > gap) { gap = s[i] - s[i - 1]; best = i; } return best; };
  const ga = gapIndex(a), gb = gapIndex(b) + shift;
  const pairs = [];
  for (let k = -Math.min(ga, gb); ga + k < a.length && gb + k < b.length; k++) if (gb + k >= 0) pairs.push([a[ga + k], b[gb + k]]);
  return pairs;
}

await main('talk', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'peercam-talk-'));
  const { out, conf } = speakerConfig(dir);
  const svc = await startService({
    // No tone from the device: the page plays the device's sound, and its echo canceller (the page asks
    // for one, as it should for a parent talking over the nursery's sound) took the tone's 200 ms beep
    // each second as far-end sound and suppressed the microphone beeps that fell on it — every other
    // one in some runs, which read as a 1000 ms period (and left too few beeps) on either side.
    name: 'talk', config: { speaker: { device: 'peercam_test_speaker' }, audio: { source: 'none' } }, env: { ALSA_CONFIG_PATH: conf },
  });
  t.info(`service at ${svc.url} (log: ${svc.logPath}); speaker file ${out}`);
  const browser = await launchBrowser({ autoplay: true, extraArgs: [`--use-file-for-fake-audio-capture=${micWav(join(dir, 'mic.wav'))}`] });
  const A = await openViewer(browser, svc.url, { viewport: { width: 800, height: 600 } });
  await waitForLive(A.page);
  const a = await waitForControl(A.page);
  const hello = (await evaluate(A.page, () => window.peercam.events.find((e) => e.event === 'hello'))) || {};
  t.check(a.viewerId && hello.talkback !== false, 'viewer A: control channel open, hello says talk-back is on',
    `viewer ${a.viewerId}, hello ${JSON.stringify({ ...hello, settings: undefined })}`);
  const B = await openViewer(browser, svc.url, { viewport: { width: 640, height: 480 } });
  await waitForLive(B.page);
  const b = await waitForControl(B.page);
  t.check(b.viewerId && b.viewerId !== a.viewerId && b.viewers === 2, 'viewer B: its own id, 2 watching',
    `B is ${b.viewerId} (A ${a.viewerId}), viewers ${b.viewers}`);

  // ---- A holds Talk ----
  const startSettings = await svc.settings();
  const box = await A.page.locator('#btn-talk').boundingBox();
  await A.page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  const pressAt = Date.now();
  await A.page.mouse.down();
  const sampler = sizeSampler(out);
  const talking = await waitFor(A.page, () => window.peercam.talking, undefined, { timeoutMs: 8000, what: 'A talking' })
    .catch(async (e) => { throw new Error(`${e.message}: ${JSON.stringify(await evaluate(A.page, () => ({ err: window.peercam.talkError, talker: window.peercam.talker })))}`); });
  t.check(true, 'holding Talk: A is talking', `${Date.now() - pressAt} ms after the press (microphone + talk request + replaceTrack)`);

  // The browser-side reference: beep onsets on the very track the page sends, with Date.now(). Read with
  // a MediaStreamTrackProcessor: every 10 ms frame of the track, queued (up to 1000) while the page's main
  // thread is held up, each stamped with its capture time. (Sampling an analyser from a main-thread timer
  // missed every other beep in a CI run on a starved host: "microphone p50 1030 ms" for a microphone that
  // beeps every 500 ms.) Chromium may still drop frames from that queue when the page falls far
  // behind (seen with half a core for everything): how much was read, and its gaps, are printed.
  await evaluate(A.page, () => {
    const track = window.peercam.micTrack;   // itself, not a clone: the mute below must show here too
    const reader = new MediaStreamTrackProcessor({ track, maxBufferSize: 1000 }).readable.getReader();
    // A frame's timestamp (µs) is on performance.now()'s clock (measured: within 10 ms of the frame's
    // arrival when the page keeps up), a steady clock. It is put on Date.now()'s clock (which the file's
    // side uses) with their distance as the frame is read, not with performance.timeOrigin (fixed at
    // the page's load): this machine's wall clock moves against the steady one now and then, and one
    // CI run read p50 -845 ms, a delay before the sound, with the two ~1 s apart since the load.
    const env = [];   // [Date.now() at capture, peak of ~2.7 ms]
    let buf = new Float32Array(0);
    window.__envelopeStop = async () => { await reader.cancel(); return env; };
    (async () => {
      for (;;) {
        const { value: data, done } = await reader.read();
        if (done) return;
        const wallMinusSteady = Date.now() - performance.now();
        if (buf.length < data.numberOfFrames) buf = new Float32Array(data.numberOfFrames);
        data.copyTo(buf, { planeIndex: 0, format: 'f32-planar' });
        const block = Math.max(1, Math.round(data.sampleRate * 0.0027));
        for (let i = 0; i < data.numberOfFrames; i += block) {
          let p = 0;
          for (let j = i; j < Math.min(i + block, data.numberOfFrames); j++) p = Math.max(p, Math.abs(buf[j]));
          env.push([wallMinusSteady + data.timestamp / 1000 + (1000 * i) / data.sampleRate, p]);
        }
        data.close();
      }
    })();
  });
  const busy = await (async () => {
    const ev = await waitForEvent(B.page, 'talker_changed', `(e.talker?.viewer ?? e.talker) === ${JSON.stringify(a.viewerId)}`, 5000)
      .catch((e) => ({ error: e.message }));
    const reply = await request(B.page, { type: 'talk', action: 'request' });
    const ui = await evaluate(B.page, () => ({ disabled: document.getElementById('btn-talk').disabled,
      msg: document.getElementById('talk-msg').hidden ? '' : document.getElementById('talk-msg').textContent,
      label: document.getElementById('btn-talk').textContent.replace(/\s+/g, ' ').trim() }));
    return { ev, reply, ui };
  })();
  t.check(!busy.ev.error, 'B sees talker_changed naming A', busy.ev.error || `${JSON.stringify(busy.ev.event)} after ${busy.ev.ms} ms`);
  t.check(busy.reply.ok === false && busy.reply.error?.code === 'busy' && talkerId(busy.reply.error.talker) === a.viewerId,
    'B\'s talk request gets busy, naming A', JSON.stringify(busy.reply));
  t.check(busy.ui.disabled && /talking/i.test(busy.ui.msg), 'B\'s page: Talk disabled, "… is talking" shown', JSON.stringify(busy.ui));
  await B.page.screenshot({ path: join(ARTIFACTS, 'talk-busy.png') });

  const levels = [];
  const meter = async (ms) => { const end = Date.now() + ms; while (Date.now() < end) { levels.push(await evaluate(A.page, () => window.peercam.micLevel)); await sleep(40); } };
  await meter(HOLD_MS);
  const muteAt = Date.now();
  await evaluate(A.page, () => { window.peercam.micTrack.enabled = false; });
  await sleep(GAP_MS);
  await evaluate(A.page, () => { window.peercam.micTrack.enabled = true; });
  const midSettings = await svc.settings();
  const midSize = statSync(out).size;
  await A.page.screenshot({ path: join(ARTIFACTS, 'talk-talking.png') });
  await meter(HOLD_MS);
  t.check(Math.max(...levels) > 0.3, 'the level meter moves while talking',
    `micLevel max ${Math.max(...levels).toFixed(2)}, p50 ${percentile(levels, 50).toFixed(2)} (${levels.length} samples)`);
  const tb = midSettings.talkback || {};
  t.check(tb.playing === true && tb.output && talkerId(midSettings.talker) === a.viewerId,
    '/api/settings while A talks: speaker playing, talker A', JSON.stringify({ talker: midSettings.talker, talkback: tb }));

  // ---- release ----
  const releaseAt = Date.now();
  await A.page.mouse.up();
  const stopped = await waitFor(A.page, () => !window.peercam.talking, undefined, { timeoutMs: 2000, what: 'A stops' }).catch((e) => ({ error: e.message }));
  const freed = await waitForEvent(B.page, 'talker_changed', 'e.talker === null && e.received > ' + releaseAt, 3000).catch((e) => ({ error: e.message }));
  t.check(!stopped.error && !freed.error, 'releasing Talk stops A and frees the speaker (B sees talker_changed null)',
    stopped.error || freed.error || `A stopped after ${stopped.ms} ms, B told after ${freed.ms} ms`);
  await sleep(700);
  sampler.stop();
  const envelope = await evaluate(A.page, () => window.__envelopeStop());
  const browserOnsets = envelopeOnsets(envelope);
  writeFileSync(join(ARTIFACTS, 'talk-mic-envelope.json'), JSON.stringify(envelope));
  const envGaps = envelope.slice(1).filter(([t], i) => t - envelope[i][0] > 50).length;
  t.info(`microphone track read: ${envelope.length ? ((envelope.at(-1)[0] - envelope[0][0]) / 1000).toFixed(2) : 0} s, ${envGaps} gap(s) over 50 ms`);
  const endSettings = await svc.settings();
  const sizeEnd = statSync(out).size;
  await sleep(800);
  t.check(statSync(out).size === sizeEnd && endSettings.talkback?.playing === false, 'the speaker stops after the release',
    `file ${sizeEnd} → ${statSync(out).size} bytes over 0.8 s; talkback.playing ${endSettings.talkback?.playing}`);

  // ---- what the device wrote ----
  const output = tb.output || {};
  const rate = output.rate || 48000, channels = output.channels || 1;
  const pcm = readFileSync(out);
  const { x, frameBytes } = decode(pcm, { format: output.format, channels });
  t.info(`speaker output ${JSON.stringify(output)}; file ${pcm.length} bytes = ${(x.length / rate).toFixed(2)} s; ` +
    `talk lasted ${((releaseAt - pressAt) / 1000).toFixed(2)} s`);
  const peak = x.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const det = onsets(x, rate);
  const fileOnsets = det.onsets;
  // Onset spacings without the muted stretch (and a beep too faint to count) — those are ≥ 1.5 × the period.
  const spacingMs = (s, toMs) => {
    const d = s.slice(1).map((v, i) => toMs(v - s[i]));
    const p50 = percentile(d, 50);
    return d.filter((x) => x < 1.5 * p50);
  };
  const fileSpacing = spacingMs(fileOnsets, (d) => (1000 * d) / rate);
  const browserSpacing = spacingMs(browserOnsets, (d) => d);
  const bPeriod = percentile(browserSpacing, 50), fPeriod = percentile(fileSpacing, 50);
  const loud = det.env.filter((e) => e >= 0.05).length, quiet = det.env.filter((e) => e < 0.01).length;
  t.check(peak > 0.1 && fileOnsets.length >= 6, 'the written PCM carries beeps (energy)',
    `peak ${peak.toFixed(2)}, ${fileOnsets.length} onsets; ${loud} loud and ${quiet} quiet of ${det.env.length} 5-ms windows ` +
    `(browser saw ${browserOnsets.length} beeps)`);
  t.check(browserSpacing.length >= 3 && fileSpacing.length >= 4 && Math.abs(fPeriod - bPeriod) <= 0.1 * bPeriod
    && Math.abs(bPeriod - MIC_PERIOD_MS) <= 0.1 * MIC_PERIOD_MS,
    'the beeps keep the microphone\'s period (the WAV\'s, as the page read it)',
    `file: onset spacing p50 ${fPeriod?.toFixed(1)} ms (min ${Math.min(...fileSpacing).toFixed(0)}, max ${Math.max(...fileSpacing).toFixed(0)}); ` +
    `microphone: p50 ${bPeriod?.toFixed(1)} ms (the WAV: ${MIC_PERIOD_MS} ms)`);

  // Delay: the wall-clock time each onset's bytes reached the file, minus the microphone onset.
  const writtenAt = (sampleIndex) => {
    const need = (sampleIndex + 1) * frameBytes;
    return sampler.samples.find((s) => s.size >= need)?.t;
  };
  // The gap pairs the sequences; but under load the page's envelope sampler (or a concealed frame) can
  // lose the onset right next to the mute on one side, which moves that side's gap by a beep and pairs
  // every beep with its neighbour (seen once: p50 −311 ms, a delay before the sound was made). So the
  // gap's pairing and its one-beep neighbours are tried, and the nearest to the gap's own that is causal
  // (median delay > 0) wins, preferring one where most pairs agree. Its median is only the first guess.
  const candidates = [0, -1, 1].map((shift) => {
    const paired = alignByGap(browserOnsets, fileOnsets, shift).map(([tb0, idx]) => writtenAt(idx) - tb0).filter((d) => Number.isFinite(d));
    // A beep faded in or cut at either end can shift a pair by a period: keep pairs within half a period
    // of the median, and require most of them to agree.
    const mid = percentile(paired, 50);
    return { shift, paired, delays: paired.filter((d) => Math.abs(d - mid) <= bPeriod / 2) };
  });
  const causal = (c) => percentile(c.delays, 50) > 0;
  const chosen = candidates.find((c) => causal(c) && 2 * c.delays.length > c.paired.length) || candidates.find(causal) || candidates[0];
  // Then every microphone beep is looked up in the file by time, not by index: the file onset written
  // nearest to (beep + that delay), within half a period. An onset lost anywhere else (pairing by index
  // shifts every pair beyond it by a period: 7 of 12 agreed in one CI run) then costs only its own beep.
  const d0 = percentile(chosen.delays, 50);
  const fileTimes = fileOnsets.map(writtenAt).filter((w) => Number.isFinite(w));
  const delays = browserOnsets.map((b0) => {
    let best = null;
    for (const w of fileTimes) if (Math.abs(w - b0 - d0) <= bPeriod / 2 && (best == null || Math.abs(w - b0 - d0) < Math.abs(best - d0))) best = w - b0;
    return best;
  }).filter((d) => d != null);
  const beeps = Math.min(browserOnsets.length, fileOnsets.length);
  // alsa-lib's file plugin holds one device buffer back before writing: measure it (frames the device
  // wrote vs bytes in the file, sampled mid-talk) and subtract it for the delay a real speaker would have.
  // (frames_written counts the device's 20 ms frames since it started.)
  const framesMid = (tb.frames_written ?? NaN) - (startSettings.talkback?.frames_written ?? 0);
  const heldMs = framesMid * 20 - (midSize / frameBytes / rate) * 1000;
  // (Most beeps must be found at that delay: a beep the device lost or garbled is not found.)
  t.check(delays.length >= 4 && 2 * delays.length > beeps && percentile(delays, 50) > 0 && percentile(delays, 50) < 500,
    'delay from the browser\'s microphone to the PCM file',
    `p50 ${percentile(delays, 50)?.toFixed(0)} ms, min ${Math.min(...delays).toFixed(0)}, max ${Math.max(...delays).toFixed(0)} (${delays.length} of ${beeps} beeps found; the ` +
    `${GAP_MS} ms mute paired ${chosen.delays.length} of ${chosen.paired.length}${chosen.shift ? `, shifted ${chosen.shift > 0 ? '+' : ''}${chosen.shift} beep: an onset next to the mute was lost` : ''}); of which ~${heldMs.toFixed(0)} ms is the file plugin holding back one buffer → ` +
    `~${(percentile(delays, 50) - heldMs).toFixed(0)} ms to the device's ALSA write; jitter buffer ${tb.jitter_ms} ms ` +
    `(target ${tb.jitter_target_ms}), packets ${tb.packets_received} received / ${tb.packets_lost} lost / ${tb.packets_late} late, underruns ${tb.underruns}`);
  t.info(`mute at +${muteAt - pressAt} ms; first/last file onsets at ${(fileOnsets[0] / rate).toFixed(2)} / ${(fileOnsets.at(-1) / rate).toFixed(2)} s`);
  writeFileSync(join(ARTIFACTS, 'talk-speaker.raw'), pcm);

  // ---- tap to lock, then the talker leaves ----
  const tapAt = Date.now();
  await A.page.mouse.down(); await sleep(80); await A.page.mouse.up();
  await sleep(1500);
  const locked = await evaluate(A.page, () => ({ talking: window.peercam.talking, pressed: document.getElementById('btn-talk').getAttribute('aria-pressed'),
    hint: document.getElementById('talk-hint').textContent }));
  const bSees = await waitForEvent(B.page, 'talker_changed', `(e.talker?.viewer ?? e.talker) === ${JSON.stringify(a.viewerId)} && e.received > ${tapAt}`, 3000)
    .catch((e) => ({ error: e.message }));
  t.check(locked.talking && locked.pressed === 'true' && !bSees.error, 'a short tap locks talking on (still talking 1.5 s after the tap)',
    `${JSON.stringify(locked)}; B: ${bSees.error || 'talker_changed A'}`);
  const leaveAt = Date.now();
  await A.context.close();
  const left = await waitForEvent(B.page, 'talker_changed', `e.talker === null && e.received > ${leaveAt}`, 12000).catch((e) => ({ error: e.message }));
  t.check(!left.error, 'the talker closing its page frees the speaker (B sees talker_changed null)',
    left.error || `after ${left.ms} ms`);
  const enabled = await waitFor(B.page, () => !document.getElementById('btn-talk').disabled, undefined, { timeoutMs: 2000, what: 'B Talk enabled' })
    .catch((e) => ({ error: e.message }));
  const bBox = await B.page.locator('#btn-talk').boundingBox();
  await B.page.mouse.move(bBox.x + bBox.width / 2, bBox.y + bBox.height / 2);
  await B.page.mouse.down(); await sleep(80); await B.page.mouse.up();   // B taps: locked on
  const bTalk = await waitFor(B.page, () => window.peercam.talking, undefined, { timeoutMs: 5000, what: 'B talking' })
    .catch(async (e) => ({ error: `${e.message}: ${await evaluate(B.page, () => window.peercam.talkError)}` }));
  t.check(!enabled.error && !bTalk.error, 'then B\'s Talk works', enabled.error || bTalk.error || `B talking ${bTalk.ms} ms after its tap`);
  // B's microphone beeps every 500 ms; its first beep must reach the file. Waited for (up to 6 s) rather than
  // read once after 1.5 s: CI once caught a stalled machine (load 6 on 2 cores) with only 1.6 s of quiet
  // start-up audio written at that moment.
  const bFrom = Date.now();
  let bSettings, bBytes, bPeak;
  do {
    await sleep(250);
    bSettings = await svc.settings();
    bBytes = statSync(out).size;
    const bPcm = decode(readFileSync(out), { format: output.format, channels });
    bPeak = bPcm.x.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  } while (!(bPeak > 0.1) && Date.now() - bFrom < 6000);
  t.check(talkerId(bSettings.talker) === b.viewerId && bBytes > 0 && bPeak > 0.1, 'B\'s voice reaches the speaker',
    `talker ${JSON.stringify(bSettings.talker)}, ${bBytes} bytes written, peak ${bPeak.toFixed(2)} after ${Date.now() - bFrom} ms`);
  await B.page.mouse.down(); await sleep(80); await B.page.mouse.up();   // tap again: off
  const bOff = await waitFor(B.page, () => !window.peercam.talking, undefined, { timeoutMs: 2000, what: 'B stops' }).catch((e) => ({ error: e.message }));
  const bFree = await waitFor(B.page, () => window.peercam.talker === null, undefined, { timeoutMs: 3000, what: 'speaker free' }).catch((e) => ({ error: e.message }));
  t.check(!bOff.error && !bFree.error, 'a second tap stops B and frees the speaker', bOff.error || bFree.error || 'ok');

  // ---- a lullaby from the page's settings sheet, on the same speaker ----
  const lullText = () => document.getElementById('lull-state').textContent;
  await B.page.click('#btn-settings');
  const lullShown = await waitFor(B.page, () => !document.getElementById('lullaby').hidden && /Not playing|Playing/.test(document.getElementById('lull-state').textContent),
    undefined, { timeoutMs: 3000, what: 'lullaby status' }).catch((e) => ({ error: e.message }));
  await B.page.selectOption('#lull-sound', 'pink');
  await B.page.click('#lull-start');
  const lullPlaying = await waitFor(B.page, () => /Playing pink/.test(document.getElementById('lull-state').textContent),
    undefined, { timeoutMs: 5000, what: 'lullaby playing' }).catch((e) => ({ error: e.message }));
  await sleep(300);
  const lullSize0 = statSync(out).size;
  await sleep(1000);
  const lullSize1 = statSync(out).size;
  const lullSettings = await svc.settings();
  t.check(!lullShown.error && !lullPlaying.error && lullSize1 > lullSize0 && lullSettings.talkback?.lullaby?.sound === 'pink',
    'the page plays pink noise on the camera\'s speaker (settings sheet → lullaby start)',
    lullShown.error || lullPlaying.error || `"${await evaluate(B.page, lullText)}"; speaker file ${lullSize0} → ${lullSize1} bytes; talkback.lullaby ${JSON.stringify(lullSettings.talkback?.lullaby)}`);
  // Ducking: while B talks the lullaby drops to 20 % (src/rtc/talkback/lullaby.rs DUCKED), then comes back.
  // The fake microphone beeps for 40 ms every 500 ms and is silent between, so the median 20 ms RMS of each
  // stretch of the speaker file is the lullaby's level (the beeps are a minority of the windows).
  await B.page.click('#btn-settings');   // close the sheet: the talk button is under it on small screens
  await sleep(2200);                     // the 2 s fade-in
  const span = async (ms) => { const a = statSync(out).size; await sleep(ms); return [a, statSync(out).size]; };
  const alone = await span(1200);
  await B.page.locator('#btn-talk').click();   // a tap locks talking on
  const duckTalk = await waitFor(B.page, () => window.peercam.talking, undefined, { timeoutMs: 5000, what: 'B talks over the lullaby' }).catch((e) => ({ error: e.message }));
  await sleep(600);
  const ducked = await span(2000);
  await B.page.locator('#btn-talk').click();   // tap again: off
  await waitFor(B.page, () => !window.peercam.talking, undefined, { timeoutMs: 3000, what: 'B stops' }).catch(() => {});
  await sleep(1000);
  const back = await span(1200);
  const level = ([a, b]) => {
    const fb = (output.channels || 1) * (/^S16/i.test(output.format || 'S16_LE') ? 2 : 4);
    const buf = readFileSync(out).subarray(Math.floor(a / fb) * fb, Math.floor(b / fb) * fb);
    const { x: y } = decode(buf, { format: output.format, channels });
    const w = Math.round(rate * 0.02), rms = [];
    for (let i = 0; i + w <= y.length; i += w) { let q = 0; for (let j = i; j < i + w; j++) q += y[j] * y[j]; rms.push(Math.sqrt(q / w)); }
    return percentile(rms, 50);
  };
  const ordered = alone[0] <= alone[1] && alone[1] <= ducked[0] && ducked[1] <= back[0] && back[0] <= back[1];
  const [lA, lD, lB] = [level(alone), level(ducked), level(back)];
  t.check(!duckTalk.error && ordered && lA > 0.02 && lD / lA < 0.35 && lB / lA > 0.7, 'talking ducks the lullaby to ~20 % and it comes back after',
    duckTalk.error || `median 20 ms RMS: alone ${lA.toFixed(4)}, while B talks ${lD.toFixed(4)} (${((100 * lD) / lA).toFixed(0)} %), after ${lB.toFixed(4)} (${((100 * lB) / lA).toFixed(0)} %)` +
    `${ordered ? '' : '; the speaker file was restarted in between (talking re-opened the speaker?)'}`);
  await B.page.click('#btn-settings');
  await B.page.click('#lull-stop');
  const lullStopped = await waitFor(B.page, () => /Not playing/.test(document.getElementById('lull-state').textContent),
    undefined, { timeoutMs: 5000, what: 'lullaby stopped' }).catch((e) => ({ error: e.message }));
  await B.page.click('#btn-settings');   // close the sheet again
  await sleep(500);
  const lullAfter = await svc.settings();
  t.check(!lullStopped.error && !lullAfter.talkback?.lullaby && lullAfter.talkback?.playing === false, 'Stop fades it out and frees the speaker',
    lullStopped.error || `"${await evaluate(B.page, lullText)}"; talkback ${JSON.stringify({ playing: lullAfter.talkback?.playing, lullaby: lullAfter.talkback?.lullaby })}`);
  t.check(A.errors.length === 0 && B.errors.length === 0, 'no page errors', [...A.errors, ...B.errors].join(' | '));

  // ---- the page's messages ----
  // Permission denied / no microphone. (The real denial cannot be combined with ICE here: without a
  // media permission Chromium gathers only default-route candidates, and a loopback-only namespace has
  // none. So getUserMedia is made to fail the way Chromium fails it.)
  for (const [name, message, expect] of [['NotAllowedError', 'Permission denied', /permission denied/i],
    ['NotFoundError', 'Requested device not found', /no microphone/i]]) {
    const ctx = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    await ctx.addInitScript(([n, m]) => {
      navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException(m, n));
    }, [name, message]);
    const page = await ctx.newPage();
    await page.goto(svc.url);
    await waitForLive(page);
    await waitForControl(page);
    await page.tap('#btn-talk');
    const shown = await waitFor(page, () => window.peercam.talkError, undefined, { timeoutMs: 5000, what: 'a talk error' }).catch((e) => ({ value: e.message }));
    const visible = await evaluate(page, () => !document.getElementById('talk-msg').hidden && document.getElementById('talk-msg').textContent);
    t.check(expect.test(shown.value) && visible === shown.value && !(await evaluate(page, () => window.peercam.talking)),
      `getUserMedia ${name}: the page says so (phone-sized, touch)`, JSON.stringify(shown.value));
    await page.screenshot({ path: join(ARTIFACTS, `talk-${name}.png`) });
    await ctx.close();
  }

  // Plain http on a name that is not localhost: not a secure context, so no navigator.mediaDevices.
  const { port } = new URL(svc.url);
  // The machine's own hostname: without a password the device trusts loopback clients only when
  // the Host names the machine (an attacker's name pointed at 127.0.0.1 is DNS rebinding, refused).
  const lanName = hostname().toLowerCase();
  const lanBrowser = await launchBrowser({ autoplay: true, extraArgs: [`--host-resolver-rules=MAP ${lanName} 127.0.0.1`] });
  // (Such a page cannot go live in this namespace: without a media permission, which an insecure origin
  // never has, Chromium gathers no ICE candidate on loopback. The Talk button explains itself anyway.)
  const L = await openViewer(lanBrowser, `http://${lanName}:${port}/`);
  const hint = await waitFor(L.page, () => /HTTPS/.test(document.getElementById('talk-hint').textContent) && document.getElementById('talk-hint').textContent,
    undefined, { timeoutMs: 5000, what: 'the Talk button says it needs HTTPS' }).catch((e) => ({ value: e.message }));
  t.check(/needs HTTPS/.test(hint.value), 'insecure origin: the Talk button says it needs HTTPS', JSON.stringify(hint.value));
  await L.page.click('#btn-talk');
  const insecure = await waitFor(L.page, () => window.peercam.talkError, undefined, { timeoutMs: 5000, what: 'a talk error' }).catch((e) => ({ value: e.message }));
  const secure = await evaluate(L.page, () => window.isSecureContext);
  t.check(!secure && /HTTPS/.test(insecure.value) && /tls = true/.test(insecure.value), 'insecure origin: the page explains HTTPS and [http] tls = true',
    `isSecureContext ${secure}: ${JSON.stringify(insecure.value)}`);
  await L.page.screenshot({ path: join(ARTIFACTS, 'talk-insecure.png') });
  onCleanup(() => L.context.close());
}, { timeoutMs: 170000 });
