// Autoplay as a browser really does it: no autoplay flag, no user gesture. Chromium refuses unmuted
// playback, so the page must play muted and show "Tap to unmute"; a click then turns the sound on.
// The page is read only through gesture-free evaluation ({ quiet: true }) until the click: playwright's
// page.evaluate() would count as a user gesture and unlock autoplay by itself.
import { join } from 'node:path';
import {
  ARTIFACTS, installProbe, launchBrowser, main, openViewer, pageState, probeFor, sleep, startService, waitForLive,
} from './lib.mjs';

const FPS = 30;

await main('autoplay', async (t) => {
  const svc = await startService({ name: 'autoplay', config: { video: { fps: FPS } } });
  const browser = await launchBrowser({ autoplay: false });
  const { page, errors } = await openViewer(browser, svc.url, { quiet: true });
  await waitForLive(page);
  const t0 = Date.now();
  let s0 = await pageState(page);
  while (!s0.unmuteVisible && Date.now() - t0 < 3000) { await sleep(50); s0 = await pageState(page); }
  await installProbe(page);

  const before = await probeFor(page, 2000);
  s0 = await pageState(page);
  t.check(s0.userActivated === false, 'no user activation before the click (the test did not unlock autoplay)',
    `navigator.userActivation.hasBeenActive ${s0.userActivated}`);
  t.check(s0.unmuteVisible && /tap to unmute/i.test(s0.unmuteText), '"Tap to unmute" is shown', JSON.stringify(s0));
  const fps0 = before.painted / (before.elapsedMs / 1000);   // painted by the compositor (lib.mjs, checkFrames)
  t.check(s0.muted && !s0.paused && fps0 >= 0.8 * FPS, 'video plays muted meanwhile',
    `muted ${s0.muted}, paused ${s0.paused}, ${before.painted} frames painted in ${(before.elapsedMs / 1000).toFixed(2)} s = ${fps0.toFixed(1)} fps (${before.frames} seen by the page's frame callback)`);
  await page.screenshot({ path: join(ARTIFACTS, 'autoplay.png') });

  await page.click('#unmute');   // a real input event: user activation
  const after = await probeFor(page, 2000);
  const s1 = await pageState(page);
  const fps1 = after.painted / (after.elapsedMs / 1000);
  t.check(!s1.muted && !s1.paused && !s1.unmuteVisible, 'clicking it unmutes, keeps playing, hides the button',
    `muted ${s1.muted}, paused ${s1.paused}, button visible ${s1.unmuteVisible}`);
  t.check(fps1 >= 0.8 * FPS, 'frames keep coming after unmuting', `${after.painted} frames painted = ${fps1.toFixed(1)} fps (${after.frames} seen by the page's frame callback)`);
  t.check(s1.state === 'live' && s1.lossOfConnectionCount === 0, 'connection stayed live', JSON.stringify(s1));
  t.check(errors.length === 0, 'no page errors', errors.join(' | '));
});
