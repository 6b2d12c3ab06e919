#!/usr/bin/env python3
"""Bad input on the WHEP endpoint: each must be a 4xx with a non-empty message, none may hurt the
service, and afterwards a valid aiortc WHEP session still decodes and /api/settings answers.

Plain HTTP (stdlib http.client) for the bad requests; the final valid session reuses the aiortc
client of peercam_interop. Starts the service itself like whep_aiortc.py (or set PEERCAM_URL to
use one that is already running). Run inside a loopback-only namespace (tests/interop/run.sh).
"""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peercam_interop as pi  # noqa: E402

NAME = "bad_input"
MAX_BODY = 64 * 1024


def fixture(name: str) -> bytes:
    return (pi.FIXTURES / name).read_bytes()


def cases() -> list[tuple[str, str, str, bytes, dict]]:
    """(label, method, path, body, headers)"""
    sdp_headers = {"Content-Type": "application/sdp"}
    valid = fixture("chromium_recvonly.sdp")
    # Over 64 KiB but otherwise a valid offer: extra attribute lines at the end of the last
    # media section, so only the size is wrong.
    pad_line = b"a=x-padding:" + b"p" * 100 + b"\r\n"
    oversized = valid + pad_line * ((MAX_BODY - len(valid)) // len(pad_line) + 40)
    assert len(oversized) > MAX_BODY
    return [
        ("malformed SDP (not SDP at all)", "POST", "/whep", b"this is not an SDP offer\r\n", sdp_headers),
        ("malformed SDP (truncated Chromium offer, 300 bytes)", "POST", "/whep", valid[:300], sdp_headers),
        ("malformed SDP (binary garbage)", "POST", "/whep", bytes(range(256)) * 4, sdp_headers),
        ("empty body", "POST", "/whep", b"", sdp_headers),
        (f"body over 64 KiB ({len(oversized)} bytes, else valid)", "POST", "/whep", oversized, sdp_headers),
        ("wrong Content-Type text/plain (valid offer)", "POST", "/whep", valid, {"Content-Type": "text/plain"}),
        ("offer without H.264 (chromium_vp8_only.sdp)", "POST", "/whep", fixture("chromium_vp8_only.sdp"),
         sdp_headers),
        ("DELETE /whep/does-not-exist", "DELETE", "/whep/does-not-exist", None, {}),
    ]


async def final_session(c: pi.Checker, base: str) -> None:
    res = await pi.whep_receive(base, duration=2.0)
    c.check("valid aiortc WHEP offer after the bad ones -> 201", res.status == 201,
            f"{res.status} {res.reason} {res.error}")
    if res.status == 201:
        expected = pi.FPS * 2
        # A liveness check (the frame rate is whep_aiortc's job): half the frames, no error.
        c.check("and it decodes video (>= 50% of 30 fps x 2 s, no decode error)",
                res.video_frames >= 0.5 * expected and not res.aiortc_decode_errors and not res.ffmpeg_errors,
                f"{res.video_frames}/{expected} frames, {len(res.aiortc_decode_errors)} aiortc + "
                f"{len(res.ffmpeg_errors)} FFmpeg errors, first frame {res.first_frame_ms:.0f} ms after POST")
        c.check("and DELETE -> 200/204", res.delete_status in (200, 204), str(res.delete_status))


def main() -> int:
    c = pi.Checker(NAME)
    pi.require_netns_or_warn(c)
    try:
        svc = pi.Service(NAME).__enter__()
    except RuntimeError as e:
        c.check("service starts and prints 'listening on http://'", False, str(e))
        return c.summary()
    try:
        base = svc.url
        for label, method, path, body, headers in cases():
            r = pi.http_request(method, base + path, body, headers)
            msg = r.text().strip()
            ok = 400 <= r.status < 500 and bool(msg)
            c.check(f"{label} -> 4xx with a message", ok,
                    f"{method} {path} -> {r.status or r.error} {r.reason} {msg[:200]!r}")
            if not svc.alive():
                c.check(f"service survives: {label}", False, "exited:\n" + svc.log_tail())
                break
        settings, r = pi.get_settings(base)
        c.check("GET /api/settings still 200 JSON", settings is not None,
                f"{r.status or r.error} {r.text()[:200]!r}")
        if settings is not None:
            c.check("no session left behind by the rejected offers (viewers == 0)",
                    settings.get("viewers") == 0, f"viewers={settings.get('viewers')!r}")
        asyncio.run(final_session(c, base))
        settings, r = pi.get_settings(base)
        c.check("GET /api/settings at the end -> 200 JSON", settings is not None,
                f"{r.status or r.error}; viewers={settings.get('viewers') if settings else None!r}")
        c.check("service still running", svc.alive(), "" if svc.alive() else svc.log_tail())
    except Exception as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        c.check("test ran without exception", False, f"{type(e).__name__}: {e}")
    finally:
        rc = svc.stop()
        if rc is not None:
            c.info(f"service stopped, exit code {rc}; log: {svc.log_path}")
    if c.failed:
        print(f"--- last service log lines ({svc.log_path}) ---\n{svc.log_tail(40)}", flush=True)
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
