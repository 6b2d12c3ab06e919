// The device restarts while a viewer watches: the page notices, says so, shows the device's own error
// text while it refuses (a stand-in answers 503 on the same port), and goes live again by itself.
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
  const { page, errors } = await openViewer(browser, svc.url);
  await waitForLive(page);
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
