// Recordings in the page (issue 15 part 3): with `[record] mode = "events"` a motion event (the test
// pattern's box set moving through POST /api/test-pattern) makes a clip; the page's Recordings sheet
// lists it, and its Play button plays it in a <video> (fragmented MP4, H.264 + Opus, fetched with
// the page's credentials): currentTime advances and a frame is decoded.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ARTIFACTS, evaluate, getJson, launchBrowser, main, onCleanup, openViewer, postJson, sleep, startService, waitFor, waitForLive } from './lib.mjs';

await main('record', async (t) => {
  // The clips go to a temporary folder (the default, <state_dir>/recordings, is under the cwd).
  const dir = mkdtempSync(join(tmpdir(), 'peercam-e2e-rec-'));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  const svc = await startService({
    name: 'record',
    config: {
      video: { fps: 15, width: 640, height: 360, keyframe_interval_s: 1 },
      motion: { enabled: true, fps: 5, cooldown_s: 1 },
      record: { mode: 'events', pre_roll_s: 1, post_roll_s: 1, fragment_ms: 500, dir },
    },
  });
  const browser = await launchBrowser();
  const { page, errors } = await openViewer(browser, svc.url);
  await waitForLive(page);

  // One event: still, moving for 2 s, still; the clip is saved after the end + 1 s post-roll. The test
  // pattern moves from the start, so a clip of that may be under way: it is let close first (cooldown +
  // post-roll; a stalled machine stretches both), and the clip checked is the one the test's motion made.
  await postJson(`${svc.url}api/test-pattern`, { moving: false });
  const clipsNow = async () => (await getJson(`${svc.url}api/recordings`)).clips || [];
  let clips = await clipsNow();
  for (const t0 = Date.now(); (Date.now() - t0 < 2500 || clips.some((c) => c.recording)) && Date.now() - t0 < 20000;) {
    await sleep(250);
    clips = await clipsNow();
  }
  const before = new Set(clips.map((c) => c.name));
  t.info(`before the test's motion: ${clips.length} clip(s), ${clips.filter((c) => c.recording).length} recording`);
  await postJson(`${svc.url}api/test-pattern`, { moving: true });
  await sleep(2000);
  await postJson(`${svc.url}api/test-pattern`, { moving: false });
  const stillAt = Date.now();
  let done;
  while (!done && Date.now() - stillAt < 20000) {
    await sleep(250);
    clips = await clipsNow();
    done = clips.find((c) => !c.recording && !before.has(c.name));
  }
  t.check(!!done, 'a clip is saved after a motion event',
    `${done ? `after ${Date.now() - stillAt} ms: ` : ''}${JSON.stringify(done || clips)}`);
  if (!done) return;

  await page.click('#btn-recordings');
  const listed = await waitFor(page, (name) => [...document.querySelectorAll('#rec-list li')].some((li) => li.dataset.name === name),
    done.name, { timeoutMs: 5000, what: 'the clip in the list' }).then(() => true, () => false);
  t.check(listed, 'the Recordings sheet lists the clip', done.name);
  await page.click(`#rec-list li[data-name="${done.name}"] .rec-play`);
  const playing = await waitFor(page, () => {
    const v = document.getElementById('rec-player');
    return !v.hidden && v.currentTime > 1.0 && v.videoWidth > 0 && { t: v.currentTime, w: v.videoWidth, h: v.videoHeight, d: v.duration };
  }, undefined, { timeoutMs: 10000, what: 'the clip playing' }).then((r) => r.value, () => null);
  const state = await evaluate(page, () => {
    const v = document.getElementById('rec-player');
    return { t: v.currentTime, paused: v.paused, error: v.error && v.error.message, w: v.videoWidth, rs: v.readyState, text: document.getElementById('rec-state').textContent };
  });
  t.check(!!playing, 'its <video> plays it: currentTime passes 1 s, a 640x360 frame decoded',
    JSON.stringify(playing || state));
  t.check(!playing || (playing.w === 640 && playing.h === 360), 'the clip has the camera\'s size', JSON.stringify(playing));
  await page.screenshot({ path: join(ARTIFACTS, 'record.png') });
  t.check(errors.length === 0, 'no page errors', errors.join(' | '));
});
