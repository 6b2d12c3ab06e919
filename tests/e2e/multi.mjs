// Three viewers at once: each decodes ≥ 90 % and renders ≥ 80 % of the frames the device sent, the device counts 3 viewers and encodes once
// (encoded_frames grows by ≤ 1.3 × fps × duration, not 3×), and closing the pages frees the device.
import {
  checkFrames, cpuSeconds, DEFAULT_CONFIG, inbound, remoteCandidate, installProbe, launchBrowser, main, openViewer, probeFor, rtcStats, sleep, startService, waitForLive,
} from './lib.mjs';

// 8 s, not 5: one ~1 s stall of a Chromium window on a busy 2-core machine (seen once: 117 of 149 frames)
// is not what this test is about, and over 5 s it alone fails the 80 % render check.
const FPS = 30, SECONDS = 8, VIEWERS = 3;
// Three windows share one 2-core machine and Chromium decodes and composites in software (--disable-gpu):
// three 1280x720 streams took Chromium to 167 % CPU in CI and rendered 14 of the 28 fps it decoded. What
// this test is about (one encode shared by three viewers, each served in full) does not depend on the size,
// so the device sends 640x360 (a quarter of the pixels) into small windows, and the machine is not the limit.
const VIEWPORT = { width: 640, height: 360 };
const SIZE = { width: 640, height: 360 };

await main('multi', async (t) => {
  const svc = await startService({ name: 'multi', config: { video: { fps: FPS, ...SIZE } } });
  t.info(`service at ${svc.url} (log: ${svc.logPath})`);
  const browser = await launchBrowser({ autoplay: true });
  // One context per viewer: separate windows, as three people would have.
  const viewers = await Promise.all(Array.from({ length: VIEWERS }, () => openViewer(browser, svc.url, { viewport: VIEWPORT })));
  const lives = await Promise.all(viewers.map(({ page }) => waitForLive(page)));
  t.check(true, `${VIEWERS} pages go live`, lives.map((l) =>
    `${l.waitedMs} ms (answer ${l.answered}, connected ${l.connected}, first frame ${l.firstFrame} ms)`).join('; '));
  await Promise.all(viewers.map(({ page }) => installProbe(page, { every: 3 })));
  await sleep(1000);

  const st0 = await Promise.all(viewers.map(({ page }) => rtcStats(page)));
  const s0 = await svc.settings();
  const cpu0 = cpuSeconds();
  const w0 = Date.now();
  const results = await Promise.all(viewers.map(({ page }) => probeFor(page, SECONDS * 1000)));
  const s1 = await svc.settings();
  const wall = (Date.now() - w0) / 1000;
  const cpu1 = cpuSeconds();
  const st1 = await Promise.all(viewers.map(({ page }) => rtcStats(page)));
  t.info(`CPU over ${wall.toFixed(1)} s (100 % = one core): ` + Object.keys(cpu1).map((k) =>
    `${k} ${((100 * (cpu1[k] - (cpu0[k] || 0))) / wall).toFixed(0)} %`).join(', '));
  st1.forEach((st, i) => {
    const v0 = inbound(st0[i], 'video'), v1 = inbound(st, 'video');
    t.info(`viewer ${i + 1}: framesDecoded +${v1.framesDecoded - v0.framesDecoded}, framesDropped +${(v1.framesDropped ?? 0) - (v0.framesDropped ?? 0)}, ` +
      `packetsLost ${v1.packetsLost}, freezes ${v1.freezeCount}, decode ${((1000 * (v1.totalDecodeTime - v0.totalDecodeTime)) / (v1.framesDecoded - v0.framesDecoded)).toFixed(1)} ms/frame`);
  });

  // What the device sent is the reference: on a loaded 2-core machine its test pattern may fall a little short of
  // 30 fps (CI saw 140 frames in 5.1 s), and the browser can only render what arrived. Each viewer must decode
  // ≥ 90 % of the encoded frames (the device delivered to all three) and render ≥ 80 % of them (Chromium's
  // software compositor, three windows on two cores).
  const sentFps = Math.min(FPS, (s1.video.encoded_frames - s0.video.encoded_frames) / wall);
  st1.forEach((st, i) => {
    const decoded = inbound(st, 'video').framesDecoded - inbound(st0[i], 'video').framesDecoded;
    t.check(decoded >= 0.9 * sentFps * wall, `viewer ${i + 1}: decoded what the device sent`,
      `${decoded} frames decoded, ${(sentFps * wall).toFixed(0)} encoded in the same ${wall.toFixed(2)} s (need ≥ 90 %)`);
  });
  results.forEach((r, i) => checkFrames(t, `viewer ${i + 1}`, r, { fps: sentFps }));
  const ports = st1.map((st) => { const c = remoteCandidate(st); return `${c.protocol} ${c.address}:${c.port}`; });
  t.check(ports.every((p) => p === `udp 127.0.0.1:${DEFAULT_CONFIG.webrtc.udp_port}`), 'all viewers share the one UDP port',
    ports.join(', '));
  t.check(s1.viewers === VIEWERS, `/api/settings counts ${VIEWERS} viewers`, `viewers ${s1.viewers}`);
  const encoded = s1.video.encoded_frames - s0.video.encoded_frames;
  const budget = 1.3 * FPS * wall;
  t.check(encoded > 0 && encoded <= budget, 'one encoder for all viewers',
    `encoded_frames +${encoded} in ${wall.toFixed(2)} s (≤ ${budget.toFixed(0)} allowed; ${VIEWERS} encoders would make ~${(VIEWERS * FPS * wall).toFixed(0)}), ` +
    `encoders_started ${s0.video.encoders_started} → ${s1.video.encoders_started}`);
  // The low rung may start for a viewer whose link reads as slow (a starved browser's late feedback looks
  // like a queue); that is the ladder working. What must not happen is the main picture's encoder restarting.
  const mainStarts = (s) => s.video.encoders_started - (s.video.low_rung_encoders_started ?? 0);
  t.check(mainStarts(s1) === mainStarts(s0), 'the main encoder did not restart while watching',
    `main rung ${mainStarts(s0)} → ${mainStarts(s1)}, low rung ${s0.video.low_rung_encoders_started} → ${s1.video.low_rung_encoders_started}`);
  const errors = viewers.flatMap((v) => v.errors);
  t.check(errors.length === 0, 'no page errors', errors.join(' | '));

  // Leaving: the page's pagehide handler DELETEs its WHEP session (and closes the peer connection).
  const c0 = Date.now();
  await Promise.all(viewers.map(({ context }) => context.close()));
  let s2 = await svc.settings();
  while (s2.viewers !== 0 && Date.now() - c0 < 5000) { await sleep(100); s2 = await svc.settings(); }
  t.check(s2.viewers === 0, 'closing the pages frees the device within 5 s',
    `viewers ${s2.viewers} after ${Date.now() - c0} ms`);
  await sleep(1500);
  const s3 = await svc.settings();
  await sleep(1000);
  const s4 = await svc.settings();
  t.check(s4.video.encoded_frames - s3.video.encoded_frames <= 1, 'no encoding with zero viewers',
    `encoded_frames +${s4.video.encoded_frames - s3.video.encoded_frames} in the last 1 s`);
});
