"""The `record` group of the NVR stage (issue 15 part 3): recorded clips as fragmented MP4.

Its own service (the test pattern and the tone, `[record] mode = "events"`, motion as the
trigger, 2 s pre-roll, 1 s post-roll, 500 ms fragments, keyframes every second), restarted with
other configs along the way. Real parts only: Debian's ffprobe/ffmpeg read every clip, the
timestamp code is read from the clip's own first frame, the folder is a real tmpfs (in the
private mount namespace run.sh makes) filled up and remounted read-only.

What it proves:
- `GET /api/recordings` 401 without credentials; a bad name → 400, an unknown one → 404, a
  DELETE without credentials → 401.
- motion for ~2 s → a `recording` event and a clip that ffprobe reads as h264 + opus, whose
  length is the event's (start → end event) + pre-roll + post-roll within [-0.6, +1.6] s, that
  `ffmpeg -v error -f null` decodes without a message; its first frame's timestamp code is at
  least the pre-roll (−150 ms) and at most pre-roll + one GOP + 0.6 s before the motion start.
- download with the token: the file's bytes, `video/mp4`; `Range` → 206 with those bytes.
- retention: copies of the clip under older names (and one 40 days old by mtime) make the folder
  pass max_bytes; the next clip deletes the aged one and the oldest first, the folder ends under
  max_bytes.
- `kill -9` while a clip records: the file is readable (ffprobe, ffmpeg without errors) up to
  its last fragment; torn by 700 more bytes cut off (a power cut in the middle of a write), the
  restarted service cuts it back to whole fragments, and ffmpeg reads it without errors.
- a full folder (tmpfs filled) → a `record_error` event, the service keeps serving; space back →
  the next clip is saved; the folder read-only → `record_error` again; no panic, still running.
- DELETE with the token → 204 and the clip is gone; again → 404.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import peercam_service
from sse import EventStream
from svc import hash_password, request
from peercam_interop import read_timestamp_code, code_delta

PORT = 18620
UDP = 18621
W, H = 640, 360
PRE, POST = 2, 1


class Plane(bytes):
    line_size = W


class Gray:
    """One 640x360 luma plane as the interop suite's code reader takes it."""

    def __init__(self, data: bytes):
        self.width, self.height, self.planes = W, H, [Plane(data)]


class Events(EventStream):
    """SSE `GET /api/events?types=…`: (arrival ms, event) into a queue (tests/lib/sse.py)."""

    def __init__(self, token: str, types: str):
        super().__init__(PORT, types, {"Authorization": f"Bearer {token}"}, clock=lambda: time.time() * 1000)


def is_motion(state):
    return lambda e: e.get("event") == "motion" and e.get("state") == state


def is_saved(e):
    return e.get("event") == "recording" and e.get("state") == "saved"


def is_error(e):
    return e.get("event") == "record_error"


class Api:
    def __init__(self, token: str):
        self.base, self.h = f"http://127.0.0.1:{PORT}", {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body=None, auth=True, headers=None):
        h = dict(self.h if auth else {})
        h.update(headers or {})
        if body is not None:
            h["Content-Type"] = "application/json"
            body = json.dumps(body).encode()
        return request(method, self.base + path, body=body, headers=h, timeout=20)

    def moving(self, on: bool):
        self.call("POST", "/api/test-pattern", {"moving": on})

    def clips(self) -> list:
        r = self.call("GET", "/api/recordings")
        return json.loads(r.body)["clips"] if r.status == 200 else []


def probe(path: Path) -> dict:
    p = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name,codec_type",
                        "-of", "json", str(path)], capture_output=True, text=True, timeout=30)
    try:
        j = json.loads(p.stdout or "{}")
    except json.JSONDecodeError:
        j = {}
    codecs = sorted(s.get("codec_name", "?") for s in j.get("streams", []))
    return {"codecs": codecs, "duration": float(j.get("format", {}).get("duration", 0) or 0), "stderr": p.stderr.strip()}


def decode_errors(path: Path) -> str:
    # (every frame, on the file's own 90 kHz clock: the clip's timestamps are the capture times,
    # and a frame captured late then one on time can be 1/100 ms apart, which the null muxer's
    # default 1/30 s grid rounds to one timestamp and reports as "non monotonically increasing dts")
    p = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-enc_time_base", "-1",
                        "-f", "null", "-"],
                       capture_output=True, text=True, timeout=60)
    return (p.stderr.strip() or ("" if p.returncode == 0 else f"exit {p.returncode}"))


def first_code(path: Path):
    raw = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         capture_output=True, timeout=30).stdout
    if len(raw) < W * H:
        return None
    code = read_timestamp_code(Gray(raw[: W * H]))
    return code.value if code else None


PASSWORD_HASH = ""


def config(token_digest: str, rec: dict, state_dir: Path) -> dict:
    return {
        "http": {"listen": f"127.0.0.1:{PORT}", "state_dir": str(state_dir)},
        "video": {"source": "testsrc", "width": W, "height": H, "fps": 30, "bitrate_kbps": 1500, "ladder": False,
                  "keyframe_interval_s": 1},
        "audio": {"source": "tone"},
        "webrtc": {"udp_port": UDP, "include_loopback": True},
        # A password set: loopback is not trusted without credentials (the 401 checks).
        "auth": {"password_hash": PASSWORD_HASH, "token_sha256": [token_digest]},
        "motion": {"enabled": True, "fps": 5, "cooldown_s": 1, "min_area_percent": 0.5, "masks": [[0.0, 0.0, 1.0, 0.3]]},
        "record": {"mode": "events", "pre_roll_s": PRE, "post_roll_s": POST, "max_clip_s": 30, "triggers": ["motion"],
                   "fragment_ms": 500, **rec},
    }


def quiet(api: Api, ev: Events) -> None:
    """The test pattern still, whatever motion the start had ended, the pre-roll filled."""
    api.moving(False)
    ev.wait(is_motion("end"), 3.0)
    time.sleep(PRE + 1.2)


def one_clip(c, api: Api, ev: Events, moving_s: float, what: str):
    """Motion for `moving_s`; returns (start event, end event at, saved event) or Nones."""
    api.moving(True)
    _, start = ev.wait(is_motion("start"), 4.0)
    c.check(f"{what}: motion start", start is not None)
    time.sleep(moving_s)
    api.moving(False)
    end_at, end = ev.wait(is_motion("end"), 5.0)
    c.check(f"{what}: motion end", end is not None)
    _, saved = ev.wait(is_saved, POST + 6.0)
    c.check(f"{what}: a `recording` event names the saved clip", saved is not None, json.dumps(saved))
    return start, end, saved


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True)


def fill(path: Path) -> None:
    try:
        with open(path / "filler", "ab") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    except OSError:
        pass


def test_record(c, token: str, digest: str, artifacts: Path) -> None:
    global PASSWORD_HASH
    PASSWORD_HASH = hash_password("nvr-record-password")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"peercam-nvr-rec-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    state = work / "state"
    state.mkdir(parents=True)
    rec_dir = state / "recordings"
    max_bytes = 4 * 1024 * 1024
    svc = peercam_service.Service("nvr-record", config(digest, {"max_bytes": max_bytes, "max_age_days": 30}, state), artifacts=artifacts,
                                  workdir=work / "svc")
    mounts: list[Path] = []
    ev = None
    try:
        svc.start()
        api = Api(token)
        ev = Events(token, "motion,recording,record_error")
        c.check("record: SSE opens", ev.status == 200, str(ev.status))
        r = api.call("GET", "/api/recordings", auth=False)
        c.check("GET /api/recordings without credentials → 401", r.status == 401, str(r.status))
        r = api.call("GET", "/api/recordings")
        c.check("GET /api/recordings → 200, mode events", r.status == 200 and json.loads(r.body).get("mode") == "events", r.text()[:200])
        for bad, codes in (("..%2Fpeercam.toml", (400, 404)), ("20990101T000000000Z-motion.mp4", (404,)),
                           ("20260101T000000000Z-motion.mp4.part", (400,)), ("%2e%2e", (400, 404))):
            r = api.call("GET", f"/api/recordings/{bad}")
            c.check(f"GET /api/recordings/{bad} → {'/'.join(map(str, codes))}", r.status in codes, str(r.status))

        # ---- one clip: codecs, length, pre-roll --------------------------------------------------
        quiet(api, ev)
        start, end, saved = one_clip(c, api, ev, 2.0, "clip 1")
        clips = api.clips()
        c.check("the clip is listed with start, duration, bytes, trigger", bool(clips) and clips[0]["trigger"] == "motion"
                and clips[0]["bytes"] > 0 and clips[0]["duration_ms"] > 0, json.dumps(clips)[:300])
        if not (start and end and saved and clips):
            return
        name = saved["name"]
        path = rec_dir / name
        shutil.copy(path, artifacts / f"record-{name}")
        p = probe(path)
        expected = (end["end"] - start["start"]) / 1000 + PRE + POST
        c.check("ffprobe: h264 + opus", p["codecs"] == ["h264", "opus"], f"{p}")
        c.check(f"clip length = event + pre-roll + post-roll ({expected:.2f} s) within [-0.6, +1.6] s",
                expected - 0.6 <= p["duration"] <= expected + 1.6, f"ffprobe {p['duration']:.2f} s, event {saved.get('duration_ms')} ms")
        errs = decode_errors(path)
        c.check("ffmpeg -v error decodes it without a message", errs == "", errs[:300])
        code = first_code(path)
        lead = code_delta(code, start["start"] % 2**32) if code is not None else None
        c.check(f"pre-roll: the first frame is ≥ {PRE} s (−150 ms) and ≤ {PRE + 1.6} s before the motion start",
                lead is not None and PRE * 1000 - 150 <= lead <= (PRE + 1.6) * 1000, f"first frame {lead} ms before the start")

        # ---- download, Range -----------------------------------------------------------------------
        r = api.call("GET", f"/api/recordings/{name}")
        data = path.read_bytes()
        c.check("download with the token: 200 video/mp4, the file's bytes", r.status == 200 and r.header("content-type") == "video/mp4"
                and r.body == data, f"{r.status} {r.header('content-type')} {len(r.body)} of {len(data)}")
        r = api.call("GET", f"/api/recordings/{name}", headers={"Range": "bytes=100-299"})
        c.check("Range: bytes=100-299 → 206 with those 200 bytes", r.status == 206 and r.body == data[100:300]
                and r.header("content-range") == f"bytes 100-299/{len(data)}", f"{r.status} {r.header('content-range')} {len(r.body)}")
        r = api.call("GET", f"/api/recordings/{name}", auth=False)
        c.check("download without credentials → 401", r.status == 401, str(r.status))

        # ---- retention -------------------------------------------------------------------------------
        # Older copies of the clip: the folder passes max_bytes; one also 40 days old by mtime.
        # As many as it takes to pass max_bytes by a fifth, whatever the encoder's bitrate made.
        n_old = min(27, max(3, int(max_bytes * 1.2 / max(1, path.stat().st_size)) + 1))
        olds = [f"202001{i:02d}T000000000Z-motion.mp4" for i in range(1, n_old + 1)]
        aged = "20200228T000000000Z-noise.mp4"
        for n in olds + [aged]:
            shutil.copy(path, rec_dir / n)
        t40 = time.time() - 40 * 86400
        os.utime(rec_dir / aged, (t40, t40))
        before = sum(f.stat().st_size for f in rec_dir.iterdir())
        quiet(api, ev)
        _, _, saved2 = one_clip(c, api, ev, 1.0, "clip 2")
        left = sorted(f.name for f in rec_dir.iterdir())
        total = sum(f.stat().st_size for f in rec_dir.iterdir())
        gone = [n for n in olds if n not in left]
        c.check("retention: the 40-day-old recording is deleted (max_age_days 30)", aged not in left, str(left))
        c.check("retention: the oldest went first, the folder ends under max_bytes",
                olds[0] in gone and all(olds.index(g) < olds.index(k) for g in gone for k in olds if k in left)
                and total <= max_bytes and saved2 is not None and saved2["name"] in left,
                f"{before} → {total} bytes (max {max_bytes}); left {left}")

        # ---- kill -9 while recording, then a torn last write ----------------------------------------
        quiet(api, ev)
        api.moving(True)
        ev.wait(is_motion("start"), 4.0)
        time.sleep(2.5)
        current = [x for x in api.clips() if x["recording"]]
        svc.stop(signal.SIGKILL)
        c.check("a clip is being written when the service is killed", len(current) == 1, json.dumps(current)[:300])
        if current:
            cut = rec_dir / current[0]["name"]
            p = probe(cut)
            errs = decode_errors(cut)
            c.check("killed (-9) mid-clip: ffprobe reads h264 + opus, ≥ 1.5 s", p["codecs"] == ["h264", "opus"] and p["duration"] >= 1.5, f"{p}")
            c.check("killed (-9) mid-clip: ffmpeg decodes it without a message", errs == "", errs[:300])
            size = cut.stat().st_size
            with open(cut, "r+b") as f:
                f.truncate(size - 700)
            shutil.copy(cut, artifacts / "record-torn.mp4")
        # ---- restart on a tmpfs: the repair, then full and read-only --------------------------------
        svc.start()
        ev.close()
        ev = Events(token, "motion,recording,record_error")
        if current:
            fixed = cut.stat().st_size
            errs = decode_errors(cut)
            p = probe(cut)
            c.check("restart: the torn clip is cut back to whole fragments and reads without errors",
                    fixed < size - 700 and errs == "" and p["duration"] >= 1.0, f"{size} → {size - 700} → {fixed} bytes; {p['duration']:.2f} s; {errs[:200]}")
        # ---- stopped (SIGTERM) mid-clip: closed with the length its fragments hold -------------------
        quiet(api, ev)
        api.moving(True)
        ev.wait(is_motion("start"), 4.0)
        time.sleep(2.5)
        current = [x for x in api.clips() if x["recording"]]
        svc.stop()
        if current:
            m = re.search(rf"recording: saved {re.escape(current[0]['name'])} \((\d+) ms", svc.log_text())
            ms = int(m.group(1)) if m else None
            p = probe(rec_dir / current[0]["name"])
            c.check("stopped mid-clip: the clip is saved with its real length, not 0 ms (the log, ffprobe)",
                    ms is not None and ms >= 1500 and abs(ms / 1000 - p["duration"]) < 1.0, f"log {ms} ms, ffprobe {p['duration']:.2f} s")
        else:
            c.check("stopped mid-clip: a clip was being written", False, "no clip recording 2.5 s after motion started")
        tmp = work / "tmpfs"
        tmp.mkdir()
        r = sh("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "peercam-nvr-rec", str(tmp))
        if r.returncode != 0:
            c.check("tmpfs mounted (run.sh: unshare --mount)", False, r.stderr.strip())
            return
        mounts.append(tmp)
        fill(tmp)
        svc.config_path.write_text(peercam_service.to_toml(config(digest, {"dir": str(tmp)}, state)))
        svc.start()
        ev.close()
        ev = Events(token, "motion,recording,record_error")
        quiet(api, ev)
        api.moving(True)
        _, err = ev.wait(is_error, 6.0)
        c.check("full folder → a record_error event naming the folder", err is not None and str(tmp) in err.get("dir", ""), json.dumps(err))
        r = api.call("GET", "/api/recordings")
        c.check("… and the service keeps serving", svc.alive() and r.status == 200, str(r.status))
        api.moving(False)
        ev.wait(is_motion("end"), 4.0)
        os.remove(tmp / "filler")
        time.sleep(PRE + 1.2)
        _, _, saved3 = one_clip(c, api, ev, 1.0, "space back")
        c.check("space back → the next clip is saved", saved3 is not None and (tmp / saved3["name"]).exists(), json.dumps(saved3))
        r = sh("mount", "-o", "remount,ro", str(tmp))
        quiet(api, ev)
        api.moving(True)
        _, err = ev.wait(is_error, 8.0)
        c.check("read-only folder → record_error", r.returncode == 0 and err is not None, f"{r.stderr.strip()} {json.dumps(err)}")
        api.moving(False)
        time.sleep(0.5)
        c.check("the service is still running", svc.alive())

        # ---- delete -------------------------------------------------------------------------------------
        sh("mount", "-o", "remount,rw", str(tmp))
        if saved3:
            n3 = saved3["name"]
            r = api.call("DELETE", f"/api/recordings/{n3}", auth=False)
            c.check("DELETE without credentials → 401", r.status == 401, str(r.status))
            r = api.call("DELETE", f"/api/recordings/{n3}")
            c.check("DELETE with the token → 204, the file is gone", r.status == 204 and not (tmp / n3).exists(), str(r.status))
            r = api.call("DELETE", f"/api/recordings/{n3}")
            c.check("DELETE again → 404", r.status == 404, str(r.status))
        r = api.call("DELETE", "/api/recordings/..%2F..%2Fetc%2Fpasswd")
        c.check("DELETE of a path → 400/404", r.status in (400, 404), str(r.status))
        panics = [line for line in svc.lines if "panicked" in line]
        c.check("record: no panic in the service log", not panics, "; ".join(panics[:3]))
    finally:
        if ev:
            ev.close()
        svc.stop()
        for m in mounts:
            sh("umount", "-l", str(m))
        shutil.rmtree(work, ignore_errors=True)
