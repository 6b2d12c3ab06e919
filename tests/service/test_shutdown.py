#!/usr/bin/env python3
"""Shutdown with viewers (issue 5): two aiortc WHEP viewers decode video, then SIGTERM → the
service closes the peer connections and exits with code 0 within 2 s.

aiortc is the interop suite's client (tests/interop/peercam_interop.py: whep_receive with the
aioice loopback patch); run with the interop venv's python, through tests/service/run.sh.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from pathlib import Path

from svc import BASE_CONFIG, Checker, Service, assert_loopback_only, load_note, hash_password, merge, new_token, request

from peercam_interop import whep_receive  # noqa: E402  (sys.path set up by svc)

c = Checker("shutdown")
HTTP_PORT, UDP_PORT = 18447, 18493
VIEWERS = 2
MIN_FRAMES = 30       # each viewer must have decoded this many frames before SIGTERM
EXIT_LIMIT_S = 2.0


async def scenario(svc: Service, token: str) -> None:
    base = f"http://127.0.0.1:{HTTP_PORT}"
    live: list = [None] * VIEWERS
    started = [asyncio.Event() for _ in range(VIEWERS)]

    def viewer(i: int):
        async def on_connected(res):
            live[i] = res
            started[i].set()
        # duration is an upper bound: the SIGTERM below ends the sessions long before.
        return whep_receive(base, duration=20, first_frame_timeout=15, token=token, on_connected=on_connected, delete=False)

    tasks = [asyncio.create_task(viewer(i)) for i in range(VIEWERS)]
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
    except asyncio.TimeoutError:
        for i, t in enumerate(tasks):
            if t.done():
                c.info(f"viewer {i}: {t.result().error}")
        c.check(f"{VIEWERS} viewers connected and decoding", False, "not within 30 s")
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and min(r.video_frames for r in live) < MIN_FRAMES:
        await asyncio.sleep(0.1)
    frames = [r.video_frames for r in live]
    c.check(f"{VIEWERS} aiortc viewers decode video (>= {MIN_FRAMES} frames each)", min(frames) >= MIN_FRAMES,
            f"frames {frames}, first frame after {', '.join(f'{r.first_frame_ms:.0f}' for r in live)} ms")
    r = await asyncio.to_thread(request, "GET", base + "/api/settings", None, {"Authorization": f"Bearer {token}"})
    try:
        viewers = __import__("json").loads(r.body).get("viewers")
    except ValueError:
        viewers = None
    c.check(f"the service counts {VIEWERS} viewers", viewers == VIEWERS, f"/api/settings viewers = {viewers} ({r})")

    proc = svc.proc
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = await asyncio.to_thread(proc.wait, 10)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
        rc = None
    took = time.monotonic() - t0
    c.check(f"SIGTERM with {VIEWERS} viewers connected -> exit within {EXIT_LIMIT_S:.0f} s", rc is not None and took <= EXIT_LIMIT_S,
            f"exited after {took * 1000:.0f} ms" if rc is not None else f"still running after {took:.1f} s")
    c.check("  ... with exit code 0", rc == 0, f"exit code {rc}")
    svc.proc = proc if rc is None else None  # Service.close() kills it if still there

    # Did the viewers hear about it (DTLS close -> aiortc closes the connection), or only time out?
    seen: list = [None] * VIEWERS
    end = time.monotonic() + 5
    while time.monotonic() < end and None in seen:
        for i, res in enumerate(live):
            if seen[i] is None and any(s in ("closed", "failed") for s in res.connection_states):
                seen[i] = time.monotonic() - t0
        await asyncio.sleep(0.02)
    c.check("the viewers' connections end promptly (peer connections were closed, not abandoned)",
            all(s is not None and s <= 3.0 for s in seen),
            ", ".join(f"viewer {i}: {'%.0f ms' % (s * 1000) if s is not None else 'still open after 5 s'} "
                      f"{live[i].connection_states}" for i, s in enumerate(seen)))
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    for i, res in enumerate(results):
        if isinstance(res, BaseException):
            c.info(f"viewer {i}: {type(res).__name__}: {res}")
        else:
            c.info(f"viewer {i}: {res.video_frames} frames in {res.window_s:.1f} s, decode errors "
                   f"{len(res.aiortc_decode_errors) + len(res.ffmpeg_errors)}, end: {res.error or 'window over'}")


def main() -> int:
    assert_loopback_only()
    load_note(c)
    token, digest = new_token()
    with tempfile.TemporaryDirectory(prefix="peercam-shutdown-") as d:
        work = Path(d)
        cfg = merge(BASE_CONFIG, {
            "http": {"listen": f"127.0.0.1:{HTTP_PORT}", "tls": False, "state_dir": str(work / "state")},
            # Any password (nobody logs in): WHEP needs the config token, as on a real device.
            "auth": {"password_hash": hash_password("shutdown-test-password"), "token_sha256": [digest]},
            "webrtc": {"udp_port": UDP_PORT},
        })
        with Service("shutdown", cfg, workdir=work) as svc:
            svc.start()
            try:
                asyncio.run(scenario(svc, token))
            except Exception as e:  # noqa: BLE001
                import traceback
                c.check("scenario ran to the end", False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            log = svc.log_text()
        c.check("the log says it is shutting down", "shutting down" in log)
        c.check("no secret in the service log", token not in log)
    return c.summary()


if __name__ == "__main__":
    raise SystemExit(main())
