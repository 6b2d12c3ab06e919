// The signaling WebSocket under bad input, with a raw client (npm `ws`) rather than PeerJS: missing
// parameters, bad JSON, unknown type, missing dst, binary frames, oversize and invalid UTF-8 get
// ERROR and/or a close — never a crash — while other peers keep relaying; plus the limits:
// max_peers, EXPIRE for an absent ID, and the alive timeout for a client that never heartbeats.
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import { main, sleep, startService } from '../e2e/lib.mjs';

const ALIVE_S = 10, EXPIRE_S = 2, MAX_PEERS = 6, MAX_BYTES = 65536;

function client(base, query) {
  const url = `${base.replace(/^http/, 'ws')}peerjs/peerjs?${new URLSearchParams(query)}`;
  const ws = new WebSocket(url);
  const c = { ws, msgs: [], closed: null, status: null };
  ws.on('message', (data) => { try { c.msgs.push(JSON.parse(data.toString())); } catch { c.msgs.push({ unparsable: data.toString() }); } });
  ws.on('close', (code) => { c.closed = { code }; c.closedAt = Date.now(); });
  ws.on('unexpected-response', (_req, res) => { c.status = res.statusCode; c.closed = { status: res.statusCode }; });
  ws.on('error', (e) => { c.error = e.message; });
  c.send = (x) => ws.send(typeof x === 'string' ? x : JSON.stringify(x));
  return c;
}

async function waitFor(fn, ms = 5000) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) { const v = fn(); if (v) return v; await sleep(20); }
  return fn();
}
// The next message of `type` after index `from`.
const nextOf = (c, type, from = 0, ms = 5000) => waitFor(() => c.msgs.slice(from).find((m) => m.type === type), ms);

await main('peerjs-raw', async (t) => {
  const svc = await startService({
    name: 'peerjs-raw',
    config: { peerjs: { alive_timeout_s: ALIVE_S, expire_timeout_s: EXPIRE_S, max_peers: MAX_PEERS, max_message_bytes: MAX_BYTES } },
  });
  const U = svc.url;
  const open = async (id) => {
    const c = client(U, { key: 'peerjs', id, token: `tok-${id}` });
    const m = await nextOf(c, 'OPEN');
    if (!m) throw new Error(`${id} did not get OPEN: ${JSON.stringify(c)}`);
    return c;
  };
  const heartbeats = [];
  const keepAlive = (c) => heartbeats.push(setInterval(() => { if (c.ws.readyState === 1) c.send({ type: 'HEARTBEAT' }); }, 2000));

  const silent = await open('silent');         // never sends a heartbeat
  const tSilent = Date.now();
  const alice = await open('alice'); keepAlive(alice);
  const bob = await open('bob'); keepAlive(bob);
  t.check(true, 'raw clients get OPEN', 'silent, alice, bob');

  // max_peers
  const extra = [await open('x1'), await open('x2'), await open('x3')];
  const over = client(U, { key: 'peerjs', id: 'x4', token: 't' });
  const overErr = await nextOf(over, 'ERROR');
  await waitFor(() => over.closed);
  t.check(/concurrent user limit/.test(overErr?.payload?.msg) && over.closed, `peer ${MAX_PEERS + 1} is refused (max_peers = ${MAX_PEERS})`, JSON.stringify(overErr));
  extra.forEach((c) => c.ws.close());
  await sleep(200);

  // Missing parameters.
  const noParams = client(U, { key: 'peerjs' });
  const npErr = await nextOf(noParams, 'ERROR');
  await waitFor(() => noParams.closed);
  t.check(npErr?.payload?.msg === 'No id, token, or key supplied to websocket server' && noParams.closed, 'no id/token: ERROR (PeerServer\'s text) and close', JSON.stringify(npErr));

  // Relay with server-set src.
  let n = bob.msgs.length;
  alice.send({ type: 'OFFER', src: 'forged', dst: 'bob', payload: { type: 'data', connectionId: 'dc_1', sdp: { type: 'offer', sdp: 'v=0' } } });
  const offer = await nextOf(bob, 'OFFER', n);
  t.check(offer?.src === 'alice' && offer?.payload?.connectionId === 'dc_1', 'OFFER relayed with src set by the server', JSON.stringify(offer));

  // Malformed input from alice: ERROR each time, alice stays connected.
  const bad = [
    ['bad JSON', '{"type": "OFFER", '],
    ['unknown type', { type: 'DANCE', dst: 'bob' }],
    ['missing type', { dst: 'bob', payload: {} }],
    ['missing dst', { type: 'OFFER', payload: { sdp: 'x' } }],
    ['dst not a string', { type: 'CANDIDATE', dst: 42, payload: {} }],
    ['not an object', '[1,2,3]'],
  ];
  for (const [label, msg] of bad) {
    n = alice.msgs.length;
    alice.send(msg);
    const e = await nextOf(alice, 'ERROR', n);
    t.check(!!e && !alice.closed, `${label} → ERROR, socket stays open`, JSON.stringify(e?.payload));
  }
  n = alice.msgs.length;
  alice.ws.send(Buffer.from('{"type":"HEARTBEAT"}'), { binary: true });
  const binErr = await nextOf(alice, 'ERROR', n);
  t.check(/binary/.test(binErr?.payload?.msg ?? ''), 'binary frame → ERROR', JSON.stringify(binErr?.payload));

  // Absent destination: queued, then EXPIRE after expire_timeout_s.
  n = alice.msgs.length;
  const tq = Date.now();
  alice.send({ type: 'OFFER', dst: 'ghost', payload: {} });
  const exp = await nextOf(alice, 'EXPIRE', n, 8000);
  t.check(exp?.src === 'ghost' && exp?.dst === 'alice', `OFFER to an absent ID → EXPIRE after ~${EXPIRE_S} s`, `${JSON.stringify(exp)} after ${Date.now() - tq} ms`);
  // …but delivered if the ID comes in time.
  alice.send({ type: 'OFFER', dst: 'late', payload: { n: 7 } });
  await sleep(500);
  const late = await open('late');
  const lateOffer = await nextOf(late, 'OFFER');
  t.check(lateOffer?.src === 'alice' && lateOffer?.payload?.n === 7, 'a message for an ID that connects later is delivered on connect', JSON.stringify(lateOffer));
  late.ws.close();

  // Oversize: ERROR then close; beyond twice the limit the socket is just closed.
  n = alice.msgs.length;
  const big = JSON.stringify({ type: 'CANDIDATE', dst: 'bob', payload: { junk: 'x'.repeat(MAX_BYTES) } });
  alice.send(big);
  const bigErr = await nextOf(alice, 'ERROR', n);
  await waitFor(() => alice.closed);
  t.check(/too large/.test(bigErr?.payload?.msg ?? '') && alice.closed, `a ${big.length}-byte message (limit ${MAX_BYTES}) → ERROR and close`, `${JSON.stringify(bigErr?.payload)} ${JSON.stringify(alice.closed)}`);
  const huge = await open('huge');
  huge.send('x'.repeat(4 * MAX_BYTES));
  await waitFor(() => huge.closed);
  t.check(!!huge.closed, `a ${4 * MAX_BYTES}-byte message → closed`, JSON.stringify(huge.closed));
  const utf = await open('utf');
  utf.ws.send(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false });   // a text frame that is not UTF-8
  await waitFor(() => utf.closed);
  t.check(!!utf.closed, 'a text frame with invalid UTF-8 → closed', JSON.stringify(utf.closed));
  const flood = await open('flood');
  for (let i = 0; i < 40; i++) flood.send('garbage');
  await waitFor(() => flood.closed);
  t.check(!!flood.closed && flood.msgs.filter((m) => m.type === 'ERROR').length >= 16, 'a client that keeps sending garbage is closed', `${flood.msgs.length} messages, closed ${JSON.stringify(flood.closed)}`);

  // The ID of a closed client is free again; other peers were never affected.
  const alice2 = await open('alice'); keepAlive(alice2);
  n = alice2.msgs.length;
  bob.send({ type: 'ANSWER', dst: 'alice', payload: { connectionId: 'dc_1' } });
  const ans = await nextOf(alice2, 'ANSWER', n);
  t.check(ans?.src === 'bob' && !bob.closed, 'bob still relays after all that (to the reconnected alice)', JSON.stringify(ans));
  const settings = await fetch(`${U}api/settings`);
  t.check(settings.ok, 'the service still answers HTTP', `${settings.status}`);

  // Alive timeout: `silent` is dropped, the heartbeating ones are not.
  const left = ALIVE_S * 1000 + 1500 - (Date.now() - tSilent);
  if (left > 0) await sleep(left);
  const silentFor = silent.closedAt && (silent.closedAt - tSilent) / 1000;
  t.check(!!silent.closed && silentFor >= ALIVE_S - 0.5, `a client without heartbeat is closed after alive_timeout_s = ${ALIVE_S}`,
    `closed ${JSON.stringify(silent.closed)} ${silentFor?.toFixed(1)} s after it connected`);
  t.check(!bob.closed && bob.ws.readyState === 1, 'a client that sends HEARTBEAT stays', `bob readyState ${bob.ws.readyState}`);
  heartbeats.forEach(clearInterval);
  for (const c of [bob, alice2]) c.ws.close();

  await sleep(200);
  const log = readFileSync(svc.logPath, 'utf8');
  t.check(!/panicked/.test(log), 'no panic in the service log', svc.logPath);
}, { timeoutMs: 90000 });
