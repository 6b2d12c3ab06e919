"""Night vision end to end (issue 13, part 3) against the release build, in a loopback-only network
namespace (run.sh: `unshare -n`). Run with the interop venv's Python (aiortc decodes the stream).

Real parts: the service with the test pattern (drawn dark or bright through `POST
/api/test-pattern {"dark": …}`), SSE read with `http.client`, Debian's ffmpeg decoding the snapshot
JPEG, aiortc (FFmpeg's H.264 decoder) over WHEP for the encoded picture. No GPIO here (a host has
no gpiochip; the VM test drives real lines on QEMU's PL061): `ir_led` names a chip that does not
exist, which must be a clear error while everything else works.

What it proves:
- settings: `night` has mode, state, the ir_led line with ok false, and an error naming the chip;
  the service streams anyway.
- auto: bright pattern → day, colour in the snapshot; dark pattern → a `night` event on SSE
  (state night, reason dark) after the 1 s dwell; the snapshot's chroma is then neutral (every
  U/V sample within 3 of 128) and the H.264 that aiortc decodes is grey too (chroma spread < 2,
  colour bars give > 20).
- POST /api/night off → event (day, reason mode), colour back in the snapshot; a bad mode → 400
  naming `mode`.
- watching, dark: no watcher → day; an aiortc viewer → event night/watched while it watches;
  it leaves → event day/unwatched.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "service"))
sys.path.insert(0, str(REPO / "tests" / "interop"))
from svc import Checker, assert_loopback_only, hash_password, load_note, new_token, request  # noqa: E402
import peercam_service  # noqa: E402
from sse import EventStream  # noqa: E402
import peercam_interop as pi  # noqa: E402

ARTIFACTS = HERE / "artifacts"
HTTP_PORT, UDP_PORT = 18700, 18701
W, H, FPS = 640, 360, 15
BASE = f"http://127.0.0.1:{HTTP_PORT}"


class Api:
    def __init__(self, token: str):
        self.auth = {"Authorization": f"Bearer {token}"}

    def get(self, path: str):
        return request("GET", BASE + path, headers=self.auth)

    def post(self, path: str, body: dict):
        return request("POST", BASE + path, body=json.dumps(body).encode(), headers={**self.auth, "Content-Type": "application/json"})

    def night(self) -> dict:
        r = self.get("/api/settings")
        return json.loads(r.body).get("night", {}) if r.status == 200 else {}


class Sse(EventStream):
    """`GET /api/events?types=night`: (monotonic time, event) into a queue (tests/lib/sse.py)."""

    def __init__(self, api: Api):
        super().__init__(HTTP_PORT, "night", api.auth, timeout=120)

    def drain(self) -> list:
        return [e for _, e in super().drain()]

    def wait(self, state: str, reason: str | None, timeout: float):
        return super().wait(lambda e: e.get("event") == "night" and e.get("state") == state
                            and (reason is None or e.get("reason") == reason), timeout)


def snapshot_chroma(api: Api, name: str) -> tuple[float, int]:
    """(spread, max |c - 128|) of the snapshot's U and V planes, decoded by ffmpeg."""
    r = api.get("/api/snapshot.jpg")
    if r.status != 200:
        return -1.0, -1
    path = ARTIFACTS / name
    path.write_bytes(r.body)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
                         capture_output=True, timeout=20).stdout
    chroma = raw[W * H: W * H + 2 * (W // 2) * (H // 2)]
    if not chroma:
        return -1.0, -1
    vals = chroma[::7]
    mean = sum(vals) / len(vals)
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)), max(abs(v - 128) for v in vals)


def frame_chroma(frame) -> tuple[float, float]:
    """(spread, mean |c - 128|) of a decoded frame's chroma (sampled)."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        frame = frame.reformat(format="yuv420p")
    vals = []
    cw, ch = frame.width // 2, frame.height // 2
    for plane in frame.planes[1:3]:
        buf = bytes(plane)
        for row in range(0, ch, 6):
            vals.extend(buf[row * plane.line_size: row * plane.line_size + cw][::6])
    mean = sum(vals) / len(vals)
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)), sum(abs(v - 128) for v in vals) / len(vals)


async def watch(api: Api, duration: float, during=None) -> dict:
    """One WHEP viewer (video only) for `duration` s: per-frame chroma; `during()` runs while it watches."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    pi.patch_aioice_loopback()
    errlog = pi.DecodeErrorLog().install()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    got = asyncio.Event()
    tracks = {}
    out = {"frames": [], "error": ""}

    @pc.on("track")
    def on_track(track):
        if track.kind == "video":
            tracks["video"] = track
            got.set()

    pc.addTransceiver("video", direction="recvonly")
    location = ""
    try:
        await pc.setLocalDescription(await pc.createOffer())
        r = await asyncio.to_thread(request, "POST", BASE + "/whep", pc.localDescription.sdp.encode(),
                                    {"Content-Type": "application/sdp", **api.auth})
        if r.status != 201:
            out["error"] = f"POST /whep -> {r.status}"
            return out
        location = urllib.parse.urljoin(BASE + "/whep", r.header("location") or "")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.body.decode(), type="answer"))
        await asyncio.wait_for(got.wait(), 10)
        end = time.monotonic() + duration
        if during:
            asyncio.get_running_loop().run_in_executor(None, during)
        while time.monotonic() < end:
            try:
                f = await asyncio.wait_for(tracks["video"].recv(), max(0.1, end - time.monotonic()))
            except (asyncio.TimeoutError, MediaStreamError):
                continue
            out["frames"].append(frame_chroma(f))
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        out["decode_errors"] = errlog.counts()
        errlog.uninstall()
        if location:
            await asyncio.to_thread(request, "DELETE", location, None, api.auth)
        await pc.close()
    return out


def config(token_digest: str) -> str:
    return f"""
[http]
listen = "127.0.0.1:{HTTP_PORT}"
[video]
source = "testsrc"
width = {W}
height = {H}
fps = {FPS}
bitrate_kbps = 1000
ladder = false
[audio]
source = "none"
[webrtc]
udp_port = {UDP_PORT}
include_loopback = true
[auth]
password_hash = "{hash_password('night-test-password')}"
token_sha256 = ["{token_digest}"]
[motion]
enabled = true
fps = 2
[night]
mode = "auto"
greyscale = true
ir_led = {{ chip = "/dev/gpiochip-peercam-missing", line = 17 }}
dark_below = 40
bright_above = 70
switch_after_s = 1
min_hold_s = 1
"""


def run(c: Checker, api: Api) -> None:
    n = api.night()
    led = n.get("ir_led") or {}
    c.check("settings: night has mode auto, state day, the ir_led line not held, an error naming the chip",
            n.get("mode") == "auto" and n.get("state") == "day" and led.get("ok") is False
            and "gpiochip-peercam-missing" in (n.get("error") or "") and "ir_led" in (n.get("error") or ""), json.dumps(n))
    sse = Sse(api)
    c.check("SSE /api/events?types=night opens", sse.status == 200, str(sse.status))
    time.sleep(1.0)
    spread, _ = snapshot_chroma(api, "day.jpg")
    c.check("day: the snapshot is in colour (chroma spread > 20)", spread > 20, f"spread {spread:.1f}")
    luma_day = api.night().get("luma")
    c.check("day: the measured luma is over bright_above (70)", isinstance(luma_day, int) and luma_day > 70, f"luma {luma_day}")

    t0 = time.monotonic()
    api.post("/api/test-pattern", {"dark": True})
    at, e = sse.wait("night", "dark", 6.0)
    c.check("dark test pattern → SSE night event (state night, reason dark) after the 1 s dwell, within 4 s",
            at is not None and 0.9 <= at - t0 <= 4.0, f"{at - t0:.2f} s: {json.dumps(e)}" if at else "no event")
    if e:
        c.check("the event carries mode auto and the dark luma", e.get("mode") == "auto" and isinstance(e.get("luma"), int) and e["luma"] < 40, json.dumps(e))
    time.sleep(0.5)
    spread, maxdev = snapshot_chroma(api, "night.jpg")
    c.check("night: the snapshot's chroma is neutral (every sampled U/V within 3 of 128)", 0 <= maxdev <= 3,
            f"spread {spread:.2f}, max |c-128| {maxdev}")
    out = pi.run_async(watch(api, 3.0))
    frames = out["frames"]
    worst = max((s for s, _ in frames), default=-1)
    c.check("night: aiortc decodes the H.264 as grey (chroma spread < 2 in every frame, ≥ 20 frames, no decode error)",
            len(frames) >= 20 and worst < 2 and not out["error"] and out["decode_errors"] == (0, 0),
            f"{len(frames)} frames, worst spread {worst:.2f}, errors {out['decode_errors']} {out['error']}")

    r = api.post("/api/night", {"mode": "dusk"})
    c.check("POST /api/night with a bad mode → 400 naming mode", r.status == 400 and b"mode" in r.body, f"{r.status} {r.body[:200]!r}")
    sse.drain()
    r = api.post("/api/night", {"mode": "off"})
    body = json.loads(r.body) if r.status == 200 else {}
    at, e = sse.wait("day", "mode", 3.0)
    c.check("POST /api/night off → 200 state day, and an SSE night event (day, reason mode)",
            r.status == 200 and body.get("state") == "day" and body.get("mode") == "off" and e is not None, f"{r.status} {json.dumps(body)} {e}")
    time.sleep(0.3)
    spread, _ = snapshot_chroma(api, "off.jpg")
    c.check("off: colour is back in the snapshot", spread > 20, f"spread {spread:.1f}")

    # watching: dark, nobody watching → day; a viewer → night at once; it leaves → day at once.
    sse.drain()
    r = api.post("/api/night", {"mode": "watching"})
    body = json.loads(r.body) if r.status == 200 else {}
    c.check("watching, dark, nobody watching → day (the light says dark)",
            body.get("state") == "day" and body.get("dark") is True, json.dumps(body))
    sse.drain()
    seen = {}

    def during():
        seen["night"] = sse.wait("night", "watched", 4.0)

    t0 = time.monotonic()
    out = pi.run_async(watch(api, 4.0, during))
    at, e = seen.get("night", (None, None))
    c.check("watching: a viewer → SSE night event (reason watched) while it watches",
            at is not None and not out["error"], f"{(at or t0) - t0:.2f} s {e} {out['error']}")
    greys = [s for s, _ in out["frames"][-10:]]
    c.check("watching: that viewer's last frames are grey", greys and max(greys) < 2, f"{greys}")
    at, e = sse.wait("day", "unwatched", 4.0)
    c.check("watching: the viewer left → SSE day event (reason unwatched)", e is not None, str(e))


def main() -> int:
    c = Checker("night")
    assert_loopback_only()
    load_note(c)
    ARTIFACTS.mkdir(exist_ok=True)
    token, digest = new_token()
    svc = peercam_service.Service("night", config(digest), artifacts=ARTIFACTS)
    try:
        svc.start()
        api = Api(token)
        t0 = time.monotonic()
        try:
            run(c, api)
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            c.check("night ran to the end", False, f"{type(e).__name__}: {e}")
        c.info(f"night: {time.monotonic() - t0:.1f} s")
        c.check("the service is still running", svc.alive())
        panics = [l for l in svc.lines if "panicked" in l]
        c.check("no panic in the service log", not panics, "; ".join(panics[:3]))
    finally:
        svc.stop()
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
