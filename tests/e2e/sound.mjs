// The page as a monitor (issue 14, part 3's meter and alerts): the device's analysis of its test
// tone (a 440 Hz beep at the start of every second) reaches the page as `sound_level` events and
// moves the level meter; a live threshold change (`POST /api/sound`) makes each beep a "noise",
// and the page shows and announces the alert. The tone is a pure sine, so it must never be a cry.
import { join } from 'node:path';
import { ARTIFACTS, evaluate, launchBrowser, main, openViewer, postJson, sleep, startService, waitFor, waitForControl, waitForLive } from './lib.mjs';

await main('sound', async (t) => {
  const svc = await startService({ name: 'sound', config: { video: { fps: 10, width: 640, height: 360 } } });
  const browser = await launchBrowser();
  const { page, errors } = await openViewer(browser, svc.url);
  await waitForLive(page);
  await waitForControl(page);

  const seen = await waitFor(page, () => window.peercam.sound?.level && !document.getElementById('sound').hidden,
    undefined, { timeoutMs: 5000, what: 'level meter shown' }).then(() => true, () => false);
  t.check(seen, 'the level meter appears with the first sound_level event');
  // Sample the meter for 3 s: the beeps must move it.
  const samples = [];
  for (let i = 0; i < 30; i++) {
    samples.push(await evaluate(page, () => ({
      db: window.peercam.sound.level?.level_db,
      bar: getComputedStyle(document.getElementById('sound-level')).transform,
      text: document.getElementById('sound-db').textContent,
    })));
    await sleep(100);
  }
  const dbs = samples.map((s) => s.db).filter((d) => typeof d === 'number');
  const bars = new Set(samples.map((s) => s.bar));
  t.check(dbs.length > 0 && Math.max(...dbs) > -20 && Math.min(...dbs) < -60, 'levels follow the beep: loud in it, silent between',
    `max ${Math.max(...dbs)} dB, min ${Math.min(...dbs)} dB`);
  t.check(bars.size >= 2, 'the meter bar moves', `${bars.size} distinct widths, e.g. ${[...bars].slice(0, 2).join(' / ')}`);
  t.check(/-?\d+ dB/.test(samples.at(-1).text), 'the meter shows the level in dB', samples.at(-1).text);
  const before = await evaluate(page, () => window.peercam.events.filter((e) => e.event === 'sound_level').length);
  t.check(before === 0, 'sound_level events are kept apart from peercam.events (they would push the others out)', `${before}`);

  // Each beep (200 ms, peak −10 dB) now starts a noise alert. 500 ms windows (25 whole frames):
  // with 250 ms ones a beep inside one 240 ms window alone would stay under the 250 ms duration.
  const r = await postJson(`${svc.url}api/sound`, { level_interval_ms: 500, noise_duration_ms: 250, noise_reset_s: 2 });
  t.check(r.status === 200 && r.body.params?.noise_duration_ms === 250, 'POST /api/sound changes the threshold live', JSON.stringify(r.body));
  const alert = await waitFor(page, () => {
    const a = document.getElementById('alert');
    return !a.hidden && a.dataset.kind === 'noise' && a.dataset.state === 'start' && { text: a.textContent, announced: window.peercam.sound.announced };
  }, undefined, { timeoutMs: 4000, what: 'noise alert shown' }).then((x) => x, () => null);
  t.check(!!alert, 'a noise alert is shown', alert ? `${alert.value.text} after ${alert.ms} ms` : 'none');
  t.check(alert && alert.value.announced >= 1, 'and announced (vibrate / notification when permitted / chime)', JSON.stringify(alert?.value));
  await page.screenshot({ path: join(ARTIFACTS, 'sound.png') });
  await postJson(`${svc.url}api/sound`, { level_interval_ms: 250, noise_duration_ms: 2000, noise_reset_s: 60 });
  const cries = await evaluate(page, () => window.peercam.events.filter((e) => e.event === 'cry').length);
  t.check(cries === 0, 'the pure test tone is never a cry', `${cries}`);
  t.check(errors.length === 0, 'no page errors', errors.join(' | '));
});
