// The control data channel and the HTTP API, with two viewers: apply_constraints switches the rendered
// size within 2 s on the same peer connection (no reconnect), for both viewers; POST /api/constraints
// does it too; the page's settings panel; privacy (video and audio paused for everyone) reaches the other
// viewer; events (viewer_joined/left, settings_changed, track_enabled, chat) reach the other viewer; chat
// text is shown as text; a table of malformed messages each gets the right error reply and the channel
// (and the device) keep working.
import { join } from 'node:path';
import {
  ARTIFACTS, evaluate, inbound, launchBrowser, main, openViewer, postJson, request, rtcStats, sleep, startService,
  waitFor, waitForControl, waitForEvent, waitForLive,
} from './lib.mjs';

const SWITCH_MS = 2000;

// In-page helpers: a watcher for the first rendered frame of a given size, and how much of the picture
// looks like the privacy slate (flat dark grey: the test pattern has none).
const installHelpers = (page) => evaluate(page, () => {
  const video = document.getElementById('video');
  window.__watchSize = (w, h, timeoutMs) => {
    const t0 = Date.now();
    window.__sizeSeen = new Promise((resolve) => {
      const tick = (_now, meta) => {
        if (meta.width === w && meta.height === h) resolve({ at: Date.now(), width: meta.width, height: meta.height });
        else if (Date.now() - t0 > timeoutMs) resolve({ at: null, width: meta.width, height: meta.height });
        else video.requestVideoFrameCallback(tick);
      };
      video.requestVideoFrameCallback(tick);
    });
  };
  const canvas = Object.assign(document.createElement('canvas'), { width: 64, height: 36 });
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  window.__slateness = () => {
    ctx.drawImage(video, 0, 0, 64, 36);
    const d = ctx.getImageData(0, 0, 64, 36).data;
    let flat = 0;
    for (let i = 0; i < d.length; i += 4) {
      const mx = Math.max(d[i], d[i + 1], d[i + 2]), mn = Math.min(d[i], d[i + 1], d[i + 2]);
      if (mx - mn < 16 && mx < 80) flat++;
    }
    return flat / (d.length / 4);
  };
  window.__frames = 0;
  const count = () => { window.__frames++; video.requestVideoFrameCallback(count); };
  video.requestVideoFrameCallback(count);
});

// Connection identity: a tag on the RTCPeerConnection object, the ICE pair, and the reconnect counters.
const connection = (page) => evaluate(page, async () => {
  const p = window.peercam;
  p.pc.__tag ??= Math.random().toString(36).slice(2);
  let pair = null;
  (await p.pc.getStats()).forEach((s) => { if (s.type === 'transport') pair = s.selectedCandidatePairId; });
  return { tag: p.pc.__tag, ice: p.pc.iceConnectionState, pair, attempts: p.attempts, losses: p.lossOfConnectionCount, session: p.session };
});
const same = (a, b) => a.tag === b.tag && a.pair === b.pair && a.attempts === b.attempts && a.losses === b.losses &&
  a.session === b.session && b.ice === 'connected';

// Median slate fraction and frames rendered over `ms`.
async function look(page, ms = 1200) {
  const f0 = await evaluate(page, () => window.__frames);
  const s = [];
  const end = Date.now() + ms;
  while (Date.now() < end) { s.push(await evaluate(page, () => window.__slateness())); await sleep(150); }
  const f1 = await evaluate(page, () => window.__frames);
  s.sort((x, y) => x - y);
  return { slate: s[Math.floor(s.length / 2)], fps: ((f1 - f0) * 1000) / ms };
}

const audioEnergy = async (page) => inbound(await rtcStats(page), 'audio').totalAudioEnergy || 0;

await main('control', async (t) => {
  const svc = await startService({ name: 'control', config: { video: { width: 1280, height: 720, fps: 30 } } });
  t.info(`service at ${svc.url} (log: ${svc.logPath})`);
  const browser = await launchBrowser({ autoplay: true });
  const A = await openViewer(browser, svc.url, { viewport: { width: 800, height: 600 } });
  await waitForLive(A.page);
  const a = await waitForControl(A.page);
  const B = await openViewer(browser, svc.url, { viewport: { width: 640, height: 480 } });
  await waitForLive(B.page);
  const b = await waitForControl(B.page);
  const joined = await waitForEvent(A.page, 'viewer_joined', `e.viewer === ${JSON.stringify(b.viewerId)}`).catch((e) => ({ error: e.message }));
  const watching = await waitFor(A.page, () => document.getElementById('viewers').textContent.includes('2 watching'), undefined, { timeoutMs: 2000, what: '2 watching' })
    .catch((e) => ({ error: e.message }));
  t.check(a.viewerId && b.viewerId && a.viewerId !== b.viewerId && b.viewers === 2 && !joined.error && !watching.error,
    'hello gives each viewer an id; A sees B join ("2 watching")',
    `A ${a.viewerId}, B ${b.viewerId} (hello viewers ${b.viewers}); ${joined.error || watching.error || `A got viewer_joined ${b.viewerId}`}`);
  await Promise.all([installHelpers(A.page), installHelpers(B.page)]);
  const connA0 = await connection(A.page), connB0 = await connection(B.page);

  // ---- apply_constraints 1280x720 → 640x360 over the data channel ----
  const sizeBefore = await evaluate(B.page, () => [document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]);
  await Promise.all([A, B].map((v) => evaluate(v.page, ([ms]) => window.__watchSize(640, 360, ms), [SWITCH_MS + 3000])));
  const sentAt = Date.now();
  const reply = await request(A.page, { type: 'apply_constraints', video: { width: 640, height: 360 } });
  const repliedAt = Date.now();
  const [seenA, seenB] = await Promise.all([A, B].map((v) => evaluate(v.page, () => window.__sizeSeen)));
  t.check(reply.ok && reply.result?.video?.width === 640 && reply.result?.video?.height === 360,
    'apply_constraints 640x360: ok reply with the new settings', `${JSON.stringify(reply).slice(0, 300)} (${repliedAt - sentAt} ms)`);
  for (const [name, seen] of [['A', seenA], ['B', seenB]]) {
    t.check(seen.at && seen.at - sentAt <= SWITCH_MS, `viewer ${name} renders 640x360 within ${SWITCH_MS} ms`,
      seen.at ? `${seen.at - sentAt} ms after the request (was ${sizeBefore.join('x')})` : `still ${seen.width}x${seen.height} after ${SWITCH_MS + 3000} ms`);
  }
  const connA1 = await connection(A.page), connB1 = await connection(B.page);
  t.check(same(connA0, connA1) && same(connB0, connB1), 'same RTCPeerConnection, same ICE pair, no reconnect',
    `A ${JSON.stringify(connA0)} → ${JSON.stringify(connA1)}; B → ${JSON.stringify(connB1)}`);
  const changed = await waitForEvent(B.page, 'settings_changed', `e.by === ${JSON.stringify(a.viewerId)} && e.settings?.video?.width === 640`)
    .catch((e) => ({ error: e.message }));
  t.check(!changed.error, 'B gets settings_changed (by A, 640 wide)', changed.error || `by ${changed.event.by}`);
  const shown = await evaluate(B.page, () => window.peercam.settings?.video && [window.peercam.settings.video.width, window.peercam.settings.video.height]);
  t.check(shown && shown[0] === 640 && shown[1] === 360, 'B\'s page keeps the device\'s settings (peercam.settings)', JSON.stringify(shown));

  // ---- the same over HTTP ----
  await evaluate(B.page, ([ms]) => window.__watchSize(1280, 720, ms), [SWITCH_MS + 3000]);
  const httpAt = Date.now();
  const http = await postJson(`${svc.url}api/constraints`, { video: { width: 1280, height: 720 } });
  const seenHttp = await evaluate(B.page, () => window.__sizeSeen);
  t.check(http.status === 200 && http.body?.video?.width === 1280, 'POST /api/constraints 1280x720: 200 with the settings',
    `HTTP ${http.status} ${JSON.stringify(http.body).slice(0, 200)}`);
  t.check(seenHttp.at && seenHttp.at - httpAt <= SWITCH_MS, `B renders 1280x720 within ${SWITCH_MS} ms of the HTTP request`,
    seenHttp.at ? `${seenHttp.at - httpAt} ms` : `still ${seenHttp.width}x${seenHttp.height}`);
  const byApi = await waitForEvent(B.page, 'settings_changed', 'e.by === "api"').catch((e) => ({ error: e.message }));
  t.check(!byApi.error, 'B gets settings_changed by "api"', byApi.error || 'ok');
  const bad = await postJson(`${svc.url}api/constraints`, { video: { width: { exact: 100000 } } });
  t.check(bad.status >= 400 && bad.status < 500 && bad.body?.error?.code === 'overconstrained' && bad.body.error.constraint === 'width',
    'POST /api/constraints impossible width: 4xx overconstrained (width)', `HTTP ${bad.status} ${JSON.stringify(bad.body)}`);

  // ---- the page's settings panel (A): 960x540 @ 15 fps ----
  await A.page.mouse.move(400, 300);
  await A.page.click('#btn-settings');
  await A.page.selectOption('#set-size', '960x540');
  await A.page.selectOption('#set-fps', '15');
  await evaluate(B.page, ([ms]) => window.__watchSize(960, 540, ms), [SWITCH_MS + 3000]);
  const uiAt = Date.now();
  await A.page.click('#set-apply');
  const seenUi = await evaluate(B.page, () => window.__sizeSeen);
  const actual = await waitFor(A.page, () => /960×540 @ 15 fps/.test(document.getElementById('settings-actual').textContent) &&
    document.getElementById('settings-actual').textContent, undefined, { timeoutMs: 3000, what: 'panel shows 960×540 @ 15 fps' }).catch((e) => ({ value: e.message }));
  t.check(seenUi.at && /960×540 @ 15 fps/.test(actual.value), 'settings panel: Apply 960x540 @ 15 fps changes the stream; the panel shows the actual settings',
    `B renders 960x540 ${seenUi.at ? `${seenUi.at - uiAt} ms` : 'never'} after the click; panel: ${JSON.stringify(actual.value)}`);
  await A.page.screenshot({ path: join(ARTIFACTS, 'control-settings.png') });

  // ---- privacy: video paused for everyone (A's checkbox) ----
  const normal = await look(B.page);
  await A.page.click('#priv-video');
  const paused = await waitForEvent(B.page, 'track_enabled', `e.kind === "video" && e.enabled === false && e.by === ${JSON.stringify(a.viewerId)}`)
    .catch((e) => ({ error: e.message }));
  await sleep(1000);
  const dark = await look(B.page);
  const banner = await evaluate(B.page, () => !document.getElementById('banner').hidden && document.getElementById('banner').textContent);
  t.check(!paused.error && /video paused/i.test(banner || ''), 'A pauses the video: B gets track_enabled (video, false, by A) and a banner',
    `${paused.error || `event after ${paused.ms} ms`}; banner ${JSON.stringify(banner)}`);
  t.check(dark.slate > 0.6 || dark.fps < 0.1 * 15, 'B\'s picture stops (privacy slate, or no frames)',
    `slate-like share of the picture ${(100 * dark.slate).toFixed(0)} % (before: ${(100 * normal.slate).toFixed(0)} %), ` +
    `${dark.fps.toFixed(1)} fps (before: ${normal.fps.toFixed(1)})`);
  await B.page.screenshot({ path: join(ARTIFACTS, 'control-paused.png') });
  await A.page.click('#priv-video');
  const resumed = await waitForEvent(B.page, 'track_enabled', 'e.kind === "video" && e.enabled === true').catch((e) => ({ error: e.message }));
  await sleep(1000);
  const back = await look(B.page);
  const bannerGone = await evaluate(B.page, () => document.getElementById('banner').hidden);
  t.check(!resumed.error && back.slate < 0.2 && back.fps > 0.6 * 15 && bannerGone, 'A resumes it: B sees the camera again',
    `${resumed.error || 'track_enabled true'}; slate-like ${(100 * back.slate).toFixed(0)} %, ${back.fps.toFixed(1)} fps, banner hidden ${bannerGone}`);

  // ---- privacy: the camera's microphone, over HTTP ----
  const e0 = await audioEnergy(B.page); await sleep(2000); const e1 = await audioEnergy(B.page);
  const muted = await postJson(`${svc.url}api/tracks`, { kind: 'audio', enabled: false });
  const mutedEv = await waitForEvent(B.page, 'track_enabled', 'e.kind === "audio" && e.enabled === false && e.by === "api"').catch((e) => ({ error: e.message }));
  await sleep(500);
  const e2 = await audioEnergy(B.page); await sleep(2000); const e3 = await audioEnergy(B.page);
  t.check(muted.status === 200 && muted.body?.audio?.enabled === false && !mutedEv.error, 'POST /api/tracks audio off: 200, B gets track_enabled by "api"',
    `HTTP ${muted.status} audio ${JSON.stringify(muted.body?.audio)}; ${mutedEv.error || 'event ok'}`);
  t.check(e1 - e0 > 0 && e3 - e2 < 0.05 * (e1 - e0), 'B hears nothing while the microphone is off',
    `audio energy per 2 s: ${(e1 - e0).toExponential(2)} before, ${(e3 - e2).toExponential(2)} while off`);
  const unmuted = await postJson(`${svc.url}api/tracks`, { kind: 'audio', enabled: true });
  await sleep(500);
  const e4 = await audioEnergy(B.page); await sleep(2000); const e5 = await audioEnergy(B.page);
  t.check(unmuted.status === 200 && e5 - e4 > 0.3 * (e1 - e0), 'and hears the tone again when it is back on',
    `HTTP ${unmuted.status}; energy ${(e5 - e4).toExponential(2)} per 2 s`);

  // ---- chat (A's chat panel → B), with markup that must stay text ----
  const TEXT = 'hello <img src=x onerror="window.__xss=1"> & <b>bold</b>';
  await A.page.click('#btn-chat');
  await A.page.fill('#chat-name', 'Mum');
  await A.page.press('#chat-name', 'Tab');   // change → set_name, remembered
  await A.page.fill('#chat-text', TEXT);
  await A.page.press('#chat-text', 'Enter');
  const chat = await waitForEvent(B.page, 'chat', `e.text === ${JSON.stringify(TEXT)}`).catch((e) => ({ error: e.message }));
  t.check(!chat.error && chat.event.from === a.viewerId && chat.event.name === 'Mum', 'a chat message from A reaches B (with A\'s name)',
    chat.error || `${JSON.stringify(chat.event)} after ${chat.ms} ms`);
  const unread = await evaluate(B.page, () => document.getElementById('chat-unread').textContent.trim());
  await B.page.mouse.move(320, 240);
  await B.page.click('#btn-chat');
  const log = await evaluate(B.page, () => ({
    text: document.getElementById('chat-log').textContent, imgs: document.querySelectorAll('#chat-log img, #chat-log b b').length,
    xss: window.__xss ?? null,
  }));
  t.check(unread === '1' && log.text.includes(TEXT) && log.text.includes('Mum') && log.imgs === 0 && log.xss === null,
    'B\'s chat panel shows it as text (unread badge, no markup run)', JSON.stringify({ unread, ...log }));
  const remembered = await evaluate(A.page, () => localStorage.getItem('peercam.name'));
  t.check(remembered === 'Mum', 'the name is remembered (localStorage)', JSON.stringify(remembered));
  await B.page.screenshot({ path: join(ARTIFACTS, 'control-chat.png') });

  // ---- malformed messages, raw on A's channel: each gets an error reply; the channel stays usable ----
  const big = (n) => JSON.stringify({ v: 1, id: 'big', type: 'chat', text: 'x'.repeat(n) });
  const table = [
    // [label, raw message (string, or {binary: n}), expected code, expected id, field/constraint pattern]
    ['bad JSON', '{"v":1,"id":1,"type":', 'bad_json', null],
    ['not JSON at all', 'hello device', 'bad_json', null],
    ['JSON array', '[1,2,3]', 'bad_message', null],
    ['JSON number', '42', 'bad_message', null],
    ['JSON null', 'null', 'bad_message', null],
    ['JSON string', '"get_settings"', 'bad_message', null],
    ['deeply nested JSON', `${'['.repeat(4000)}${']'.repeat(4000)}`, 'bad_json', null],
    ['binary message', { binary: 64 }, 'bad_message', null],
    ['unknown type', '{"v":1,"id":"u1","type":"reboot"}', 'unknown_type', 'u1'],
    ['type not a string', '{"v":1,"id":2,"type":7}', 'bad_message', 2, /type/],
    ['missing type', '{"v":1,"id":3}', 'bad_message', 3, /type/],
    ['wrong version', '{"v":2,"id":4,"type":"get_settings"}', 'unsupported_version', 4],
    ['version as a string', '{"v":"1","id":5,"type":"get_settings"}', 'unsupported_version', 5],
    ['missing version', '{"id":6,"type":"get_settings"}', 'bad_message', 6, /^v$/],
    ['missing id', '{"v":1,"type":"get_settings"}', 'bad_message', null, /id/],
    ['id an object', '{"v":1,"id":{"a":1},"type":"get_settings"}', 'bad_message', null, /id/],
    ['id too long', JSON.stringify({ v: 1, id: 'i'.repeat(65), type: 'get_settings' }), 'bad_message', null, /id/],
    ['width a string', '{"v":1,"id":7,"type":"apply_constraints","video":{"width":"wide"}}', 'bad_message', 7, /width/],
    ['unknown constraint', '{"v":1,"id":8,"type":"apply_constraints","video":{"depth":3}}', 'bad_message', 8, /depth/],
    ['bitrate out of range', '{"v":1,"id":9,"type":"apply_constraints","video":{"bitrate_kbps":5}}', 'bad_message', 9, /bitrate/],
    ['impossible width', '{"v":1,"id":10,"type":"apply_constraints","video":{"width":{"exact":100000}}}', 'overconstrained', 10, /width/],
    ['enabled a string', '{"v":1,"id":11,"type":"set_track_enabled","kind":"video","enabled":"no"}', 'bad_message', 11, /enabled/],
    ['unknown track kind', '{"v":1,"id":12,"type":"set_track_enabled","kind":"screen","enabled":true}', 'bad_message', 12, /kind/],
    ['missing enabled', '{"v":1,"id":13,"type":"set_track_enabled","kind":"video"}', 'bad_message', 13, /enabled/],
    ['unknown talk action', '{"v":1,"id":14,"type":"talk","action":"shout"}', 'bad_message', 14, /action/],
    ['release while not talking', '{"v":1,"id":15,"type":"talk","action":"release"}', 'not_talking', 15],
    ['chat text a number', '{"v":1,"id":16,"type":"chat","text":123}', 'bad_message', 16, /text/],
    ['chat text empty', '{"v":1,"id":17,"type":"chat","text":"   "}', 'bad_message', 17, /text/],
    ['name too long', JSON.stringify({ v: 1, id: 18, type: 'set_name', name: 'n'.repeat(41) }), 'bad_message', 18, /name/],
    ['20 KiB message', big(20 * 1024), 'too_large', null],
    ['60 KiB message', big(60 * 1024), 'too_large', null],
    ['100 KiB message', big(100 * 1024), 'too_large', null],
  ];
  const maxMessageSize = await evaluate(A.page, () => (/a=max-message-size:(\d+)/.exec(window.peercam.pc.remoteDescription.sdp) || [])[1] ?? 'absent (64 KiB by RFC 8841)');
  t.info(`the device's answer: max-message-size ${maxMessageSize}; the browser's sctp.maxMessageSize ${await evaluate(A.page, () => window.peercam.pc.sctp?.maxMessageSize)}`);
  const sendRaw = (rows) => evaluate(A.page, async (rows) => {
    const ch = window.peercam.channel;
    const out = [];
    for (const [label, raw] of rows) {
      const reply = await new Promise((resolve) => {
        const timer = setTimeout(() => { ch.removeEventListener('message', on); resolve({ timeout: true }); }, 3000);
        const on = (e) => {
          let m;
          try { m = JSON.parse(e.data); } catch { return; }
          if (m.type !== 'reply') return;   // events may arrive in between
          clearTimeout(timer); ch.removeEventListener('message', on); resolve(m);
        };
        ch.addEventListener('message', on);
        try {
          ch.send(typeof raw === 'string' ? raw : new Uint8Array(raw.binary).fill(0xff));
        } catch (err) {
          clearTimeout(timer); ch.removeEventListener('message', on); resolve({ sendFailed: `${err.name}: ${err.message}` });
        }
      });
      out.push({ label, reply, state: ch.readyState });
    }
    return out;
  }, rows);
  const results = await sendRaw(table.map(([label, raw]) => [label, raw]));
  let tableOk = 0;
  const checkRow = (r, row) => {
    const [label, , code, id, pattern] = row;
    const e = r.reply.error || {};
    const named = !pattern || pattern.test(String(e.field ?? e.constraint ?? ''));
    // A message over the device's advertised max-message-size never leaves the browser: that is fine too.
    const refused = /larger than max-message-size/.test(r.reply.sendFailed || '');
    const ok = refused || (r.reply.ok === false && e.code === code && r.reply.id === id && named && r.state === 'open');
    if (ok) tableOk++;
    t.check(ok, `malformed: ${label} → ${code}${pattern ? ` naming ${pattern.source.replace(/[\^$]/g, '')}` : ''}`,
      `${JSON.stringify(r.reply).slice(0, 260)}; channel ${r.state}`);
  };
  results.forEach((r, i) => checkRow(r, table[i]));
  const after = await request(A.page, { type: 'get_settings' }).catch((e) => ({ ok: false, error: e.message }));
  const connA2 = await connection(A.page);
  t.check(after.ok && after.result?.video?.width && same(connA0, connA2) && svc.exited() === null,
    'after the table: get_settings still works on the same connection, the device still runs',
    `${tableOk}/${table.length} rows as expected; reply ${after.ok ? 'ok' : JSON.stringify(after.error)}; ${JSON.stringify(connA2)}`);

  // ---- leaving ----
  const leftAt = Date.now();
  await B.context.close();
  const left = await waitForEvent(A.page, 'viewer_left', `e.viewer === ${JSON.stringify(b.viewerId)} && e.received > ${leftAt}`, 5000)
    .catch((e) => ({ error: e.message }));
  const one = await waitFor(A.page, () => document.getElementById('viewers').textContent.includes('1 watching'), undefined, { timeoutMs: 2000, what: '1 watching' })
    .catch((e) => ({ error: e.message }));
  t.check(!left.error && !one.error, 'A sees B leave ("1 watching")', left.error || one.error || `after ${left.ms} ms`);
  const connB2 = await connection(A.page);
  t.check(same(connA0, connB2), 'A never reconnected', JSON.stringify(connB2));

  // Last, as it may break the channel: an empty string goes out with SCTP PPID 56 ("WebRTC String Empty").
  const emptyRow = ['empty message', '', 'bad_json', null];
  checkRow((await sendRaw([emptyRow.slice(0, 2)]))[0], emptyRow);
  const afterEmpty = await request(A.page, { type: 'get_settings' }, 3000).catch((e) => ({ ok: false, error: e.message }));
  t.check(afterEmpty.ok === true, 'after an empty message the channel still answers', afterEmpty.ok ? 'get_settings ok' : JSON.stringify(afterEmpty.error));
  t.check(A.errors.length === 0 && B.errors.length === 0, 'no page errors', [...A.errors, ...B.errors].join(' | '));
}, { timeoutMs: 170000 });
