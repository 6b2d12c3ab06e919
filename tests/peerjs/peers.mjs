// Two browser peers find each other through the device's PeerServer, as with npm `peer`: the
// PeerJS client's HTTP calls (id, peers), a data connection with messages both ways, and a media
// call whose remote streams render frames on both sides.
import { evaluate, getJson, launchBrowser, main, startService } from '../e2e/lib.mjs';
import { peerPage, until } from './harness.mjs';

await main('peerjs-peers', async (t) => {
  const svc = await startService({ name: 'peerjs-peers' });
  t.info(`service at ${svc.url} (log: ${svc.logPath})`);

  // What the PeerJS client fetches before it has an ID.
  const idRes = await fetch(`${svc.url}peerjs/peerjs/id?ts=1&version=1.5.5`);
  const id = await idRes.text();
  t.check(idRes.status === 200 && /^text\/plain/.test(idRes.headers.get('content-type')) &&
    /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(id),
    'GET /peerjs/peerjs/id gives a random UUID as text/plain', `${idRes.status} ${idRes.headers.get('content-type')} ${id}`);
  const peersRes = await fetch(`${svc.url}peerjs/peerjs/peers`);
  t.check(peersRes.status === 401, 'GET /peerjs/peerjs/peers is 401 (discovery off, as PeerServer)', `${peersRes.status}`);
  const banner = await getJson(`${svc.url}peerjs`);
  t.check(banner.name === 'PeerJS Server' && banner.device_id === 'peercam', 'GET /peerjs is the PeerServer banner', JSON.stringify(banner));
  const plain = await fetch(`${svc.url}peerjs/peerjs?key=peerjs&id=x&token=y`);
  t.check(plain.status >= 400 && plain.status < 500, 'the WebSocket path refuses a plain GET with a 4xx', `${plain.status} ${(await plain.text()).trim()}`);
  const lib = await fetch(`${svc.url}vendor/peerjs.min.js`);
  const libText = await lib.text();
  t.check(lib.status === 200 && /javascript/.test(lib.headers.get('content-type')) && libText.length > 50000 && !libText.includes('built without'),
    'the device serves the real PeerJS client', `${lib.status} ${lib.headers.get('content-type')}, ${libText.length} bytes`);
  const lic = await (await fetch(`${svc.url}vendor/peerjs.LICENSE.txt`)).text();
  t.check(/peerjs 1\.5\.5/.test(lic) && /MIT/.test(lic), 'and its license', lic.split('\n')[0]);

  const browser = await launchBrowser();
  const a = await peerPage(browser, svc.url);
  const b = await peerPage(browser, svc.url);
  await evaluate(a.page, () => T.media());
  await evaluate(b.page, () => T.media());

  const openA = await evaluate(a.page, () => T.create('me', 'alice'));
  const openB = await evaluate(b.page, () => T.create('me', 'bob'));
  t.check(openA.id === 'alice' && openB.id === 'bob', 'two peers open with the IDs they chose', `${JSON.stringify(openA)} ${JSON.stringify(openB)}`);
  const openR = await evaluate(b.page, () => T.create('random'));
  t.check(/^[0-9a-f-]{36}$/.test(openR.id || ''), 'a peer without an ID gets one from the server', JSON.stringify(openR));

  // Data: bob connects to alice, messages both ways.
  const t0 = Date.now();
  await evaluate(b.page, () => new Promise((resolve, reject) => {
    const c = T.peers.me.out = T.peers.me.peer.connect('alice', { metadata: { hello: 'from bob' } });
    c.on('data', (d) => T.peers.me.data.push(d));
    c.on('open', resolve);
    c.on('error', (e) => reject(new Error(e.message)));
    setTimeout(() => reject(new Error('data connection did not open in 10 s')), 10000);
  }));
  t.check(true, 'bob → alice data connection opens', `${Date.now() - t0} ms`);
  await evaluate(b.page, () => T.peers.me.out.send({ text: 'hi alice', n: 1 }));
  const gotA = await until(a.page, () => T.peers.me.data.length && { data: T.peers.me.data[0], from: T.peers.me.conns[0].peer, metadata: T.peers.me.conns[0].metadata },
    undefined, { what: 'alice receives data' });
  t.check(gotA.from === 'bob' && gotA.data.text === 'hi alice' && gotA.metadata?.hello === 'from bob',
    'alice receives bob\'s message (src is bob)', JSON.stringify(gotA));
  await evaluate(a.page, () => T.peers.me.conns[0].send('hi bob'));
  const gotB = await until(b.page, () => T.peers.me.data[0], undefined, { what: 'bob receives data' });
  t.check(gotB === 'hi bob', 'bob receives alice\'s reply', JSON.stringify(gotB));

  // Media: alice calls bob with her (fake) camera, bob answers with his; both render.
  await evaluate(b.page, () => { T.peers.me.peer.on('call', async (call) => { call.answer(await T.media()); call.on('stream', (s) => { T.remote = s; }); }); });
  await evaluate(a.page, async () => {
    const call = T.peers.me.peer.call('bob', await T.media());
    call.on('stream', (s) => { T.remote = s; });
  });
  await until(a.page, () => !!T.remote, undefined, { what: 'alice gets bob\'s stream', timeoutMs: 15000 });
  await until(b.page, () => !!T.remote, undefined, { what: 'bob gets alice\'s stream', timeoutMs: 15000 });
  const [ra, rb] = await Promise.all([evaluate(a.page, () => T.render(T.remote, 3000)), evaluate(b.page, () => T.render(T.remote, 3000))]);
  t.check(ra.frames >= 20 && ra.width > 0 && ra.tracks.includes('audio'), 'alice renders bob\'s video (and gets his audio)', JSON.stringify(ra));
  t.check(rb.frames >= 20 && rb.width > 0 && rb.tracks.includes('audio'), 'bob renders alice\'s video (and gets her audio)', JSON.stringify(rb));
  const errs = await evaluate(a.page, () => T.peers.me.errors.concat(T.peers.me.peer.disconnected ? ['disconnected'] : []));
  t.check(errs.length === 0, 'no PeerJS errors on the way', JSON.stringify(errs));
});
