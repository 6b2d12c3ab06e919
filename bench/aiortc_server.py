#!/usr/bin/env python3
"""aiortc reference server for the peercam benchmark (NOT peercam).

A minimal WHEP endpoint (POST /whep -> 201 + answer, DELETE /whep/<id>, GET /api/settings) that sends a
moving 1280x720 test pattern carrying the DESIGN.md timestamp code (H.264 through aiortc's libx264) and a
440 Hz tone (Opus). aiortc encodes once per viewer. Loopback only; prints `listening on http://...` on
stderr when ready.

aioice (aiortc's ICE) never gathers 127.0.0.1, which leaves it without any candidate in a loopback-only
network namespace; get_host_addresses is wrapped to add it.

  aiortc_server.py --listen 127.0.0.1:18380 --width 1280 --height 720 --fps 30
"""

import argparse
import asyncio
import fractions
import json
import math
import sys
import time
import uuid
from array import array

import aioice.ice
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

_orig_hosts = aioice.ice.get_host_addresses


def _hosts_with_loopback(use_ipv4: bool, use_ipv6: bool) -> list:
    addresses = _orig_hosts(use_ipv4, use_ipv6)
    if use_ipv4 and "127.0.0.1" not in addresses:
        addresses.append("127.0.0.1")
    return addresses


aioice.ice.get_host_addresses = _hosts_with_loopback

STATE = {"viewers": {}, "frames": 0}


class PatternTrack(MediaStreamTrack):
    """Grey picture with a moving bar, the timestamp code on row 0 (stamped when the frame is made)."""

    kind = "video"

    def __init__(self, width: int, height: int, fps: int):
        super().__init__()
        self.w, self.h, self.fps = width, height, fps
        self.n = 0
        self.t0 = None
        self.b = max(8, width // 40)
        self.chroma = bytes([128]) * ((width // 2) * (height // 2))

    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        wait = self.t0 + self.n / self.fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        code = int(time.time() * 1000) % (1 << 32)
        w, h, b = self.w, self.h, self.b
        row = bytearray([90]) * w
        bar = (self.n * 8) % w
        row[bar:bar + 64] = bytes([200]) * len(row[bar:bar + 64])
        code_row = bytearray(row)
        bits = [1, 0] + [(code >> (31 - i)) & 1 for i in range(32)]
        for i, bit in enumerate(bits):
            code_row[i * b:(i + 1) * b] = bytes([235 if bit else 16]) * b
        frame = av.VideoFrame(w, h, "yuv420p")
        y = frame.planes[0]
        luma = bytes(code_row) * b + bytes(row) * (h - b)
        if y.line_size == w:
            y.update(luma)
        else:
            y.update(b"".join(luma[r * w:(r + 1) * w] + bytes(y.line_size - w) for r in range(h)))
        for p in frame.planes[1:]:
            p.update(self.chroma if p.line_size == w // 2 else bytes([128]) * p.buffer_size)
        frame.pts = int(self.n * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.n += 1
        STATE["frames"] += 1
        return frame


class ToneTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self):
        super().__init__()
        self.n = 0
        self.t0 = None
        self.table = array("h", (int(8000 * math.sin(2 * math.pi * 440 * i / 48000)) for i in range(48000)))

    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        wait = self.t0 + self.n * 0.02 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        i = (self.n * 960) % 48000
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(self.table[i:i + 960].tobytes())
        frame.sample_rate = 48000
        frame.pts = self.n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.n += 1
        return frame


def response(status: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    h = {"Content-Length": str(len(body)), "Connection": "close"}
    h.update(headers or {})
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + body


async def offer(args, sdp: str) -> bytes:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    kinds = [line.split()[0][2:] for line in sdp.splitlines() if line.startswith("m=")]
    if "video" in kinds:
        t = pc.addTransceiver(PatternTrack(args.width, args.height, args.fps), direction="sendonly")
        t.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/H264", "video/rtx")])
    if "audio" in kinds:
        pc.addTransceiver(ToneTrack(), direction="sendonly")
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())   # gathers: the answer carries candidates
    except Exception as e:  # noqa: BLE001
        await pc.close()
        return response("400 Bad Request", f"{e}\n".encode())
    sid = uuid.uuid4().hex
    STATE["viewers"][sid] = pc

    @pc.on("connectionstatechange")
    async def _():
        if pc.connectionState in ("failed", "closed"):
            STATE["viewers"].pop(sid, None)
            await pc.close()

    return response("201 Created", pc.localDescription.sdp.encode(), {"Content-Type": "application/sdp", "Location": f"/whep/{sid}"})


async def handle(args, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1").split("\r\n")
        method, path, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in head[1:] if ":" in l)}
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
        if method == "POST" and path == "/whep":
            out = await offer(args, body.decode("utf-8", "replace"))
        elif method == "DELETE" and path.startswith("/whep/"):
            pc = STATE["viewers"].pop(path[len("/whep/"):], None)
            if pc:
                await pc.close()
            out = response("200 OK" if pc else "404 Not Found")
        elif method == "GET" and path == "/api/settings":
            js = {"viewers": len(STATE["viewers"]), "video": {"width": args.width, "height": args.height, "fps": args.fps, "encoded_frames": STATE["frames"]}}
            out = response("200 OK", json.dumps(js).encode(), {"Content-Type": "application/json"})
        else:
            out = response("404 Not Found")
        writer.write(out)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:18380")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=30)
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(lambda r, w: handle(args, r, w), host, int(port))
    print(f"aiortc reference: listening on http://{host}:{port}/", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
