// Numbers from what a viewer page recorded (page.mjs installCollector): frames [wall, latency, w, h,
// presentedFrames] and one getStats() digest per second. All times are ms on the rig's steady clock
// (links.mjs: Unix ms at its start + monotonic time; the pages' stamps are put on it); windows are
// [a, b] in the same clock.

export function percentile(values, p) {
  const v = values.filter((x) => x != null && !Number.isNaN(x));
  if (!v.length) return null;
  const s = [...v].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}
const r1 = (x) => (x == null || Number.isNaN(x) ? null : Math.round(x * 10) / 10);

// Sum of the increments of a counter over the stats samples that bracket [a, b] (the first sample
// from a − 0.5 s on, the last up to b + 0.5 s; samples come every ~1 s). A new peer connection (the
// page reconnected: `gen` changed) starts its counters at 0, so its first value is an increment.
// `span` is the time those samples cover: rates divide by it, not by b − a.
function samplesAround(stats, a, b) {
  return stats.filter((s) => s.t >= a - 500 && s.t <= b + 500);
}
function counterDelta(stats, get, a, b) {
  let sum = 0, prev = null;
  for (const s of samplesAround(stats, a, b)) {
    const v = get(s);
    if (v == null) continue;
    if (prev) sum += prev.gen === s.gen && v >= prev.v ? v - prev.v : v;
    prev = { v, gen: s.gen };
  }
  return sum;
}
function spanMs(stats, a, b) {
  const w = samplesAround(stats, a, b);
  return w.length > 1 ? w.at(-1).t - w[0].t : b - a;
}

// Per-interval rates from consecutive stats samples: [{ t (end of interval), kbps, videoKbps, fps, ... }].
export function statsSeries(stats) {
  const out = [];
  for (let i = 1; i < stats.length; i++) {
    const p = stats[i - 1], s = stats[i];
    const dt = s.t - p.t;
    if (dt <= 0) continue;
    const d = (get) => {
      const x = get(s), y = get(p);
      if (x == null) return null;
      return p.gen === s.gen && y != null && x >= y ? x - y : x;
    };
    const vb = d((x) => (x.v ? (x.v.bytesReceived || 0) + (x.v.headerBytesReceived || 0) : null));
    const ab = d((x) => (x.a ? (x.a.bytesReceived || 0) + (x.a.headerBytesReceived || 0) : null));
    const tb = d((x) => x.transportBytesReceived);
    out.push({
      t: s.t, dt,
      kbps: tb != null ? (tb * 8) / dt : vb != null ? ((vb + (ab || 0)) * 8) / dt : 0,
      videoKbps: vb != null ? (vb * 8) / dt : 0,
      fps: ((d((x) => x.v?.framesDecoded) ?? 0) * 1000) / dt,
      width: s.v?.frameWidth ?? null, height: s.v?.frameHeight ?? null,
      rttMs: s.pair?.currentRoundTripTime != null ? s.pair.currentRoundTripTime * 1000 : null,
      lost: d((x) => x.v?.packetsLost) ?? 0,
      freezes: d((x) => x.v?.freezeCount) ?? 0,
    });
  }
  return out;
}

// Everything about one viewer in the window [a, b].
export function windowMetrics({ frames, stats }, a, b) {
  const sec = (b - a) / 1000;
  const fr = frames.filter((f) => f[0] >= a && f[0] <= b);
  // rendered frames: presentedFrames counts frames whose callback was skipped (busy main thread)
  let rendered = 0;
  const before = frames.filter((f) => f[0] < a).at(-1);
  let prevPresented = before ? before[4] : null;
  for (const f of fr) {
    rendered += prevPresented != null && f[4] > prevPresented ? Math.min(f[4] - prevPresented, 10) : 1;
    prevPresented = f[4];
  }
  // longest time without a new frame on screen, window edges included (a freeze across an edge counts)
  let maxGap = 0, last = before ? Math.max(a, before[0]) : a;
  for (const f of fr) { maxGap = Math.max(maxGap, f[0] - last); last = f[0]; }
  maxGap = Math.max(maxGap, b - last);
  const lat = fr.map((f) => f[1]).filter((x) => x != null);
  const sizes = {};
  for (const f of fr) sizes[`${f[2]}x${f[3]}`] = (sizes[`${f[2]}x${f[3]}`] || 0) + 1;
  const series = statsSeries(stats).filter((s) => s.t > a + 500 && s.t <= b + 500);
  const bytes = (get) => counterDelta(stats, get, a, b);
  const videoBytes = bytes((s) => (s.v ? (s.v.bytesReceived || 0) + (s.v.headerBytesReceived || 0) : null));
  const audioBytes = bytes((s) => (s.a ? (s.a.bytesReceived || 0) + (s.a.headerBytesReceived || 0) : null));
  const transportBytes = bytes((s) => s.transportBytesReceived);
  const lost = bytes((s) => s.v?.packetsLost), received = bytes((s) => s.v?.packetsReceived);
  const jbDelay = bytes((s) => s.v?.jitterBufferDelay), jbCount = bytes((s) => s.v?.jitterBufferEmittedCount);
  const gens = new Set(stats.filter((s) => s.t >= a && s.t <= b).map((s) => s.gen));
  const span = spanMs(stats, a, b);
  return {
    seconds: r1(sec),
    fps: r1(rendered / sec),
    decodedFps: r1((1000 * bytes((s) => s.v?.framesDecoded)) / span),
    framesWithCode: lat.length, framesRead: fr.length,
    latency: { p50: percentile(lat, 50), p95: percentile(lat, 95), max: percentile(lat, 100), min: percentile(lat, 0) },
    freezes: bytes((s) => s.v?.freezeCount),
    freezeSeconds: r1(bytes((s) => s.v?.totalFreezesDuration)),
    maxFrameGapMs: Math.round(maxGap),
    kbps: Math.round(((transportBytes || videoBytes + audioBytes) * 8) / span),
    videoKbps: Math.round((videoBytes * 8) / span),
    audioKbps: Math.round((audioBytes * 8) / span),
    kbpsMin1s: series.length ? Math.round(Math.min(...series.map((s) => s.kbps))) : null,
    packetsLost: lost, lossPct: received + lost > 0 ? r1((100 * lost) / (received + lost)) : null,
    nacks: bytes((s) => s.v?.nackCount), plis: bytes((s) => s.v?.pliCount), keyFrames: bytes((s) => s.v?.keyFramesDecoded),
    jitterBufferMs: jbCount > 0 ? r1((1000 * jbDelay) / jbCount) : null,
    rttMs: r1(percentile(series.map((s) => s.rttMs), 50)),
    sizes, minWidth: fr.length ? Math.min(...fr.map((f) => f[2])) : null,
    peerConnections: gens.size,
  };
}

// After the cap drops at `at`: ms until the first rendered frame F from which the latency is back under
// `limitMs` and stays there until `until`: every `windowMs` window of rendered frames starting at or
// after F has its p90 latency ≤ `limitMs` (a frame without a readable code counts as over), and no gap
// between rendered frames after F exceeds `maxGapMs` (a freeze is not "back under"). A window, not every
// single frame: one frame held up once by a busy 2-core machine (CI saw a lone 223 ms frame 7 s after a
// recovery at p95 90 ms) is not a backlog; a backlog that has not drained fills whole windows. The
// caller checks the window's maximum separately. 0 when the latency never went over. null: not
// recovered before `until`.
export function recoveryMs({ frames }, at, until, { limitMs = 200, maxGapMs = 500, windowMs = 1000 } = {}) {
  const fr = frames.filter((f) => f[0] >= at && f[0] <= until);
  if (!fr.length) return null;
  const over = (f) => f[1] == null || f[1] > limitMs;
  const bad = fr.map((f, i) => {
    const next = i + 1 < fr.length ? fr[i + 1][0] : until;
    if (next - f[0] > maxGapMs) return true;
    const start = Math.max(fr[0][0], Math.min(f[0], until - windowMs));   // the last second: its whole window
    let n = 0, o = 0;
    for (const g of fr) if (g[0] >= start && g[0] < start + windowMs) { n++; if (over(g)) o++; }
    return o > 0.1 * n;
  });
  const last = bad.lastIndexOf(true);
  if (last === fr.length - 1) return null;
  if (last === -1) {
    // fine from the first frame after the step: recovered at once if that frame came soon enough
    return fr[0][0] - at <= maxGapMs ? 0 : fr[0][0] - at;
  }
  return fr[last + 1][0] - at;
}

// After the cap goes up at `at`: ms until the received bitrate (1 s intervals) first reaches `kbit`.
export function rampMs({ stats }, at, until, kbit) {
  const hit = statsSeries(stats).find((s) => s.t > at && s.t <= until && s.kbps >= kbit);
  return hit ? hit.t - at : null;
}
