// The device restarts while a viewer watches: the page notices, says so, shows the device's own error
// text while it refuses (a stand-in answers 503 on the same port), and goes live again by itself.
// First, a page whose script does not load at all says so and offers a reload.
import { createServer } from 'node:http';
import { join } from 'node:path';
import {
  ARTIFACTS, installProbe, launchBrowser, main, openViewer, pageState, probeFor, sleep, startService, waitForLive,
} from './lib.mjs';

const FPS = 30;
const REFUSAL = 'peercam is restarting (test stand-in)';

async function waitForState(page, pred, timeoutMs) {
  const t0 = Date.now();
  let s = await pageState(page);
  while (!pred(s) && Date.now() - t0 < timeoutMs) { await sleep(100); s = await pageState(page); }
  return { ...s, ok: pred(s), ms: Date.now() - t0 };
}

await main('reconnect', async (t) => {
  const svc = await startService({ name: 'reconnect', config: { video: { fps: FPS } } });
  const { hostname, port } = new URL(svc.url);
  const browser = await launchBrowser({ autoplay: true });

  // The page's script fails to load (a connection dropped mid-load): the page says so by itself
  // (CSS only: no script runs) after 8 s, and its link loads the page again.
  {
    const context = await browser.newContext();
    const p = await context.newPage();
    let block = true;
    await context.route('**/app.js', (r) => (block ? r.abort('failed') : r.continue()));
    const t0 = Date.now();
    await p.goto(svc.url);
    const hint = p.locator('#noapp');
    const early = await hint.isVisible();
    await hint.waitFor({ state: 'visible', timeout: 20000 }).catch(() => {});
    const ms = Date.now() - t0;
    const text = (await hint.isVisible()) ? await hint.innerText() : '(not shown)';
    t.check(!early && /script has not loaded/i.test(text) && ms >= 7000, 'app.js blocked: the page says its script did not load, after ~8 s',
      `shown after ${ms} ms, not at once: ${!early}; "${text}"`);
    await p.screenshot({ path: join(ARTIFACTS, 'reconnect-noapp.png') });
    block = false;
    await p.getByRole('link', { name: /reload/i }).click();
    let reloaded = 'live';
    await waitForLive(p).catch((e) => { reloaded = e.message; });
    const gone = await hint.count();
    t.check(reloaded === 'live' && gone === 0, 'its link reloads the page, which goes live without the hint',
      `${reloaded}; hint elements ${gone}`);
    await context.close();
  }

  const { page, errors } = await openViewer(browser, svc.url);
  await waitForLive(page);
  t.check(await page.locator('#noapp').count() === 0, 'a page whose script ran has no "script has not loaded" hint', '');
  await installProbe(page);

  const exit = await svc.stop();
  t.info(`service stopped: ${JSON.stringify(exit)}`);
  const down = await waitForState(page, (s) => s.state !== 'live', 15000);
  t.check(down.ok && down.state === 'reconnecting', 'page notices the device is gone',
    `after ${down.ms} ms: ${down.state} "${down.statusText}"`);

  // A server that refuses, as a device does when it cannot take a viewer: its text must reach the user.
  const standIn = createServer((req, res) => { res.writeHead(503, { 'Content-Type': 'text/plain' }); res.end(REFUSAL); });
  await new Promise((r) => standIn.listen(Number(port), hostname, r));
  const refused = await waitForState(page, (s) => s.state === 'error' && s.statusText.includes(REFUSAL), 15000);
  t.check(refused.ok, 'page shows the server\'s error text', `after ${refused.ms} ms: ${refused.state} "${refused.statusText}"`);
  await page.screenshot({ path: join(ARTIFACTS, 'reconnect-error.png') });
  standIn.closeAllConnections();
  await new Promise((r) => standIn.close(r));

  const t0 = Date.now();
  await svc.start();
  await waitForLive(page, 30000);
  const back = await pageState(page);
  t.check(back.state === 'live' && back.lossOfConnectionCount === 1, 'page goes live again by itself',
    `${Date.now() - t0} ms after the restart began; lossOfConnectionCount ${back.lossOfConnectionCount}, attempts ${back.attempts}`);
  const after = await probeFor(page, 2000);
  const fps = after.painted / (after.elapsedMs / 1000);   // painted by the compositor (lib.mjs, checkFrames)
  const fresh = after.samples.length ? Math.max(...after.samples.map((x) => x.latency)) : Infinity;
  t.check(fps >= 0.8 * FPS && fresh < 1000, 'fresh frames after reconnecting',
    `${fps.toFixed(1)} fps painted (${after.frames} frames seen by the page's frame callback), max latency ${fresh} ms`);
  const settings = await svc.settings();
  t.check(settings.viewers === 1, 'the restarted device counts 1 viewer', `viewers ${settings.viewers}`);
  // Failed fetches while the device is down are expected console noise; anything else is not.
  const unexpected = errors.filter((e) => !/Failed to load resource|net::ERR_CONNECTION_REFUSED|status of 503/.test(e));
  t.check(unexpected.length === 0, 'no unexpected page errors', unexpected.join(' | '));
});
