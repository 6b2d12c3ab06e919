// PeerJS on a device with a password: without a login or a token everything under /peerjs is 401
// (HTTP and the WebSocket handshake); a bearer token works as the PeerJS key (browsers cannot set
// headers on a WebSocket); a logged-in browser uses the normal key, and a wrong key is still
// refused inside the WebSocket (invalid-key).
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import WebSocket from 'ws';
import { BIN, launchBrowser, main, sleep, startService } from '../e2e/lib.mjs';
import { rawToml } from './harness.mjs';

const PASSWORD = 'correct horse battery';

function handshake(base, query) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${base.replace(/^http/, 'ws')}peerjs/peerjs?${new URLSearchParams(query)}`);
    const done = (r) => { try { ws.terminate(); } catch { /* closed */ } resolve(r); };
    ws.on('unexpected-response', (_req, res) => done({ status: res.statusCode }));
    ws.on('message', (d) => done({ message: JSON.parse(d.toString()) }));
    ws.on('error', (e) => done({ error: e.message }));
    setTimeout(() => done({ timeout: true }), 5000);
  });
}

await main('peerjs-auth', async (t) => {
  const token = randomBytes(32).toString('hex');
  const sha = createHash('sha256').update(token).digest('hex');
  const hash = execFileSync(BIN, ['hash-password'], { input: `${PASSWORD}\n` }).toString().trim();
  const svc = await startService({
    name: 'peerjs-auth',
    config: { auth: { password_hash: hash, token_sha256: rawToml(`["${sha}"]`) } },
  });
  const U = svc.url;

  const noAuth = await fetch(`${U}peerjs/peerjs/id`);
  t.check(noAuth.status === 401, 'GET /peerjs/peerjs/id without login or token: 401', `${noAuth.status}`);
  const withTok = await fetch(`${U}peerjs/${token}/id`);
  const id = await withTok.text();
  t.check(withTok.status === 200 && id.length === 36, 'GET /peerjs/<token>/id: 200 (the token as the PeerJS key)', `${withTok.status} ${id}`);
  const wrongTok = await fetch(`${U}peerjs/${'0'.repeat(64)}/id`);
  t.check(wrongTok.status === 401, 'GET /peerjs/<not a token>/id: 401', `${wrongTok.status}`);

  const ws1 = await handshake(U, { key: 'peerjs', id: 'alice', token: 't' });
  t.check(ws1.status === 401, 'WebSocket with the plain key but no login: 401 at the handshake', JSON.stringify(ws1));
  const ws2 = await handshake(U, { key: token, id: 'alice', token: 't' });
  t.check(ws2.message?.type === 'OPEN', 'WebSocket with a bearer token as the key: OPEN', JSON.stringify(ws2));
  const ws3 = await handshake(U, { key: 'f'.repeat(64), id: 'alice', token: 't' });
  t.check(ws3.status === 401, 'WebSocket with a wrong token as the key: 401', JSON.stringify(ws3));

  // A logged-in browser: the cookie goes along with the WebSocket handshake.
  const browser = await launchBrowser();
  const ctx = await browser.newContext();
  const login = await ctx.newPage();
  await login.goto(`${U}login`);
  await login.fill('#password', PASSWORD);
  await Promise.all([login.waitForURL(`${U}`), login.press('#password', 'Enter')]);
  const cookies = await ctx.cookies();
  t.check(cookies.some((c) => c.name === 'peercam_session'), 'the browser logs in');
  const p2 = await ctx.newPage();
  await p2.goto(`${U}peerjs-demo`);
  await p2.waitForFunction(() => typeof window.Peer === 'function', null, { timeout: 10000 });
  await p2.evaluate(() => {
    window.T = { peers: {} };
    T.create = (name, id, extra) => new Promise((resolve) => {
      const peer = new Peer(id, { host: location.hostname, port: Number(location.port), path: '/peerjs', key: 'peerjs', ...extra });
      T.peers[name] = peer;
      peer.on('open', (got) => resolve({ id: got }));
      peer.on('error', (e) => resolve({ error: e.type, message: e.message }));
      setTimeout(() => resolve({ timeout: true }), 10000);
    });
  });
  const a = await p2.evaluate(() => T.create('a', 'alice2'));
  t.check(a.id === 'alice2', 'logged in: PeerJS with the configured key opens', JSON.stringify(a));
  const b = await p2.evaluate((k) => T.create('b', 'bob2', { key: k }), token);
  t.check(b.id === 'bob2', 'logged in: a token as the key also opens', JSON.stringify(b));
  const c = await p2.evaluate(() => T.create('c', 'carol2', { key: 'wrong' }));
  t.check(c.error === 'invalid-key', 'logged in, wrong key: invalid-key', JSON.stringify(c));
  await sleep(100);
});
