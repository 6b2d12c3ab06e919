// One viewer watches the built-in page: H.264 at 1280x720, ≥ 80 % of frames rendered, timestamp code
// increasing and fresh (latency p50/p90 printed), audio arriving with energy, a screenshot to look at.
import {
  ARTIFACTS, byId, checkFrames, DEFAULT_CONFIG, inbound, installProbe, launchBrowser, main, openViewer, pageState,
  probeFor, remoteCandidate, rtcStats, sleep, startService, waitForLive,
} from './lib.mjs';
import { join } from 'node:path';

const FPS = 30, SECONDS = 5, WIDTH = 1280, HEIGHT = 720;

await main('watch', async (t) => {
  const svc = await startService({ name: 'watch', config: { video: { width: WIDTH, height: HEIGHT, fps: FPS } } });
  t.info(`service at ${svc.url} (log: ${svc.logPath})`);
  const browser = await launchBrowser({ autoplay: true });
  const { page, errors } = await openViewer(browser, svc.url);

  const live = await waitForLive(page);
  t.check(true, 'page goes live', `after ${live.waitedMs} ms (answer ${live.answered} ms, ICE connected ${live.connected} ms, ` +
    `first frame ${live.firstFrame} ms after the offer started; ${live.attempts} attempt(s))`);
  await installProbe(page);
  await sleep(1000);   // let the jitter buffer and framesPerSecond settle

  const before = await rtcStats(page);
  const result = await probeFor(page, SECONDS * 1000);
  const after = await rtcStats(page);

  const v0 = inbound(before, 'video'), v1 = inbound(after, 'video');
  const a0 = inbound(before, 'audio'), a1 = inbound(after, 'audio');
  const vcodec = byId(after, v1.codecId), acodec = byId(after, a1.codecId);
  t.check(vcodec.mimeType === 'video/H264', 'video codec is H.264', `${vcodec.mimeType} ${vcodec.sdpFmtpLine ?? ''}`);
  t.check(v1.frameWidth === WIDTH && v1.frameHeight === HEIGHT, `video is ${WIDTH}x${HEIGHT}`,
    `inbound-rtp ${v1.frameWidth}x${v1.frameHeight}, decoder ${v1.decoderImplementation ?? '?'}`);

  const rc = remoteCandidate(after);
  t.check(rc.protocol === 'udp' && rc.port === DEFAULT_CONFIG.webrtc.udp_port, 'media comes from the configured UDP port',
    `device candidate ${rc.protocol} ${rc.address}:${rc.port} (${rc.candidateType}), udp_port = ${DEFAULT_CONFIG.webrtc.udp_port}`);

  const decoded = v1.framesDecoded - v0.framesDecoded;
  t.info(`framesDecoded +${decoded}, framesDropped +${(v1.framesDropped ?? 0) - (v0.framesDropped ?? 0)}, ` +
    `packetsLost ${v1.packetsLost}, freezes ${v1.freezeCount ?? '?'}, keyFramesDecoded ${v1.keyFramesDecoded ?? '?'}, ` +
    `jitter buffer ${((1000 * v1.jitterBufferDelay) / v1.jitterBufferEmittedCount).toFixed(1)} ms, ` +
    `bitrate ${(((v1.bytesReceived - v0.bytesReceived) * 8) / (result.elapsedMs)).toFixed(0)} kbit/s`);
  const frames = checkFrames(t, 'video', result, { fps: FPS });

  const audioPackets = a1.packetsReceived - (a0.packetsReceived ?? 0);
  t.check(acodec.mimeType?.toLowerCase() === 'audio/opus', 'audio codec is Opus', `${acodec.mimeType} ${acodec.sdpFmtpLine ?? ''}`);
  t.check(audioPackets > 0.8 * SECONDS * 50, 'audio packets arrive',
    `+${audioPackets} packets in ${frames.seconds.toFixed(2)} s (20 ms frames: ~${SECONDS * 50} expected), lost ${a1.packetsLost}`);
  t.check(a1.totalAudioEnergy > 0 || a1.audioLevel > 0, 'audio has energy (the tone)',
    `totalAudioEnergy ${a1.totalAudioEnergy}, audioLevel ${a1.audioLevel}, totalSamplesDuration ${a1.totalSamplesDuration}`);

  const st = await pageState(page);
  t.check(st.state === 'live' && !st.muted && !st.paused && !st.unmuteVisible && st.lossOfConnectionCount === 0,
    'page state: live, playing with sound, no unmute prompt', JSON.stringify(st));
  const settings = await svc.settings();
  t.check(settings.viewers === 1, '/api/settings counts 1 viewer', JSON.stringify(settings));

  const shot = join(ARTIFACTS, 'watch.png');
  await page.screenshot({ path: shot });
  t.info(`screenshot: ${shot}`);

  // The stats overlay, as a person opens it: move the mouse (controls appear), click "Stats".
  await page.mouse.move(640, 360);
  await page.click('#btn-stats');
  await sleep(2200);   // two refreshes, so the bitrate has a previous sample
  const overlay = await page.textContent('#stats');
  t.check(/H264 1280×720/.test(overlay) && /bitrate\s+[1-9]\d* kbit\/s/.test(overlay) && /rtt\s+\d/.test(overlay),
    'stats overlay shows codec, resolution, bitrate, RTT', JSON.stringify(overlay));
  await page.screenshot({ path: join(ARTIFACTS, 'watch-stats.png') });
  t.check(errors.length === 0, 'no page errors', errors.join(' | '));
});
