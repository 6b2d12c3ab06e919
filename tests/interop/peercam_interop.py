"""Shared helpers for the peercam interop tests (aiortc as an independent WHEP peer).

Everything here talks only to 127.0.0.1; run the tests inside a loopback-only network
namespace (tests/interop/run.sh does: `unshare -n sh -c 'ip link set lo up; ...'`).

Pieces:
  * patch_aioice_loopback(): make aioice gather a 127.0.0.1 host candidate.
  * Service: the shared launcher (tests/lib/peercam_service.py) with the interop temp config,
    started on `with`, always stopped at the end; keeps the service log.
  * http_request(): one plain HTTP/1.1 request (stdlib http.client).
  * read_timestamp_code(): the test pattern's top-left timestamp code (docs/interfaces.md).
  * whep_receive(): a complete WHEP session with aiortc: offer, POST, answer, decode video and
    audio for N seconds, DELETE; returns numbers, asserts nothing.
  * Checker: PASS/FAIL lines and an 'N passed, N failed' summary.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import math
import os
import re
import sys
import threading
import time
import urllib.parse
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ARTIFACTS = HERE / "artifacts"
FIXTURES = REPO / "tests" / "fixtures" / "offers"

# The temp config every interop test uses (task brief; 640x480@30 keeps the CPU low).
HTTP_PORT = 18090
UDP_PORT = 18199
WIDTH, HEIGHT, FPS = 640, 480, 30
CONFIG_TOML = f"""\
[http]
listen = "127.0.0.1:{HTTP_PORT}"
[video]
source = "testsrc"
width = {WIDTH}
height = {HEIGHT}
fps = {FPS}
bitrate_kbps = 1500
[audio]
source = "tone"
[webrtc]
udp_port = {UDP_PORT}
include_loopback = true
"""


# --------------------------------------------------------------------------------------------
# aioice loopback patch
# --------------------------------------------------------------------------------------------

_patched = False


def patch_aioice_loopback() -> None:
    """aioice (aiortc's ICE) never gathers 127.0.0.1: `aioice.ice.get_host_addresses` skips it
    explicitly. Inside a loopback-only namespace that leaves aiortc with no candidate at all.
    This small wrapper of aioice's host-address function adds 127.0.0.1 to what it returns,
    so the loopback-only namespace works. Test-only; nothing else in aioice is changed."""
    global _patched
    if _patched:
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def get_host_addresses_with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4, use_ipv6)
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses.append("127.0.0.1")
        return addresses

    aioice.ice.get_host_addresses = get_host_addresses_with_loopback
    _patched = True


_instrumented = False


def instrument_aiortc() -> None:
    """Counts, per RTCRtpReceiver, the RTP packets that reach it (time of the first one and of
    the first H.264 keyframe packet) and the PLIs / NACKs it sends. Observation only: wraps
    aiortc's private methods and calls the originals unchanged. Stats land in
    `receiver._interop_stats` (a dict)."""
    global _instrumented
    if _instrumented:
        return
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    orig_rtp = RTCRtpReceiver._handle_rtp_packet
    orig_pli = RTCRtpReceiver._send_rtcp_pli
    orig_nack = RTCRtpReceiver._send_rtcp_nack

    def stats(self) -> dict:
        st = getattr(self, "_interop_stats", None)
        if st is None:
            st = {"packets": 0, "first_packet": None, "first_keyframe_packet": None, "pli": 0, "nack": 0}
            self._interop_stats = st
        return st

    async def handle_rtp(self, packet, arrival_time_ms):
        st = stats(self)
        now = time.monotonic()
        st["packets"] += 1
        if st["first_packet"] is None:
            st["first_packet"] = now
        if st["first_keyframe_packet"] is None and getattr(self, "_RTCRtpReceiver__kind", "") == "video":
            pl = packet.payload
            if pl:
                nal = pl[0] & 0x1F
                if nal in (5, 7) or (nal == 28 and len(pl) > 1 and (pl[1] & 0x1F) == 5) or (
                        nal == 24 and len(pl) > 3 and (pl[3] & 0x1F) in (5, 7)):
                    st["first_keyframe_packet"] = now
        return await orig_rtp(self, packet, arrival_time_ms)

    async def send_pli(self, media_ssrc):
        stats(self)["pli"] += 1
        return await orig_pli(self, media_ssrc)

    async def send_nack(self, media_ssrc, lost):
        stats(self)["nack"] += 1
        return await orig_nack(self, media_ssrc, lost)

    RTCRtpReceiver._handle_rtp_packet = handle_rtp
    RTCRtpReceiver._send_rtcp_pli = send_pli
    RTCRtpReceiver._send_rtcp_nack = send_nack
    _instrumented = True


def in_loopback_only_netns() -> bool:
    """True when the only interface with an address is lo (what run.sh sets up)."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            addr = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if addr not in ("127.0.0.1", "::1"):
                return False
    return True


# --------------------------------------------------------------------------------------------
# PASS/FAIL bookkeeping
# --------------------------------------------------------------------------------------------


class Checker:
    def __init__(self, name: str):
        self.name = name
        self.passed = 0
        self.failed = 0
        self.failures: list[str] = []

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        line = f"{'PASS' if ok else 'FAIL'} {self.name}: {what}" + (f" ({detail})" if detail else "")
        print(line, flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(line)
        return ok

    def info(self, text: str) -> None:
        print(f"INFO {self.name}: {text}", flush=True)

    def summary(self) -> int:
        print(f"{self.name}: {self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 else 1


# --------------------------------------------------------------------------------------------
# The service under test
# --------------------------------------------------------------------------------------------

sys.path.insert(0, str(REPO / "tests" / "lib"))
import peercam_service  # noqa: E402  (the one Python launcher, shared with tests/service)


class Service(peercam_service.Service):
    """The shared launcher (tests/lib/peercam_service.py) with the interop temp config, started
    on entering: `with Service(...) as svc: svc.url`; `stop()` returns the exit code.

    Command: $PEERCAM_CMD / $PEERCAM_BIN as there. With $PEERCAM_URL set, no process is
    started and that URL is used (for a service someone else runs). The process's
    stderr+stdout go to artifacts/<name>-service.log and are kept in memory."""

    def __init__(self, name: str, config: str = CONFIG_TOML, start_timeout: float = 30.0):
        super().__init__(name, config, artifacts=ARTIFACTS)
        self.start_timeout = start_timeout
        self.external = bool(os.environ.get("PEERCAM_URL"))

    def __enter__(self) -> "Service":
        if self.external:
            self.url = os.environ["PEERCAM_URL"].rstrip("/")
            return self
        try:
            self.start(self.start_timeout)
        except RuntimeError:
            self.close()
            raise
        return self

    def alive(self) -> bool:
        return self.external or super().alive()

    def stop(self) -> Optional[int]:  # type: ignore[override]
        """SIGTERM, then SIGKILL after 5 s. Returns the exit code (None when not ours)."""
        rc, _ = super().stop()
        return rc

    def __exit__(self, *exc) -> None:
        self.close()


def udp_ports_of(pid: int) -> set[int]:
    """Local UDP ports of the sockets process `pid` has open (its /proc fds matched against
    /proc/net/udp and udp6 of our network namespace)."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and cols[9] in inodes:
                        ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


@dataclass
class HttpResponse:
    status: int
    reason: str
    headers: dict  # lower-case names
    body: bytes
    error: str = ""  # transport error, status 0

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_request(method: str, url: str, body: Optional[bytes] = None,
                 headers: Optional[dict] = None, timeout: float = 10.0) -> HttpResponse:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return HttpResponse(r.status, r.reason, {k.lower(): v for k, v in r.getheaders()}, data)
    except (OSError, http.client.HTTPException) as e:
        return HttpResponse(0, "", {}, b"", error=f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def get_settings(base: str) -> tuple[Optional[dict], HttpResponse]:
    import json

    r = http_request("GET", base + "/api/settings", timeout=5)
    if r.status != 200:
        return None, r
    try:
        return json.loads(r.body), r
    except ValueError:
        return None, r


# --------------------------------------------------------------------------------------------
# Timestamp code (docs/interfaces.md, "Test pattern timestamp code")
# --------------------------------------------------------------------------------------------


@dataclass
class TimestampCode:
    value: int  # (Unix ms at capture) mod 2^32
    white: float  # measured level of the reference blocks
    black: float
    margin: float  # smallest distance of a bit block from the threshold (confidence)


def read_timestamp_code(frame) -> Optional[TimestampCode]:
    """Reads the code from an av.VideoFrame in yuv420p (or any format whose plane 0 is luma).

    Block size b = max(8, width // 40); row 0 (y in [0, b)); 34 blocks from x = 0: block 0
    white, block 1 black, blocks 2..33 = bits 31..0. Each block is sampled as the mean of its
    inner half (compression smears the edges). Returns None if the reference blocks do not
    look like white/black."""
    w = frame.width
    b = max(8, w // 40)
    if 34 * b > w:
        return None
    plane = frame.planes[0]
    stride = plane.line_size
    buf = memoryview(plane)
    lo, hi = b // 4, b - b // 4

    def level(block: int) -> float:
        x0 = block * b
        total = 0
        n = 0
        for y in range(lo, hi):
            row = y * stride + x0
            seg = buf[row + lo: row + hi]
            total += sum(seg)
            n += len(seg)
        return total / n

    white, black = level(0), level(1)
    if white - black < 100:  # nominal 235 vs 16
        return None
    thr = (white + black) / 2
    value = 0
    margin = 255.0
    for i in range(32):
        lv = level(2 + i)
        value = (value << 1) | (1 if lv > thr else 0)
        margin = min(margin, abs(lv - thr))
    return TimestampCode(value, white, black, margin)


def code_age_ms(code: int, now_unix_ms: float) -> int:
    """now - code, in ms, with the mod-2^32 wrap handled (negative = code from the future)."""
    d = (int(now_unix_ms) - code) % (1 << 32)
    return d - (1 << 32) if d >= (1 << 31) else d


def code_delta(a: int, b: int) -> int:
    """b - a for two codes, mod 2^32, as a signed number."""
    d = (b - a) % (1 << 32)
    return d - (1 << 32) if d >= (1 << 31) else d


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


# --------------------------------------------------------------------------------------------
# Decoder error capture
# --------------------------------------------------------------------------------------------


class DecodeErrorLog(logging.Handler):
    """Collects decoder trouble from two places:
      * aiortc's decoder thread (logger `aiortc.rtcrtpreceiver`, "failed to decode ..."): an
        FFmpeg exception for a frame, which aiortc counts as a decode error (it also sends PLI);
      * FFmpeg's own log (PyAV logger `libav.*`, level ERROR and up, enabled here): concealed
        errors that do not raise, e.g. 'error while decoding MB', 'non-existing PPS'."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.aiortc_errors: list[str] = []
        self.ffmpeg_errors: list[str] = []
        # (time.monotonic(), "aiortc" | "ffmpeg", message) of each, in order.
        self.timeline: list[tuple[float, str, str]] = []
        # Not `self.lock`: logging.Handler.handle() already holds that one (acquire()) around
        # emit(); replacing it with a plain Lock and taking it again here deadlocked the decoder
        # thread on its first decode error (seen in a run: the test hung at teardown for good).
        self.records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        with self.records_lock:
            if record.name.startswith("aiortc") and "failed to decode" in msg:
                self.aiortc_errors.append(msg)
                self.timeline.append((time.monotonic(), "aiortc", msg))
            elif record.name.startswith("libav") and record.levelno >= logging.ERROR:
                self.ffmpeg_errors.append(f"{record.name}: {msg.strip()}")
                self.timeline.append((time.monotonic(), "ffmpeg", f"{record.name}: {msg.strip()}"))

    def install(self) -> "DecodeErrorLog":
        import av.logging

        av.logging.set_level(av.logging.ERROR)
        for name in ("aiortc.rtcrtpreceiver", "libav"):
            lg = logging.getLogger(name)
            lg.addHandler(self)
            if lg.level == logging.NOTSET or lg.level > logging.WARNING:
                lg.setLevel(logging.WARNING)
        return self

    def uninstall(self) -> None:
        for name in ("aiortc.rtcrtpreceiver", "libav"):
            logging.getLogger(name).removeHandler(self)

    def counts(self) -> tuple[int, int]:
        with self.records_lock:
            return len(self.aiortc_errors), len(self.ffmpeg_errors)

    def counts_from(self, t: float) -> tuple[int, int]:
        """(aiortc, FFmpeg) errors logged at or after monotonic time `t`."""
        with self.records_lock:
            late = [k for (at, k, _) in self.timeline if at >= t]
        return late.count("aiortc"), late.count("ffmpeg")

    def messages(self, n: int = 3) -> list[str]:
        with self.records_lock:
            return [f"{k}: {m[:160]}" for (_, k, m) in self.timeline[:n]]


# --------------------------------------------------------------------------------------------
# SDP helpers
# --------------------------------------------------------------------------------------------


def sdp_sections(sdp: str) -> list[tuple[str, list[str]]]:
    """[(m-line, [lines of that media section])]; the session part is dropped."""
    out: list[tuple[str, list[str]]] = []
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            out.append((line, []))
        elif out and line:
            out[-1][1].append(line)
    return out


def sdp_codecs(section_lines: list[str]) -> dict[int, str]:
    """payload type -> 'NAME/clock[/ch]' from a=rtpmap lines."""
    out = {}
    for line in section_lines:
        m = re.match(r"a=rtpmap:(\d+) (\S+)", line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def sdp_direction(section_lines: list[str]) -> str:
    for line in section_lines:
        if line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            return line[2:]
    return "sendrecv"


def sdp_candidates(sdp: str) -> list[str]:
    return [l[2:] for l in sdp.replace("\r\n", "\n").split("\n") if l.startswith("a=candidate:")]


# --------------------------------------------------------------------------------------------
# A WHEP session with aiortc
# --------------------------------------------------------------------------------------------


@dataclass
class WhepResult:
    status: int = 0
    reason: str = ""
    location: str = ""  # absolute URL of the session resource
    content_type: str = ""
    answer: str = ""
    post_ms: float = 0.0  # POST round trip
    error: str = ""  # why the session stopped early
    connection_states: list = field(default_factory=list)
    connected_ms: float = float("nan")  # from POST sent to connectionState 'connected'
    first_frame_ms: float = float("nan")  # from POST sent to the first decoded video frame
    first_rtp_ms: float = float("nan")  # from POST sent to the first video RTP packet
    first_keyframe_rtp_ms: float = float("nan")  # ... to the first H.264 IDR/SPS packet
    first_frame_captured_ms: float = float("nan")  # capture time (code) of the 1st frame - POST
    first_frame_age_ms: float = float("nan")  # its age when decoded
    video_packets: int = 0
    nacks_sent: int = 0
    video_frames: int = 0  # decoded in the measuring window
    window_s: float = 0.0
    sizes: dict = field(default_factory=dict)  # (w, h) -> count
    formats: dict = field(default_factory=dict)
    codes_read: int = 0
    code_unreadable: int = 0
    code_not_increasing: int = 0  # consecutive frames whose code did not increase
    code_steps: list = field(default_factory=list)  # ms between consecutive codes
    code_anomalies: list = field(default_factory=list)  # details of non-increasing steps
    max_gap_ms: float = 0.0  # longest time between two decoded frames
    latencies_ms: list = field(default_factory=list)  # receive time - code (aiortc adds ~1 frame)
    min_margin: float = 255.0
    audio_frames: int = 0
    audio_samples: int = 0
    audio_rate: int = 0
    audio_layout: str = ""
    audio_rms: float = 0.0
    audio_zero_cross_hz: float = 0.0  # over the frames that carry sound (the beeps)
    audio_loud_frames: int = 0
    audio_onset_ms: list = field(default_factory=list)  # beep onset received, ms after a wall-clock second
    aiortc_decode_errors: list = field(default_factory=list)
    ffmpeg_errors: list = field(default_factory=list)
    pli_sent: int = 0
    delete_status: int = 0
    delete_reason: str = ""
    delete_body: str = ""
    after_delete: dict = field(default_factory=dict)  # filled by an after_delete hook


async def whep_receive(base: str, *, duration: float = 5.0, first_frame_timeout: float = 10.0,
                       audio_direction: str = "recvonly", token: Optional[str] = None,
                       delete: bool = True, on_connected=None, after_delete=None) -> WhepResult:
    """One WHEP session: recvonly video + audio (audio_direction='sendrecv' adds a 440 Hz tone
    track, i.e. talk-back), POST /whep, setRemoteDescription, decode for `duration` seconds from
    the first video frame, then DELETE the Location (if `delete`) while the peer connection is
    still open, await `after_delete(result)`, and only then close the peer connection.
    `on_connected(result)` is awaited while media flows (e.g. to read /api/settings)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    patch_aioice_loopback()
    instrument_aiortc()
    res = WhepResult()
    errlog = DecodeErrorLog().install()
    # No STUN server: aiortc would otherwise default to a public one (never reachable here).
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks: dict[str, object] = {}
    got_video = asyncio.Event()
    got_audio = asyncio.Event()
    t_post = 0.0
    connected = asyncio.Event()

    @pc.on("track")
    def on_track(track):
        tracks[track.kind] = track
        (got_video if track.kind == "video" else got_audio).set()

    @pc.on("connectionstatechange")
    async def on_state():
        res.connection_states.append(pc.connectionState)
        if pc.connectionState == "connected":
            res.connected_ms = (time.monotonic() - t_post) * 1000
            connected.set()

    pc.addTransceiver("video", direction="recvonly")
    if audio_direction == "sendrecv":
        pc.addTrack(ToneTrack())
    else:
        pc.addTransceiver("audio", direction="recvonly")
    try:
        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers here
        offer = pc.localDescription.sdp
        headers = {"Content-Type": "application/sdp", "Accept": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        t_post = time.monotonic()
        t_post_unix_ms = time.time() * 1000
        r = await asyncio.to_thread(http_request, "POST", base + "/whep", offer.encode(), headers)
        res.post_ms = (time.monotonic() - t_post) * 1000
        res.status, res.reason = r.status, r.reason or r.error
        res.content_type = r.headers.get("content-type", "")
        res.answer = r.text()
        loc = r.headers.get("location", "")
        res.location = urllib.parse.urljoin(base + "/whep", loc) if loc else ""
        if r.status != 201:
            res.error = f"POST /whep -> {r.status} {r.reason or r.error}: {res.answer[:300]!r}"
            return res
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=res.answer, type="answer"))
        except Exception as e:  # noqa: BLE001 - report anything aiortc dislikes
            res.error = f"setRemoteDescription(answer) failed: {type(e).__name__}: {e}"
            return res

        try:
            await asyncio.wait_for(got_video.wait(), 5)
        except asyncio.TimeoutError:
            res.error = "no remote video track in the answer"
            return res

        window_start: list[float] = []  # monotonic time of the first decoded video frame
        stop_at: list[float] = []
        prev_code: list[Optional[int]] = [None]
        prev_pts: list[Optional[int]] = [None]
        prev_arrival: list[float] = []

        async def read_video():
            track = tracks["video"]
            deadline = time.monotonic() + first_frame_timeout
            while True:
                limit = (stop_at[0] if stop_at else deadline) - time.monotonic()
                if limit <= 0:
                    return
                try:
                    frame = await asyncio.wait_for(track.recv(), limit)
                except asyncio.TimeoutError:
                    return
                except MediaStreamError:
                    res.error = res.error or "video track ended"
                    return
                now = time.monotonic()
                now_unix_ms = time.time() * 1000
                if not window_start:
                    window_start.append(now)
                    stop_at.append(now + duration)
                    res.first_frame_ms = (now - t_post) * 1000
                elif now >= stop_at[0]:
                    return
                if prev_arrival:
                    res.max_gap_ms = max(res.max_gap_ms, (now - prev_arrival[0]) * 1000)
                    prev_arrival[0] = now
                else:
                    prev_arrival.append(now)
                res.video_frames += 1
                size = (frame.width, frame.height)
                res.sizes[size] = res.sizes.get(size, 0) + 1
                res.formats[frame.format.name] = res.formats.get(frame.format.name, 0) + 1
                tc = read_timestamp_code(frame)
                if tc is None:
                    res.code_unreadable += 1
                    continue
                res.codes_read += 1
                res.min_margin = min(res.min_margin, tc.margin)
                age = code_age_ms(tc.value, now_unix_ms)
                if not res.latencies_ms:
                    res.first_frame_age_ms = age
                    res.first_frame_captured_ms = now_unix_ms - age - t_post_unix_ms
                res.latencies_ms.append(age)
                if prev_code[0] is not None:
                    step = code_delta(prev_code[0], tc.value)
                    res.code_steps.append(step)
                    if step <= 0:
                        res.code_not_increasing += 1
                        res.code_anomalies.append(
                            f"frame {res.video_frames}: code step {step} ms, RTP timestamp step "
                            f"{(frame.pts - prev_pts[0]) if frame.pts is not None and prev_pts[0] is not None else '?'}"
                            f" (90 kHz), previous code step {res.code_steps[-2] if len(res.code_steps) > 1 else '?'} ms")
                prev_code[0] = tc.value
                prev_pts[0] = frame.pts

        async def read_audio():
            try:
                await asyncio.wait_for(got_audio.wait(), first_frame_timeout)
            except asyncio.TimeoutError:
                return
            track = tracks["audio"]
            sumsq = 0.0
            crossings = 0
            n_loud = 0
            was_loud = True  # an onset counts only after some silence (not mid-beep at the start)
            deadline = time.monotonic() + first_frame_timeout
            while True:
                limit = (stop_at[0] if stop_at else deadline) - time.monotonic()
                if limit <= 0:
                    break
                try:
                    frame = await asyncio.wait_for(track.recv(), limit)
                except (asyncio.TimeoutError, MediaStreamError):
                    break
                now_unix_ms = time.time() * 1000
                if not stop_at:
                    continue  # count audio only inside the video window
                res.audio_frames += 1
                res.audio_samples += frame.samples
                res.audio_rate = frame.sample_rate
                res.audio_layout = frame.layout.name
                if frame.format.name != "s16":
                    continue
                ch = len(frame.layout.channels) if not frame.format.is_planar else 1
                # PyAV's plane buffer is padded (23040 bytes for 960 stereo samples): cut it.
                pcm = array("h", bytes(frame.planes[0])[:frame.samples * ch * 2])
                mono = pcm[::ch]  # first channel
                fsum = sum(x * x for x in mono)
                loud = bool(mono) and math.sqrt(fsum / len(mono)) > 300
                if loud:
                    n_loud += len(mono)
                    sumsq += fsum
                    last = 0
                    for x in mono:
                        sign = 1 if x > 0 else (-1 if x < 0 else last)
                        if last and sign != last:
                            crossings += 1
                        last = sign
                    if not was_loud:
                        # Beep onset: first sample above 300 in this frame; the frame's last
                        # sample is taken as 'now' (so this includes aiortc's own buffering).
                        k = next((i for i, x in enumerate(mono) if abs(x) > 300), 0)
                        onset = now_unix_ms - (len(mono) - k) * 1000 / frame.sample_rate
                        res.audio_onset_ms.append(onset % 1000)
                was_loud = loud
            res.audio_loud_frames = n_loud // 960 if n_loud else 0
            if n_loud:
                res.audio_rms = math.sqrt(sumsq / n_loud)
                if res.audio_rate:
                    res.audio_zero_cross_hz = crossings / 2 / (n_loud / res.audio_rate)

        async def side_task():
            try:
                await asyncio.wait_for(connected.wait(), first_frame_timeout)
            except asyncio.TimeoutError:
                return
            while not stop_at:
                await asyncio.sleep(0.05)
            await asyncio.sleep(min(1.0, duration / 2))
            if on_connected is not None:
                await on_connected(res)

        await asyncio.gather(read_video(), read_audio(), side_task())
        if window_start:
            res.window_s = min(duration, time.monotonic() - window_start[0])
        elif not res.error:
            res.error = (f"no video frame decoded within {first_frame_timeout}s "
                         f"(connection states: {res.connection_states})")
        for recv in pc.getReceivers():
            st = getattr(recv, "_interop_stats", None)
            if st and recv.track and recv.track.kind == "video":
                res.video_packets = st["packets"]
                res.pli_sent = st["pli"]
                res.nacks_sent = st["nack"]
                if st["first_packet"] is not None:
                    res.first_rtp_ms = (st["first_packet"] - t_post) * 1000
                if st["first_keyframe_packet"] is not None:
                    res.first_keyframe_rtp_ms = (st["first_keyframe_packet"] - t_post) * 1000
    finally:
        if delete and res.location:
            d = await asyncio.to_thread(http_request, "DELETE", res.location, None,
                                        {"Authorization": f"Bearer {token}"} if token else {})
            res.delete_status = d.status
            res.delete_reason = d.reason or d.error
            res.delete_body = d.text()[:300]
            if after_delete is not None:
                await after_delete(res)
        await pc.close()
        errlog.uninstall()
        res.aiortc_decode_errors = list(errlog.aiortc_errors)
        res.ffmpeg_errors = list(errlog.ffmpeg_errors)
    return res


def _tone_track_class():
    from aiortc.mediastreams import AudioStreamTrack
    import av
    import fractions

    class _ToneTrack(AudioStreamTrack):
        """440 Hz mono s16 48 kHz in 20 ms frames (talk-back source for sendrecv tests)."""

        kind = "audio"

        def __init__(self):
            super().__init__()
            self._n = 0
            self._table = array("h", (int(8000 * math.sin(2 * math.pi * 440 * i / 48000))
                                      for i in range(48000)))
            self._start = None

        async def recv(self):
            if self._start is None:
                self._start = time.monotonic()
            due = self._start + self._n * 960 / 48000
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            i = (self._n * 960) % 48000
            samples = self._table[i:i + 960]
            frame = av.AudioFrame(format="s16", layout="mono", samples=960)
            frame.planes[0].update(samples.tobytes())
            frame.sample_rate = 48000
            frame.pts = self._n * 960
            frame.time_base = fractions.Fraction(1, 48000)
            self._n += 1
            return frame

    return _ToneTrack


def ToneTrack():  # noqa: N802 - factory, keeps aiortc imports lazy
    return _tone_track_class()()


def describe_answer(answer: str) -> str:
    parts = []
    for mline, lines in sdp_sections(answer):
        codecs = sdp_codecs(lines)
        parts.append(f"{mline.split()[0]} {sdp_direction(lines)} "
                     + ",".join(f"{pt}:{c}" for pt, c in codecs.items()))
    return "; ".join(parts)


def run_async(coro):
    return asyncio.run(coro)


def require_netns_or_warn(checker: Checker) -> None:
    try:
        with open("/proc/loadavg") as f:
            checker.info(f"load average {' '.join(f.read().split()[:3])} on {os.cpu_count()} CPUs "
                         "(timing numbers are noisy when other work runs)")
    except OSError:
        pass
    if not in_loopback_only_netns():
        checker.info("not in a loopback-only network namespace; ICE may pick other addresses "
                     "(run through tests/interop/run.sh)")
