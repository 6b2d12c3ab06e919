// What the PeerJS client reports when signaling says no: an ID that never connects
// (EXPIRE → peer-unavailable, after [peerjs] expire_timeout_s), a duplicate ID and the device's
// reserved ID (ID-TAKEN → unavailable-id), a wrong key (→ invalid-key); and a peer connected
// meanwhile is not disturbed.
import { evaluate, launchBrowser, main, startService } from '../e2e/lib.mjs';
import { peerPage } from './harness.mjs';

const EXPIRE_S = 2;

await main('peerjs-errors', async (t) => {
  const svc = await startService({ name: 'peerjs-errors', config: { peerjs: { expire_timeout_s: EXPIRE_S } } });
  const browser = await launchBrowser();
  const a = await peerPage(browser, svc.url);
  const b = await peerPage(browser, svc.url);

  t.check((await evaluate(a.page, () => T.create('me', 'alice'))).id === 'alice', 'alice opens');

  const t0 = Date.now();
  const unknown = await evaluate(a.page, () => new Promise((resolve) => {
    const rec = T.peers.me, n = rec.errors.length;
    rec.peer.connect('nobody-here');
    const poll = setInterval(() => { if (rec.errors.length > n) { clearInterval(poll); resolve(rec.errors[n]); } }, 50);
    setTimeout(() => { clearInterval(poll); resolve(null); }, 15000);
  }));
  const waited = Date.now() - t0;
  t.check(unknown?.type === 'peer-unavailable', 'connecting to an unknown ID gives peer-unavailable', JSON.stringify(unknown));
  t.check(waited >= (EXPIRE_S - 0.5) * 1000 && waited <= (EXPIRE_S + 3) * 1000, `… after expire_timeout_s = ${EXPIRE_S}`, `${waited} ms`);
  const aliveAfter = await evaluate(a.page, () => T.peers.me.peer.open && !T.peers.me.peer.disconnected);
  t.check(aliveAfter, '… and alice stays connected (it is not a server error)');

  const dup = await evaluate(b.page, () => T.create('dup', 'alice'));
  t.check(dup.error === 'unavailable-id', 'a duplicate ID gives unavailable-id', JSON.stringify(dup));
  const dev = await evaluate(b.page, () => T.create('dev', 'peercam'));
  t.check(dev.error === 'unavailable-id', 'the device\'s own ID is reserved: unavailable-id', JSON.stringify(dev));
  const bad = await evaluate(b.page, () => T.create('badkey', 'carol', { key: 'not-the-key' }));
  t.check(bad.error === 'invalid-key', 'a wrong key gives invalid-key', JSON.stringify(bad));
  const good = await evaluate(b.page, () => T.create('carol', 'carol'));
  t.check(good.id === 'carol', 'the right key on the same page works', JSON.stringify(good));

  const stillA = await evaluate(a.page, () => ({ open: T.peers.me.peer.open, errors: T.peers.me.errors.map((e) => e.type) }));
  t.check(stillA.open && stillA.errors.join() === 'peer-unavailable', 'alice was not disturbed by the refused peers', JSON.stringify(stillA));
});
