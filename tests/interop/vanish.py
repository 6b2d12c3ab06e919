#!/usr/bin/env python3
"""A viewer that vanishes (its process is SIGKILLed: no DELETE, no DTLS close) must not hold a
session forever: the service frees it when ICE consent fails — within 30 s (issue 2), in practice
about `peer_timeout_s` (10 s). A second viewer keeps watching meanwhile.

Run inside a loopback-only namespace (tests/interop/run.sh)."""

import asyncio
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peercam_interop as pi  # noqa: E402

NAME = "vanish"

CHILD = """
import asyncio, sys
sys.path.insert(0, {here!r})
import peercam_interop as pi
asyncio.run(pi.whep_receive({base!r}, duration=120, delete=False))
"""


def viewers(base: str):
    s, _ = pi.get_settings(base)
    return None if s is None else s.get("viewers")


def main() -> int:
    c = pi.Checker(NAME)
    pi.require_netns_or_warn(c)
    try:
        svc = pi.Service(NAME).__enter__()
    except RuntimeError as e:
        c.check("service starts", False, str(e))
        return c.summary()
    child = None
    try:
        base = svc.url
        here = os.path.dirname(os.path.abspath(__file__))
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(here=here, base=base)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and viewers(base) != 1:
            time.sleep(0.2)
        c.check("the doomed viewer is connected", viewers(base) == 1, f"viewers={viewers(base)}")
        time.sleep(2)  # media flowing
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        killed = time.monotonic()
        while time.monotonic() - killed < 35 and viewers(base) != 0:
            time.sleep(0.25)
        freed_after = time.monotonic() - killed
        c.check("session freed within 30 s of the peer vanishing", viewers(base) == 0 and freed_after < 30,
                f"viewers={viewers(base)} after {freed_after:.1f} s")
        # The service is fine afterwards: a new viewer decodes.
        res = asyncio.run(pi.whep_receive(base, duration=2.0))
        c.check("a new viewer still decodes video afterwards", res.video_frames >= 30,
                f"{res.video_frames} frames")
        c.check("service still running", svc.alive(), "" if svc.alive() else svc.log_tail())
    except Exception as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        c.check("test ran without exception", False, f"{type(e).__name__}: {e}")
    finally:
        if child and child.poll() is None:
            child.kill()
        svc.stop()
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
