#!/usr/bin/env python3
"""Faults a camera meets in the field (issue 17), against the running release build: each one gives
a clear log line (and a `problems` entry in /api/settings where it lasts) while the service keeps
serving what it can.

  clock   The wall clock jumps, as when NTP sets the time after a boot without a real-time clock:
          forward by 3 days, then back by 5. libfaketime (Debian's `faketime`) moves the clock of
          the running service: LD_PRELOAD, FAKETIME_TIMESTAMP_FILE re-read on every call
          (FAKETIME_NO_CACHE=1), the monotonic clock left alone (FAKETIME_DONT_FAKE_MONOTONIC=1:
          NTP never steps CLOCK_MONOTONIC either). That Rust's clock_gettime calls are intercepted
          is checked, not assumed: the service's own log timestamps must move by the jump.
          Checked: a warning names the jump; video keeps flowing to an aiortc viewer with its
          timestamp code (= the RTP clock) stepping 1/fps, never by the jump; the systemd watchdog
          keep-alives go on (before the fix the capture heartbeat, stamped with the wall clock,
          looked days old and the keep-alive was withheld: systemd would restart the service); a
          login cookie and a token minted before the jump still work, a new login works; new
          HTTPS handshakes work; the viewer's control channel (SCTP) still answers; no panic.
          Before the fix the viewer got no frame after the forward step: webrtc-ice 0.17 timed
          ICE liveness with the wall clock and failed the session (crates/webrtc-ice).
  full    The state directory on a full partition (a tiny tmpfs filled up, in a private mount
          namespace): with HTTPS on, the self-signed certificate cannot be kept. An error names the
          path and says what to do, /api/settings lists it, HTTPS and streaming work with a
          certificate made for the run, nothing half-written is left (it used to leave an empty
          tls-cert.pem next to a key, and every later start failed loading it). Once space is
          free, a restart makes and keeps one.
  ro      The state partition read-only (remount ro): a certificate kept from before is served
          unchanged and nothing is reported; with none kept, the same error as above naming the
          read-only file system, and streaming goes on.
The service writes nothing else to its state directory (checked: after a normal start it holds
exactly tls-cert.pem and tls-key.pem).

Run through tests/security/run.sh: root, `unshare --net --mount` (loopback only, mounts private).
The camera vanishing and ALSA errors are covered by the VM rig (tests/vm: hotplug, busy camera,
ALSA overrun on snd-aloop).
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "service"))
from svc import (BASE_CONFIG, Checker, Service, assert_loopback_only, hash_password, insecure_context,  # noqa: E402
                 load_note, merge, request)
from test_notify import NotifySocket  # noqa: E402
import peercam_interop as pi  # noqa: E402  (svc.py put tests/interop on the path)

PASSWORD = "correct horse battery"
FPS = 15
c = Checker("faults")


# ---- helpers ----------------------------------------------------------------------------------

def https_post(url: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=10, context=insecure_context())
    try:
        conn.request("POST", u.path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def cert_sha256(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with insecure_context().wrap_socket(s, server_hostname="localhost") as t:
            return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()


class Viewer:
    """An aiortc WHEP viewer over HTTPS that keeps every decoded frame's arrival time and
    timestamp code (capture time in ms, the same clock as the RTP timestamps)."""

    def __init__(self, control: bool = False):
        from aiortc import RTCConfiguration, RTCPeerConnection
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames: list[tuple[float, int | None]] = []
        self.location = ""
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.replies: dict = {}

        @self.pc.on("track")
        def _track(track):
            if track.kind == "video":
                asyncio.ensure_future(self._read(track))
        self.dc = self.pc.createDataChannel("control", ordered=True) if control else None
        if self.dc is not None:
            @self.dc.on("message")
            def _msg(m):
                try:
                    obj = json.loads(m)
                except (ValueError, TypeError):
                    return
                if obj.get("type") == "reply":
                    self.replies[obj.get("id")] = obj

    async def ask(self, rid: int, body: dict, timeout: float = 5.0) -> dict | None:
        """A control request over the data channel (SCTP), its reply or None."""
        self.dc.send(json.dumps({"v": 1, "id": rid, **body}))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if rid in self.replies:
                return self.replies.pop(rid)
            await asyncio.sleep(0.05)
        return None

    async def _read(self, track):
        while True:
            try:
                f = await track.recv()
            except Exception:  # noqa: BLE001 - ended
                return
            code = pi.read_timestamp_code(f)
            self.frames.append((time.monotonic(), code.value if code else None))

    async def start(self, base: str, token: str | None = None) -> int:
        from aiortc import RTCSessionDescription
        await self.pc.setLocalDescription(await self.pc.createOffer())
        h = {"Content-Type": "application/sdp"}
        if token:
            h["Authorization"] = f"Bearer {token}"
        status, headers, body = await asyncio.to_thread(https_post, base + "/whep", self.pc.localDescription.sdp.encode(), h)
        if status == 201:
            self.location = headers.get("location", "")
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
        return status

    def since(self, t: float) -> list[tuple[float, int | None]]:
        return [f for f in self.frames if f[0] >= t]

    async def close(self):
        await self.pc.close()


def code_steps(frames: list) -> list[int]:
    codes = [code for _, code in frames if code is not None]
    return [pi.code_delta(a, b) for a, b in zip(codes, codes[1:])]


async def frames_for(base: str, seconds: float, token: str | None = None) -> tuple[int, int]:
    """(POST /whep status, video frames decoded in `seconds`)."""
    v = Viewer()
    try:
        status = await v.start(base, token)
        if status == 201:
            await asyncio.sleep(seconds)
        return status, len(v.frames)
    finally:
        await v.close()


def login(base: str) -> tuple[int, str]:
    r = request("POST", base + "/login", urllib.parse.urlencode({"password": PASSWORD}).encode(),
                {"Content-Type": "application/x-www-form-urlencoded"})
    cookie = ""
    for sc in r.all("set-cookie"):
        k, _, v = sc.split(";")[0].partition("=")
        if k.endswith("peercam_session") and v:
            cookie = f"{k}={v}"
    return r.status, cookie


def settings(base: str, headers: dict) -> dict:
    r = request("GET", base + "/api/settings", None, headers)
    try:
        return json.loads(r.body) if r.status == 200 else {"_status": r.status}
    except ValueError:
        return {"_status": r.status}


# ---- clock jumps ------------------------------------------------------------------------------

def libfaketime() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


LOG_TS = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")


def log_time_offset(lines: list[str]) -> float | None:
    """The service's idea of the time minus ours, from the newest log line with a timestamp."""
    for line in reversed(lines):
        m = LOG_TS.match(line)
        if m:
            t = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) - time.timezone
            return t - time.time()
    return None


async def clock_jumps(work: Path) -> None:
    lib = libfaketime()
    if not c.check("libfaketime is installed (Debian package faketime, scripts/packages.sh)", lib is not None,
                   "no /usr/lib/*/faketime/libfaketime.so.1: run scripts/install-deps.sh"):
        return
    port, udp = 18647, 18693
    stamp = work / "faketime"
    stamp.write_text("+0\n")
    sock_path = str(work / "notify.sock")
    notify = NotifySocket(sock_path)
    cfg = merge(BASE_CONFIG, {
        "http": {"listen": f"127.0.0.1:{port}", "tls": True, "state_dir": str(work / "clock-state")},
        "auth": {"password_hash": hash_password(PASSWORD)},
        "video": {"width": 320, "height": 240, "fps": FPS, "bitrate_kbps": 300},
        "webrtc": {"udp_port": udp, "include_loopback": True},
    })
    env = {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": str(stamp), "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000",
           # env_logger's default format carries the time: the proof that the clock really moved.
           "RUST_LOG": "info"}
    base = f"https://127.0.0.1:{port}"
    with Service("faults-clock", cfg, env=env) as svc:
        svc.start()
        status, cookie = login(base)
        ck = {"Cookie": cookie}
        r = request("POST", base + "/api/token", b"", ck)
        token = json.loads(r.body).get("token", "") if r.status == 200 else ""
        c.check("clock: login and a minted token before any jump", status == 303 and cookie and token, f"{status} {r}")
        viewer = Viewer(control=True)
        st = await viewer.start(base, token)
        c.check("clock: WHEP viewer connected (minted token)", st == 201, str(st))
        await asyncio.sleep(3)
        c.check("clock: the viewer gets video before any jump", len(viewer.frames) >= FPS,
                f"{len(viewer.frames)} frames in 3 s, {sum(1 for _, x in viewer.frames if x is not None)} with a readable code")

        for label, spec, jump_s, word in (("forward 3 days", "+3d", 3 * 86400, "forward"),
                                          ("back 5 days (to 2 days before real time)", "-2d", -5 * 86400, "back")):
            n_log = len(svc.lines)
            t_jump = time.monotonic()
            stamp.write_text(spec + "\n")
            await asyncio.sleep(4)
            new_lines = svc.lines[n_log:]
            warned = [l for l in new_lines if "wall clock jumped" in l]
            c.check(f"clock {label}: a warning names the jump", bool(warned) and word in warned[0],
                    warned[0][-200:] if warned else "no 'wall clock jumped' line")
            off = log_time_offset(new_lines)
            want = {"+3d": 3 * 86400, "-2d": -2 * 86400}[spec]
            c.check(f"clock {label}: libfaketime moved the service's own clock (its log timestamps)",
                    off is not None and abs(off - want) < 120, f"log time - real time = {off}")
            after = viewer.since(t_jump)
            steps = code_steps(after)
            bad = [s for s in steps if not 0 < s < 1000]
            c.check(f"clock {label}: video keeps flowing (>= {2 * FPS} frames in the 4 s after the jump)",
                    len(after) >= 2 * FPS, f"{len(after)} frames")
            c.check(f"clock {label}: the media clock does not jump (timestamp code steps 1/fps, RTP with it)",
                    len(steps) >= FPS and not bad, f"{len(steps)} steps, out of range: {bad[:5]}; median "
                    f"{sorted(steps)[len(steps) // 2] if steps else '-'} ms")
            reply = await viewer.ask(10 + len(label), {"type": "chat", "text": f"after the step {spec}"})
            c.check(f"clock {label}: the control channel (SCTP) still answers", bool(reply and reply.get("ok")), str(reply)[:160])
            beats = [t for t in notify.times("WATCHDOG=1") if t >= t_jump - notify.t0 + 1.5]
            c.check(f"clock {label}: systemd watchdog keep-alives go on", len(beats) >= 3,
                    f"{len(beats)} WATCHDOG=1 in the 2.5 s after the first 1.5 s; log: "
                    + "; ".join(l[-120:] for l in new_lines if "watchdog" in l)[:300])
            s = settings(base, ck)
            c.check(f"clock {label}: the login cookie from before still works", "video" in s, str(s.get("_status")))
            clock = s.get("clock") or {}
            c.check(f"clock {label}: /api/settings shows the wall clock's offset",
                    abs((clock.get("wall_offset_ms") or 0) / 1000 - want) < 120 and (clock.get("wall_clock_steps") or 0) >= 1,
                    str(clock))
            s = settings(base, {"Authorization": f"Bearer {token}"})
            c.check(f"clock {label}: the token minted before still works", "video" in s, str(s.get("_status")))
            st2, cookie2 = login(base)
            c.check(f"clock {label}: a new login works and its cookie is accepted",
                    st2 == 303 and "video" in settings(base, {"Cookie": cookie2}), str(st2))
            try:
                fp = cert_sha256(port)
                ok = bool(fp)
            except (OSError, ssl.SSLError) as e:
                ok, fp = False, str(e)
            c.check(f"clock {label}: a new HTTPS handshake works", ok, fp[:16])
        await viewer.close()
        log = svc.log_text()
        c.check("clock: service alive, no panic", svc.alive() and "panicked" not in log)
    notify.close()


# ---- the state directory full or read-only ----------------------------------------------------

def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "peercam-faults", str(path))


def fill(path: Path) -> None:
    """Fills the file system at `path` to the last byte."""
    try:
        with open(path / "filler", "ab") as f:
            while True:
                f.write(b"\0" * 1024)
                f.flush()
    except OSError:
        pass  # full (ENOSPC), the point


async def state_dir_faults(work: Path) -> None:
    port, udp = 18648, 18694
    pw = hash_password(PASSWORD)

    def cfg(state: Path) -> dict:
        return merge(BASE_CONFIG, {
            "http": {"listen": f"127.0.0.1:{port}", "tls": True, "state_dir": str(state)},
            "video": {"width": 320, "height": 240, "fps": FPS, "bitrate_kbps": 300},
            "webrtc": {"udp_port": udp, "include_loopback": True},
        })
    base = f"https://127.0.0.1:{port}"

    async def serving(svc: Service, label: str, expect_problem: str | None, state: Path) -> None:
        err = [l for l in svc.lines if "cannot keep the self-signed HTTPS certificate" in l]
        s = settings(base, {})
        problems = s.get("problems") or []
        if expect_problem:
            c.check(f"{label}: an error names the path and what to do", bool(err) and str(state) in err[0]
                    and expect_problem in err[0] and "restart" in err[0], (err[0][-300:] if err else "no such log line"))
            c.check(f"{label}: /api/settings lists the problem", any(str(state) in p for p in problems), str(problems)[:300])
        else:
            c.check(f"{label}: no error, no problem listed", not err and not problems, f"{err[:1]} {problems}")
        status, frames = await frames_for(base, 4)
        c.check(f"{label}: HTTPS serves and a WHEP viewer gets video", status == 201 and frames >= 2 * FPS,
                f"POST /whep {status}, {frames} frames in 4 s")
        c.check(f"{label}: service alive, no panic", svc.alive() and "panicked" not in svc.log_text())

    # Normal start: what the service keeps in its state directory.
    plain = work / "plain-state"
    with Service("faults-state-plain", cfg(plain)) as svc:
        svc.start()
        kept = sorted(p.name for p in plain.iterdir())
        c.check("the service writes exactly tls-cert.pem and tls-key.pem to its state directory",
                kept == ["tls-cert.pem", "tls-key.pem"], str(kept))

    # Full: a 2-page tmpfs with one page free: the key fits, the certificate does not (the write
    # that used to leave half a pair behind).
    full = work / "full"
    mount_tmpfs(full, "8k")
    with open(full / "filler", "wb") as f:
        f.write(b"\0" * 4096)
    with Service("faults-state-full", cfg(full)) as svc:
        svc.start()
        await serving(svc, "state dir full", "full", full)
        left = sorted(p.name for p in full.iterdir())
        c.check("state dir full: nothing half-written is left behind", left == ["filler"], str(left))
        svc.stop()
        fill(full)  # now entirely full: a second start must come up all the same
        svc.start()
        c.check("state dir full: a restart comes up again (HTTPS)", bool(svc.url) and svc.url.startswith("https"), svc.url)
        (full / "filler").unlink()
        svc.stop()
        svc.start()
        made = [l for l in svc.lines if "made a self-signed certificate" in l]
        c.check("state dir with room again: the next start makes and keeps the certificate",
                bool(made) and (full / "tls-cert.pem").is_file() and not settings(base, {}).get("problems"), str(made[-1:])[-160:])
        fp = cert_sha256(port)
        svc.stop()
        svc.start()
        c.check("... and serves the same one after another restart", cert_sha256(port) == fp)

    # Read-only with a certificate kept from before: served unchanged, nothing to report.
    ro = work / "ro"
    mount_tmpfs(ro, "1m")
    with Service("faults-state-ro", cfg(ro)) as svc:
        svc.start()
        fp = cert_sha256(port)
        svc.stop()
        sh("mount", "-o", "remount,ro", str(ro))
        svc.start()
        c.check("state dir read-only, certificate kept: the same certificate is served", cert_sha256(port) == fp)
        await serving(svc, "state dir read-only, certificate kept", None, ro)
    # Read-only and empty: the certificate cannot be kept.
    ro_empty = work / "ro-empty"
    mount_tmpfs(ro_empty, "1m")
    sh("mount", "-o", "remount,ro", str(ro_empty))
    with Service("faults-state-ro-empty", cfg(ro_empty)) as svc:
        svc.start()
        await serving(svc, "state dir read-only, empty", "read-only", ro_empty)
    for m in (full, ro, ro_empty):
        subprocess.run(["umount", str(m)], capture_output=True)


def main() -> int:
    assert_loopback_only()
    load_note(c)
    if os.geteuid() != 0:
        sys.exit("needs root (mounts a tmpfs): run tests/security/run.sh")
    # Mounts must stay in this test's mount namespace (run.sh: unshare --mount); refuse otherwise.
    # (run.sh's `unshare` execs us; our parent, `timeout`, is still in the machine's namespace.)
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        sys.exit("not in a private mount namespace: run tests/security/run.sh (unshare --net --mount)")
    pi.patch_aioice_loopback()
    work = Path(tempfile.mkdtemp(prefix="peercam-faults-"))
    only = set(sys.argv[1:])
    if not only or "clock" in only:
        asyncio.run(clock_jumps(work))
    if not only or "state" in only:
        asyncio.run(state_dir_faults(work))
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
