// Turns the link rig's results (tests/links/links.mjs --out=FILE) into
//   bench/results/links.md    side-by-side table: peercam vs Chromium→Chromium per scenario
//   bench/results/links.json  the numbers (metrics, checks, per-second series; no per-frame data)
//   bench/out/links/*.dat     data for bench/links.gp (bitrate and latency over time), vars.gp
//   node links-report.mjs RAW.json
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const RESULTS = join(HERE, 'results');
const OUT = join(HERE, 'out', 'links');
const raw = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { meta, runs } = raw;
mkdirSync(RESULTS, { recursive: true });
rmSync(OUT, { recursive: true, force: true });
mkdirSync(OUT, { recursive: true });

const SENDER = { peercam: 'peercam', c2c: 'Chromium→Chromium' };
const f = (x, unit = '') => (x == null || Number.isNaN(x) ? '—' : `${x}${unit}`);
const sec = (ms) => (ms == null ? 'never' : `${(ms / 1000).toFixed(2)} s`);
const size = (sizes) => {
  const e = Object.entries(sizes || {}).sort((a, b) => b[1] - a[1]);
  if (!e.length) return 'no frames';
  const total = e.reduce((s, [, n]) => s + n, 0);
  return e.slice(0, 2).map(([k, n]) => `${k}${e.length > 1 ? ` ${Math.round((100 * n) / total)} %` : ''}`).join(', ');
};
const find = (scenario, sender) => runs.find((r) => r.scenario === scenario && r.sender === sender);
const verdict = (r, pred = () => true) => {
  const c = (r?.checks || []).filter(pred);
  if (!c.length) return '';
  const failed = c.filter((x) => !x.ok);
  return failed.length ? `❌ ${failed.map((x) => x.label).join('; ')}` : '✅';
};

const rows = [];
const row = (scenario, sender, what, cap, m, extra = {}) => rows.push(`| ${scenario} | ${sender} | ${what} | ${f(cap)} | ${m ? `${m.kbps}` : '—'} | ${m ? `${f(m.latency.p50)} / ${f(m.latency.p95)}` : '—'} | ${m ? f(m.fps) : '—'} | ${m ? `${m.freezes} (${m.freezeSeconds} s), ${m.maxFrameGapMs} ms` : '—'} | ${extra.recovery ?? ''} | ${extra.ramp ?? ''} | ${m ? size(m.sizes) : '—'} | ${m ? f(m.lossPct, ' %') : '—'} | ${extra.verdict ?? ''} |`);
const scenarios = [...new Set(runs.map((r) => r.scenario))];
for (const sc of scenarios) {
  for (const sender of ['peercam', 'c2c']) {
    const r = find(sc, sender);
    if (!r) continue;
    const S = SENDER[sender], M = r.metrics || {};
    if (!r.metrics) { row(sc, S, `did not run: ${(r.errors || []).join(' | ').slice(0, 200)}`, null, null, { verdict: verdict(r) }); continue; }
    if (sc === 'cap1000' || sc === 'cap500') row(sc, S, '1 viewer', r.links[0].cap, M.v1, { verdict: verdict(r) });
    else if (sc === 'step') {
      row(sc, S, '4000, last 6 s before the step', 4000, M.before);
      row(sc, S, '800, from 3 s after the step', 800, M.low, { recovery: sec(M.recoveryMs), verdict: verdict(r, (c) => /step down/.test(c.label)) });
      row(sc, S, '4000 again, from 6 s after', 4000, M.high, { ramp: sec(M.rampMs), verdict: verdict(r, (c) => /step up/.test(c.label)) });
    } else if (sc === 'two') {
      row(sc, S, 'viewer on 800 kbit/s', 800, M.capped, { verdict: verdict(r, (c) => /800/.test(c.label)) });
      row(sc, S, 'uncapped viewer', null, M.uncapped, { verdict: verdict(r, (c) => /uncapped/.test(c.label)) });
    } else if (sc === 'loss') row(sc, S, '1 viewer, 3 % UDP loss', null, M.v1, { verdict: verdict(r) });
  }
}
const T = meta.thresholds;
const table = ['| scenario | sender | viewer / phase | cap kbit/s | received kbit/s | latency p50 / p95 ms | fps rendered | freezes (frozen s), longest frame gap | recovery after step down (< 200 ms) | ≥ 2000 kbit/s after step up | picture | video packets lost (after NACK) | acceptance |',
  '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |', ...rows].join('\n');

const checkLines = runs.flatMap((r) => r.checks.map((c) => `- ${c.ok ? 'PASS' : 'FAIL'} ${r.scenario} ${SENDER[r.sender]}: ${c.label} — ${c.detail}`)).join('\n');
const infoLines = runs.flatMap((r) => (r.info || []).map((l) => `- ${r.scenario} ${SENDER[r.sender]}: ${l}`)).join('\n');
const deviceLines = runs.filter((r) => r.sender === 'peercam').flatMap((r) => r.viewers.map((v) => {
  const d = v.device?.video ? JSON.stringify(v.device.video) : JSON.stringify(v.device ?? null);
  return `- ${r.scenario} ${v.name}: page ${JSON.stringify(v.page)}; bottleneck ${JSON.stringify(v.net)}; device /api/settings video ${d}`;
})).join('\n');
// The ladder's cost: the device's CPU by thread over each scenario's measuring window, with what
// each rung encoded (a rung nobody reads is not encoded).
const cpuRows = runs.filter((r) => r.sender === 'peercam' && r.deviceCpu?.threads).map((r) => {
  const t = r.deviceCpu.threads;
  const v = r.viewers.find((x) => x.device?.video)?.device;
  const rungs = [...new Set((v?.links || []).map((l) => l.rung))].join(' + ') || '?';
  const other = Object.entries(t).filter(([k]) => !/^(encode-video|capture-video|audio|tokio-rt-worker)$/.test(k)).reduce((a, [, x]) => a + x, 0);
  return `| ${r.scenario} | ${r.viewers.length} | ${rungs} | ${f(r.deviceCpu.cpuPct)} | ${f(t['encode-video'] ?? 0)} | ${f(v?.video?.encode_ms)} / ${f(v?.video?.low_rung_encode_ms)} | ${f(t['capture-video'] ?? 0)} | ${f(t.audio ?? 0)} | ${f(t['tokio-rt-worker'] ?? 0)} | ${f(Math.round(other * 10) / 10)} |`;
});
const cpuTable = cpuRows.length ? `| scenario | viewers | rungs read | service CPU % of a core | encode thread | encode ms/frame main / low (last) | capture | audio | tokio (sessions, pacing, SRTP) | other |
|---|---|---|---|---|---|---|---|---|---|
${cpuRows.join('\n')}` : '(no CPU windows in this run)';

const senderLines = runs.filter((r) => r.sender === 'c2c' && r.senderStats?.length).map((r) => {
  const last = r.senderStats.at(-1);
  return `- ${r.scenario}: ${Object.entries(last).filter(([k]) => k !== 't').map(([id, o]) => `${id}: target ${Math.round((o.targetBitrate || 0) / 1000)} kbit/s, ${o.frameWidth}x${o.frameHeight} @ ${o.framesPerSecond} fps, limited by ${o.qualityLimitationReason}${o.encoderImplementation ? `, ${o.encoderImplementation}` : ''}`).join('; ')}`;
}).join('\n');

const md = `# peercam over shaped links — ${meta.date}

Machine: ${meta.cpu} × ${meta.cores} cores, load average ${meta.loadavgAtStart} at start / ${meta.loadavgAtEnd} at end (a shared
machine: builds may run at the same time; compare the two senders of the same run). ${meta.chromium};
${meta.version ?? 'peercam ?'} (${meta.binary ?? '?'}, built ${meta.binaryMtime ?? '?'}), git ${meta.gitRev}${meta.gitDirty ? ` with ${meta.gitDirty} uncommitted file(s) in src/, web/, Cargo.* at run time (the binary may include them)` : ''}${meta.deviceSet ? `; device settings added: \`${meta.deviceSet}\`` : ''}. Run took ${meta.durationS} s.

Source: ${meta.source}. Each viewer is Debian's Chromium in its own network namespace, joined to the device's
namespace by a veth pair (MTU 1500); the device → viewer direction is capped by \`tbf rate C burst 3000 latency 300ms\`
on the device-side veth; loss is \`iptables -m statistic --mode random\` on UDP arriving at the viewer. peercam is
watched through its own page (login, then \`POST /whep?sync=0\`); the Chromium→Chromium reference sends a 1280x720@30
canvas with the same timestamp code (\`captureStream(30)\`, H.264 preferred) from a Chromium in the device namespace.
Latency = \`Date.now()\` at \`requestVideoFrameCallback\` − the frame's timestamp code (one clock). Numbers are over
${meta.measureS} s after a ${meta.rampS} s ramp (steady, two viewers, loss); the step test runs 12 s at 4000, 12 s at 800,
12 s at 4000.

${table}

Acceptance (the issue): steady caps ≥ ${T.steadyFps} fps, freezeCount +0, p50 ≤ ${T.steadyP50} ms; step: latency ≤ ${T.stepLatencyMs} ms
within ${T.stepRecoveryMs / 1000} s of the step down (from then to the step up every 1 s window has p90 ≤ ${T.stepLatencyMs} ms, no frame over ${T.stepLowMaxMs} ms, no gap over 500 ms), ≥ ${T.stepUpKbps} kbit/s
within ${T.stepUpMs / 1000} s of the step up; two viewers: uncapped keeps 1280x720, ≥ ${T.twoUncappedKbps} kbit/s, ≥ ${T.twoUncappedFps} fps, the
800 kbit/s one ≥ ${T.twoCappedFps} fps and no freeze; loss: no gap between rendered frames over ${T.lossMaxFreezeMs} ms, p50 ≤ ${T.lossP50} ms.
"received kbit/s" is the transport's bytesReceived (RTP + RTCP, all streams) per second; the bottleneck also
carries IP/UDP/SRTP overhead. Plot: \`links.png\` (received bitrate and per-frame latency over time).

## The ladder's CPU (peercam, measuring window)

${cpuTable}

## Checks

${checkLines}

## Details

${infoLines}

### peercam: page and device state at the end

${deviceLines}

### Chromium→Chromium sender at the end

${senderLines}
`;
writeFileSync(join(RESULTS, 'links.md'), md);

const json = {
  meta,
  runs: runs.map((r) => ({
    scenario: r.scenario, title: r.title, sender: r.sender, links: r.links, events: r.events, metrics: r.metrics,
    checks: r.checks, errors: r.errors, loadavg: r.loadavg, deviceCpu: r.deviceCpu,
    viewers: r.viewers.map((v) => ({
      name: v.name, cap: v.cap, loss: v.loss, live: v.live, net: v.net, page: v.page, pageErrors: v.pageErrors,
      series: { columns: ['t_s', 'kbps', 'video_kbps', 'decoded_fps', 'width', 'height', 'rtt_ms'], rows: v.series },
    })),
  })),
};
writeFileSync(join(RESULTS, 'links.json'), `${JSON.stringify(json)}\n`);

// plot data: one panel per scenario viewer
const panels = [];
for (const sc of scenarios) {
  const any = runs.find((r) => r.scenario === sc);
  any.viewers.forEach((v, k) => {
    const id = `${sc}_v${k + 1}`;
    const label = sc === 'two' ? `${any.title}: ${v.cap ? `viewer on ${v.cap} kbit/s` : 'uncapped viewer'}` : any.title;
    // cap over time (from the scenario's events), uncapped drawn as nothing
    const capPts = [];
    let cap = v.cap;
    const end = Math.max(...any.viewers[k].series.map((s) => s[0]), 1);
    capPts.push([0, cap]);
    for (const e of any.events.filter((x) => x.link === k + 1)) { capPts.push([e.t, cap]); cap = e.cap; capPts.push([e.t, cap]); }
    capPts.push([end, cap]);
    writeFileSync(join(OUT, `${id}_cap.dat`), `${capPts.map(([t, c]) => `${t} ${c ?? 'NaN'}`).join('\n')}\n`);
    for (const sender of ['peercam', 'c2c']) {
      const r = find(sc, sender);
      const vv = r?.viewers?.[k];
      writeFileSync(join(OUT, `${id}_${sender}_rate.dat`), `${(vv?.series || []).map((s) => `${s[0]} ${s[1]}`).join('\n') || '0 NaN'}\n`);
      writeFileSync(join(OUT, `${id}_${sender}_lat.dat`), `${(vv?.frames || []).filter((x) => x[1] != null && x[0] >= -2).map((x) => `${x[0]} ${Math.max(1, x[1])}`).join('\n') || '0 NaN'}\n`);
    }
    panels.push({ id, label });
  });
}
writeFileSync(join(OUT, 'panels.gp'), `${panels.map((p, i) => `id${i + 1} = '${p.id}'; title${i + 1} = '${p.label.replace(/'/g, '')}'`).join('\n')}\nnpanels = ${panels.length}\n` +
  `maintitle = 'peercam vs Chromium→Chromium over shaped links · ${meta.date.slice(0, 16)} · ${meta.cores}-core · load ${meta.loadavgAtStart}'\n`);
console.log(`\n${table}\n`);
console.log(`links-report: wrote ${join(RESULTS, 'links.md')}, ${join(RESULTS, 'links.json')}`);
