#!/usr/bin/env python3
"""Rig 3 (docs/test-rigs.md): peercam on real kernel drivers (vivid, snd-aloop) in an emulated aarch64 VM.

Run by tests/vm/run.sh inside a loopback-only network namespace (so the only addresses in play
are 127.0.0.1 here and the VM's user-mode network). Boots the VM (qemu-system-aarch64 TCG,
-M virt -cpu cortex-a72 -m 512) with the initramfs build_image.py made, drives it through a
shell on its TCP port 9000 (forwarded to 127.0.0.1), and watches the stream with aiortc over
WHEP through forwarded ports: HTTP 127.0.0.1:18080 -> 8080, the one WebRTC UDP port 18189 ->
18189 (the device advertises 127.0.0.1 as its NAT 1:1 address).

Checks (each printed PASS/FAIL, a summary line "vm: N passed, M failed" at the end):
  devices   `peercam devices --json` in the VM lists vivid (YUYV and NV12 at 640x480 with
            intervals) and the snd-aloop capture PCM; GET /api/devices says the same.
  stream    for each of YUYV and NV12: the service picks that format at 640x480 (settings),
            aiortc decodes 640x480 H.264 frames of the camera (colour bars: chroma spread, not
            the grey slate) at >= 80 % of the rate the service encodes them, with no decode
            error; the audio track carries the 440 Hz tone played into snd-aloop.
  hotplug   while a viewer watches: vivid is unbound from its driver (the device disappears
            under the open file), the viewer keeps receiving frames and they become the grey
            "CAMERA OFFLINE" slate; vivid is then unloaded (rmmod: proves the service released
            the device) and loaded again; the camera picture returns to the same session
            (time from modprobe to the first camera frame is printed and must be < 10 s under
            emulation; the product target of 2 s is for real hardware).

  busy      v4l2-hold (tests/vm/v4l2-hold.c) streams /dev/video0 before the service starts: the
            service starts anyway, /api/settings video.problem names /dev/video0 and
            "v4l2-hold (pid N)", a viewer sees the slate; killall v4l2-hold -> the picture returns
            to the same session and the problem is gone. Same run: audio sample_rate exact 44100
            on snd-aloop (locked to aplay's 48 kHz) -> audio.problem names hw:Loopback,1, 44100
            and the 48000 it offers.
  idle      right after the viewer left, v4l2-hold gets EBUSY (peercam still streams); after
            PEERCAM_CAMERA_IDLE_OFF_MS (4 s here, 10 s by default) without viewers it can stream
            the camera (peercam closed it; logged once); the next viewer gets camera frames.
  xrun      peercam is SIGSTOPped twice for 1 s while a viewer listens (the 400 ms capture buffer
            of snd-aloop overruns): the 440 Hz tone flows again, the overrun is logged once.

  passthrough  v4l2loopback (out of tree, built by run.sh for the VM kernel) fed H.264 by
            h264-feed (tests/fixtures/h264/cam-cb-320x240.h264, 15 fps): the service picks the
            H264 mode, starts no encoder, aiortc decodes 320x240 at >= 80 % of 15 fps without
            errors; the profile and the missing force-key-frame control are logged.

  night     (issue 13) the PL061 GPIO controller of QEMU's virt machine (/dev/gpiochip0, real
            kernel driver, GPIO v2 uAPI): [night] ir_led on line 5, an active-low ir_cut on line 6;
            mode on → debugfs shows line 5 "out hi" and line 6 "out lo ACTIVE LOW"; off → the
            reverse; auto with the test pattern dark → night, bright again → day only after the
            hold; SIGTERM releases the lines; line 200 → a clear error in settings, still streaming.
            (The actual IR LEDs / IR-cut filter wiring is only confirmed on a real Pi.)

  libcamera (issue 13 part 1) vimc (built out of tree by run.sh) + Debian's libcamera 0.0.3 with
            its V4L2 compatibility layer: `peercam devices` (JSON and text) re-execs under the layer
            and lists the vimc camera once, first, driver libcamera, BGR3/RGB3 with sizes at the
            nominal 30 fps; vivid stays a plain camera, no raw vimc node is listed. source = auto
            at 320x240 picks it over vivid; libcamera configures 318x240 (logged); aiortc decodes
            318x240 frames in colour at >= 80 % of the rate the emulation delivers (min of captured
            and encoded while watched), 0 decode errors. Layer moved away: `peercam devices` names
            it and "install libcamera-v4l2"; source = "libcamera" exits 2 with that message.

Env: VM_KERNEL, VM_INITRD (required), VM_FPS (default 10), VM_SECONDS (per stream, default 8),
VM_ONLY (comma-separated check names, e.g. "libcamera": only those; development).
"""

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from array import array

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import peercam_interop as pi  # noqa: E402

HTTP_PORT, UDP_PORT, CTL_PORT = 18080, 18189, 19000
BASE = f"http://127.0.0.1:{HTTP_PORT}"
TOKEN = "peercam-vm-test-token"
TOKEN_SHA256 = __import__("hashlib").sha256(TOKEN.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# `peercam hash-password` of a throwaway password nobody uses.
PASSWORD_HASH = "$argon2id$v=19$m=19456,t=2,p=1$v9CbanxzdrSmtWBlEtbC3A$sSxFb2U6kzTuN5SqSd9KFReHjHOi9WVEJx20cpjwpJo"
FPS = int(os.environ.get("VM_FPS", "10"))
SECONDS = float(os.environ.get("VM_SECONDS", "8"))
ART = os.path.join(HERE, "artifacts")
BRIGHTNESS = 150  # vivid's default is 128
VIVID_ARGS = "n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0"
H264_FPS = 15  # h264-feed's rate (the fixture is 320x240)
IDLE_OFF_MS = 4000  # PEERCAM_CAMERA_IDLE_OFF_MS for the idle stream-off check (default 10 s)


class VM:
    def __init__(self, kernel: str, initrd: str):
        os.makedirs(ART, exist_ok=True)
        self.log_path = os.path.join(ART, "vm-console.log")
        self.log = open(self.log_path, "w")
        self.ready = threading.Event()
        self.banner = ""
        cmd = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "512",
            "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", "console=ttyAMA0 panic=-1 quiet",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{HTTP_PORT}-:8080,"
                       f"hostfwd=udp:127.0.0.1:{UDP_PORT}-:{UDP_PORT},hostfwd=tcp:127.0.0.1:{CTL_PORT}-:9000",
            "-device", "virtio-net-device,netdev=n0",
        ]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.log.write(line)
            self.log.flush()
            if "PEERCAM-VM-READY" in line:
                self.banner = line.strip()
                self.ready.set()

    def sh(self, script: str, timeout: float = 60.0) -> str:
        """Runs `script` in the VM's shell (TCP 9000) and returns its output."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", CTL_PORT), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        s.settimeout(timeout)
        s.sendall((script + "\nexit\n").encode())
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        finally:
            s.close()
        return out.decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def config_toml(fmt: str) -> str:
    return f"""
[http]
listen = "0.0.0.0:8080"
[video]
source = "v4l2"
device = {{ exact = "vivid" }}
width = 640
height = 480
fps = {FPS}
bitrate_kbps = 800
[video.constraints]
width = {{ exact = 640 }}
height = {{ exact = 480 }}
format = {{ exact = "{fmt}" }}
[video.controls]
brightness = {BRIGHTNESS}
[audio]
source = "alsa"
device = {{ exact = "hw:Loopback,1" }}
[webrtc]
udp_port = {UDP_PORT}
nat_1to1_ips = ["127.0.0.1"]
[auth]
# A password must be set for anyone but loopback clients to be served (the host reaches the VM
# through QEMU's NAT); the test itself uses a bearer token.
password_hash = "{PASSWORD_HASH}"
token_sha256 = ["{TOKEN_SHA256}"]
[log]
level = "info"
"""


def start_service(vm: VM, fmt: str, c: pi.Checker, toml: str = "", env: str = "") -> bool:
    vm.sh(f"killall peercam 2>/dev/null; sleep 0.5; cat > /etc/peercam.toml <<'EOF'\n{toml or config_toml(fmt)}\nEOF\n"
          f"(LD_LIBRARY_PATH=/lib {env} peercam -c /etc/peercam.toml run > /var/log/peercam-{fmt}.log 2>&1 &)")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = pi.http_request("GET", BASE + "/api/settings", headers=AUTH, timeout=5)
        if r.status == 200:
            return True
        time.sleep(0.5)
    c.check(f"{fmt}: service answers /api/settings", False, vm.sh(f"tail -30 /var/log/peercam-{fmt}.log"))
    return False


def settings() -> dict:
    r = pi.http_request("GET", BASE + "/api/settings", headers=AUTH, timeout=10)
    return json.loads(r.body) if r.status == 200 else {}


def chroma_spread(frame) -> float:
    """Standard deviation of the U and V planes (sampled): vivid's colour bars ~40+, the grey
    slate ~0. Plain Python over the plane buffers (the interop venv has no numpy)."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        frame = frame.reformat(format="yuv420p")
    vals = []
    cw, ch = frame.width // 2, frame.height // 2
    for plane in frame.planes[1:3]:
        buf = bytes(plane)
        for row in range(0, ch, 8):
            line = buf[row * plane.line_size: row * plane.line_size + cw]
            vals.extend(line[::8])
    if not vals:
        return 0.0
    mean = sum(vals) / len(vals)
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))


async def watch(duration: float, events=None, until=None) -> dict:
    """One WHEP session: video frames (time, chroma spread, size) and audio stats."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    pi.patch_aioice_loopback()
    errlog = pi.DecodeErrorLog().install()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks = {}
    got = {"video": asyncio.Event(), "audio": asyncio.Event()}
    out = {"frames": [], "audio": [], "status": 0, "error": ""}
    t0 = 0.0

    @pc.on("track")
    def on_track(track):
        tracks[track.kind] = track
        got[track.kind].set()

    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    location = ""
    try:
        await pc.setLocalDescription(await pc.createOffer())
        r = await asyncio.to_thread(pi.http_request, "POST", BASE + "/whep", pc.localDescription.sdp.encode(),
                                    {"Content-Type": "application/sdp", **AUTH}, 30)
        out["status"] = r.status
        if r.status != 201:
            out["error"] = f"POST /whep -> {r.status} {r.text()[:300]}"
            return out
        location = urllib.parse.urljoin(BASE + "/whep", r.headers.get("location", ""))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text(), type="answer"))
        await asyncio.wait_for(got["video"].wait(), 10)
        t0 = time.monotonic()
        stop_at = [t0 + duration]

        async def video():
            while time.monotonic() < stop_at[0]:
                try:
                    f = await asyncio.wait_for(tracks["video"].recv(), max(0.1, stop_at[0] - time.monotonic()))
                except (asyncio.TimeoutError, MediaStreamError):
                    continue
                now = time.monotonic()
                if not out["frames"]:
                    out["first_frame_s"] = now - t0
                    if events is None:
                        # The emulated CPU's first encode (openh264 warming up under TCG) can take
                        # seconds: measure `duration` from the first frame on (at most twice as long).
                        stop_at[0] = min(max(stop_at[0], now + duration), t0 + 2 * duration)
                out["frames"].append((now - t0, chroma_spread(f), (f.width, f.height)))

        async def audio():
            try:
                await asyncio.wait_for(got["audio"].wait(), 10)
            except asyncio.TimeoutError:
                return
            while time.monotonic() < stop_at[0]:
                try:
                    f = await asyncio.wait_for(tracks["audio"].recv(), max(0.1, stop_at[0] - time.monotonic()))
                except (asyncio.TimeoutError, MediaStreamError):
                    continue
                if f.format.name != "s16":
                    continue
                ch = len(f.layout.channels) if not f.format.is_planar else 1
                pcm = array("h", bytes(f.planes[0])[:f.samples * ch * 2])
                out["audio"].append((time.monotonic() - t0, f.sample_rate, list(pcm[::ch])))

        tasks = [asyncio.create_task(video()), asyncio.create_task(audio())]
        if events:
            tasks.append(asyncio.create_task(events(out, t0, stop_at)))
        await asyncio.gather(*tasks)
        out["watched_s"] = time.monotonic() - t0
    except Exception as e:  # noqa: BLE001
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        out["decode_errors"] = errlog.counts()
        # From the first decoded picture on: what FFmpeg says while it joins the stream (packets
        # ahead of the first complete IDR under the emulated CPU's load) is reported, not counted.
        first = out.get("first_frame_s")
        out["decode_errors_playing"] = errlog.counts_from(t0 + first) if first is not None and t0 else out["decode_errors"]
        out["decode_messages"] = errlog.messages()
        errlog.uninstall()
        if location:
            await asyncio.to_thread(pi.http_request, "DELETE", location, None, AUTH, 10)
        await pc.close()
    return out


def audio_tone(out: dict, after: float = 1.0) -> tuple[float, float, float]:
    """(zero-crossing frequency and RMS over the 20 ms stretches that carry sound, fraction of
    stretches that carry sound) of the audio received after `after` seconds. Stretches of
    silence are counted apart: under emulation the VM's aplay can underrun, and snd-aloop then
    hands the capture side silence."""
    samples, rate = [], 48000
    for t, r, pcm in out["audio"]:
        if t >= after:
            samples.extend(pcm)
            rate = r
    n = rate // 50
    chunks = [samples[i:i + n] for i in range(0, len(samples) - n + 1, n)]
    loud = [c for c in chunks if math.sqrt(sum(x * x for x in c) / n) > 300]
    if not loud:
        return 0.0, 0.0, 0.0
    crossings = sum(1 for c in loud for a, b in zip(c, c[1:]) if a < 0 <= b)
    rms = math.sqrt(sum(x * x for c in loud for x in c) / (len(loud) * n))
    return crossings / (len(loud) * n / rate), rms, len(loud) / len(chunks)


def check_devices(vm: VM, c: pi.Checker) -> None:
    text = vm.sh("LD_LIBRARY_PATH=/lib peercam devices --json")
    try:
        doc = json.loads(text[text.index("{"):])
    except ValueError:
        c.check("peercam devices --json is JSON", False, text[:500])
        return
    with open(os.path.join(ART, "devices.json"), "w") as f:
        json.dump(doc, f, indent=1)
    vivid = [d for d in doc.get("video", []) if d.get("driver") == "vivid"]
    c.check("devices: vivid is listed as a capture device", bool(vivid),
            ", ".join(f"{d.get('path')} {d.get('driver')}" for d in doc.get("video", [])) or "no cameras")
    if vivid:
        d = vivid[0]
        fmts = {f["fourcc"]: f for f in d["formats"]}
        c.info(f"vivid: {d['path']} id {d['id']!r} card {d['card']!r}, {len(fmts)} formats, {len(d['controls'])} controls")
        for want in ("YUYV", "NV12", "YU12", "UYVY", "MJPG"):
            if want == "MJPG":
                continue  # vivid does not produce MJPEG
            f = fmts.get(want)
            sizes = [s for s in (f or {}).get("sizes", []) if s["size"].get("width") == 640 and s["size"].get("height") == 480]
            rates = sorted(round(i["den"] / i["num"], 2) for s in sizes for i in s["intervals"].get("intervals", []))
            c.check(f"devices: vivid offers {want} 640x480 with frame intervals", bool(sizes) and bool(rates),
                    f"rates {rates}")
        c.check("devices: vivid lists controls with ranges", any(x["key"] == "brightness" for x in d["controls"]),
                ", ".join(x["key"] for x in d["controls"][:8]))
    loop = [a for a in doc.get("audio", []) if a.get("direction") == "capture" and "Loopback" in (a.get("card") or "")]
    c.check("devices: snd-aloop capture PCMs are listed", bool(loop),
            "; ".join(f"{a['pcm']} {a['direction']} {a.get('formats')} {a.get('rate_min')}-{a.get('rate_max')} Hz "
                      f"{a.get('error') or ''}" for a in doc.get("audio", [])[:4]))


def rate_after_first_second(out: dict) -> tuple[list, float]:
    """The frames decoded from one second after the first one (encoder start, IDR) to the end of
    the watch, and their rate."""
    start = out.get("first_frame_s", 0.0) + 1.0
    window = [f for f in out["frames"] if f[0] >= start]
    span = out.get("watched_s", SECONDS) - start
    return window, (len(window) / span if span > 0 else 0.0)


def check_stream(vm: VM, fmt: str, c: pi.Checker) -> None:
    if not start_service(vm, fmt, c):
        return
    s = settings()
    v = s.get("video", {})
    c.check(f"{fmt}: settings report the camera in {fmt} 640x480", fmt in v.get("source", "") and
            (v.get("width"), v.get("height")) == (640, 480), json.dumps(v)[:300])
    c.check(f"{fmt}: settings report the microphone", "Loopback" in s.get("audio", {}).get("source", ""),
            json.dumps(s.get("audio", {}))[:300])
    text = vm.sh("LD_LIBRARY_PATH=/lib peercam devices --json")
    try:
        doc = json.loads(text[text.index("{"):])
        cur = [x.get("current") for d in doc["video"] for x in d["controls"] if x["key"] == "brightness"]
    except (ValueError, KeyError):
        cur = []
    c.check(f"{fmt}: [video.controls] brightness = {BRIGHTNESS} is applied to the camera", cur == [BRIGHTNESS],
            f"brightness now {cur}")
    out = asyncio.run(watch(SECONDS))
    s2 = settings()
    if out["error"]:
        c.check(f"{fmt}: WHEP session", False, out["error"])
        return
    frames = out["frames"]
    watched = out.get("watched_s", SECONDS)
    window, fps_rx = rate_after_first_second(out)
    cam = [f for f in window if f[1] > 8]
    encoded = (s2.get("video", {}).get("encoded_frames") or 0)
    captured = (s2.get("video", {}).get("frames_captured") or 0)
    c.info(f"{fmt}: {len(frames)} frames decoded in {watched:.1f} s, the first after {out.get('first_frame_s', -1):.1f} s "
           f"({fps_rx:.1f} fps after its first second), "
           f"service captured {captured}, encoded {encoded}, encode {s2.get('video', {}).get('encode_ms')} ms/frame; "
           f"chroma spread p50 {sorted(f[1] for f in window)[len(window) // 2] if window else 0:.1f}")
    c.check(f"{fmt}: frames are 640x480", bool(frames) and {f[2] for f in frames} == {(640, 480)},
            str({f[2] for f in frames}))
    c.check(f"{fmt}: decoded frames show the camera (colour bars, not the slate)",
            bool(window) and len(cam) >= 0.95 * len(window), f"{len(cam)}/{len(window)}")
    # The emulated CPU encodes slower than vivid delivers: compare with what the service
    # actually encoded per second while we watched (its own counters), and with the camera rate.
    enc_rate = encoded / (watched + 1.5)
    c.check(f"{fmt}: decoded at >= 80 % of the rate the device encodes", fps_rx >= 0.8 * min(enc_rate, FPS),
            f"{fps_rx:.1f} fps decoded, ~{enc_rate:.1f} fps encoded, camera {FPS} fps")
    c.check(f"{fmt}: no decode errors once playing", out["decode_errors_playing"] == (0, 0),
            f"{out['decode_errors_playing']} (all: {out['decode_errors']}) {out['decode_messages']}")
    if out["decode_errors"] != (0, 0):
        c.info(f"{fmt}: decode errors before the first picture {out['decode_errors']}: {out['decode_messages']}")
    hz, rms, share = audio_tone(out)
    c.check(f"{fmt}: audio carries the 440 Hz tone played into snd-aloop",
            430 <= hz <= 450 and 0.8 * 6950 <= rms <= 1.2 * 6950 and share >= 0.9,
            f"{hz:.0f} Hz, rms {rms:.0f} (tone amplitude 0.3 -> rms ~6950) in {100 * share:.0f} % of 20 ms stretches; "
            f"aplay in the VM: {vm.sh('tail -2 /var/log/aplay.log').strip() or 'no underruns logged'}")


def check_auto(vm: VM, c: pi.Checker) -> None:
    """`source = "auto"` (the default) finds the camera and the microphone by itself."""
    toml = (f'[http]\nlisten = "0.0.0.0:8080"\n[webrtc]\nudp_port = {UDP_PORT}\nnat_1to1_ips = ["127.0.0.1"]\n'
            f'[auth]\npassword_hash = "{PASSWORD_HASH}"\ntoken_sha256 = ["{TOKEN_SHA256}"]\n')
    if not start_service(vm, "auto", c, toml):
        return
    s = settings()
    v, a = s.get("video", {}), s.get("audio", {})
    c.check("auto: the default source finds vivid (1280x720, its best rate there)",
            v.get("source", "").startswith("v4l2") and (v.get("width"), v.get("height")) == (1280, 720) and not v.get("problem"),
            json.dumps({k: v.get(k) for k in ("source", "width", "height", "fps", "problem")}))
    c.check("auto: the default source finds the snd-aloop microphone",
            a.get("source", "").startswith("alsa") and not a.get("problem"),
            json.dumps({k: a.get(k) for k in ("source", "problem")}))


def check_hotplug(vm: VM, c: pi.Checker) -> None:
    if not start_service(vm, "YUYV", c):
        return
    marks = {}

    async def events(out, t0, stop_at):
        def cam_since(t):
            return [f for f in out["frames"] if f[0] >= t and f[1] > 8]

        def slate_since(t):
            return [f for f in out["frames"] if f[0] >= t and f[1] <= 8]

        async def wait_for(pred, secs):
            end = time.monotonic() + secs
            while time.monotonic() < end:
                if pred():
                    return True
                await asyncio.sleep(0.1)
            return False

        await wait_for(lambda: len(cam_since(1.0)) >= 10, 20)
        marks["unbind"] = time.monotonic() - t0
        marks["unbind_out"] = await asyncio.to_thread(
            vm.sh, "echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind; echo unbind=$?; ls /dev/video* 2>&1")
        if await wait_for(lambda: len(slate_since(marks["unbind"])) >= 3, 15):
            marks["slate"] = min(f[0] for f in slate_since(marks["unbind"]))
        await asyncio.sleep(1.0)
        marks["rmmod_out"] = await asyncio.to_thread(vm.sh, "rmmod vivid; echo rmmod=$?")
        await asyncio.sleep(1.0)
        marks["modprobe_out"] = await asyncio.to_thread(vm.sh, f"modprobe vivid {VIVID_ARGS}; echo modprobe=$?; ls /dev/video*")
        marks["plugged"] = time.monotonic() - t0
        if await wait_for(lambda: len(cam_since(marks["plugged"])) >= 3, 20):
            marks["back"] = min(f[0] for f in cam_since(marks["plugged"]))
        await asyncio.sleep(2.0)
        stop_at[0] = time.monotonic()

    out = asyncio.run(watch(90, events=events))
    if out["error"]:
        c.check("hotplug: WHEP session", False, out["error"])
        return
    c.info("hotplug marks: " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v.strip()) for k, v in marks.items()}))
    c.check("hotplug: camera frames before the unplug", "unbind" in marks and
            any(f[1] > 8 and f[0] < marks["unbind"] for f in out["frames"]), "")
    c.check("hotplug: vivid unbound (device node gone)", "unbind=0" in marks.get("unbind_out", ""),
            marks.get("unbind_out", "").strip())
    c.check("hotplug: the session stays up and shows the slate", "slate" in marks,
            f"slate {marks.get('slate', 0) - marks.get('unbind', 0):.1f} s after the unbind" if "slate" in marks else "no slate frames")
    c.check("hotplug: the service released the device (rmmod vivid succeeds)", "rmmod=0" in marks.get("rmmod_out", ""),
            marks.get("rmmod_out", "").strip())
    c.check("hotplug: vivid loaded again", "modprobe=0" in marks.get("modprobe_out", ""),
            marks.get("modprobe_out", "").strip())
    back = marks.get("back", 0) - marks.get("plugged", 0) if "back" in marks else None
    if back is not None:
        print(f"TIMING vm hotplug: camera picture back {back:.2f} s after modprobe (emulated aarch64)", flush=True)
    c.check("hotplug: the camera picture returns to the same session", back is not None and back < 10,
            f"{back:.2f} s after modprobe" if back is not None else "never")
    log = vm.sh("grep -E 'video source|camera' /var/log/peercam-YUYV.log | tail -6")
    c.info("service log (video source lines):\n" + log)


def check_busy_and_idle(vm: VM, c: pi.Checker) -> None:
    """Busy device: another program (v4l2-hold) streams /dev/video0 before the service starts.
    The service starts anyway, /api/settings names the device and the holder, a viewer sees the
    slate, and the picture comes back once the holder exits. The same run refuses an ALSA rate
    the device does not offer (snd-aloop's capture side is locked to aplay's 48 kHz). Then idle
    stream-off: right after the viewer leaves the camera is still held; after the idle time
    (PEERCAM_CAMERA_IDLE_OFF_MS) another program can stream it; the next viewer reopens it."""
    out = vm.sh("killall peercam 2>/dev/null; sleep 0.5; (v4l2-hold /dev/video0 0 > /var/log/hold.log 2>&1 &); "
                "sleep 1; cat /var/log/hold.log")
    c.check("busy: v4l2-hold streams /dev/video0 first", "streaming" in out, out.strip())
    toml = config_toml("YUYV").replace("[webrtc]", "[audio.constraints]\nsample_rate = { exact = 44100 }\n[webrtc]")
    if not start_service(vm, "busy", c, toml, env=f"PEERCAM_CAMERA_IDLE_OFF_MS={IDLE_OFF_MS}"):
        return
    s = settings()
    vp, ap = s.get("video", {}).get("problem") or "", s.get("audio", {}).get("problem") or ""
    c.check("busy: the service starts; /api/settings video.problem names the device and who holds it",
            "/dev/video0" in vp and "busy" in vp and "v4l2-hold (pid" in vp, vp)
    c.check("alsa: a rate the device refuses is reported naming the device and what it offers",
            "hw:Loopback,1" in ap and "44100" in ap and "48000" in ap, ap)
    marks = {}

    async def events(out, t0, stop_at):
        async def wait_for(pred, secs):
            end = time.monotonic() + secs
            while time.monotonic() < end:
                if pred():
                    return True
                await asyncio.sleep(0.1)
            return False

        if await wait_for(lambda: sum(1 for f in out["frames"] if f[1] <= 8) >= 3, 15):
            marks["slate"] = True
        marks["kill"] = time.monotonic() - t0
        await asyncio.to_thread(vm.sh, "killall v4l2-hold")
        if await wait_for(lambda: sum(1 for f in out["frames"] if f[0] >= marks["kill"] and f[1] > 8) >= 3, 15):
            marks["back"] = min(f[0] for f in out["frames"] if f[0] >= marks["kill"] and f[1] > 8)
        await asyncio.sleep(0.5)
        stop_at[0] = time.monotonic()

    out = asyncio.run(watch(40, events=events))
    if out["error"]:
        c.check("busy: WHEP session", False, out["error"])
        return
    c.check("busy: the viewer sees the slate while the camera is busy", marks.get("slate", False), "")
    back = marks["back"] - marks["kill"] if "back" in marks else None
    if back is not None:
        print(f"TIMING vm busy: camera picture {back:.2f} s after the other program exited (emulated aarch64)", flush=True)
    c.check("busy: the picture comes back on the same session when the other program exits",
            back is not None and back < 10, f"{back:.2f} s" if back is not None else "never")
    vp = settings().get("video", {}).get("problem")
    c.check("busy: /api/settings has no video problem once the camera streams", not vp, str(vp))

    held = vm.sh("v4l2-hold /dev/video0 1; echo rc=$?").strip()
    c.check("idle: right after the last viewer left, the camera is still peercam's (v4l2-hold: busy)",
            "busy" in held and "rc=2" in held, held)
    time.sleep(IDLE_OFF_MS / 1000 + 1.5)
    freed = vm.sh("v4l2-hold /dev/video0 1; echo rc=$?").strip()
    c.check(f"idle: {IDLE_OFF_MS / 1000:g} s without viewers -> camera closed, another program can stream it",
            "streaming" in freed and "rc=0" in freed, freed)
    log = vm.sh("grep -E 'busy|streaming off|usable again' /var/log/peercam-busy.log | cut -c1-300")
    c.check("idle: the stream-off is logged once", log.count("streaming off") == 1, log.strip())
    out = asyncio.run(watch(4))
    cam = [f[0] for f in out["frames"] if f[1] > 8]
    if cam:
        print(f"TIMING vm idle: first camera frame {cam[0]:.2f} s after the track arrived (camera reopened)", flush=True)
    c.check("idle: the next viewer reopens the camera and gets its picture", len(cam) >= 10,
            f"{len(cam)} camera frames, first at {cam[0]:.2f} s" if cam else out["error"] or "no camera frames")
    c.info("service log (camera lines):\n" + log)


def check_xrun(vm: VM, c: pi.Checker) -> None:
    """ALSA overrun on a real driver (snd-aloop): the service is stopped (SIGSTOP) twice for 1 s
    while a viewer listens, so the capture buffer (400 ms) overruns; the tone must come back
    after each stop, and the overrun is logged once (the first; then every 100th)."""
    if not start_service(vm, "xrun", c, config_toml("YUYV")):
        return
    marks = {}

    async def events(out, t0, stop_at):
        await asyncio.sleep(2.5)
        for i in (1, 2):
            marks[f"stop{i}"] = time.monotonic() - t0
            await asyncio.to_thread(vm.sh, "p=$(pidof peercam); kill -STOP $p; sleep 1; kill -CONT $p")
            await asyncio.sleep(3.0)
        stop_at[0] = time.monotonic()

    out = asyncio.run(watch(40, events=events))
    if out["error"]:
        c.check("xrun: WHEP session", False, out["error"])
        return
    after = marks.get("stop2", 99) + 1.5
    hz, rms, share = audio_tone(out, after=after)
    c.check("xrun: the 440 Hz tone flows again after the overruns", 430 <= hz <= 450 and share >= 0.8,
            f"{hz:.0f} Hz, rms {rms:.0f}, {100 * share:.0f} % of 20 ms stretches after {after:.1f} s")
    log = vm.sh("grep -E 'overrun|restart|microphone' /var/log/peercam-xrun.log | cut -c1-300").strip()
    lines = [x for x in log.splitlines() if "capture overrun" in x]
    c.check("xrun: overrun recovered (snd_pcm_recover) and logged once", len(lines) == 1 and "xrun #1" in lines[0],
            log or "no overrun logged")
    r = pi.http_request("GET", BASE + "/api/settings", headers=AUTH, timeout=10)
    try:
        xruns = json.loads(r.text())["audio"].get("xruns")
    except (ValueError, KeyError, TypeError):
        xruns = None
    c.check("xrun: /api/settings counts the overruns (audio.xruns >= 1)", isinstance(xruns, int) and xruns >= 1,
            f"audio.xruns = {xruns}")


def jpeg_size(b: bytes):
    """(width, height) from a JPEG's SOF marker, or None."""
    i = 2
    while i + 9 < len(b) and b[i] == 0xFF:
        marker, length = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")
        i += 2 + length
    return None


def check_passthrough(vm: VM, c: pi.Checker) -> None:
    """Camera H.264 passthrough on a real V4L2 capture device: v4l2loopback (built by run.sh for
    the VM's kernel) fed by h264-feed with the constrained-baseline fixture, 320x240 at 15 fps,
    one access unit per buffer. The service must pick the H264 mode, start no encoder, and aiortc
    must decode the camera's own pictures without errors."""
    out = vm.sh(f"modprobe v4l2loopback video_nr=10 exclusive_caps=1 card_label=h264cam; echo modprobe=$?; "
                f"(h264-feed /dev/video10 /cam.h264 {H264_FPS} > /var/log/feed.log 2>&1 &); sleep 1; cat /var/log/feed.log")
    c.check("passthrough: v4l2loopback loaded and fed H.264", "modprobe=0" in out and "H264" in out, out.strip())
    toml = config_toml("H264").replace('exact = "vivid"', 'exact = "/dev/video10"')
    for a, b in (("width = 640", "width = 320"), ("height = 480", "height = 240"),
                 ("width = { exact = 640 }", "width = { exact = 320 }"), ("height = { exact = 480 }", "height = { exact = 240 }")):
        toml = toml.replace(a, b)
    toml = toml.replace(f"fps = {FPS}", f"fps = {H264_FPS}").replace(f"brightness = {BRIGHTNESS}", "")
    if not start_service(vm, "h264", c, toml):
        return
    s = settings().get("video", {})
    c.check("passthrough: the service chooses the camera's H264 mode", "H264" in s.get("source", "") and not s.get("problem"),
            json.dumps({k: s.get(k) for k in ("source", "width", "height", "fps", "problem")}))
    out = asyncio.run(watch(SECONDS))
    s2 = settings().get("video", {})
    if out["error"]:
        c.check("passthrough: WHEP session", False, out["error"])
        return
    frames = out["frames"]
    window, fps_rx = rate_after_first_second(out)
    c.info(f"passthrough: {len(frames)} frames decoded in {out.get('watched_s', 0):.1f} s, the first after "
           f"{out.get('first_frame_s', -1):.1f} s ({fps_rx:.1f} fps after its first second); "
           f"encoded_frames {s2.get('encoded_frames')}, keyframes {s2.get('keyframes')}, "
           f"encoders_started {s2.get('encoders_started')}")
    c.check("passthrough: frames are the camera's 320x240", bool(frames) and {f[2] for f in frames} == {(320, 240)},
            str({f[2] for f in frames}))
    c.check("passthrough: no encoder was started (the camera's H.264 is sent as it is)",
            s2.get("encoders_started") == 0 and (s2.get("encoded_frames") or 0) > 0,
            f"encoders_started {s2.get('encoders_started')}, units {s2.get('encoded_frames')}")
    # v4l2loopback has no V4L2_CID_MPEG_VIDEO_BITRATE: the camera's H.264 goes out at its own rate,
    # and the device says so (a camera with the control reports "camera" and its bitrate; that path
    # is unit-tested in pipeline::passthrough, as no driver here encodes H.264).
    c.check("passthrough: /api/settings says nobody controls the camera's bitrate (rate_control none)",
            s2.get("rate_control") == "none", f"rate_control {s2.get('rate_control')!r}")
    c.check(f"passthrough: decoded at >= 80 % of the camera's {H264_FPS} fps", fps_rx >= 0.8 * H264_FPS, f"{fps_rx:.1f} fps")
    c.check("passthrough: no decode errors", out["decode_errors"] == (0, 0), str(out["decode_errors"]))
    # A snapshot of a passthrough camera: an IDR decoded by openh264 (v4l2loopback cannot be asked
    # for one, so this is the feed's next IDR or, after 2.5 s, its last one).
    t0 = time.monotonic()
    r = pi.http_request("GET", BASE + "/api/snapshot.jpg", headers=AUTH, timeout=15)
    took = time.monotonic() - t0
    dims = jpeg_size(r.body) if r.status == 200 else None
    s3 = settings().get("video", {})
    c.check("passthrough: snapshot → 200 image/jpeg of the camera's 320x240, from its H.264, no encoder started",
            r.status == 200 and r.body[:2] == b"\xff\xd8" and dims == (320, 240) and s3.get("encoders_started") == 0,
            f"{r.status} {dims} {len(r.body)} bytes in {took:.1f} s; encoders_started {s3.get('encoders_started')}; {r.body[:160]!r}")
    log = vm.sh("grep -E 'H.264|force-key-frame' /var/log/peercam-h264.log | cut -c1-300").strip()
    c.check("passthrough: the profile is logged, and the missing force-key-frame control once",
            "constrained baseline profile level 1.3 (42c00d)" in log and log.count("no force-key-frame control") == 1, log)
    vm.sh("killall peercam h264-feed; sleep 0.5; rmmod v4l2loopback")


# ---- the hardware-encoder code path on vicodec (issue 13, part 2) ------------------------------
# vicodec (built out of tree by run.sh, loaded with multiplanar=1 like bcm2835-codec's MPLANE
# API) is a stateful V4L2 M2M encoder and decoder for FWHT. `peercam encoder-check --codec fwht`
# drives it through src/codec/m2m — the same M2mEncoder the service uses for H.264, the codec's
# FourCC a parameter — and decodes what it made with vicodec's decoder node.
M2M_ONLY_ON_A_PI = ("actual H.264 from bcm2835-codec (/dev/video11): its SPS (constrained baseline, the level), "
                    "repeat_sequence_header and V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME taking effect, its bitrate "
                    "control's effect on the stream, its stride/height padding, the CPU it saves, and a browser "
                    "decoding it, and its DMABUF import of a CSI camera's buffers (here vicodec imports vivid's)")


def m2m_json(text: str) -> dict:
    i = text.find("{")
    try:
        return json.loads(text[i:text.rindex("}") + 1]) if i >= 0 else {}
    except ValueError:
        return {}


def check_m2m(vm: VM, c: pi.Checker) -> None:
    """M2M encoder plumbing on vicodec: format negotiation (the driver's stride and sizes),
    queues, keyframe on request, bitrate in place, stream off/on, the output decoded by vicodec's
    decoder against the input (PSNR), the device vanishing under the encoder (unbind → a clear
    error, no panic; rmmod then succeeds), and the service's encoder choice (auto → openh264 with
    no H.264 M2M device; v4l2m2m forced → a startup error naming what vicodec offers)."""
    t0 = time.monotonic()
    out = vm.sh("modprobe vicodec multiplanar=1; echo modprobe=$?; "
                "for d in /sys/class/video4linux/video*; do echo \"$(basename $d) $(cat $d/name)\"; done")
    if not c.check("m2m: vicodec (multiplanar=1) loaded: stateful encoder and decoder nodes",
                   "modprobe=0" in out and "stateful-encoder" in out and "stateful-decoder" in out, out.strip()):
        return
    text = vm.sh("LD_LIBRARY_PATH=/lib peercam encoder-check --codec fwht --width 640 --height 480 --fps 10; echo exit=$?",
                 timeout=120)
    with open(os.path.join(ART, "m2m-check.json"), "w") as f:
        f.write(text)
    r = m2m_json(text)
    checks = r.get("checks", {})
    detail = lambda k: json.dumps(checks.get(k, {}).get("detail"))[:400]  # noqa: E731
    raw = r.get("raw_format", {})
    c.check("m2m: encoder found by probing (vivid skipped: not M2M; the FWHT encoder node chosen)",
            r.get("driver") == "vicodec" and "exit=" in text, f"{r.get('device')} {r.get('driver')} {text[-300:] if not r else ''}")
    # (vicodec's smallest picture is 640x360, which it pads to 640x368: 640x480 needs no padding)
    c.check("m2m: format negotiated as the driver says (YU12 640x480, stride 640, sizeimage 460800; FWHT on CAPTURE)",
            raw.get("fourcc") == "YU12" and raw.get("bytesperline") == [640] and raw.get("sizeimage") == [460800]
            and (r.get("coded_format") or {}).get("fourcc") == "FWHT", json.dumps([raw, r.get("coded_format")]))
    c.check("m2m: fixed buffer counts (2 OUTPUT, 4 CAPTURE)", r.get("buffers") == {"output": 2, "capture": 4}, json.dumps(r.get("buffers")))
    for key, name in (("first_keyframe", "the first unit is a keyframe (FWHT header I-frame flag)"),
                      ("then_p_frames", "the next units are P-frames"),
                      ("keyframe_on_request", "keyframe on request: the next unit is a keyframe, the one after a P-frame"),
                      ("bitrate_in_place", "bitrate lowered in place: smaller units, no keyframe, no restart"),
                      ("stream_off_on", "stream off/on: the first unit after it is a keyframe"),
                      ("timestamps_copied", "capture timestamps come back on the encoded units"),
                      ("decoded_matches_input", "vicodec's decoder decodes every unit; PSNR >= 30 dB (high rate), >= 20 dB (low)")):
        c.check(f"m2m: {name}", checks.get(key, {}).get("pass") is True, detail(key))
    d = checks.get("decoded_matches_input", {}).get("detail")
    d = d if isinstance(d, dict) else {}
    c.info(f"m2m: PSNR(Y) min {d.get('min_psnr_high_rate_db', -1):.1f} dB at the high rate, "
           f"{d.get('min_psnr_low_rate_db', -1):.1f} dB at 1/40 of it; keyframe method {r.get('keyframe_method')}, "
           f"rate {r.get('rate_method')}; encode µs {r.get('encode_us')}")
    c.check("m2m: encoder-check exits 0", "exit=0" in text, text[-200:])

    # zero-copy: vivid's NV12 buffers, opened by the service's camera code and lent as DMABUFs,
    # read in place by the encoder (V4L2_MEMORY_DMABUF; vivid exports, vicodec imports, both
    # vb2-vmalloc), decoded by vicodec's decoder and compared with the camera's own picture.
    text = vm.sh("killall peercam 2>/dev/null; LD_LIBRARY_PATH=/lib peercam encoder-check --codec fwht --camera vivid "
                 "--camera-format NV12 --width 640 --height 480 --fps 10; echo exit=$?", timeout=120)
    with open(os.path.join(ART, "m2m-dmabuf.json"), "w") as f:
        f.write(text)
    r = m2m_json(text)
    checks = r.get("checks", {})
    lent = r.get("camera_buffer") or {}
    c.check("m2m dmabuf: vivid lends its NV12 buffers (640x480, stride 640) and the encoder is set up for NV12",
            lent.get("fourcc") == "NV12" and lent.get("bytesperline") == 640 and (r.get("raw_format") or {}).get("fourcc") == "NV12",
            json.dumps([lent, r.get("raw_format")]) + (text[-300:] if not r else ""))
    for key, name in (("frames", "40 camera frames encoded"),
                      ("camera_lent_every_frame", "every frame came with its camera buffer (lent buffers come back: the camera never ran dry)"),
                      ("read_in_place", "every frame read in place (V4L2_MEMORY_DMABUF), none copied"),
                      ("decoded_matches_camera", "vicodec decodes every unit and it matches the camera's picture (PSNR >= 30 dB)")):
        c.check(f"m2m dmabuf: {name}", checks.get(key, {}).get("pass") is True, detail(key))
    d = checks.get("decoded_matches_camera", {}).get("detail")
    d = d if isinstance(d, dict) else {}
    c.info(f"m2m dmabuf: PSNR(Y) min {d.get('min_psnr_y_db', -1):.1f} dB; encode µs {r.get('encode_us')}; {r.get('counters')}")

    # the device vanishes while encoding: unbind vicodec from its platform driver
    vm.sh("(LD_LIBRARY_PATH=/lib peercam encoder-check --codec fwht --width 640 --height 480 --run-seconds 40 > /var/log/m2m-run.json 2>/var/log/m2m-run.err; "
          "echo exit=$? >> /var/log/m2m-run.json) & sleep 4; "
          "for d in /sys/bus/platform/drivers/vicodec/vicodec*; do echo $(basename $d) > /sys/bus/platform/drivers/vicodec/unbind; done")
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        text = vm.sh("cat /var/log/m2m-run.json; cat /var/log/m2m-run.err")
        if "exit=" in text:
            break
        time.sleep(1)
    with open(os.path.join(ART, "m2m-vanish.json"), "w") as f:
        f.write(text)
    r = m2m_json(text)
    c.check("m2m: device unbound while encoding → a clear 'gone' error naming the device, exit 3, no panic",
            r.get("gone") is True and "gone" in r.get("error", "") and "/dev/video" in r.get("error", "")
            and "exit=3" in text and "panicked" not in text and (r.get("frames_encoded") or 0) > 5,
            text.strip()[-500:])
    out = vm.sh("sleep 0.5; rmmod vicodec; echo rmmod=$?")
    c.check("m2m: the encoder released the device (rmmod vicodec succeeds)", "rmmod=0" in out, out.strip())

    # the service's choice of encoder
    vm.sh("modprobe vicodec multiplanar=1")
    base = config_toml("YUYV").replace('source = "v4l2"\ndevice = { exact = "vivid" }', 'source = "testsrc"')
    base = base.replace(f"brightness = {BRIGHTNESS}", "").replace('format = { exact = "YUYV" }', "")
    out = vm.sh("killall peercam 2>/dev/null; sleep 0.5; cat > /etc/peercam-m2m.toml <<'EOF'\n"
                + base.replace("[video]\n", '[video]\nencoder = "v4l2m2m"\n', 1)
                + "\nEOF\nLD_LIBRARY_PATH=/lib timeout 20 peercam -c /etc/peercam-m2m.toml run > /var/log/peercam-m2m-forced.log 2>&1; "
                "echo exit=$?; tail -3 /var/log/peercam-m2m-forced.log | cut -c1-600", timeout=40)
    c.check("m2m: [video] encoder = \"v4l2m2m\" without an H.264 M2M device → the service does not start, "
            "the error names vicodec and that it makes FWHT", "exit=1" in out and "v4l2m2m" in out and "vicodec" in out and "FWHT" in out,
            out.strip()[-600:])
    if start_service(vm, "m2m-auto", c, base):
        e = settings().get("video", {}).get("encoder", {})
        log = vm.sh("grep -m1 'H.264 encoder:' /var/log/peercam-m2m-auto.log | cut -c1-400").strip()
        c.check("m2m: encoder = \"auto\" → /api/settings video.encoder says openh264, the log says why (vicodec: FWHT only)",
                e.get("name") == "openh264" and "vicodec" in log, f"{json.dumps(e)} | {log}")
    vm.sh("killall peercam; sleep 0.5; rmmod vicodec")
    c.info(f"m2m: only a real Pi confirms: {M2M_ONLY_ON_A_PI}")
    c.info(f"TIMING vm m2m {time.monotonic() - t0:.1f} s")


# ---- night vision on the PL061 GPIO controller of QEMU's virt machine (issue 13, part 3) ------
# Real kernel: Debian's arm64 kernel drives QEMU's PL061 (CONFIG_GPIO_PL061=y) and exposes it as
# /dev/gpiochip0 (CONFIG_GPIO_CDEV=y); peercam requests lines through the GPIO v2 uAPI and the
# test reads them back from /sys/kernel/debug/gpio (direction, wire level, consumer, ACTIVE LOW).
# Line 3 is the virt machine's power key (gpio-keys in its device tree): 5 and 6 are free.
NIGHT_LED, NIGHT_CUT = 5, 6


def night_toml(extra: str) -> str:
    return (f'[http]\nlisten = "0.0.0.0:8080"\n[video]\nsource = "testsrc"\nwidth = 320\nheight = 240\nfps = 5\n'
            f'[audio]\nsource = "none"\n[motion]\nenabled = true\nfps = 2\n'
            f'[webrtc]\nudp_port = {UDP_PORT}\nnat_1to1_ips = ["127.0.0.1"]\n'
            f'[auth]\npassword_hash = "{PASSWORD_HASH}"\ntoken_sha256 = ["{TOKEN_SHA256}"]\n[night]\n{extra}\n')


def gpio_lines(vm: VM) -> dict:
    """{offset: "out hi ACTIVE LOW"…} of the lines peercam holds on gpiochip0, from debugfs."""
    text = vm.sh("cat /sys/kernel/debug/gpio")
    base, lines = None, {}
    for line in text.splitlines():
        if line.startswith("gpiochip"):
            base = int(line.split("GPIOs")[1].split("-")[0]) if line.startswith("gpiochip0:") and "GPIOs" in line else None
        elif base is not None and "gpio-" in line and "|peercam" in line:
            num = int(line.split("gpio-")[1].split()[0])
            lines[num - base] = " ".join(line.split(")", 1)[1].split())
    return lines


def night_status() -> dict:
    return settings().get("night", {})


def post_json(path: str, body: dict) -> "pi.HttpResponse":
    return pi.http_request("POST", BASE + path, json.dumps(body).encode(),
                           {**AUTH, "Content-Type": "application/json"}, timeout=10)


def check_night(vm: VM, c: pi.Checker) -> None:
    t_start = time.monotonic()
    info = vm.sh("mount -t debugfs none /sys/kernel/debug 2>/dev/null; ls /dev/gpiochip*; cat /sys/kernel/debug/gpio")
    c.info("gpio before peercam: " + " | ".join(l.strip() for l in info.splitlines() if l.strip()))
    if not c.check("night: /dev/gpiochip0 (PL061) is in devtmpfs", "/dev/gpiochip0" in info and "pl061" in info.lower(), info[:200]):
        return
    led = f'ir_led = {{ chip = "gpiochip0", line = {NIGHT_LED} }}'
    cut = f'ir_cut = {{ chip = "/dev/gpiochip0", line = {NIGHT_CUT}, active_low = true }}'
    if not start_service(vm, "night", c, night_toml(f'mode = "on"\n{led}\n{cut}\nswitch_after_s = 1\nmin_hold_s = 3\ndark_below = 40\nbright_above = 70')):
        return
    time.sleep(0.5)
    g = gpio_lines(vm)
    n = night_status()
    # Active-high LED: active = wire high; the active-low filter line: active = wire low.
    c.check("night: mode on → the IR LED line is requested as an output and driven high",
            g.get(NIGHT_LED, "").startswith("out hi"), json.dumps(g))
    c.check("night: mode on → the active-low IR-cut line is driven low (ACTIVE LOW)",
            g.get(NIGHT_CUT, "").startswith("out lo") and "ACTIVE LOW" in g.get(NIGHT_CUT, ""), json.dumps(g))
    c.check("night: settings say night, both lines held and active, no error",
            n.get("state") == "night" and n.get("mode") == "on" and (n.get("ir_led") or {}).get("active") is True
            and (n.get("ir_cut") or {}).get("ok") is True and n.get("error") is None, json.dumps(n))
    r = post_json("/api/night", {"mode": "off"})
    g = gpio_lines(vm)
    c.check("night: POST /api/night off → LED line low, IR-cut line high (filter in)",
            r.status == 200 and g.get(NIGHT_LED, "").startswith("out lo") and g.get(NIGHT_CUT, "").startswith("out hi"),
            f"{r.status} {json.dumps(g)}")
    # auto: the test pattern goes dark → night after the dwell; bright again at once → day only
    # after the hold (3 s) counted from the night switch.
    post_json("/api/test-pattern", {"dark": True})
    post_json("/api/night", {"mode": "auto"})
    t0 = time.monotonic()
    t_night = t_day = None
    while time.monotonic() - t0 < 15:
        st = night_status().get("state")
        if st == "night" and t_night is None:
            t_night = time.monotonic()
            post_json("/api/test-pattern", {"dark": False})
            g_night = gpio_lines(vm)
        if st == "day" and t_night is not None:
            t_day = time.monotonic()
            break
        time.sleep(0.2)
    g_day = gpio_lines(vm)
    c.check("night: auto, dark test pattern → night within 6 s and the LED line high",
            t_night is not None and t_night - t0 < 6 and g_night.get(NIGHT_LED, "").startswith("out hi"),
            f"after {(t_night or 0) - t0:.1f} s, {json.dumps(g_night) if t_night else 'never'}")
    held = (t_day - t_night) if (t_day and t_night) else None
    c.check("night: auto, bright again at once → day only after the 3 s hold, LED line low",
            held is not None and 2.5 <= held < 9 and g_day.get(NIGHT_LED, "").startswith("out lo"),
            f"{held and round(held, 1)} s night, {json.dumps(g_day)}")
    vm.sh("killall peercam; for i in 1 2 3 4 5 6 7 8 9 10; do pidof peercam >/dev/null || break; sleep 0.5; done")
    g = gpio_lines(vm)
    c.check("night: SIGTERM → the lines are released (debugfs lists no peercam line)", g == {}, json.dumps(g))
    # A line the chip does not have (PL061 has 8): a clear error, and the service still runs.
    if start_service(vm, "night-bad", c, night_toml(f'mode = "on"\nir_led = {{ chip = "gpiochip0", line = 200 }}')):
        n = night_status()
        err = n.get("error") or ""
        c.check("night: line 200 of an 8-line chip → error names ir_led, the line and the chip",
                "ir_led" in err and "line 200" in err and "gpiochip0" in err and n.get("state") == "night", json.dumps(n))
        r = pi.http_request("GET", BASE + "/api/snapshot.jpg", headers=AUTH, timeout=15)
        log = vm.sh("grep -c panicked /var/log/peercam-night-bad.log; grep -m1 'night' /var/log/peercam-night-bad.log | cut -c1-240")
        c.check("night: … and the service still serves pictures (snapshot 200, no panic)",
                r.status == 200 and r.body[:2] == b"\xff\xd8" and log.strip().startswith("0"), f"{r.status} {log.strip()}")
        vm.sh("killall peercam; sleep 0.5")
    c.info(f"TIMING vm night {time.monotonic() - t_start:.1f} s")


# ---- CSI cameras through libcamera: vimc + libcamera 0.0.3's V4L2 compatibility layer (issue 13, part 1)

LC_COMPAT = "/usr/lib/aarch64-linux-gnu/v4l2-compat.so"  # Debian 12's libcamera-v4l2 (0.0.3)
LC_WANT = (320, 240)  # asked for (ideal); vimc's libcamera pipeline takes multiples of 6 ...
LC_SIZE = (318, 240)  # ... so libcamera configures this (and peercam reports it)


def lc_toml(source: str = "auto", extra: str = "") -> str:
    """`source = "auto"` with vivid still loaded: at 320x240 @ 10 vivid (320x180 @ 10) is the closer
    fit by fitness distance (0.25 against vimc's 0.67 for its nominal 30 fps), so only the
    preference for a libcamera camera makes vimc the choice."""
    return (f'[http]\nlisten = "0.0.0.0:8080"\n[video]\nsource = "{source}"\nwidth = {LC_WANT[0]}\nheight = {LC_WANT[1]}\n'
            f'fps = {FPS}\nbitrate_kbps = 800\n{extra}[audio]\nsource = "none"\n[webrtc]\nudp_port = {UDP_PORT}\n'
            f'nat_1to1_ips = ["127.0.0.1"]\n[auth]\npassword_hash = "{PASSWORD_HASH}"\ntoken_sha256 = ["{TOKEN_SHA256}"]\n')


def check_libcamera(vm: VM, c: pi.Checker) -> None:
    """vimc (built out of tree by run.sh) as the CSI camera, libcamera 0.0.3 arm64 with its vimc
    pipeline and IPA, used by peercam through libcamera's V4L2 compatibility layer."""
    t_start = time.monotonic()
    # No udevd in the initramfs: libcamera's udev enumerator takes only devices udev initialised,
    # so write the (empty) database entries udevd would write for the media and video nodes.
    out = vm.sh("killall peercam 2>/dev/null; modprobe vimc && sleep 1; mkdir -p /run/udev/data; "
                "for d in /sys/bus/media/devices/*/dev /sys/class/video4linux/*/dev; do : > /run/udev/data/c$(cat $d); done; "
                "for v in /sys/class/video4linux/video*; do echo \"$v $(cat $v/name)\"; done")
    if not c.check("libcamera: vimc is loaded (media-controller capture nodes appear)", "RGB/YUV Capture" in out, out.strip()[:300]):
        return
    env = "LD_LIBRARY_PATH=/lib LIBCAMERA_LOG_LEVELS=*:ERROR"
    vm.sh(f"cat > /etc/peercam-lc.toml <<'EOF'\n{lc_toml()}\nEOF")
    text = vm.sh(f"{env} peercam -c /etc/peercam-lc.toml devices --json 2>/var/log/peercam-lc-devices.err")
    try:
        doc = json.loads(text[text.index("{"):])
    except ValueError:
        c.check("libcamera: peercam devices --json is JSON", False, text[:400] + vm.sh("tail -5 /var/log/peercam-lc-devices.err"))
        return
    with open(os.path.join(ART, "devices-libcamera.json"), "w") as f:
        json.dump(doc, f, indent=1)
    video = doc.get("video", [])
    lc = [d for d in video if d.get("driver") == "libcamera"]
    c.check("libcamera: peercam devices finds the vimc camera through libcamera, listed once and first",
            len(lc) == 1 and "Sensor" in lc[0].get("card", "") and video[0].get("driver") == "libcamera",
            "; ".join(f"{d.get('path')} {d.get('driver')} {d.get('card')!r}" for d in video))
    c.check("libcamera: vivid is still listed as a plain V4L2 camera; vimc's nodes are not listed raw",
            any(d.get("driver") == "vivid" for d in video) and not any(d.get("driver") == "vimc" for d in video),
            ", ".join(sorted({d.get("driver", "") for d in video})))
    if lc:
        fmts = {f["fourcc"]: f for f in lc[0].get("formats", [])}
        sizes = [(s["size"].get("width"), s["size"].get("height")) for f in fmts.values() for s in f["sizes"]]
        rates = sorted({round(i["den"] / i["num"], 2) for f in fmts.values() for s in f["sizes"]
                        for i in s["intervals"].get("intervals", [])})
        c.info(f"libcamera camera {lc[0]['path']} {lc[0]['card']!r}: formats {sorted(fmts)}, {len(sizes)} sizes "
               f"({sizes[:4]}…), rates {rates}, {len(lc[0].get('controls', []))} controls")
        c.check(f"libcamera: its modes are listed (BGR3/RGB3 from libcamera's stream formats, {LC_WANT[0]}x{LC_WANT[1]} "
                "among the sizes, the nominal rate libcamera 0.0.3 cannot change)",
                {"BGR3", "RGB3"} <= set(fmts) and LC_WANT in sizes and rates == [30.0], f"{sorted(fmts)} {rates}")
    txt = vm.sh(f"{env} peercam -c /etc/peercam-lc.toml devices 2>/dev/null")
    with open(os.path.join(ART, "devices-libcamera.txt"), "w") as f:
        f.write(txt)
    c.check("libcamera: `peercam devices` (text) shows the camera with driver libcamera and its formats",
            "driver: libcamera" in txt and "format BGR3" in txt and f"{LC_WANT[0]}x{LC_WANT[1]} @ 30 fps" in txt,
            " | ".join(ln.strip() for ln in txt.splitlines() if "libcamera" in ln or ln.startswith("Camera"))[:300])

    # The service: `source = "auto"` picks the libcamera camera over vivid; aiortc decodes it.
    if not start_service(vm, "libcamera", c, lc_toml(), env="LIBCAMERA_LOG_LEVELS=*:ERROR"):
        return
    s = settings()
    v = s.get("video", {})
    c.check("libcamera: source = auto picks the libcamera camera (over vivid) at the size libcamera configured",
            "Sensor B" in v.get("source", "") and (v.get("width"), v.get("height")) == LC_SIZE and not v.get("problem"),
            json.dumps({k: v.get(k) for k in ("source", "width", "height", "fps", "problem")}))
    log = vm.sh("grep -E 'cannot set the frame rate|libcamera adjusted' /var/log/peercam-libcamera.log | cut -c1-300")
    c.check("libcamera: the log names what the layer cannot do (rate) and libcamera's size adjustment",
            "cannot set the frame rate" in log and f"{LC_SIZE[0]}x{LC_SIZE[1]}" in log, log.strip()[:400])
    before = settings().get("video", {})
    t0 = time.monotonic()
    out = asyncio.run(watch(SECONDS))
    after = settings().get("video", {})
    span = time.monotonic() - t0
    if out["error"]:
        c.check("libcamera: WHEP session", False, out["error"])
        return
    frames = out["frames"]
    window, fps_rx = rate_after_first_second(out)
    captured = ((after.get("frames_captured") or 0) - (before.get("frames_captured") or 0)) / span
    encoded = ((after.get("encoded_frames") or 0) - (before.get("encoded_frames") or 0)) / span
    cam = [f for f in window if f[1] > 8]
    c.info(f"libcamera: {len(frames)} frames decoded in {out.get('watched_s', 0):.1f} s, the first after "
           f"{out.get('first_frame_s', -1):.1f} s ({fps_rx:.1f} fps after its first second); vimc through libcamera "
           f"delivered {captured:.1f} fps, the service encoded {encoded:.1f} fps "
           f"({after.get('encode_ms')} ms/frame)")
    c.check(f"libcamera: frames are {LC_SIZE[0]}x{LC_SIZE[1]}", bool(frames) and {f[2] for f in frames} == {LC_SIZE},
            str({f[2] for f in frames}))
    grey = [(round(f[0], 1), round(f[1], 1)) for f in window if f[1] <= 8]
    c.check("libcamera: decoded frames show vimc's test pattern (colour, not the grey slate)",
            bool(window) and len(cam) >= 0.95 * len(window), f"{len(cam)}/{len(window)}; grey at (s, spread) {grey[:6]}")
    c.check("libcamera: decoded at >= 80 % of the rate the emulation delivers",
            fps_rx > 0 and fps_rx >= 0.8 * min(captured, encoded),
            f"{fps_rx:.1f} fps decoded; captured {captured:.1f}, encoded {encoded:.1f} fps")
    c.check("libcamera: no decode errors", out["decode_errors"] == (0, 0), str(out["decode_errors"]))

    # Without the layer: a clear message, and `source = "libcamera"` refuses to start.
    vm.sh(f"killall peercam 2>/dev/null; sleep 1; mv {LC_COMPAT} /tmp/v4l2-compat.so.away")
    txt = vm.sh(f"{env} peercam -c /etc/peercam-lc.toml devices 2>&1")
    c.check("libcamera: layer missing → `peercam devices` names it and what to install, lists no vimc node",
            "v4l2-compat.so is missing" in txt and "install libcamera-v4l2" in txt and "driver: vimc" not in txt
            and "driver: vivid" in txt, " | ".join(ln for ln in txt.splitlines() if not ln.startswith(" "))[:400])
    vm.sh(f"cat > /etc/peercam-lc2.toml <<'EOF'\n{lc_toml('libcamera')}\nEOF")
    txt = vm.sh(f"{env} peercam -c /etc/peercam-lc2.toml run 2>&1; echo EXIT=$?")
    c.check("libcamera: layer missing with source = \"libcamera\" → exits 2 with that message",
            "EXIT=2" in txt and "install libcamera-v4l2" in txt, txt.strip()[-300:])
    vm.sh(f"mv /tmp/v4l2-compat.so.away {LC_COMPAT}; rmmod vimc")
    with open(os.path.join(ART, "peercam-libcamera.log"), "w") as f:
        f.write(vm.sh("cat /var/log/peercam-libcamera.log"))
    c.info(f"TIMING vm libcamera {time.monotonic() - t_start:.1f} s")


def main() -> int:
    c = pi.Checker("vm")
    kernel, initrd = os.environ["VM_KERNEL"], os.environ["VM_INITRD"]
    vm = VM(kernel, initrd)
    only = {x for x in os.environ.get("VM_ONLY", "").split(",") if x}
    try:
        if not vm.ready.wait(180):
            c.check("VM boots", False, f"no READY line in 180 s; see {vm.log_path}")
            return c.summary()
        c.check("VM boots with vivid and snd-aloop", "/dev/video0" in vm.banner and "Loopback" in vm.banner,
                f"{vm.banner} after {time.monotonic() - vm.t0:.1f} s")
        # VM_ONLY=m2m,libcamera runs just those groups (while working on one); default: all.
        want = lambda name: not only or name in only  # noqa: E731
        if want("stream"):
            check_devices(vm, c)
            for fmt in ("YUYV", "NV12"):
                check_stream(vm, fmt, c)
            r = pi.http_request("GET", BASE + "/api/devices", headers=AUTH, timeout=30)
            ok = r.status == 200 and any(d.get("driver") == "vivid" for d in json.loads(r.body).get("video", []))
            c.check("GET /api/devices lists vivid", ok, f"{r.status}")
            check_auto(vm, c)
        for name, fn in (("hotplug", check_hotplug), ("busy", check_busy_and_idle), ("xrun", check_xrun),
                         ("passthrough", check_passthrough), ("night", check_night), ("m2m", check_m2m),
                         ("libcamera", check_libcamera)):
            if want(name):
                fn(vm, c)
        for name in ("YUYV", "NV12", "busy", "xrun", "h264", "night", "night-bad", "m2m-auto"):
            with open(os.path.join(ART, f"peercam-{name}.log"), "w") as f:
                f.write(vm.sh(f"cat /var/log/peercam-{name}.log"))
    except Exception as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        c.check("rig ran without exception", False, f"{type(e).__name__}: {e}")
    finally:
        vm.stop()
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
