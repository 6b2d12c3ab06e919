#!/usr/bin/env python3
"""Reference WHEP server built on aiortc (NOT peercam).

Speaks the same interface subset as peercam (POST /whep, DELETE <Location>, GET /api/settings,
`listening on http://...` on stderr) from the same kind of source: a moving test pattern with
the timestamp code of docs/interfaces.md (H.264 via aiortc's libx264 encoder) and a 440 Hz tone (Opus).
The one aiortc reference server of the repo. Uses:
  * validating the interop harness itself without the peercam binary:
      PEERCAM_CMD="tests/interop/.venv/bin/python tests/interop/reference_whep_server.py --config {config}"
  * the "aiortc server on the same source" reference point of the benchmark (bench/bench.mjs
    starts it with --listen/--width/--height/--fps).
Unlike peercam it encodes once per viewer (aiortc has no shared encoder) and ignores
bitrate_kbps / udp_port. Loopback only.

  reference_whep_server.py --config peercam.toml
  reference_whep_server.py --listen 127.0.0.1:18380 --width 1280 --height 720 --fps 30
"""

import argparse
import asyncio
import fractions
import json
import math
import os
import sys
import time
import tomllib
import uuid
from array import array

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peercam_interop as pi  # noqa: E402

import av  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamTrack  # noqa: E402

MAX_BODY = 64 * 1024
STATE = {"viewers": {}, "encoded_frames": 0}


class PatternTrack(MediaStreamTrack):
    """Moving bars + the timestamp code, yuv420p, paced at `fps` from the monotonic clock."""

    kind = "video"

    def __init__(self, width: int, height: int, fps: int):
        super().__init__()
        self.w, self.h, self.fps = width, height, fps
        self.n = 0
        self.t0 = None

    async def recv(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        due = self.t0 + self.n / self.fps
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        code = int(time.time() * 1000) % (1 << 32)
        frame = av.VideoFrame(self.w, self.h, "yuv420p")
        y = frame.planes[0]
        stride = y.line_size
        # background: a bright bar moving right 4 px/frame over a gradient-free grey
        row = bytearray([90]) * stride
        bar = (self.n * 4) % self.w
        row[bar:bar + 48] = bytes([200]) * len(row[bar:bar + 48])
        buf = bytearray(bytes(row) * self.h)
        b = max(8, self.w // 40)
        code_row = bytearray(row)
        bits = [1, 0] + [(code >> (31 - i)) & 1 for i in range(32)]
        for i, bit in enumerate(bits):
            code_row[i * b:(i + 1) * b] = bytes([235 if bit else 16]) * b
        buf[0:b * stride] = bytes(code_row) * b
        y.update(bytes(buf))
        for p in frame.planes[1:]:
            p.update(bytes([128]) * p.buffer_size)
        frame.pts = int(self.n * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self.n += 1
        STATE["encoded_frames"] += 1
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


def response(status: int, reason: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    h = {"Content-Length": str(len(body)), "Connection": "close"}
    h.update(headers or {})
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return head.encode() + b"\r\n" + body


def text(status: int, reason: str, msg: str) -> bytes:
    return response(status, reason, (msg + "\n").encode(), {"Content-Type": "text/plain"})


async def whep_offer(cfg: dict, offer: str) -> bytes:
    if "m=" not in offer or not offer.startswith("v=0"):
        return text(400, "Bad Request", "malformed SDP offer")
    video_sections = [(m, l) for m, l in pi.sdp_sections(offer) if m.startswith("m=video")]
    if video_sections and not any(c.upper().startswith("H264/") for c in pi.sdp_codecs(video_sections[0][1]).values()):
        return text(400, "Bad Request", "offer has no H.264 on its video m-line")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    # Transceivers made before setRemoteDescription are matched to the offer's m-lines by kind;
    # codec preferences only take effect that way (aiortc filters codecs in setRemoteDescription).
    v = cfg.get("video", {})
    kinds = [m.split()[0][2:] for m, _ in pi.sdp_sections(offer)]
    if "video" in kinds:
        vt = pc.addTransceiver(PatternTrack(v.get("width", 640), v.get("height", 480), v.get("fps", 30)),
                               direction="sendonly")
        vt.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                if c.mimeType in ("video/H264", "video/rtx")])
    if "audio" in kinds:
        pc.addTransceiver(ToneTrack(), direction="sendrecv")
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    except Exception as e:  # noqa: BLE001
        await pc.close()
        return text(400, "Bad Request", f"cannot parse offer: {e}")
    await pc.setLocalDescription(await pc.createAnswer())
    sid = uuid.uuid4().hex
    STATE["viewers"][sid] = pc

    @pc.on("connectionstatechange")
    async def _():
        if pc.connectionState in ("failed", "closed"):
            STATE["viewers"].pop(sid, None)
            await pc.close()

    return response(201, "Created", pc.localDescription.sdp.encode(),
                    {"Content-Type": "application/sdp", "Location": f"/whep/{sid}"})


async def handle(cfg: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            out = text(413, "Payload Too Large", f"body over {MAX_BODY} bytes")
        else:
            body = await reader.readexactly(length) if length else b""
            if method == "POST" and path == "/whep":
                ctype = headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype != "application/sdp":
                    out = text(415, "Unsupported Media Type", "Content-Type must be application/sdp")
                elif not body.strip():
                    out = text(400, "Bad Request", "empty SDP offer")
                else:
                    out = await whep_offer(cfg, body.decode("utf-8", "replace"))
            elif method == "DELETE" and path.startswith("/whep/"):
                pc = STATE["viewers"].pop(path[len("/whep/"):], None)
                if pc is None:
                    out = text(404, "Not Found", "no such WHEP session")
                else:
                    await pc.close()
                    out = response(200, "OK")
            elif method == "GET" and path == "/api/settings":
                v = cfg.get("video", {})
                js = {"video": {"source": v.get("source", "testsrc"), "width": v.get("width", 640),
                                "height": v.get("height", 480), "fps": v.get("fps", 30),
                                "encoded_frames": STATE["encoded_frames"]},
                      "audio": {"source": cfg.get("audio", {}).get("source", "tone")},
                      "viewers": len(STATE["viewers"])}
                out = response(200, "OK", json.dumps(js).encode(), {"Content-Type": "application/json"})
            else:
                out = text(404, "Not Found", "not found")
        writer.write(out)
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", help="a peercam TOML config: [http] listen, [video] width/height/fps/source")
    ap.add_argument("--listen", help="host:port (overrides the config's [http] listen)")
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--fps", type=int)
    args = ap.parse_args()
    cfg: dict = {}
    if args.config:
        with open(args.config, "rb") as f:
            cfg = tomllib.load(f)
    if args.listen:
        cfg.setdefault("http", {})["listen"] = args.listen
    for key in ("width", "height", "fps"):
        if getattr(args, key) is not None:
            cfg.setdefault("video", {})[key] = getattr(args, key)
    pi.patch_aioice_loopback()
    host, port = cfg.get("http", {}).get("listen", "127.0.0.1:18090").rsplit(":", 1)
    server = await asyncio.start_server(lambda r, w: handle(cfg, r, w), host, int(port))
    print(f"reference_whep_server: listening on http://{host}:{port}/", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
