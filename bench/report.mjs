// Turns the benchmark's results object into bench/results/latest.{json,md} and the data files that
// bench/plot.gp draws into bench/results/latest.png. Also prints the markdown table.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const PHASES = [
  ['offer_to_post', 'createOffer + setLocalDescription + ICE gathering (browser)'],
  ['post_to_answer', 'offer → answer (POST /whep: the service)'],
  ['answer_to_ice_connected', 'answer → ICE connected'],
  ['ice_to_dtls_connected', 'ICE → DTLS connected'],
  ['connected_to_captured', 'DTLS connected → first shown frame captured'],
  ['captured_to_received', 'captured → its last packet received (encode + send)'],
  ['received_to_rendered', 'received → rendered (jitter buffer + decode + render)'],
  ['total', 'total: offer → first rendered frame'],
];
const f = (x, unit = '') => (x == null || Number.isNaN(x) ? 'n/a' : `${x}${unit}`);
const mib = (kib) => (kib == null ? 'n/a' : `${(kib / 1024).toFixed(1)} MiB`);
const ok = (x, limit) => (x == null ? '' : x <= limit ? ' ✅' : ' ❌');

function wireTable(wire) {
  if (!wire || wire.error) return `n/a${wire?.error ? ` (${wire.error})` : ''}`;
  const rows = Object.entries(wire).map(([ssrc, w]) => `| ${w.kind} (PT ${w.payloadType}, SSRC ${ssrc}) | ${w.packetsPerSecond} | ${w.packetsPerFrame} | ${w.sizeP50} / ${w.sizeMax} | ${w.kbps} | ${w.headerExtension} | ${w.marker} | ${w.tsStepMedian} | ${w.tsStepsOffMedian} | ${w.tsStepsCommon.map(([s, n]) => `${s}×${n}`).join(' ')} | ${w.arrivalMinusRtpTimeMs.p50} / ${w.arrivalMinusRtpTimeMs.p90} / ${w.arrivalMinusRtpTimeMs.max} |`);
  return ['| stream | packets/s | packets/frame | size p50 / max (B) | kbit/s | with header extension | marker set | RTP ts step (median) | steps ≠ median | common steps | arrival − RTP time p50 / p90 / max (ms, relative) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |', ...rows].join('\n');
}

export function writeReport(R, { RESULTS, OUT }) {
  const P = R.peercam || {}, C = R.c2c || {}, A = R.aiortc || {};
  const M = R.marks;
  const lat = (X, k) => X.latency?.latency?.[k];
  const cpu = (n) => P.cpu?.[n];
  const viewersMeasured = Object.keys(P.cpu || {}).map(Number).filter((n) => n > 0);
  const aCol = (x) => (A.skipped ? '—' : x);

  const rows = [];
  const row = (metric, pc, cc, ai, mark = '') => rows.push(`| ${metric} | ${pc} | ${cc} | ${ai} | ${mark} |`);
  row('glass-to-glass latency p50 (1 viewer, 1280x720@30)', f(lat(P, 'p50'), ' ms'), f(lat(C, 'p50'), ' ms'), aCol(f(lat(A, 'p50'), ' ms')), `≤ ${M.p50} ms${ok(lat(P, 'p50'), M.p50)}`);
  row('latency p90', f(lat(P, 'p90'), ' ms'), f(lat(C, 'p90'), ' ms'), aCol(f(lat(A, 'p90'), ' ms')), '');
  row('latency p99', f(lat(P, 'p99'), ' ms'), f(lat(C, 'p99'), ' ms'), aCol(f(lat(A, 'p99'), ' ms')), '');
  row('… of which code → frame received (p50)', f(P.latency?.recvLatency?.p50, ' ms'), f(C.latency?.recvLatency?.p50, ' ms'), aCol(f(A.latency?.recvLatency?.p50, ' ms')), 'sender + network');
  row('… of which received → rendered (p50)', f(P.latency?.recvToRender?.p50, ' ms'), f(C.latency?.recvToRender?.p50, ' ms'), aCol(f(A.latency?.recvToRender?.p50, ' ms')), 'Chromium jitter buffer + decode + render');
  row('Chromium video jitter-buffer delay (mean per frame)', f(P.inbound?.jitterBufferDelayMs, ' ms'), f(C.inbound?.jitterBufferDelayMs, ' ms'), aCol(f(A.inbound?.jitterBufferDelayMs, ' ms')), `audio: ${f(P.inbound?.audio?.jitterBufferDelayMs, ' ms')}`);
  const vo = (X) => (X.videoOnly ? `${f(X.videoOnly.latency.p50, ' ms')} / ${f(X.videoOnly.latency.p99, ' ms')} (jitter buffer ${f(X.videoOnly.inbound?.jitterBufferDelayMs, ' ms')})` : 'n/a');
  row('latency p50 / p99 without audio (diagnostic: nothing to lip-sync with)', vo(P), vo(C), '', '');
  const un = P.unsynced ? `${f(P.unsynced.latency.p50, ' ms')} / ${f(P.unsynced.latency.p99, ' ms')} (jitter buffer ${f(P.unsynced.inbound?.jitterBufferDelayMs, ' ms')})` : 'n/a';
  row('latency p50 / p99 with audio, not lip-synced (the page: POST /whep?sync=0)', un, '', '', `≤ ${M.p50} ms${ok(P.unsynced?.latency?.p50, M.p50)}`);
  row('Chromium audio: concealed samples (loss-free loopback)', f(P.inbound?.audio?.concealedPct, ' %'), f(C.inbound?.audio?.concealedPct, ' %'), aCol(f(A.inbound?.audio?.concealedPct, ' %')), 'NetEq filled in; ~0 expected');
  row('rendered frame rate', f(P.latency?.renderedFps, ' fps'), f(C.latency?.renderedFps, ' fps'), aCol(f(A.latency?.renderedFps, ' fps')), '');
  row(`offer → first rendered frame, median of ${P.firstFrameSummary?.cold?.n ?? 0} (cold: no other viewer)`, f(P.firstFrameSummary?.cold?.median, ' ms'),
    f(C.firstFrameSummary?.median, ' ms'), aCol(f(A.firstFrameSummary?.median, ' ms')), `≤ ${M.firstFrame} ms${ok(P.firstFrameSummary?.cold?.median, M.firstFrame)}`);
  row('offer → first rendered frame, first viewer after service start', f(P.firstFrameSummary?.firstAfterStart?.median, ' ms'), f(C.firstFrameSummary?.all?.[0], ' ms (first pair)'), aCol(f(A.firstFrameSummary?.all?.[0], ' ms (first)')), '');
  row(`offer → first rendered frame, median of ${P.firstFrameSummary?.warm?.n ?? 0} (warm: 1 viewer already watching)`, f(P.firstFrameSummary?.warm?.median, ' ms'), '', '', `≤ ${M.firstFrame} ms${ok(P.firstFrameSummary?.warm?.median, M.firstFrame)}`);
  row('service CPU, idle (0 viewers)', f(cpu(0)?.cpuPct, ' %'), '', '', '% of one core');
  for (const n of viewersMeasured) {
    row(`service CPU, ${n} viewer${n > 1 ? 's' : ''}`, `${f(cpu(n)?.cpuPct, ' %')} (${f(cpu(n)?.encodedFps)} fps enc.)`, '', n === 1 && !A.skipped ? f(A.cpu1?.cpuPct, ' %') : '', '% of one core');
  }
  for (const n of viewersMeasured.filter((n) => n > 1)) {
    row(`per extra viewer ((CPU(${n}) − CPU(1)) / ${n - 1})`, `${f(P.perViewer?.[n], ' %')} (fan-out threads only: ${f(P.perViewerFanout?.[n], ' %')})`, '', '', `≤ ${M.perViewer} % of one core${ok(P.perViewer?.[n], M.perViewer)}`);
  }
  row('RSS idle / ' + viewersMeasured.join(' / ') + ' viewers', [0, ...viewersMeasured].map((n) => (cpu(n) ? (cpu(n).rssKiB / 1024).toFixed(1) : 'n/a')).join(' / ') + ' MiB', '', A.cpu1 ? mib(A.cpu1.rssKiB) : '', '');
  row('aarch64 stripped binary', R.aarch64 ? `${(R.aarch64.bytes / 1048576).toFixed(2)} MiB (${R.aarch64.bytes} B${R.aarch64.stripped === false ? ', NOT stripped' : ''})` : 'n/a (run make cross)', '', '', '');
  const table = ['| metric | peercam | Chromium→Chromium | aiortc | marks |', '| --- | --- | --- | --- | --- |', ...rows].join('\n');

  // first-frame breakdown
  const cold = P.firstFrameSummary?.cold?.phasesMedian || {}, warm = P.firstFrameSummary?.warm?.phasesMedian || {};
  const noWait = P.firstFrameSummary?.coldNoWait?.phasesMedian || {};
  const cph = C.firstFrameSummary?.phasesMedian || {}, aph = A.firstFrameSummary?.phasesMedian || {};
  const fas = P.firstFrameSummary?.firstAfterStart?.phasesMedian || {};
  const breakdown = ['| phase (median, ms) | peercam cold | peercam warm | peercam cold, offer without candidates | peercam first viewer after start | Chromium→Chromium | aiortc |', '| --- | --- | --- | --- | --- | --- | --- |',
    ...PHASES.map(([k, label]) => `| ${label} | ${f(cold[k])} | ${f(warm[k])} | ${f(noWait[k])} | ${f(fas[k])} | ${f(cph[k])} | ${A.skipped ? '—' : f(aph[k])} |`)].join('\n');

  const cpuRows = ['| viewers | service CPU % | without capture/encode/audio threads | encoded fps | keyframes | dropped | encode ms | RSS | machine busy (% of 1 core, of 200) | load avg | viewer-1 latency p50/p99 | viewer-1 code→received p50 | viewer-1 jitter buffer video / audio | fps: viewer 1 rendered / others decoded | top threads (% of a core) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |'];
  for (const n of [0, ...viewersMeasured]) {
    const w = cpu(n);
    if (!w) continue;
    const top = Object.entries(w.threads || {}).sort((a, b) => b[1] - a[1]).slice(0, 4).map(([k, v]) => `${k.replace(/#\d+$/, '')} ${v}`).join(', ');
    const l = n === 1 ? P.latency?.latency : w.viewer1Latency;
    const rl = n === 1 ? P.latency?.recvLatency : w.viewer1RecvLatency;
    const ib = n === 1 ? P.inbound : w.viewer1Inbound;
    const fps = n === 1 ? `${P.latency?.renderedFps}` : n === 0 ? '' : `${w.viewer1Fps} / ${(w.otherViewersFps || []).join(' ')}`;   // others: decoded fps
    cpuRows.push(`| ${n} | ${w.cpuPct} | ${f(w.fanoutCpuPct)} | ${f(w.encodedFps)} | ${f(w.keyframes)} | ${f(w.droppedFrames)} | ${f(w.encodeMs)} | ${mib(w.rssKiB)} | ${w.machineBusyPct} | ${w.loadavg} | ${l ? `${l.p50} / ${l.p99}` : ''} | ${rl ? f(rl.p50) : ''} | ${ib ? `${f(ib.jitterBufferDelayMs)} / ${f(ib.audio?.jitterBufferDelayMs)}` : ''} | ${fps} | ${top} |`);
  }
  if (P.cpuIdleAfter) {
    const w = P.cpuIdleAfter;
    cpuRows.push(`| 0 (after) | ${w.cpuPct} | ${f(w.fanoutCpuPct)} | ${f(w.encodedFps)} | ${f(w.keyframes)} | ${f(w.droppedFrames)} | ${f(w.encodeMs)} | ${mib(w.rssKiB)} | ${w.machineBusyPct} | ${w.loadavg} | | | | | |`);
  }

  const detail = (X) => X.latency ? `p50 ${X.latency.latency.p50} / p90 ${X.latency.latency.p90} / p99 ${X.latency.latency.p99} / max ${X.latency.latency.max} ms over ${X.latency.latency.n} frames in ${X.latency.seconds} s; ` +
    `code read on ${X.latency.readRatio} % of rendered frames (min bit margin ${X.latency.minMargin}), ${X.latency.mismatchedDropped} of ${X.latency.samplesRead} dropped as drawn-frame ≠ presented-frame${X.latency.matchNote ? ` (${X.latency.matchNote})` : ''}, ${X.latency.decreasing} decreasing / ${X.latency.repeated} repeated codes, ` +
    `code step p50 ${X.latency.codeStepMs.p50} ms max ${X.latency.codeStepMs.max} ms; Chromium decode p50 ${X.latency.decodeMs.p50} ms; sizes ${JSON.stringify(X.latency.sizes)}` : 'n/a';
  const md = `# peercam benchmark — ${R.date}

Machine: ${R.machine.cpu} × ${R.machine.cores} cores, load average ${R.machine.loadavgAtStart} at start / ${R.machine.loadavgAtEnd} at end
(a shared development machine: other builds and tests may run at the same time — see "machine busy").
${R.machine.chromium}; peercam ${P.version ?? '?'} (${R.machine.binary}, built ${R.machine.binaryMtime}), git ${R.machine.gitRev}.
Source 1280x720@30 testsrc, 2500 kbps, tone audio; everything on loopback in a private network namespace. Run took ${R.durationS} s.

${table}

Latency = Date.now() in Chromium's requestVideoFrameCallback − the timestamp code of that frame.
"code → frame received" uses rVFC's metadata.receiveTime (last packet of the frame); the rest is the receiving browser.
Viewers for the CPU rows: viewer 1 is a page with a visible <video> (the latency probe keeps running in it); viewers
2..n are WHEP RTCPeerConnections (video + audio) in a second page without a <video> — Chromium still receives, decrypts
and decodes each stream (decoded fps in the table), it just does not render them. Pages with a <video> each took about
twice the browser CPU and saturated this 2-core machine at 8 viewers, so the service dropped frames and looked cheaper.
Only the service pid is counted. "fan-out threads" = the service minus its capture/encode/audio threads (which do not
depend on the number of viewers): the cost a viewer adds, without the encoder's noise. The 1-viewer CPU window lies
inside the latency run.

## First frame: where the time goes

${breakdown}

Cold = the only viewer (the service encodes nothing while nobody watches, so the encoder starts on this offer);
warm = another viewer is already watching. Marks come from RTCPeerConnection events and getStats() polled every ~5 ms.
All runs (ms): cold ${JSON.stringify(P.firstFrameSummary?.cold?.all)}, warm ${JSON.stringify(P.firstFrameSummary?.warm?.all)}, cold without waiting for ICE gathering ${JSON.stringify(P.firstFrameSummary?.coldNoWait?.all)}, Chromium→Chromium ${JSON.stringify(C.firstFrameSummary?.all)}${A.skipped ? '' : `, aiortc ${JSON.stringify(A.firstFrameSummary?.all)}`}.

## Service CPU and memory by viewers

${cpuRows.join('\n')}

## On the wire (peercam → viewer 1, RTP headers read on lo by bench/rtpwatch.py)

${wireTable(P.wire)}

## Details

- peercam: ${detail(P)}
- peercam, audio + video not lip-synced (the page's mode): ${P.unsynced ? detail({ latency: P.unsynced }) : 'n/a'}; receiver ${JSON.stringify(P.unsynced?.inbound || {})}
- peercam, video-only offer: ${P.videoOnly ? detail({ latency: P.videoOnly }) : 'n/a'}; receiver ${JSON.stringify(P.videoOnly?.inbound || {})}
- Chromium→Chromium: ${detail(C)}; sender ${JSON.stringify(C.outbound || {})}
- aiortc: ${A.skipped ? `skipped — ${A.skipped}` : detail(A)}
- Chromium→Chromium, video only: ${C.videoOnly ? detail({ latency: C.videoOnly }) : 'n/a'}
- peercam receiver stats (viewer 1): ${JSON.stringify(P.inbound || {})}
- answer: ${JSON.stringify(P.firstFrameSummary?.cold?.runs?.[0]?.info || {})}
- Chromium→Chromium receiver stats: ${JSON.stringify(C.inbound || {})}
- aiortc receiver stats: ${JSON.stringify(A.inbound || {})}
${R.errors.length ? `\n## Errors\n\n${R.errors.map((e) => `- ${e}`).join('\n')}\n` : ''}`;

  // JSON: everything, the raw latency samples reduced to the latency column
  const json = structuredClone(R);
  for (const X of [json.peercam, json.c2c, json.aiortc]) {
    if (X?.latencyRaw) {
      X.latencySamplesMs = X.latencyRaw.map((s) => s[0]);
      X.latencySampleCodes = X.latencyRaw.map((s) => s[4]);   // capture time (ms mod 2^32) of each sample
    }
    if (X) delete X.latencyRaw;
  }
  writeFileSync(join(RESULTS, 'latest.json'), `${JSON.stringify(json, null, 1)}\n`);
  writeFileSync(join(RESULTS, 'latest.md'), md);

  // plot data
  const cdf = (samples) => {
    const v = (samples || []).map((s) => s[0]).sort((a, b) => a - b);
    return v.map((x, i) => `${x} ${((i + 1) / v.length).toFixed(4)}`).join('\n');
  };
  writeFileSync(join(OUT, 'cdf_peercam.dat'), `${cdf(P.latencyRaw)}\n`);
  writeFileSync(join(OUT, 'cdf_c2c.dat'), `${cdf(C.latencyRaw)}\n`);
  writeFileSync(join(OUT, 'cdf_aiortc.dat'), `${cdf(A.latencyRaw)}\n`);
  const series = (samples, fps) => (samples || []).map((s, i) => `${(i / fps).toFixed(3)} ${s[0]} ${s[1] ?? ''}`).join('\n');
  writeFileSync(join(OUT, 'series_peercam.dat'), `${series(P.latencyRaw, P.latency?.renderedFps || 30)}\n`);
  writeFileSync(join(OUT, 'series_c2c.dat'), `${series(C.latencyRaw, C.latency?.renderedFps || 30)}\n`);
  writeFileSync(join(OUT, 'cpu.dat'), `${[0, ...viewersMeasured].filter((n) => cpu(n)).map((n) => `${n} ${cpu(n).cpuPct} ${(cpu(n).rssKiB / 1024).toFixed(2)} ${cpu(n).machineBusyPct} ${cpu(n).fanoutCpuPct}`).join('\n')}\n`);
  // stacked bars: gathering, answer, ICE+DTLS, connected→first frame rendered
  const ffLine = (name, p) => {
    const conn = (p.answer_to_ice_connected ?? 0) + (p.ice_to_dtls_connected ?? 0);
    const rest = (p.total ?? 0) - (p.offer_to_post ?? 0) - (p.post_to_answer ?? 0) - conn;
    return `"${name}" ${[p.offer_to_post, p.post_to_answer, conn, rest].map((x) => Math.max(0, Math.round(x ?? 0))).join(' ')}`;
  };
  const bars = [['peercam cold', cold], ['peercam warm', warm], ['peercam cold, no ICE wait', noWait], ['peercam 1st after start', fas],
    ['Chromium→Chromium', cph], ...(A.skipped ? [] : [['aiortc', aph]])];
  writeFileSync(join(OUT, 'firstframe.dat'), bars.map(([n, p]) => ffLine(n, p)).join('\n') + '\n');
  const ffmax = Math.max(300, ...bars.map(([, p]) => p.total ?? 0));
  writeFileSync(join(OUT, 'vars.gp'), `has_aiortc = ${A.latencyRaw?.length ? 1 : 0}\nc1 = ${cpu(1)?.cpuPct ?? 0}\nffmax = ${Math.ceil(ffmax)}\n`);
  writeFileSync(join(OUT, 'title.txt'), `peercam bench ${R.date.slice(0, 16)} · ${R.machine.cores}-core ${R.machine.cpu} · load ${R.machine.loadavgAtStart}`);

  console.log(`\n${table}\n\nfirst frame breakdown:\n${breakdown}\n\nCPU by viewers:\n${cpuRows.join('\n')}\n`);
  if (R.errors.length) console.log(`errors:\n${R.errors.map((e) => `  ${e}`).join('\n')}`);
}
