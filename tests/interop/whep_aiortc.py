#!/usr/bin/env python3
"""WHEP interop test: aiortc 1.16 (FFmpeg via PyAV) as an independent WHEP client of peercam.

Starts the service itself (PEERCAM_BIN, default <repo>/target/release/peercam, with the temp
config in peercam_interop.CONFIG_TOML: testsrc 640x480@30, tone, loopback candidates), waits for
its `listening on http://` line, and always stops it at the end. Run inside a loopback-only
network namespace: tests/interop/run.sh does that.

Checks: 201 + Location + H.264-only video answer with a 127.0.0.1 candidate; >= 90 % of
fps x 5 s frames decoded by FFmpeg with no decode error; frame size = config; the test pattern's
timestamp code increases and is within 1 s of now (latency printed; aiortc's jitter buffer adds
~1 frame); audio frames arrive and carry the tone; /api/settings counts the viewer; DELETE of the
Location -> 200/204 and `viewers` back to 0 within 2 s.

Env: PEERCAM_BIN / PEERCAM_ARGS / PEERCAM_CMD / PEERCAM_URL (see peercam_interop.Service),
WHEP_DURATION (seconds, default 5).
"""

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peercam_interop as pi  # noqa: E402

NAME = "whep_aiortc"


def check_answer(c: pi.Checker, res: pi.WhepResult) -> None:
    c.check("POST /whep -> 201 Created", res.status == 201,
            f"got {res.status} {res.reason}, POST took {res.post_ms:.1f} ms")
    c.check("Location header", bool(res.location), res.location or "missing")
    c.check("answer Content-Type application/sdp",
            res.content_type.split(";")[0].strip().lower() == "application/sdp",
            repr(res.content_type))
    if res.status != 201:
        c.info(f"response body: {res.answer[:500]!r}")
        return
    c.info("answer: " + pi.describe_answer(res.answer))
    sections = pi.sdp_sections(res.answer)
    video = [(m, l) for m, l in sections if m.startswith("m=video")]
    audio = [(m, l) for m, l in sections if m.startswith("m=audio")]
    vcodecs = pi.sdp_codecs(video[0][1]) if video else {}
    names = {v.split("/")[0].upper() for v in vcodecs.values()}
    c.check("answer video m-line has H264", "H264" in names, ",".join(sorted(names)) or "none")
    media = names - {"RTX", "RED", "ULPFEC", "FLEXFEC-03"}
    c.check("answer video codecs are H264 only (no VP8/VP9/AV1)", media == {"H264"},
            ",".join(sorted(names)))
    if video:
        fmtp = [l for l in video[0][1] if l.startswith("a=fmtp:")]
        c.info("video fmtp: " + " | ".join(fmtp))
        c.check("video m-line direction sendonly", pi.sdp_direction(video[0][1]) == "sendonly",
                pi.sdp_direction(video[0][1]))
    acodecs = {v.split("/")[0].lower() for v in pi.sdp_codecs(audio[0][1]).values()} if audio else set()
    c.check("answer audio m-line has opus", "opus" in acodecs, ",".join(sorted(acodecs)) or "none")
    cands = pi.sdp_candidates(res.answer)
    c.check("answer carries a 127.0.0.1 host candidate (gathering complete)",
            any(" 127.0.0.1 " in x for x in cands), f"{len(cands)} candidates: {cands[:3]}")
    udp_port_ok = any(f" 127.0.0.1 {pi.UDP_PORT} " in x for x in cands)
    c.info(f"candidate on configured udp_port {pi.UDP_PORT}: {udp_port_ok}")


async def main_async(c: pi.Checker, svc: pi.Service) -> None:
    base = svc.url
    fps = pi.FPS
    duration = float(os.environ.get("WHEP_DURATION", "5"))

    settings, r = pi.get_settings(base)
    c.check("GET /api/settings before any viewer -> 200 JSON", settings is not None,
            f"{r.status} {r.error or r.text()[:200]!r}")
    if settings:
        v = settings.get("video", {})
        c.check("settings video = 640x480@30",
                (v.get("width"), v.get("height"), v.get("fps")) == (pi.WIDTH, pi.HEIGHT, fps),
                f"{v.get('width')}x{v.get('height')}@{v.get('fps')}")
        c.check("settings viewers == 0 before", settings.get("viewers") == 0,
                f"viewers={settings.get('viewers')!r}")
        c.info(f"settings: {settings}")

    during: dict = {}

    async def on_connected(_res):
        if svc.proc is not None:
            during["udp_ports"] = pi.udp_ports_of(svc.proc.pid)
        s1, _ = await asyncio.to_thread(pi.get_settings, base)
        await asyncio.sleep(1.0)
        s2, _ = await asyncio.to_thread(pi.get_settings, base)
        during["s1"], during["s2"] = s1, s2

    async def after_delete(res):
        # Poll /api/settings while our peer connection is still open: the DELETE alone must end it.
        t0 = time.monotonic()
        viewers = None
        while time.monotonic() - t0 < 2.0:
            s, _ = await asyncio.to_thread(pi.get_settings, base)
            viewers = s.get("viewers") if s else None
            if viewers == 0:
                break
            await asyncio.sleep(0.1)
        res.after_delete = {"viewers": viewers, "ms": 1000 * (time.monotonic() - t0)}

    res = await pi.whep_receive(base, duration=duration, on_connected=on_connected,
                                after_delete=after_delete)
    check_answer(c, res)
    if res.error:
        c.check("session ran", False, res.error)
    if res.status != 201:
        return

    c.info(f"connection states: {res.connection_states}")
    print(f"TIMING {NAME}: after POST sent: answer {res.post_ms:.0f} ms, connected {res.connected_ms:.0f} ms, "
          f"first video RTP {res.first_rtp_ms:.0f} ms, first keyframe RTP {res.first_keyframe_rtp_ms:.0f} ms, "
          f"first decoded frame {res.first_frame_ms:.0f} ms (captured at {res.first_frame_captured_ms:.0f} ms, "
          f"{res.first_frame_age_ms:.0f} ms old when decoded)", flush=True)
    expected = int(fps * duration)
    c.check(f"decoded >= 90% of {fps} fps x {duration:g} s",
            res.video_frames >= 0.9 * expected,
            f"{res.video_frames}/{expected} frames = {100 * res.video_frames / expected:.1f}% "
            f"in {res.window_s:.2f} s")
    c.check("no decode errors (aiortc decoder thread)", not res.aiortc_decode_errors,
            f"{len(res.aiortc_decode_errors)}: {res.aiortc_decode_errors[:3]}")
    c.check("no FFmpeg errors logged (libav.*)", not res.ffmpeg_errors,
            f"{len(res.ffmpeg_errors)}: {res.ffmpeg_errors[:3]}")
    c.info(f"video RTP packets {res.video_packets}, PLIs sent by aiortc {res.pli_sent}, NACKs {res.nacks_sent}; "
           f"pixel formats {res.formats}")
    c.check("frame size == config 640x480",
            bool(res.sizes) and set(res.sizes) == {(pi.WIDTH, pi.HEIGHT)}, f"sizes {res.sizes}")

    n = res.codes_read + res.code_unreadable
    c.check("timestamp code readable on >= 95% of frames",
            n > 0 and res.codes_read >= 0.95 * n,
            f"{res.codes_read}/{n}, smallest bit margin {res.min_margin:.0f} luma levels")
    if res.codes_read:
        lat = res.latencies_ms
        steps = res.code_steps
        c.check("timestamp code increases frame to frame", res.code_not_increasing == 0,
                f"{res.code_not_increasing} non-increasing steps of {len(steps)}; step ms "
                f"p50 {pi.percentile(steps, 50):.0f} min {min(steps, default=0)} max {max(steps, default=0)}; "
                f"longest gap between decoded frames {res.max_gap_ms:.0f} ms")
        for a in res.code_anomalies[:5]:
            c.info("non-increasing code: " + a)
        c.check("timestamp code within 1 s of now", all(-1000 <= x <= 1000 for x in lat),
                f"age ms min {min(lat)} p50 {pi.percentile(lat, 50):.0f} "
                f"p90 {pi.percentile(lat, 90):.0f} max {max(lat)}")
        print(f"LATENCY {NAME}: capture->aiortc decoded (incl. ~1 frame aiortc jitter buffer) "
              f"p50 {pi.percentile(lat, 50):.1f} ms, p90 {pi.percentile(lat, 90):.1f} ms, "
              f"p99 {pi.percentile(lat, 99):.1f} ms, max {max(lat)} ms over {len(lat)} frames", flush=True)

    expected_audio = int(duration / 0.02)
    c.check("audio frames arrive (>= 80% of 20 ms frames)",
            res.audio_frames > 0 and res.audio_samples >= 0.8 * duration * 48000,
            f"{res.audio_frames} frames, {res.audio_samples} samples @ {res.audio_rate} Hz "
            f"{res.audio_layout} (~{expected_audio} x 20 ms expected)")
    c.check("audio carries sound (the test tone, not silence)", res.audio_loud_frames > 0,
            f"{res.audio_loud_frames} x 20 ms with sound, RMS there {res.audio_rms:.0f}, "
            f"zero-crossing frequency {res.audio_zero_cross_hz:.0f} Hz")
    if res.audio_onset_ms:
        # The tone source (src/capture/tone.rs) beeps 200 ms at the start of every wall-clock
        # second, so the onset's position in the second is the audio latency (mod 1 s).
        on = res.audio_onset_ms
        print(f"LATENCY {NAME}: audio beep onset decoded by aiortc (incl. its jitter buffer) "
              f"{', '.join(f'{x:.0f}' for x in on)} ms after the wall-clock second; "
              f"p50 {pi.percentile(on, 50):.0f} ms", flush=True)
        c.check("audio beep heard < 400 ms after the wall-clock second it marks",
                pi.percentile(on, 50) < 400,
                f"onset p50 {pi.percentile(on, 50):.0f} ms after the second (tone.rs beeps at 0-200 ms)")

    if "udp_ports" in during:
        c.check(f"service uses only its configured UDP port {pi.UDP_PORT} during a session",
                during["udp_ports"] == {pi.UDP_PORT}, f"UDP ports open: {sorted(during['udp_ports'])}")
    s1, s2 = during.get("s1"), during.get("s2")
    c.check("settings viewers >= 1 while watching", bool(s1) and (s1.get("viewers") or 0) >= 1,
            f"viewers={s1.get('viewers') if s1 else None!r}")
    if s1 and s2:
        e1 = s1.get("video", {}).get("encoded_frames")
        e2 = s2.get("video", {}).get("encoded_frames")
        ok = isinstance(e1, int) and isinstance(e2, int) and e2 > e1
        c.check("settings encoded_frames grows while watching", ok,
                f"{e1} -> {e2} in ~1 s" + (f" ({e2 - e1} fps)" if ok else ""))

    c.check("DELETE Location -> 200/204", res.delete_status in (200, 204),
            f"DELETE {res.location} -> {res.delete_status} {res.delete_reason} {res.delete_body[:200]!r}")
    ad = res.after_delete
    c.check("viewers back to 0 within 2 s of DELETE", ad.get("viewers") == 0,
            f"viewers={ad.get('viewers')!r} after {ad.get('ms', float('nan')):.0f} ms")
    d2 = await asyncio.to_thread(pi.http_request, "DELETE", res.location)
    c.check("second DELETE of the same Location -> 404", d2.status == 404,
            f"{d2.status} {d2.text()[:100]!r}")


def main() -> int:
    c = pi.Checker(NAME)
    pi.require_netns_or_warn(c)
    try:
        svc = pi.Service(NAME).__enter__()
    except RuntimeError as e:
        c.check("service starts and prints 'listening on http://'", False, str(e))
        return c.summary()
    try:
        if svc.proc is not None:
            c.check("service starts and prints 'listening on http://'", True,
                    f"{svc.url} after {svc.ready_after * 1000:.0f} ms")
        asyncio.run(main_async(c, svc))
        c.check("service still running after the test", svc.alive(),
                "" if svc.alive() else "exited:\n" + svc.log_tail())
    except Exception as e:  # noqa: BLE001 - any crash is a FAIL, with the service log
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
