// The device as a PeerJS peer (ID `peercam`), driven by the real `peerjs` client in Chromium:
// - peer.call('peercam', fakeMic) with offerToReceiveVideo → the remote stream renders H.264 video,
//   and the fake mic's beeps come out of the device's speaker (an ALSA file-plugin PCM, docs/test-rigs.md rig 2);
// - peer.call with camera + mic (the article's demo) → the device answers video sendonly;
// - peer.connect('peercam', {serialization}) for json, binary and raw: get_settings round-trips;
//   with binary an ArrayBuffer is echoed back byte for byte; a malformed request gets an error
//   reply and the connection keeps working.
import { mkdtempSync, writeFileSync, existsSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { evaluate, launchBrowser, main, startService, sleep } from '../e2e/lib.mjs';
import { peerPage, until } from './harness.mjs';

await main('peerjs-device', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'peercam-peerjs-device-'));
  const outRaw = join(dir, 'speaker.raw');
  writeFileSync(join(dir, 'asound.conf'),
    `pcm.peercam_test_speaker {\n  type file\n  slave.pcm { type null }\n  file "${outRaw}"\n  format "raw"\n}\n`);
  const svc = await startService({
    name: 'peerjs-device',
    config: { video: { width: 640, height: 480 }, speaker: { device: 'peercam_test_speaker' } },
    env: { ALSA_CONFIG_PATH: join(dir, 'asound.conf') },
  });
  t.info(`service at ${svc.url} (log: ${svc.logPath})`);
  const browser = await launchBrowser();
  const p = await peerPage(browser, svc.url);
  const open = await evaluate(p.page, () => T.create('me', 'parent'));
  t.check(open.id === 'parent', 'browser peer opens', JSON.stringify(open));

  // --- media: a mic-only caller (needs offerToReceiveVideo, see the demo page's note) ----------
  const call = await evaluate(p.page, async () => {
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    T.mic = mic;
    const c = T.call = T.peers.me.peer.call('peercam', mic, { constraints: { offerToReceiveVideo: true, offerToReceiveAudio: true } });
    const stream = await new Promise((resolve, reject) => {
      c.on('stream', resolve);
      c.on('error', (e) => reject(new Error(e.message)));
      setTimeout(() => reject(new Error('no stream event in 10 s')), 10000);
    });
    const r = await T.render(stream, 3000);
    const stats = await c.peerConnection.getStats();
    let codec = null;
    stats.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') codec = stats.get(s.codecId)?.mimeType; });
    return { ...r, codec };
  });
  t.check(call.frames >= 30 && call.width === 640 && call.height === 480,
    'peer.call(peercam) → the stream event delivers video that renders', JSON.stringify(call));
  t.check(call.codec === 'video/H264', 'H.264 negotiated although PeerJS sets no codec preference', call.codec);
  t.check(call.tracks.includes('audio'), 'the stream carries the device\'s audio too', call.tracks.join(','));
  // The caller's mic goes to the speaker (implicit talk: a PeerJS call has no control channel).
  await sleep(3000);
  const settings = await (await fetch(`${svc.url}api/settings`)).json();
  t.check(settings.talker && settings.talkback?.playing, 'the caller holds the speaker', JSON.stringify(settings.talker));
  const raw = existsSync(outRaw) ? readFileSync(outRaw) : Buffer.alloc(0);
  const pcm = new Int16Array(raw.buffer, raw.byteOffset, Math.floor(raw.length / 2));
  let peak = 0, sumsq = 0;
  for (const s of pcm) { peak = Math.max(peak, Math.abs(s)); sumsq += s * s; }
  const rms = Math.sqrt(sumsq / Math.max(1, pcm.length));
  t.check(pcm.length > 48000 && peak > 3000, 'the fake mic\'s beeps come out of the device speaker',
    `${(pcm.length / 48000).toFixed(1)} s written, peak ${peak}, RMS ${rms.toFixed(0)}`);
  await evaluate(p.page, () => T.call.close());
  const freed = await until(p.page, async () => !(await (await fetch('/api/settings')).json()).talker, undefined,
    { timeoutMs: 15000, what: 'speaker released after the call closed' }).catch(() => false);
  t.check(!!freed, 'closing the call frees the speaker');

  // --- media: camera + mic caller (the article's demo): device answers its video sendonly ------
  const cam = await evaluate(p.page, async () => {
    const stream = await T.media();
    const c = T.peers.me.peer.call('peercam', stream);
    const remote = await new Promise((resolve, reject) => {
      c.on('stream', resolve);
      setTimeout(() => reject(new Error('no stream event in 10 s')), 10000);
    });
    const r = await T.render(remote, 1500);
    const answer = c.peerConnection.remoteDescription.sdp;
    const video = answer.split('m=').find((m) => m.startsWith('video')) || '';
    c.close();
    return { ...r, direction: (video.match(/a=(sendonly|recvonly|sendrecv|inactive)/) || [])[1] };
  });
  t.check(cam.frames >= 10 && cam.direction === 'sendonly', 'a camera+mic caller gets video; the device answers it sendonly',
    JSON.stringify(cam));

  // --- data connections, per serialization -------------------------------------------------
  for (const serialization of ['json', 'binary', 'raw']) {
    const r = await evaluate(p.page, async (serialization) => {
      const conn = T.peers.me.peer.connect('peercam', { serialization, reliable: true });
      const got = [];
      conn.on('data', (d) => got.push(d));
      await new Promise((resolve, reject) => {
        conn.on('open', resolve);
        conn.on('error', (e) => reject(new Error(e.message)));
        setTimeout(() => reject(new Error(`${serialization}: data connection did not open in 10 s`)), 10000);
      });
      const asObj = (d) => (typeof d === 'string' ? JSON.parse(d) : d);
      const waitFor = async (pred) => {
        for (let i = 0; i < 100; i++) {
          const hit = got.map((d) => { try { return asObj(d); } catch { return null; } }).find((d) => d && pred(d));
          if (hit) return hit;
          await new Promise((r) => setTimeout(r, 50));
        }
        return null;
      };
      const req = { v: 1, id: 41, type: 'get_settings' };
      conn.send(serialization === 'raw' ? JSON.stringify(req) : req);
      const reply = await waitFor((d) => d.type === 'reply' && d.id === 41);
      const hello = await waitFor((d) => d.type === 'event' && d.event === 'hello');
      const bad = serialization === 'raw' ? '{nope' : { v: 1, id: 42, type: 'reboot' };
      conn.send(bad);
      const err = await waitFor((d) => d.type === 'reply' && d.ok === false);
      const again = { v: 1, id: 43, type: 'get_settings' };
      conn.send(serialization === 'raw' ? JSON.stringify(again) : again);
      const reply2 = await waitFor((d) => d.type === 'reply' && d.id === 43);
      let echo = null;
      if (serialization === 'binary') {
        const bytes = new Uint8Array(3000).map((_, i) => (i * 7) & 255);
        conn.send(bytes.buffer);
        for (let i = 0; i < 100 && !echo; i++) {
          echo = got.find((d) => d instanceof ArrayBuffer || ArrayBuffer.isView(d));
          if (!echo) await new Promise((r) => setTimeout(r, 50));
        }
        const back = echo ? new Uint8Array(echo instanceof ArrayBuffer ? echo : echo.buffer) : null;
        echo = back ? { length: back.length, same: back.length === bytes.length && back.every((b, i) => b === bytes[i]) } : null;
      }
      conn.close();
      return {
        width: reply?.result?.video?.width, ok: reply?.ok, hello: !!hello,
        errCode: err?.error?.code, ok2: reply2?.ok, echo,
      };
    }, serialization);
    t.check(r.ok === true && r.width === 640, `connect(${serialization}): get_settings round-trips`, JSON.stringify(r));
    t.check(r.hello, `connect(${serialization}): the device sends the hello event`);
    t.check(!!r.errCode && r.ok2 === true, `connect(${serialization}): a bad request gets an error reply (${r.errCode}) and the connection keeps working`);
    if (serialization === 'binary') t.check(r.echo?.same === true, 'binary: an ArrayBuffer round-trips byte for byte', JSON.stringify(r.echo));
  }
  const after = await (await fetch(`${svc.url}api/settings`)).json();
  t.check(after.video.encoders_started >= 1, 'service healthy after the PeerJS sessions', `viewers now ${after.viewers}`);
});
