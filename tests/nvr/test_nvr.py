"""The NVR features (issue 15, parts 1, 2 and 4) against the release build, in a loopback-only
network namespace (run.sh: `unshare -n`). Run with the interop venv's Python (aiortc for the two
WebRTC viewers).

Real parts: the service with the test pattern and the test tone; Debian's ffmpeg (snapshot
decoding, RTSP over TCP and UDP), GStreamer's `rtspsrc` + `avdec_h264`, aiortc over WHEP (the
interop suite's client), SSE read with `http.client`, raw RTSP over a socket for the error cases.

What it proves:
- snapshot: 401 without credentials, 400 for a bad width; with nobody watching a JPEG that
  ffmpeg decodes to 640x360 (and 320x180 with `?width=320`) whose timestamp code is within 1 s
  of now; no encoder started for it.
- motion (no viewer, `[motion] enabled`, 5 fps, cooldown 2 s, the overlay at the top masked):
  the test pattern's box started → a `motion` start within 1.5 s; stopped → the end 2 s
  (the cooldown) after its last moving frame, which is within 0.6 s of the stop; still → no
  event; a mask over the box's path → no event while it moves; `encoders_started` stays 0.
- RTSP: OPTIONS without credentials; DESCRIBE without / with wrong credentials → 401;
  ffmpeg over TCP and over UDP and GStreamer's rtspsrc each decode ≥ 90 % of the frames of
  ≥ 4.5 s of stream with readable, increasing timestamp codes, H.264 + Opus described;
  3 RTSP clients + 2 WebRTC viewers at once → still one encoder started; a malformed request →
  400 and the same connection then answers OPTIONS, a new one DESCRIBE; an oversized request
  → 400; the connection cap → 503 for the one over it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "service"))
sys.path.insert(0, str(REPO / "tests" / "interop"))
from svc import Checker, assert_loopback_only, hash_password, load_note, new_token, request  # noqa: E402
import peercam_service  # noqa: E402
from sse import EventStream  # noqa: E402
from nvr_record import test_record  # noqa: E402
from peercam_interop import read_timestamp_code, code_age_ms, code_delta, whep_receive, run_async  # noqa: E402

ARTIFACTS = HERE / "artifacts"
HTTP_PORT = 18600
UDP_PORT = 18601
RTSP_PORT = 18654
W, H, FPS = 640, 360, 30
MAX_RTSP = 8


class Plane(bytes):
    """One luma plane as the interop suite's code reader takes it (buffer + line_size)."""
    line_size = 0


class GrayFrame:
    def __init__(self, data: bytes, width: int, height: int):
        p = Plane(data)
        p.line_size = width
        self.width, self.height, self.planes = width, height, [p]


def now_ms() -> float:
    return time.time() * 1000


class Api:
    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def get(self, path: str, auth: bool = True):
        return request("GET", self.base + path, headers={"Authorization": f"Bearer {self.token}"} if auth else {})

    def post(self, path: str, body: dict):
        return request("POST", self.base + path, body=json.dumps(body).encode(),
                       headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})

    def video(self) -> dict:
        r = self.get("/api/settings")
        return json.loads(r.body)["video"] if r.status == 200 else {}

    def encoders_started(self) -> int:
        r = self.get("/api/settings")
        return json.loads(r.body)["video"]["encoders_started"] if r.status == 200 else -1


class Sse(EventStream):
    """`GET /api/events?types=motion`: (arrival ms, event dict) into a queue (tests/lib/sse.py)."""

    def __init__(self, api: Api):
        super().__init__(HTTP_PORT, "motion", {"Authorization": f"Bearer {api.token}"}, clock=now_ms, timeout=120)

    def wait(self, state: str, timeout: float):
        return super().wait(lambda e: e.get("event") == "motion" and e.get("state") == state, timeout)


def decode_jpeg(data: bytes, name: str):
    """(width, height, GrayFrame) of a JPEG decoded by Debian's ffmpeg/ffprobe."""
    path = ARTIFACTS / name
    path.write_bytes(data)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
                            "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=20)
    w, h = (int(x) for x in probe.stdout.strip().split(",")[:2])
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         capture_output=True, timeout=20).stdout
    return w, h, GrayFrame(raw[: w * h], w, h) if len(raw) >= w * h else None


# ---- snapshot --------------------------------------------------------------------------------------

def test_snapshot(c: Checker, api: Api) -> None:
    r = api.get("/api/snapshot.jpg", auth=False)
    c.check("snapshot without credentials → 401", r.status == 401, str(r))
    r = api.get("/api/snapshot.jpg?width=abc")
    c.check("snapshot with a bad width → 400 JSON", r.status == 400 and b"width" in r.body, f"{r} {r.text()[:120]}")
    for query, size in (("", (W, H)), ("?width=320", (320, 180))):
        t0 = now_ms()
        r = api.get("/api/snapshot.jpg" + query)
        t1 = now_ms()
        ok = r.status == 200 and r.header("content-type") == "image/jpeg"
        c.check(f"snapshot{query} → 200 image/jpeg with nobody watching ({(t1 - t0):.0f} ms)", ok, f"{r} {r.header('content-type')}")
        if not ok:
            continue
        w, h, frame = decode_jpeg(r.body, f"snapshot{query.replace('?', '_').replace('=', '')}.jpg")
        c.check(f"ffmpeg decodes it to {size[0]}x{size[1]}", (w, h) == size, f"{w}x{h}")
        code = read_timestamp_code(frame) if frame else None
        age = code_age_ms(code.value, t1) if code else None
        c.check("its timestamp code is readable and within 1 s of now", code is not None and age is not None and -50 <= age <= 1000,
                f"age {age} ms" if code else "unreadable")
    c.check("no encoder started for snapshots", api.encoders_started() == 0, f"encoders_started {api.encoders_started()}")


# ---- motion -----------------------------------------------------------------------------------------

def test_motion(c: Checker, api: Api) -> None:
    sse = Sse(api)
    c.check("SSE /api/events?types=motion opens", sse.status == 200, str(sse.status))
    m = json.loads(api.get("/api/motion").body)
    c.check("GET /api/motion: enabled, 5 fps, cooldown 2 s, one mask", m.get("enabled") is True and m["params"]["fps"] == 5
            and m["params"]["cooldown_s"] == 2 and m["params"]["masks"] == [[0.0, 0.0, 1.0, 0.3]], json.dumps(m))
    r = api.post("/api/motion", {"masks": [[0.5, 0.5, 0.8, 0.1]]})
    c.check("a mask outside the picture → 400 naming masks", r.status == 400 and b"masks" in r.body, f"{r} {r.text()[:160]}")
    # A still scene to begin with; whatever motion the start-up had ends after the cooldown.
    api.post("/api/test-pattern", {"moving": False})
    sse.wait("end", 4.0)
    time.sleep(0.5)
    sse.drain()
    time.sleep(3.0)
    still = sse.drain()
    c.check("still scene for 3 s: no motion event", not still, str(still))

    t_start = now_ms()
    api.post("/api/test-pattern", {"moving": True})
    at, e = sse.wait("start", 4.0)
    c.check("box moving → motion start within 1.5 s", at is not None and at - t_start <= 1500,
            f"after {at - t_start:.0f} ms: {e}" if at else "no start")
    if e:
        c.check("the start carries its time and area", abs(e["start"] - t_start) <= 1500 and e["area_percent"] > 0, json.dumps(e))
    time.sleep(3.0)
    t_stop = now_ms()
    api.post("/api/test-pattern", {"moving": False})
    at, e = sse.wait("end", 5.0)
    ok = at is not None
    c.check("box stopped → motion end", ok, f"{at - t_stop:.0f} ms after the stop" if ok else "no end")
    if ok:
        last_ok = -300 <= e["last_motion"] - t_stop <= 600
        end_ok = 2000 <= e["end"] - e["last_motion"] <= 2400 and abs(at - t_stop - 2000) <= 1000
        c.check("the end comes 2 s (the cooldown) after the last moving frame, which is the stop",
                last_ok and end_ok, f"last_motion {e['last_motion'] - t_stop:+.0f} ms, end {e['end'] - t_stop:+.0f} ms after the stop; {json.dumps(e)}")
        c.check("the end carries start and peak area", e["start"] <= e["last_motion"] and e["peak_area_percent"] > 0.5, json.dumps(e))
    # A mask over the whole of the box's path (the lower 70 %): nothing moves outside it.
    r = api.post("/api/motion", {"masks": [[0.0, 0.0, 1.0, 0.3], [0.0, 0.3, 1.0, 0.7]]})
    c.check("POST /api/motion sets masks live", r.status == 200, f"{r} {r.text()[:160]}")
    time.sleep(2.5)  # the cooldown after the last end
    sse.drain()
    api.post("/api/test-pattern", {"moving": True})
    time.sleep(3.0)
    masked = sse.drain()
    c.check("box moving under a mask → no motion event", not masked, str(masked))
    area = json.loads(api.get("/api/motion").body)["state"]["area_percent"]
    c.check("… and the detector sees 0 % there", area == 0, f"{area}")
    api.post("/api/motion", {"masks": [[0.0, 0.0, 1.0, 0.3]]})
    at, _ = sse.wait("start", 3.0)
    c.check("mask removed → the moving box starts motion again", at is not None)
    c.check("motion detection started no encoder", api.encoders_started() == 0, f"encoders_started {api.encoders_started()}")


# ---- RTSP -------------------------------------------------------------------------------------------

def rtsp_exchange(data: bytes, sock: socket.socket | None = None, timeout: float = 5.0) -> tuple[bytes, socket.socket]:
    s = sock or socket.create_connection(("127.0.0.1", RTSP_PORT), timeout=timeout)
    s.sendall(data)
    s.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
        buf = head + b"\r\n\r\n" + rest
    except OSError:
        pass
    return buf, s


def status_of(resp: bytes) -> int:
    try:
        return int(resp.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def basic(token: str) -> str:
    return "Basic " + base64.b64encode(f"nvr:{token}".encode()).decode()


def analyse_frames(raw: bytes, what: str, c: Checker, min_span_ms: float = 4500, encoded: int | None = None) -> None:
    """`encoded`: frames the service encoded while the client ran (`encoded_frames` before and
    after): on a loaded machine the service may make fewer than FPS a second, and a client
    cannot decode what was never sent."""
    n = len(raw) // (W * H)
    codes = []
    unreadable = 0
    for i in range(n):
        code = read_timestamp_code(GrayFrame(raw[i * W * H:(i + 1) * W * H], W, H))
        if code is None:
            unreadable += 1
        else:
            codes.append(code.value)
    if len(codes) < 2:
        c.check(f"{what}: frames decoded with readable codes", False, f"{n} frames, {len(codes)} readable")
        return
    span = code_delta(codes[0], codes[-1])
    expected = span * FPS / 1000 + 1
    if encoded is not None and 0 < encoded < expected:
        expected = encoded
    increasing = sum(1 for a, b in zip(codes, codes[1:]) if code_delta(a, b) > 0)
    ratio = len(codes) / expected
    c.check(f"{what}: ≥ 90 % of the frames over ≥ {min_span_ms / 1000:.1f} s decoded, codes readable and increasing",
            span >= min_span_ms and ratio >= 0.9 and unreadable <= n * 0.02 and increasing >= len(codes) - 2,
            f"{n} frames, {len(codes)} readable over {span} ms = {ratio * 100:.0f} % of {expected:.0f}"
            f" (the service encoded {encoded} while it ran); {increasing} steps up")


def ffmpeg_rtsp(url: str, transport: str, seconds: float = 5.0) -> subprocess.CompletedProcess:
    return subprocess.run(["ffmpeg", "-v", "error", "-rtsp_transport", transport, "-i", url, "-t", str(seconds),
                           "-map", "0:v", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                          capture_output=True, timeout=40)


def gst_rtsp(token: str, seconds: float = 7.0) -> subprocess.CompletedProcess:
    # TCP: over UDP a packet lost to a loaded machine costs the frames up to the next IDR (RTSP
    # has no NACK/PLI here); ffmpeg covers UDP.
    pipeline = (f"rtspsrc location=rtsp://127.0.0.1:{RTSP_PORT}/live user-id=nvr user-pw={token} protocols=tcp latency=500 "
                "! rtph264depay ! h264parse ! avdec_h264 ! videoconvert ! video/x-raw,format=GRAY8 ! fdsink fd=1")
    return subprocess.run(["timeout", "-s", "INT", str(seconds), "gst-launch-1.0", "-q", "-e", *pipeline.split()],
                          capture_output=True, timeout=40)


def test_rtsp(c: Checker, api: Api, token: str) -> None:
    url = f"rtsp://nvr:{token}@127.0.0.1:{RTSP_PORT}/live"
    live = f"rtsp://127.0.0.1:{RTSP_PORT}/live"
    resp, s = rtsp_exchange(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n")
    s.close()
    c.check("OPTIONS → 200 with the methods, no credentials needed", status_of(resp) == 200 and b"DESCRIBE" in resp, resp[:200].decode(errors="replace"))
    resp, s = rtsp_exchange(f"DESCRIBE {live} RTSP/1.0\r\nCSeq: 2\r\n\r\n".encode())
    s.close()
    c.check("DESCRIBE without credentials → 401 with a Basic challenge", status_of(resp) == 401 and b"Basic realm" in resp, resp[:200].decode(errors="replace"))
    resp, s = rtsp_exchange(f"DESCRIBE {live} RTSP/1.0\r\nCSeq: 2\r\nAuthorization: {basic('wrong' + token[5:])}\r\n\r\n".encode())
    s.close()
    c.check("DESCRIBE with a wrong token → 401", status_of(resp) == 401, resp[:100].decode(errors="replace"))
    resp, s = rtsp_exchange(f"DESCRIBE {live} RTSP/1.0\r\nCSeq: 3\r\nAuthorization: {basic(token)}\r\n\r\n".encode())
    s.close()
    c.check("DESCRIBE with the token → 200 SDP with H264 and opus", status_of(resp) == 200 and b"H264/90000" in resp and b"opus/48000/2" in resp,
            resp[:120].decode(errors="replace"))

    # Malformed requests: 400, and the server (and the same connection) carries on.
    resp, s = rtsp_exchange(b"THIS IS NOT RTSP\r\n\x00\x01\x02 garbage\r\n\r\n")
    c.check("a malformed request → 400", status_of(resp) == 400, resp[:100].decode(errors="replace"))
    resp, s = rtsp_exchange(b"OPTIONS * RTSP/1.0\r\nCSeq: 7\r\n\r\n", sock=s)
    s.close()
    c.check("… and the same connection then answers OPTIONS", status_of(resp) == 200 and b"CSeq: 7" in resp, resp[:100].decode(errors="replace"))
    resp, s = rtsp_exchange(f"DESCRIBE {live} RTSP/1.0\r\n".encode() + b"CSeq: 1\r\nX-Pad: " + b"a" * 10000 + b"\r\n\r\n")
    s.close()
    c.check("an oversized request → 400", status_of(resp) == 400, resp[:100].decode(errors="replace"))
    resp, s = rtsp_exchange(f"DESCRIBE {live} RTSP/1.0\r\nCSeq: 4\r\n\r\n".encode())  # missing auth but well-formed
    s.close()
    c.check("the server still answers after the bad requests", status_of(resp) == 401)

    # The connection cap: MAX_RTSP + 1 connections at once, each asks OPTIONS — MAX_RTSP are
    # served and the one over the cap gets 503 (the earlier tests' connections are let go first).
    time.sleep(1.0)
    socks = []
    for _ in range(MAX_RTSP + 1):
        socks.append(socket.create_connection(("127.0.0.1", RTSP_PORT), timeout=5))
        time.sleep(0.05)
    answers = []
    for s in socks:
        resp, _ = rtsp_exchange(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n", sock=s)
        answers.append(status_of(resp))
    for s in socks:
        s.close()
    c.check(f"{MAX_RTSP + 1} connections at once (cap {MAX_RTSP}): {MAX_RTSP} served, the last 503",
            answers == [200] * MAX_RTSP + [503], str(answers))
    time.sleep(0.5)

    # Stream description as ffprobe sees it.
    probe = subprocess.run(["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-show_entries", "stream=codec_name,width,height",
                            "-of", "json", url], capture_output=True, text=True, timeout=30)
    try:
        streams = {s["codec_name"]: s for s in json.loads(probe.stdout)["streams"]}
    except (ValueError, KeyError):
        streams = {}
    c.check("ffprobe: h264 640x360 and opus", "h264" in streams and "opus" in streams and streams["h264"].get("width") == W,
            probe.stdout.strip().replace("\n", " ")[:200] + probe.stderr[:200])

    def counters() -> dict:
        v = api.video()
        return {k: v.get(k, 0) for k in ("encoded_frames", "frames_captured", "frames_dropped", "frames_skipped")}

    def delta(a: dict, b: dict) -> dict:
        return {k: b[k] - a[k] for k in a}

    for transport in ("tcp", "udp"):
        before = counters()
        r = ffmpeg_rtsp(url, transport)
        d = delta(before, counters())
        (ARTIFACTS / f"ffmpeg-{transport}.err").write_bytes(r.stderr)
        c.info(f"ffmpeg {transport}: exit {r.returncode}, {len(r.stdout)} bytes, service {d}, stderr {r.stderr[:160]!r}")
        analyse_frames(r.stdout, f"ffmpeg -rtsp_transport {transport}", c, encoded=d["encoded_frames"])
    if shutil.which("gst-launch-1.0"):
        before = counters()
        r = gst_rtsp(token)
        d = delta(before, counters())
        (ARTIFACTS / "gst.err").write_bytes(r.stderr)
        c.info(f"gstreamer: exit {r.returncode}, {len(r.stdout)} bytes, service {d}, stderr {r.stderr[:160]!r}")
        analyse_frames(r.stdout, "GStreamer rtspsrc (TCP)", c, encoded=d["encoded_frames"])
    else:
        c.check("gst-launch-1.0 is installed", False)

    # 3 RTSP clients and 2 WebRTC viewers at once: one encode.
    before = api.encoders_started()
    results: dict = {}

    def run_ffmpeg(i: int, transport: str):
        results[f"rtsp{i}"] = ffmpeg_rtsp(url, transport, seconds=6)

    threads = [threading.Thread(target=run_ffmpeg, args=(i, t)) for i, t in enumerate(("tcp", "udp", "tcp"))]
    for t in threads:
        t.start()
    time.sleep(1.0)

    async def two_viewers():
        import asyncio
        return await asyncio.gather(whep_receive(api.base, duration=4.0, token=token), whep_receive(api.base, duration=4.0, token=token))

    viewers = run_async(two_viewers())
    for t in threads:
        t.join()
    frames = {k: len(v.stdout) // (W * H) for k, v in results.items()}
    c.check("3 RTSP clients decode at once", all(n >= 0.9 * 6 * FPS * 0.75 for n in frames.values()), str(frames))
    c.check("2 WebRTC viewers decode at the same time", all(v.video_frames >= 60 for v in viewers),
            str([(v.video_frames, v.error) for v in viewers]))
    after = api.encoders_started()
    c.check("3 RTSP + 2 WebRTC viewers: one encoder started in all", before == 1 and after == 1, f"before {before}, after {after}")


def main() -> int:
    c = Checker("nvr")
    assert_loopback_only()
    load_note(c)
    ARTIFACTS.mkdir(exist_ok=True)
    for tool in ("ffmpeg", "ffprobe"):
        if not shutil.which(tool):
            c.check(f"{tool} is installed (run.sh installs it)", False)
            return c.summary()
    token, digest = new_token()
    config = {
        "http": {"listen": f"127.0.0.1:{HTTP_PORT}"},
        "video": {"source": "testsrc", "width": W, "height": H, "fps": FPS, "bitrate_kbps": 1500, "ladder": False},
        "audio": {"source": "tone"},
        "webrtc": {"udp_port": UDP_PORT, "include_loopback": True},
        "auth": {"password_hash": hash_password("nvr-test-password"), "token_sha256": [digest]},
        "motion": {"enabled": True, "fps": 5, "cooldown_s": 2, "min_area_percent": 0.5, "masks": [[0.0, 0.0, 1.0, 0.3]]},
        "rtsp": {"enabled": True, "listen": f"127.0.0.1:{RTSP_PORT}", "max_connections": MAX_RTSP},
    }
    svc = peercam_service.Service("nvr", config, artifacts=ARTIFACTS)
    try:
        svc.start()
        api = Api(svc.url, token)
        for name, fn in (("snapshot", lambda: test_snapshot(c, api)), ("motion", lambda: test_motion(c, api)),
                         ("rtsp", lambda: test_rtsp(c, api, token)),
                         ("record", lambda: test_record(c, token, digest, ARTIFACTS))):
            if os.environ.get("NVR_ONLY") and name not in os.environ["NVR_ONLY"].split(","):
                continue
            t0 = time.monotonic()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - a crash of one part fails it, the rest still runs
                import traceback
                traceback.print_exc()
                c.check(f"{name} ran to the end", False, f"{type(e).__name__}: {e}")
            c.info(f"{name}: {time.monotonic() - t0:.1f} s")
        c.check("the service is still running", svc.alive())
        panics = [l for l in svc.lines if "panicked" in l]
        c.check("no panic in the service log", not panics, "; ".join(panics[:3]))
    finally:
        svc.stop()
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
