// The page as a night monitor (issue 14, part 3): listen-only and the link alarm.
// - Night (listen-only): the device stops sending this page video (no video packets arrive) while audio keeps
//   coming; with nobody else watching, the camera and encoder stop (encoded_frames flat); the OS is told a
//   sound is playing (Media Session); "Show video" brings fresh frames back.
// - Link alarm: the device is killed (SIGKILL: no goodbye, as a power cut) while the page listens at night; the
//   page raises its alarm within ALARM_MS + 2 s (message + repeated tone), and clears it by itself once the
//   device is back, which again sends it sound only.
import {
  checkFrames, inbound, installProbe, launchBrowser, main, openViewer, probeFor, rtcStats, sleep, startService,
  waitFor, waitForControl, waitForLive,
} from './lib.mjs';

const FPS = 30;
const ALARM_MS = 5000;   // web/app.js ALARM_MS

// Packets received per kind over `ms`, and the device's encoded video frames over the same time.
async function flow(page, svc, ms) {
  const st0 = await rtcStats(page), s0 = await svc.settings();
  await sleep(ms);
  const st1 = await rtcStats(page), s1 = await svc.settings();
  const d = (kind, k) => (inbound(st1, kind)[k] ?? 0) - (inbound(st0, kind)[k] ?? 0);
  return {
    video: d('video', 'packetsReceived'), audio: d('audio', 'packetsReceived'), framesDecoded: d('video', 'framesDecoded'),
    encoded: s1.video.encoded_frames - s0.video.encoded_frames, settings: s1,
  };
}

const night = (page, on) => page.click(on ? '#btn-night' : '#night-off');

await main('night', async (t) => {
  const svc = await startService({ name: 'night', config: { video: { fps: FPS } } });
  t.info(`service at ${svc.url} (log: ${svc.logPath})`);
  const browser = await launchBrowser({ autoplay: true });
  const { page, errors } = await openViewer(browser, svc.url);
  await waitForLive(page);
  await waitForControl(page);

  const before = await flow(page, svc, 1500);
  t.check(before.video > 50 && before.audio > 50, 'watching: video and audio arrive',
    `video +${before.video} packets, audio +${before.audio} in 1.5 s`);

  // ---- listen-only ----
  await night(page, true);
  const confirmed = await waitFor(page, () => window.peercam.listenOnlyDevice === true, undefined, { what: 'listen_only confirmed' });
  t.check(true, 'the device confirms listen-only', `${confirmed.ms} ms after the click`);
  await sleep(700);   // what was already in flight
  const quiet = await flow(page, svc, 3000);
  t.check(quiet.video === 0, 'listen-only: no video packets', `video +${quiet.video} packets in 3 s`);
  t.check(quiet.audio >= 100, 'listen-only: audio keeps coming', `audio +${quiet.audio} packets in 3 s (50/s sent)`);
  t.check(quiet.encoded === 0, 'listen-only: with nobody watching, the camera and encoder stop',
    `encoded_frames +${quiet.encoded} in 3 s (before: +${before.encoded} in 1.5 s)`);
  t.check(quiet.settings.listeners === 1 && quiet.settings.viewers === 1, '/api/settings counts the listener',
    `viewers ${quiet.settings.viewers}, listeners ${quiet.settings.listeners}`);
  const ui = await page.evaluate(() => ({
    hidden: getComputedStyle(document.getElementById('video')).visibility,
    panel: !document.getElementById('night').hidden,
    paused: document.getElementById('video').paused,
    session: navigator.mediaSession?.metadata?.title ?? null,
    playback: navigator.mediaSession?.playbackState ?? null,
  }));
  t.check(ui.hidden === 'hidden' && ui.panel && !ui.paused, 'the page shows it is listening (picture hidden, element still playing)',
    JSON.stringify(ui));
  t.check(ui.session === 'Listening to the camera' && ui.playback === 'playing', 'Media Session: the OS sees a sound playing',
    `title "${ui.session}", playbackState ${ui.playback}`);
  const wake = await page.evaluate(async () => {
    document.getElementById('night-wake').click();
    await new Promise((r) => setTimeout(r, 300));
    return { checked: document.getElementById('night-wake').checked, held: window.peercam.wakeLock ?? null, api: 'wakeLock' in navigator };
  });
  t.info(`screen wake lock: ${JSON.stringify(wake)} (headless Chromium may refuse it; the page then says so)`);

  // ---- back to video ----
  await night(page, false);
  await waitFor(page, () => window.peercam.listenOnlyDevice === false, undefined, { what: 'video resumed' });
  await sleep(800);
  await installProbe(page, { every: 3 });
  const resumed = await probeFor(page, 3000);
  checkFrames(t, 'video resumed', resumed, { fps: FPS });
  const again = await svc.settings();
  t.check(again.listeners === 0, 'listeners back to 0', `listeners ${again.listeners}`);

  // ---- the link alarm, at night ----
  await night(page, true);
  await waitFor(page, () => window.peercam.listenOnlyDevice === true, undefined, { what: 'listen_only confirmed again' });
  await sleep(1000);
  const a0 = await page.evaluate(() => ({ ...window.peercam.alarm }));
  t.check(!a0.on && a0.raised === 0, 'no alarm while the camera is there', JSON.stringify(a0));
  const killedAt = Date.now();
  await svc.stop({ signal: 'SIGKILL' });
  const raised = await waitFor(page, () => window.peercam.alarm.on && { ...window.peercam.alarm }, undefined,
    { timeoutMs: ALARM_MS + 8000, intervalMs: 100, what: 'link alarm' });
  const raisedMs = Date.now() - killedAt;
  t.check(raisedMs <= ALARM_MS + 2000, `the alarm is raised within ${(ALARM_MS + 2000) / 1000} s of the device dying`,
    `after ${raisedMs} ms (reason: ${raised.value.reason})`);
  await sleep(4500);
  const sounding = await page.evaluate(() => ({
    alarm: { ...window.peercam.alarm }, text: document.getElementById('link-alarm').textContent,
    visible: !document.getElementById('link-alarm').hidden,
  }));
  t.check(sounding.visible && /No connection to the camera/.test(sounding.text), 'the page says so', `"${sounding.text}"`);
  t.check(sounding.alarm.tones >= 3 && sounding.alarm.audio === 'running', 'the alarm tone repeats while it lasts',
    `${sounding.alarm.tones} tones in ${((Date.now() - killedAt) / 1000).toFixed(1)} s, audio context ${sounding.alarm.audio}`);

  const restartAt = Date.now();
  await svc.start();
  const cleared = await waitFor(page, () => !window.peercam.alarm.on && window.peercam.state === 'live' && { ...window.peercam.alarm },
    undefined, { timeoutMs: 30000, intervalMs: 100, what: 'alarm cleared' });
  t.check(cleared.value.cleared === 1 && cleared.value.raised === 1, 'the alarm clears by itself when the device is back',
    `${Date.now() - restartAt} ms after the restart began; raised ${cleared.value.raised}, cleared ${cleared.value.cleared}`);
  const alarmGone = await page.evaluate(() => document.getElementById('link-alarm').hidden);
  t.check(alarmGone, 'the alarm message is gone', `hidden ${alarmGone}`);
  await waitFor(page, () => window.peercam.listenOnlyDevice === true, undefined, { timeoutMs: 5000, what: 'listen-only after reconnecting' });
  await sleep(700);
  const after = await flow(page, svc, 2000);
  t.check(after.settings.listeners === 1 && after.video === 0 && after.audio >= 60, 'after reconnecting the page listens only again',
    `listeners ${after.settings.listeners}, video +${after.video}, audio +${after.audio} packets in 2 s`);

  // Failed fetches while the device is down are expected console noise; anything else is not.
  const unexpected = errors.filter((e) => !/Failed to load resource|net::ERR_CONNECTION_REFUSED/.test(e));
  t.check(unexpected.length === 0, 'no unexpected page errors', unexpected.join(' | '));
});
