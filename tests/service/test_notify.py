#!/usr/bin/env python3
"""systemd notify protocol (issue 5): Type=notify READY=1 once the sockets are bound, WATCHDOG=1
keep-alives at WATCHDOG_USEC/2 only while the capture thread runs, STOPPING=1 on SIGTERM.

We play systemd: a unix datagram socket whose path goes into NOTIFY_SOCKET (a file path, and in a
second variant an abstract '@name' as systemd uses in containers). PEERCAM_FAULT_STALL_CAPTURE_AFTER_MS
wedges the capture thread to show that a hung camera stops the keep-alives (and systemd would then
restart the service). Run through tests/service/run.sh. Stdlib only.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

from svc import BASE_CONFIG, Checker, Service, assert_loopback_only, load_note, merge, request

c = Checker("notify")
HTTP_PORT, UDP_PORT = 18446, 18491
WATCHDOG_USEC = 1_000_000
# The service withholds the keep-alive once the capture thread has not looped for this long
# (src/pipeline: STALL_LIMIT), whatever WATCHDOG_USEC is.
STALL_LIMIT_S = 3.0


class NotifySocket:
    """Receives sd_notify datagrams; records (seconds since `t0`, line) for each state line."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.events: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic() - self.t0
            for line in data.decode("utf-8", "replace").splitlines():
                if line:
                    self.events.append((now, line))

    def times(self, line: str) -> list[float]:
        return [t for t, l in list(self.events) if l == line]

    def wait_for(self, line: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ts = self.times(line)
            if ts:
                return ts[0]
            time.sleep(0.01)
        return None

    def close(self):
        self._stop = True
        self._thread.join(1)
        self.sock.close()


def config(work: Path) -> dict:
    return merge(BASE_CONFIG, {"http": {"listen": f"127.0.0.1:{HTTP_PORT}", "tls": False, "state_dir": str(work / "state")},
                               "webrtc": {"udp_port": UDP_PORT}})


def healthy_run(work: Path, address: str, env_value: str, label: str) -> None:
    ns = NotifySocket(address)
    svc = Service(f"notify-{label.split()[0]}", config(work), env={"NOTIFY_SOCKET": env_value, "WATCHDOG_USEC": str(WATCHDOG_USEC)},
                  workdir=work)
    try:
        ns.t0 = time.monotonic()
        svc.start(wait_ready=False)
        ready = ns.wait_for("READY=1", 15)
        c.check(f"[{label}] READY=1 arrives", ready is not None,
                f"{ready * 1000:.0f} ms after spawn" if ready is not None else
                f"nothing in 15 s; got {ns.events[:5]}; log tail: {svc.lines[-3:]}")
        if ready is None:
            return
        # READY must mean "you can connect now".
        r = request("GET", f"http://127.0.0.1:{HTTP_PORT}/api/settings")
        c.check(f"[{label}] the HTTP socket accepts requests once READY=1 was sent", r.status in (200, 401, 303), str(r))
        c.check(f"[{label}] exactly one READY=1", len(ns.times("READY=1")) == 1, f"{len(ns.times('READY=1'))}")
        time.sleep(max(0.0, ready + 3.0 - (time.monotonic() - ns.t0)))
        beats = [t - ready for t in ns.times("WATCHDOG=1") if ready <= t <= ready + 3.0]
        gaps = [round(b - a, 2) for a, b in zip(beats, beats[1:])]
        c.check(f"[{label}] >= 2 WATCHDOG=1 within 3 s of READY=1 (WATCHDOG_USEC={WATCHDOG_USEC})", len(beats) >= 2,
                f"{len(beats)} keep-alives at +{', +'.join(f'{b:.2f}' for b in beats)} s; gaps {gaps} s")
        c.check(f"[{label}] keep-alives come at most WATCHDOG_USEC/2 (+0.25 s slack) apart",
                bool(gaps) and max(gaps) <= WATCHDOG_USEC / 2e6 + 0.25 and (beats[0] <= WATCHDOG_USEC / 2e6 + 0.25),
                f"first at +{beats[0]:.2f} s, max gap {max(gaps) if gaps else '-'} s" if beats else "none")
        n_before = len(ns.events)
        rc, took = svc.stop(signal.SIGTERM)
        time.sleep(0.1)
        stopping = [l for _, l in ns.events[n_before:] if l == "STOPPING=1"]
        c.check(f"[{label}] SIGTERM -> STOPPING=1", bool(stopping), f"after SIGTERM: {[l for _, l in ns.events[n_before:]]}")
        c.check(f"[{label}] SIGTERM -> exit 0 (within 2 s)", rc == 0 and took <= 2.0, f"exit {rc} after {took:.2f} s")
        other = sorted({l.split('=')[0] for _, l in ns.events} - {"READY", "WATCHDOG", "STOPPING", "STATUS", "MAINPID"})
        c.check(f"[{label}] only known notify states were sent", not other, f"unexpected {other}")
    finally:
        svc.close()
        ns.close()


def stalled_run(work: Path, address: str) -> None:
    stall_ms = 1500
    window = 9.0
    ns = NotifySocket(address)
    svc = Service("notify-stall", config(work), workdir=work,
                  env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(WATCHDOG_USEC),
                       "PEERCAM_FAULT_STALL_CAPTURE_AFTER_MS": str(stall_ms)})
    try:
        ns.t0 = time.monotonic()
        svc.start(wait_ready=False)
        ready = ns.wait_for("READY=1", 15)
        c.check("[stall] READY=1 arrives", ready is not None, f"{(ready or 0) * 1000:.0f} ms after spawn")
        time.sleep(max(0.0, window - (time.monotonic() - ns.t0)))
        beats = ns.times("WATCHDOG=1")
        c.info(f"keep-alives at +{', +'.join(f'{t:.2f}' for t in beats)} s after spawn; capture stalls at "
               f"+{stall_ms / 1000:.1f} s, the service's stall limit is {STALL_LIMIT_S:.0f} s")
        before = [t for t in beats if t <= stall_ms / 1000]
        c.check("[stall] keep-alives arrive before the capture thread stalls", len(before) >= 1,
                f"{len(before)} before +{stall_ms / 1000:.1f} s")
        last = max(beats) if beats else 0.0
        # Expected end: stall + stall limit + one period (+ slack for a loaded machine).
        bound = stall_ms / 1000 + STALL_LIMIT_S + WATCHDOG_USEC / 2e6 + 0.6
        c.check(f"[stall] keep-alives stop after the stall (last by +{bound:.1f} s)", last <= bound,
                f"last at +{last:.2f} s")
        quiet = [t for t in beats if t > window - 3.0]
        c.check(f"[stall] no keep-alive in the last 3 s of the {window:.0f} s window", not quiet,
                f"{len(quiet)} in (+{window - 3:.0f}, +{window:.0f}] s")
        log = svc.log_text()
        n = log.count("withholding the watchdog keep-alive")
        line = next((l for l in svc.lines if "withholding" in l), "")
        c.check("[stall] the log says once why the keep-alive is withheld", n == 1, f"{n}x: {line.strip()[:160]}")
        c.check("[stall] the service is still running (systemd, not the service, decides to restart)",
                svc.proc is not None and svc.proc.poll() is None)
        n_before = len(ns.events)
        rc, took = svc.stop(signal.SIGTERM)
        time.sleep(0.1)
        c.check("[stall] SIGTERM with a wedged capture thread -> STOPPING=1 and exit 0 within 2 s",
                "STOPPING=1" in [l for _, l in ns.events[n_before:]] and rc == 0 and took <= 2.0,
                f"exit {rc} after {took:.2f} s; states {[l for _, l in ns.events[n_before:]]}")
    finally:
        svc.close()
        ns.close()


def no_socket_run(work: Path) -> None:
    """Without NOTIFY_SOCKET (a plain start from a shell) nothing breaks; with a NOTIFY_SOCKET
    nobody listens on, the service must still start."""
    svc = Service("notify-none", config(work), workdir=work,
                  env={"NOTIFY_SOCKET": str(work / "nobody-listens"), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        svc.start()
        time.sleep(1.5)
        r = request("GET", f"http://127.0.0.1:{HTTP_PORT}/api/settings")
        c.check("NOTIFY_SOCKET nobody listens on: the service starts and serves", r.status == 200 and svc.proc.poll() is None,
                str(r))
    finally:
        rc, took = svc.stop()
        c.check("NOTIFY_SOCKET nobody listens on: SIGTERM -> exit 0", rc == 0, f"exit {rc} after {took:.2f} s")
        svc.close()


def main() -> int:
    assert_loopback_only()
    load_note(c)
    with tempfile.TemporaryDirectory(prefix="peercam-notify-") as d:
        work = Path(d)
        path = str(work / "notify.sock")
        runs = [
            lambda: healthy_run(work, path, path, "path socket"),
            # systemd passes '@name' for an abstract socket (sd_notify(3)); the kernel name starts with NUL.
            lambda: healthy_run(work, f"\0peercam-test-{os.getpid()}", f"@peercam-test-{os.getpid()}", "abstract @socket"),
            lambda: stalled_run(work, str(work / "stall.sock")),
            lambda: no_socket_run(work),
        ]
        for run in runs:
            try:
                run()
            except Exception as e:  # noqa: BLE001
                import traceback
                c.check("run finished", False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    return c.summary()


if __name__ == "__main__":
    raise SystemExit(main())
