#!/usr/bin/env python3
"""Soak (issue 17): viewer churn against the release build, its resources sampled over time.

For SOAK_MINUTES (tests/soak/run.sh: 3 in `make test`, 30 in `make soak`), 4 to 8 headless
clients are connected at any time (the target moves every 20 s), each living 8-25 s, of four kinds
(aiortc for WebRTC, tests/lib/peerjs_client.py for PeerJS signaling):
  whep        WHEP session with a `control` channel: get_settings, set_name, chat; half of them
              send a tone and take the speaker (talk request ... release: talk-back on/off); DELETE
  whep-bare   WHEP session without control channel; one in three leaves without DELETE (a
              vanished viewer: the device must notice and free it)
  peerjs-call PeerJS media call to the device (video + talk-back audio); hangs up as peerjs 1.5
              does (closes, no LEAVE) or with a LEAVE
  peerjs-data PeerJS data connection (json serialization): control requests every 2 s
Each client checks what it got (video frames decoded, replies to every request).

Sampled every SOAK_SAMPLE_S (15 s): the service's RSS, open file descriptors, threads
(/proc/<pid>), its clients' TCP connections open at that instant and the live sessions (`viewers`
of /api/settings). Judged on one-minute means (a single reading swings with the churn: 5 to 13
live sessions, the allocator giving memory back in steps): after the warm-up (SOAK_WARMUP_S: 60 s
in short runs, 300 s from 10 min up) the minute means of RSS and of fds without the client
connections and the talk-back speaker's PCM (2 fds, open only while someone talks) stay within
+-10 % of their median, threads at most 10 % (or THREAD_SLACK = 2 threads, whichever is more)
above theirs (threads made on demand dip below it), and the last third of RSS and
fds is not more than 10 % above the first (25 % for RSS in runs under 10 minutes, which can only
catch a gross leak: see GROWTH_BAND); after the last client leaves, every session is freed (0
viewers, and the service's log ended every session it started), the fds come back to within 3 of
the count before the first client and the threads to within THREAD_SLACK of it (threads are judged
for leaks there, not by their drift during the churn: see THREAD_SLACK); client failures <= 5 %;
no panic.

Writes <SOAK_OUT>/soak.csv, soak.md and soak.png (gnuplot). Runs in a loopback-only network
namespace (run.sh); talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "interop"))
sys.path.insert(0, str(REPO / "tests" / "lib"))
import peercam_interop as pi  # noqa: E402
from peercam_service import Service  # noqa: E402
from peerjs_client import PeerJsPeer, data_offer_extra, media_offer_extra, random_id  # noqa: E402

MINUTES = float(os.environ.get("SOAK_MINUTES", "3"))
LONG = MINUTES >= 10
SAMPLE_S = float(os.environ.get("SOAK_SAMPLE_S", "15"))
# What is judged: the mean of the samples of the last minute, at every sample. One reading is
# noisy — the live sessions swing between ~5 and ~13 with the churn, and the allocator gives
# memory back in steps — and a leak shows in the minute means all the same.
WINDOW = max(1, round(60 / SAMPLE_S))
WARMUP_S = float(os.environ.get("SOAK_WARMUP_S", "300" if LONG else "60"))
OUT = Path(os.environ.get("SOAK_OUT", str(HERE / "artifacts")))
MIN_CLIENTS, MAX_CLIENTS = 4, 8
LIFE_S = (8.0, 25.0)
BAND = 0.10
# Growth (last third of the minute means vs the first) in a long run is judged against BAND; a
# 3-minute run cannot tell a slow leak from the allocator settling. Its heap (RssAnon; the
# binary's pages, RssFile, are flat from the first clients on) climbs for the first 2-4 minutes of
# churn towards a plateau and then stays there: the 30-minute run rose +1 MiB/min in its first 3
# minutes and +0.1 MiB/min after the warm-up, and came back down later (39.2 MiB after the drain
# vs a 41 MiB peak), which a leak does not. Short runs in CI and here read +6.3..+10.9 % (the
# CI run on 9180a04 failed at 10 %). So a short run is judged for a gross leak only: 25 % of
# ~38 MiB is ~9.5 MiB over the ~45 sessions of the judged window, ~200 KiB per session (a
# session's whole state is ~1 MiB). Slow leaks are the 30-minute run's to find (`make soak`).
GROWTH_BAND = BAND if LONG else 0.25
# Threads are a small count (~13) that tokio's blocking pool moves by one or two as it makes and
# retires threads on demand: 10 % of 13 is 1.3 threads, so a 3-minute run read 12.8 -> 14.5 as
# "+13.7 % growth" on a flat service (CI, 2026-12-02). Their drift during the churn follows how
# many sessions happened to start together lately (each start is a blocking task; an idle blocking
# thread lives 10 s): another CI run read 12.5 -> 14.8 (+18 %) and went back to the start's count
# after the drain. So a leak is judged after the drain: once the last client has gone and the pool's
# idle threads have retired, the service has as many threads as before the first client (+ this
# slack). A thread leaked by even one session in twenty would leave more than that.
THREAD_SLACK = 2
# tokio retires an idle blocking thread after 10 s; the drain waits that long and a little more.
BLOCKING_KEEP_ALIVE_S = 10
PORT, UDP_PORT = 18096, 18196
DEVICE_ID = "peercam"
SEED = int(os.environ.get("SOAK_SEED", str(int(time.time()))))

c = pi.Checker("soak")


class Tally:
    def __init__(self):
        self.started = Counter()
        self.ok = Counter()
        self.failed = Counter()
        self.reasons: deque = deque(maxlen=30)
        self.active = 0
        self.frames = 0
        self.replies = 0

    def done(self, kind: str, ok: bool, why: str = "") -> None:
        (self.ok if ok else self.failed)[kind] += 1
        if not ok:
            self.reasons.append(f"{kind}: {why}")


T = Tally()


def status_kib(pid: int) -> dict[str, int]:
    """The numbers of /proc/<pid>/status by name (VmRSS, RssAnon, RssFile in KiB; Threads)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "Threads"):
            out[name] = int(rest.split()[0])
    return out


def proc_numbers(pid: int) -> tuple[int, int, int]:
    """(RSS KiB, open fds, threads) of a process."""
    st = status_kib(pid)
    return st.get("VmRSS", 0), len(os.listdir(f"/proc/{pid}/fd")), st.get("Threads", 0)


def fd_kinds(pid: int) -> Counter:
    """What the process's fds are: a path, `anon_inode:[eventfd]`-style kinds, or a socket by its
    table (tcp/udp/unix, tcp listening as `tcp-listen`). The sampler prints the kinds beyond those
    at the start, so a count that moves says what moved. `socket:tcp` are the clients' HTTP
    requests and PeerJS WebSockets open at this instant: they come and go with the churn (one or
    two per client), so the flatness check uses fds without them; that none is left is the drain
    check's job."""
    tables: dict[str, str] = {}
    for table in ("tcp", "tcp6", "udp", "udp6", "unix"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if table == "unix" and len(cols) >= 7:
                tables[cols[6]] = "unix"
            elif len(cols) > 9:
                tables[cols[9]] = table.rstrip("6") + ("-listen" if table.startswith("tcp") and cols[3] == "0A" else "")
    kinds: Counter = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            target = f"socket:{tables.get(target[8:-1], '?')}"
        kinds[target] += 1
    return kinds


def viewers(base: str) -> int:
    s, r = pi.get_settings(base)
    return int(s["viewers"]) if s else -1


# ---- the clients ------------------------------------------------------------------------------

def new_pc():
    from aiortc import RTCConfiguration, RTCPeerConnection
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def count_video(pc, counter: list) -> None:
    @pc.on("track")
    def _track(track):
        if track.kind != "video":
            return

        async def read():
            while True:
                try:
                    await track.recv()
                except Exception:  # noqa: BLE001 - the track ended
                    return
                counter[0] += 1
                T.frames += 1
        asyncio.ensure_future(read())


class Requests:
    """Control requests over a data channel, replies matched by id. `binary`: send JSON as a
    binary message (PeerJS `json` serialization), else as text (the page's control channel)."""

    def __init__(self, dc, binary: bool):
        self.dc, self.binary = dc, binary
        self.waiting: dict = {}
        self.next = 1
        self.open = asyncio.Event()
        dc.on("open", self.open.set)

        @dc.on("message")
        def _msg(m):
            try:
                obj = json.loads(m if isinstance(m, str) else bytes(m).decode())
            except ValueError:
                return
            if obj.get("type") == "reply":
                fut = self.waiting.pop(obj.get("id"), None)
                if fut and not fut.done():
                    fut.set_result(obj)

    async def ask(self, body: dict, timeout: float = 8.0) -> dict:
        rid = self.next
        self.next += 1
        fut = asyncio.get_event_loop().create_future()
        self.waiting[rid] = fut
        text = json.dumps({"v": 1, "id": rid, **body})
        self.dc.send(text.encode() if self.binary else text)
        r = await asyncio.wait_for(fut, timeout)
        T.replies += 1
        return r


async def whep(base: str, life: float, control: bool, talk: bool, vanish: bool) -> tuple[bool, str]:
    from aiortc import RTCSessionDescription
    pc = new_pc()
    frames = [0]
    count_video(pc, frames)
    pc.addTransceiver("video", direction="recvonly")
    if talk:
        pc.addTrack(pi.ToneTrack())
    else:
        pc.addTransceiver("audio", direction="recvonly")
    req = Requests(pc.createDataChannel("control", ordered=True), binary=False) if control else None
    location = ""
    try:
        await pc.setLocalDescription(await pc.createOffer())
        r = await asyncio.to_thread(pi.http_request, "POST", base + "/whep", pc.localDescription.sdp.encode(),
                                    {"Content-Type": "application/sdp"})
        if r.status != 201:
            return False, f"POST /whep -> {r.status} {r.text()[:120]!r}"
        location = base + r.headers.get("location", "")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text(), type="answer"))
        t0 = time.monotonic()
        if req:
            await asyncio.wait_for(req.open.wait(), 10)
            for body in ({"type": "get_settings"}, {"type": "set_name", "name": random_id("soak-")[:20]},
                         {"type": "chat", "text": "soak"}):
                r = await req.ask(body)
                if not r.get("ok"):
                    return False, f"{body['type']} refused: {r}"
            if talk:
                await asyncio.sleep(life / 3)
                r = await req.ask({"type": "talk", "action": "request"})
                # Busy (someone else talks) is a valid answer too.
                if not (r.get("ok") or (r.get("error") or {}).get("code") == "busy"):
                    return False, f"talk request: {r}"
                await asyncio.sleep(life / 3)
                await req.ask({"type": "talk", "action": "release"})
        await asyncio.sleep(max(0.0, life - (time.monotonic() - t0)))
        if frames[0] == 0:
            return False, f"no video frame in {life:.0f} s"
        return True, ""
    finally:
        if location and not vanish:
            await asyncio.to_thread(pi.http_request, "DELETE", location)
        await pc.close()


async def peerjs_call(life: float, leave: bool) -> tuple[bool, str]:
    from aiortc import RTCSessionDescription
    peer = await PeerJsPeer("127.0.0.1", PORT).open()
    pc = new_pc()
    frames = [0]
    count_video(pc, frames)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTrack(pi.ToneTrack())  # a call's microphone: talk-back when the speaker is free
    try:
        await pc.setLocalDescription(await pc.createOffer())
        cid = random_id("mc_")
        ans = await peer.offer(DEVICE_ID, pc.localDescription.sdp, "media", cid, **media_offer_extra())
        if not ans or ans.get("type") != "ANSWER":
            return False, f"call {cid}: {ans}"
        await pc.setRemoteDescription(RTCSessionDescription(sdp=ans["payload"]["sdp"]["sdp"], type="answer"))
        await asyncio.sleep(life)
        if frames[0] == 0:
            return False, f"call: no video frame in {life:.0f} s"
        return True, ""
    finally:
        await pc.close()
        await peer.close(leave_to=DEVICE_ID if leave else None)


async def peerjs_data(life: float) -> tuple[bool, str]:
    from aiortc import RTCSessionDescription
    peer = await PeerJsPeer("127.0.0.1", PORT).open()
    pc = new_pc()
    cid = random_id("dc_")
    req = Requests(pc.createDataChannel(cid, ordered=True), binary=True)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        ans = await peer.offer(DEVICE_ID, pc.localDescription.sdp, "data", cid, **data_offer_extra(cid, "json"))
        if not ans or ans.get("type") != "ANSWER":
            return False, f"data {cid}: {ans}"
        await pc.setRemoteDescription(RTCSessionDescription(sdp=ans["payload"]["sdp"]["sdp"], type="answer"))
        await asyncio.wait_for(req.open.wait(), 10)
        end = time.monotonic() + life
        n = 0
        while time.monotonic() < end:
            body = [{"type": "get_settings"}, {"type": "chat", "text": f"data {n}"},
                    {"type": "set_name", "name": f"d{n}"}][n % 3]
            r = await req.ask(body)
            if not r.get("ok"):
                return False, f"data {body['type']}: {r}"
            n += 1
            await asyncio.sleep(2)
        return True, ""
    finally:
        await pc.close()
        await peer.close()


async def one_client(base: str, rng: random.Random) -> None:
    kind = rng.choice(["whep", "whep", "whep-bare", "peerjs-call", "peerjs-data"])
    life = rng.uniform(*LIFE_S)
    T.started[kind] += 1
    T.active += 1
    try:
        if kind == "whep":
            coro = whep(base, life, control=True, talk=rng.random() < 0.5, vanish=False)
        elif kind == "whep-bare":
            coro = whep(base, life, control=False, talk=False, vanish=rng.random() < 1 / 3)
        elif kind == "peerjs-call":
            coro = peerjs_call(life, leave=rng.random() < 0.5)
        else:
            coro = peerjs_data(life)
        ok, why = await asyncio.wait_for(coro, life + 40)
    except Exception as e:  # noqa: BLE001 - any failure of a client is counted, not fatal
        ok, why = False, f"{type(e).__name__}: {e}"
    finally:
        T.active -= 1
    T.done(kind, ok, why)


async def churn(base: str, until: float, rng: random.Random) -> None:
    tasks: set = set()
    target, retarget = rng.randint(MIN_CLIENTS, MAX_CLIENTS), time.monotonic() + 20
    while time.monotonic() < until:
        if time.monotonic() >= retarget:
            target, retarget = rng.randint(MIN_CLIENTS, MAX_CLIENTS), time.monotonic() + 20
        tasks = {t for t in tasks if not t.done()}
        # Keep at least MIN_CLIENTS connected; grow towards the target, never past MAX_CLIENTS.
        while len(tasks) < max(MIN_CLIENTS, min(target, MAX_CLIENTS)):
            tasks.add(asyncio.ensure_future(one_client(base, rng)))
        await asyncio.sleep(0.5)
    if tasks:
        await asyncio.wait(tasks, timeout=LIFE_S[1] + 60)


# ---- sampling and judging ---------------------------------------------------------------------

START_FD_KINDS: Counter = Counter()


def sample(pid: int, base: str, t: float, phase: str) -> dict:
    st = status_kib(pid)
    rss, anon, file_backed, threads = st.get("VmRSS", 0), st.get("RssAnon", 0), st.get("RssFile", 0), st.get("Threads", 0)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    kinds = fd_kinds(pid)
    conns = kinds["socket:tcp"]
    extra = kinds - START_FD_KINDS
    # The talk-back speaker is open only while someone talks: its ALSA file PCM (asound.conf below)
    # holds /dev/null twice (the file and the null slave). A CI run read that as "+13 % growth" of
    # a count of ~12. It is taken out like the client connections; the drain check sees it closed.
    speaker = max(0, kinds["/dev/null"] - START_FD_KINDS["/dev/null"])
    return {"t_s": round(t, 1), "phase": phase, "rss_kib": rss, "anon_kib": anon, "file_kib": file_backed, "fds": fds, "threads": threads,
            "viewers": viewers(base), "clients": T.active, "clients_started": sum(T.started.values()),
            "client_conns": conns, "speaker_fds": speaker, "base_fds": fds - conns - speaker,
            "extra_fds": " ".join(f"{k}x{n}" for k, n in sorted(extra.items()))}


async def sampler(svc: Service, base: str, t0: float, churn_until: float, rows: list, stop: asyncio.Event) -> None:
    while not stop.is_set():
        # After the churn's end the last clients finish one by one: not part of the verdict.
        phase = "churn" if time.monotonic() < churn_until else "wind-down"
        row = await asyncio.to_thread(sample, svc.proc.pid, base, time.monotonic() - t0, phase)
        rows.append(row)
        c.info(f"t={row['t_s']:.0f}s RSS {row['rss_kib'] / 1024:.1f} MiB (anon {row['anon_kib'] / 1024:.1f}, file {row['file_kib'] / 1024:.1f}), {row['fds']} fds "
               f"({row['client_conns']} client connections), {row['threads']} threads, "
               f"{row['viewers']} viewers, {T.active} clients; fds beyond the start: {row['extra_fds'] or 'none'}")
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_S)
        except asyncio.TimeoutError:
            pass


def band(values: list) -> tuple[float, float, float]:
    """(median, lowest and highest deviation from it as fractions)."""
    med = statistics.median(values)
    return med, min(values) / med - 1, max(values) / med - 1


# The CSV's columns (plot() finds its columns here by name).
# anon_kib / file_kib: RssAnon (heap, stacks) and RssFile (the binary's and libraries' pages).
FIELDS = ["t_s", "phase", "rss_kib", "anon_kib", "file_kib", "fds", "threads", "viewers", "clients", "clients_started",
          "client_conns", "speaker_fds", "base_fds", "extra_fds"]


def plot(csv_path: Path, png: Path, warmup: float) -> str:
    if not shutil.which("gnuplot"):
        return "gnuplot not installed (scripts/install-deps.sh installs gnuplot-nox): no PNG"
    col = {name: i + 1 for i, name in enumerate(FIELDS)}   # gnuplot counts columns from 1
    script = f"""
set terminal pngcairo size 1100,700 font ",10"
set output "{png}"
set datafile separator ","
set multiplot layout 2,1 title "peercam soak: {MINUTES:g} min of viewer churn (4-8 clients)"
set xlabel "time (s)"
set grid
set key outside right
set arrow from {warmup},graph 0 to {warmup},graph 1 nohead dt 2 lc rgb "gray"
set ylabel "RSS (MiB)"
set y2label "threads"
set y2tics
set ytics nomirror
plot "{csv_path}" using 1:(${col["rss_kib"]}/1024) skip 1 with linespoints title "RSS MiB", \\
     "" using 1:(${col["anon_kib"]}/1024) skip 1 with linespoints title "of it anon (heap) MiB", \\
     "" using 1:{col["threads"]} skip 1 axes x1y2 with linespoints title "threads"
unset y2label
unset y2tics
set ylabel "count"
plot "{csv_path}" using 1:{col["fds"]} skip 1 with linespoints title "open fds", \\
     "" using 1:{col["base_fds"]} skip 1 with linespoints title "fds without client conns and speaker", \\
     "" using 1:{col["viewers"]} skip 1 with steps title "live sessions", \\
     "" using 1:{col["clients"]} skip 1 with steps title "clients"
unset multiplot
"""
    r = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        # pngcairo may be missing in gnuplot-nox builds: the plain png terminal then.
        r = subprocess.run(["gnuplot"], input=script.replace("pngcairo", "png"), capture_output=True, text=True, timeout=60)
    return "" if r.returncode == 0 else f"gnuplot failed: {r.stderr[-300:]}"


async def main_async(svc: Service) -> dict:
    pi.patch_aioice_loopback()
    base = svc.url
    rng = random.Random(SEED)
    rows: list = []
    start_rss, start_fds, start_threads = proc_numbers(svc.proc.pid)
    START_FD_KINDS.update(fd_kinds(svc.proc.pid))
    c.info(f"fds at start: {' '.join(f'{k}x{n}' for k, n in sorted(START_FD_KINDS.items()))}")
    t0 = time.monotonic()
    rows.append(sample(svc.proc.pid, base, 0.0, "start"))
    stop = asyncio.Event()
    sampling = asyncio.ensure_future(sampler(svc, base, t0, t0 + MINUTES * 60, rows, stop))
    await asyncio.sleep(0.1)
    await churn(base, t0 + MINUTES * 60, rng)
    stop.set()
    await sampling
    churn_end = time.monotonic()
    # Every session freed: the vanished ones after [webrtc] peer_timeout_s (10 s) and ICE.
    drained = None
    while time.monotonic() - churn_end < 60:
        rss, fds, threads = proc_numbers(svc.proc.pid)
        v = await asyncio.to_thread(viewers, base)
        if v == 0 and fds <= start_fds + 3:
            drained = time.monotonic() - churn_end
            break
        await asyncio.sleep(1)
    # Then the threads: the blocking pool's idle ones retire BLOCKING_KEEP_ALIVE_S after their last
    # task (bounded: 30 s more at most).
    settle_end = time.monotonic() + BLOCKING_KEEP_ALIVE_S + 20
    while time.monotonic() < settle_end:
        if proc_numbers(svc.proc.pid)[2] <= start_threads + THREAD_SLACK:
            break
        await asyncio.sleep(1)
    rows.append(await asyncio.to_thread(sample, svc.proc.pid, base, time.monotonic() - t0, "after"))
    return {"rows": rows, "start": (start_rss, start_fds, start_threads), "drained": drained}


def main() -> int:
    pi.require_netns_or_warn(c)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="peercam-soak-"))
    # Talk-back goes to a real alsa-lib PCM (docs/test-rigs.md, rig 2) that writes to /dev/null.
    (tmp / "asound.conf").write_text('pcm.peercam_soak_speaker {\n  type file\n  slave.pcm { type null }\n'
                                     '  file "/dev/null"\n  format "raw"\n}\n')
    config = {
        "http": {"listen": f"127.0.0.1:{PORT}"},
        # Small frames keep the 2-core machine's decoding (aiortc, up to 8 clients) light.
        "video": {"source": "testsrc", "width": 320, "height": 240, "fps": 15, "bitrate_kbps": 300},
        "audio": {"source": "tone"},
        "webrtc": {"udp_port": UDP_PORT, "include_loopback": True, "max_viewers": 16},
        "speaker": {"device": "peercam_soak_speaker", "volume_percent": 100},
    }
    c.info(f"{MINUTES:g} min, a sample every {SAMPLE_S:g} s, warm-up {WARMUP_S:g} s, seed {SEED}")
    started = time.monotonic()
    with Service("soak", config, env={"ALSA_CONFIG_PATH": str(tmp / "asound.conf")}, artifacts=HERE / "artifacts") as svc:
        svc.start()
        result = asyncio.run(main_async(svc))
        alive = svc.alive()
        log = svc.log_text()
    rows = result["rows"]
    csv_path, md_path, png_path = OUT / "soak.csv", OUT / "soak.md", OUT / "soak.png"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)

    churn_rows = [r for r in rows if r["phase"] == "churn"]
    # One-minute means, at every sample whose minute lies after the warm-up.
    # (The whole minute: a window that reaches back into the warm-up averaged the ramp-up in and
    # read as 11 % growth on a flat service.)
    post = [i for i, r in enumerate(churn_rows) if i + 1 >= WINDOW and churn_rows[i + 1 - WINDOW]["t_s"] >= WARMUP_S]
    lines = []
    c.check(f"at least 4 one-minute means after the warm-up ({WARMUP_S:g} s)", len(post) >= 4, f"{len(post)} values")
    verdicts = {}
    for key, label in (("rss_kib", "RSS"), ("base_fds", "open fds (without client connections and the speaker's PCM)"), ("threads", "threads")):
        vals = [statistics.mean(r[key] for r in churn_rows[i + 1 - WINDOW:i + 1]) for i in post]
        if not vals:
            continue
        med, lo, hi = band(vals)
        third = max(1, len(vals) // 3)
        first, last = statistics.mean(vals[:third]), statistics.mean(vals[-third:])
        growth = last / first - 1
        # Threads are held to the upper half of the band only: some exist only while needed — the
        # talk-back speaker thread while someone talks (opened and closed ~130 times in 30 min),
        # the pipeline's threads while anyone watches — so a quiet minute dips below the median
        # (the first 30-min run: 9.5..13 around 12.5), which is not a leak; growth is.
        allowed = max(BAND, THREAD_SLACK / med) if key == "threads" else BAND
        # Threads' drift is printed, not judged: the drain check below judges their leaks.
        # RSS grows while the allocator settles (see GROWTH_BAND); a count of fds has no such phase.
        growth_band = GROWTH_BAND if key == "rss_kib" else BAND
        ok = (lo >= -BAND or key == "threads") and hi <= allowed and (growth <= growth_band or key == "threads")
        verdicts[label] = ok
        shown = (lambda x: f"{x / 1024:.1f} MiB") if key == "rss_kib" else (lambda x: f"{x:.1f}")
        detail = (f"median {shown(med)}, range {shown(min(vals))}..{shown(max(vals))} ({lo * 100:+.1f} % / {hi * 100:+.1f} %), "
                  f"last third vs first {growth * 100:+.1f} %")
        rule = (f"at most +{BAND * 100:.0f} % or +{THREAD_SLACK} (dips are threads made on demand; drift printed, leaks judged after the drain)" if key == "threads"
                else f"within +-{BAND * 100:.0f} %")
        growth_rule = f", last third at most +{growth_band * 100:.0f} % above the first" + ("" if LONG or key != "rss_kib" else " (a gross leak; slow ones: make soak)")
        c.check(f"{label} flat, {rule} of the median after the warm-up" + ("" if key == "threads" else growth_rule), ok, detail)
        lines.append(f"| {label} | {shown(med)} | {shown(min(vals))} | {shown(max(vals))} | {lo * 100:+.1f} % / {hi * 100:+.1f} % | {growth * 100:+.1f} % | {'PASS' if ok else 'FAIL'} |")
    start_rss, start_fds, start_threads = result["start"]
    after = rows[-1]
    drained = result["drained"]
    c.check("after the last client left: 0 live sessions", after["viewers"] == 0, f"{after['viewers']} viewers")
    c.check("after the last client left: fds back to within 3 of the start", after["fds"] <= start_fds + 3,
            f"{start_fds} at start, {after['fds']} after" + (f" (drained in {drained:.0f} s)" if drained is not None else ""))
    c.check(f"after the last client left: threads back to within {THREAD_SLACK} of the start (idle blocking threads retired)",
            after["threads"] <= start_threads + THREAD_SLACK, f"{start_threads} at start, {after['threads']} after")
    # Every session the device started, it ended (the service's own account, from its log).
    started_n = sum(1 for l in log.splitlines() if re.search(r"session [0-9a-f]+ started", l))
    ended_n = sum(1 for l in log.splitlines() if re.search(r"session [0-9a-f]+ ended", l))
    c.check("the service's log: every session it started has ended", started_n > 0 and started_n == ended_n,
            f"{started_n} started, {ended_n} ended")
    total = sum(T.started.values())
    failed = sum(T.failed.values())
    c.check("clients: at most 5 % failed", total > 0 and failed <= 0.05 * total,
            f"{failed} of {total} failed" + (f"; last: {list(T.reasons)[-3:]}" if failed else ""))
    kinds_ok = all(T.ok[k] > 0 for k in ("whep", "whep-bare", "peerjs-call", "peerjs-data"))
    c.check("every kind of client ran and succeeded at least once", kinds_ok, str(dict(T.ok)))
    c.check("the service ran throughout, no panic", alive and "panicked" not in log,
            "a panic was logged" if "panicked" in log else ("exited" if not alive else ""))
    note = plot(csv_path, png_path, WARMUP_S)
    if note:
        c.info(note)
    duration = time.monotonic() - started

    md = [f"# Soak: {MINUTES:g} minutes of viewer churn",
          "",
          f"`tests/soak/run.sh` (SOAK_MINUTES={MINUTES:g}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"release build, seed {SEED}, load average at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])} "
          f"on {os.cpu_count()} CPUs; the run took {duration / 60:.1f} min.",
          "",
          f"Service: test pattern 320x240 @ 15 fps (300 kbit/s), tone, talk-back into an ALSA file PCM, "
          f"`max_viewers = 16`. Clients: {MIN_CLIENTS}-{MAX_CLIENTS} at once (aiortc + a Python PeerJS client), "
          f"each {LIFE_S[0]:g}-{LIFE_S[1]:g} s; a sample every {SAMPLE_S:g} s; warm-up {WARMUP_S:g} s. "
          f"Judged: the mean of the last minute's samples, at every sample after the warm-up, against the "
          f"median of those means (threads: at most +10 % or +{THREAD_SLACK} threads, as threads made on demand — the talk-back speaker's "
          f"while someone talks — dip below it); fds without the clients' TCP connections open at that instant "
          f"(one or two per client: they come and go with the churn, and the drain check below sees any left) "
          f"and without the talk-back speaker's PCM (2 fds on /dev/null, open only while someone talks). "
          f"Growth: the last third of the means at most +{BAND * 100:.0f} % above the first"
          + ("" if LONG else f" (RSS: +{GROWTH_BAND * 100:.0f} %)")
          + ("." if LONG else " (a short run catches a gross leak only; the allocator settles over the first minutes: see GROWTH_BAND in soak.py)."),
          "",
          "| client | started | ok | failed |", "|---|---|---|---|"]
    for k in ("whep", "whep-bare", "peerjs-call", "peerjs-data"):
        md.append(f"| {k} | {T.started[k]} | {T.ok[k]} | {T.failed[k]} |")
    md += ["", f"{T.frames} video frames decoded by the clients, {T.replies} control replies.", "",
           f"After the warm-up ({len(post)} one-minute means):", "",
           "| | median | min | max | band (vs median) | last third vs first | verdict |", "|---|---|---|---|---|---|---|"] + lines
    md += ["", f"Start (before the first client): RSS {start_rss / 1024:.1f} MiB, {start_fds} fds, {start_threads} threads. "
           f"After the last client left: {after['viewers']} live sessions, RSS {after['rss_kib'] / 1024:.1f} MiB, "
           f"{after['fds']} fds, {after['threads']} threads; the service logged {started_n} sessions started and {ended_n} ended"
           + (f" (sessions and fds back {drained:.0f} s after the churn ended)." if drained is not None else " (not drained within 60 s)."),
           "", f"Verdict: **{'PASS' if c.failed == 0 else 'FAIL'}** ({c.passed} checks passed, {c.failed} failed).", ""]
    if T.reasons:
        md += ["Client failures (last ones):", ""] + [f"- {r}" for r in T.reasons] + [""]
    md += ["Samples: [soak.csv](soak.csv); plot: soak.png.", ""]
    md_path.write_text("\n".join(md))
    c.info(f"wrote {csv_path}, {md_path}" + ("" if note else f", {png_path}"))
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
