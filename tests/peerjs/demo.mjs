// The /peerjs-demo page, used as a person would: choose an ID (or get a random one), start a text
// chat and a video call with the other page's ID, accept or reject what comes in; and the
// "Call the camera" button offers to receive video even with a microphone-only stream.
import { join } from 'node:path';
import { ARTIFACTS, evaluate, launchBrowser, main, openViewer, startService } from '../e2e/lib.mjs';
import { until } from './harness.mjs';

await main('peerjs-demo', async (t) => {
  const svc = await startService({ name: 'peerjs-demo' });
  const browser = await launchBrowser();
  const A = await openViewer(browser, `${svc.url}peerjs-demo`, { viewport: { width: 1000, height: 1100 } });
  const B = await openViewer(browser, `${svc.url}peerjs-demo`, { viewport: { width: 1000, height: 1100 } });
  const a = A.page, b = B.page;

  await a.fill('#my-id', 'alice');
  await a.click('#start');
  await b.click('#start');
  await a.waitForSelector('#status[data-state=open]', { timeout: 10000 });
  await b.waitForSelector('#status[data-state=open]', { timeout: 10000 });
  const bobId = await b.inputValue('#my-id');
  t.check(/^[0-9a-f-]{36}$/.test(bobId), 'Start without an ID: the server gives a random one', bobId);
  t.check((await a.textContent('#status')).includes('alice'), 'Start with an ID: connected as alice', await a.textContent('#status'));

  // Text chat: B asks, A accepts, both write.
  await b.fill('#peer-id', 'alice');
  await b.click('#connect');
  await a.waitForSelector('#prompts .prompt', { timeout: 10000 });
  const ask = await a.textContent('#prompts .prompt');
  t.check(ask.includes(bobId) && ask.includes('chat'), 'A is asked to accept B\'s chat', ask);
  await a.click('#prompts .prompt button:text("Accept")');
  await b.waitForSelector('#message:not([disabled])', { timeout: 10000 });
  await b.fill('#message', 'hello alice');
  await b.press('#message', 'Enter');
  await until(a, () => demo.received.some((r) => r.data === 'hello alice'), undefined, { what: 'A gets the message' });
  await a.waitForSelector('#message:not([disabled])', { timeout: 10000 });
  await a.fill('#message', 'hi, who is this?');
  await a.click('#send');
  await until(b, () => demo.received.some((r) => r.data === 'hi, who is this?'), undefined, { what: 'B gets the reply' });
  t.check((await a.textContent('#log')).includes('hello alice') && (await b.textContent('#log')).includes('hi, who is this?'),
    'text messages both ways, shown in both logs');

  // Video call: B calls, A accepts; both pages render the other's (fake) camera.
  await b.click('#call');
  await a.waitForSelector('#prompts .prompt', { timeout: 10000 });
  t.check((await a.textContent('#prompts .prompt')).includes('calling'), 'A is asked to accept B\'s call');
  await a.click('#prompts .prompt button:text("Accept")');
  const frames = (page) => until(page, () => new Promise((resolve) => {
    const v = document.getElementById('remote-video');
    if (!v.srcObject || v.readyState < 2) return resolve(false);
    let n = 0;
    const on = () => { n++; v.requestVideoFrameCallback(on); };
    v.requestVideoFrameCallback(on);
    setTimeout(() => resolve({ frames: n, width: v.videoWidth, height: v.videoHeight }), 2000);
  }), undefined, { what: 'remote video', timeoutMs: 20000 });
  const [fa, fb] = await Promise.all([frames(a), frames(b)]);
  t.check(fa.frames >= 15 && fa.width > 0, 'A shows B\'s video', JSON.stringify(fa));
  t.check(fb.frames >= 15 && fb.width > 0, 'B shows A\'s video', JSON.stringify(fb));
  await a.screenshot({ path: join(ARTIFACTS, 'peerjs-demo.png') });
  t.info(`screenshot: ${join(ARTIFACTS, 'peerjs-demo.png')}`);

  // Reject: A calls B, B rejects: no stream on B, the prompt is gone.
  await b.click('#hangup');
  await a.fill('#peer-id', bobId);
  await a.click('#call');
  await b.waitForSelector('#prompts .prompt', { timeout: 10000 });
  await b.click('#prompts .prompt button:text("Reject")');
  const rejected = await evaluate(b, () => ({ prompts: document.querySelectorAll('#prompts .prompt').length, call: !!demo.call,
    logged: demo.log.some((l) => l.text.startsWith('rejected')) }));
  t.check(rejected.prompts === 0 && !rejected.call && rejected.logged, 'B rejects A\'s call', JSON.stringify(rejected));

  // "Call the camera": calls the device's ID and asks for video although it sends only audio.
  await b.click('#call-camera');
  const cam = await until(b, () => demo.call?.peerConnection && demo.call.peerConnection.getTransceivers().length >= 2 && {
    peer: demo.call.peer,
    transceivers: demo.call.peerConnection.getTransceivers().map((x) => `${x.receiver.track.kind}:${x.direction}`),
    localTracks: demo.call.localStream.getTracks().map((x) => x.kind),
  }, undefined, { what: 'the camera call' });
  t.check(cam.peer === 'peercam' && cam.localTracks.join() === 'audio' && cam.transceivers.includes('video:recvonly'),
    'Call the camera: mic-only stream to "peercam", offering to receive video', JSON.stringify(cam));
  const note = await a.textContent('fieldset:nth-of-type(2) .note');
  t.check(note.includes('offerToReceiveVideo'), 'the page explains the option for mic-only callers');
  const pageErrors = [...A.errors, ...B.errors].filter((e) => e.startsWith('pageerror'));
  t.check(pageErrors.length === 0, 'no script errors on the page', pageErrors.join('; '));
});
