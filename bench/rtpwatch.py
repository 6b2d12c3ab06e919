#!/usr/bin/env python3
"""Watches the RTP a sender puts on the loopback interface (for the benchmark; root, inside the bench's
own network namespace). SRTP encrypts payloads only, so the RTP headers can be read: per SSRC it reports
packet count and rate, sizes, RTP timestamp increments, header-extension use, the marker bit, and how
regular the packets are (arrival time minus RTP time, relative).

  rtpwatch.py SECONDS UDP_SRC_PORT   → one JSON object on stdout
"""

import collections
import json
import socket
import statistics
import struct
import sys
import time

RTCP_TYPES = range(72, 80)   # second byte & 0x7f of RTCP SR/RR/SDES/BYE/APP/RTPFB/PSFB/XR


def main() -> None:
    seconds, port = float(sys.argv[1]), int(sys.argv[2])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
    s.bind(("lo", 0))
    s.settimeout(0.2)
    end = time.monotonic() + seconds
    streams = collections.defaultdict(list)
    while time.monotonic() < end:
        try:
            d, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        t = time.monotonic()
        if addr[2] == socket.PACKET_OUTGOING:   # lo shows every packet twice: outgoing and incoming
            continue
        ip = d[14:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 15) * 4
        sport = struct.unpack("!H", ip[ihl:ihl + 2])[0]
        if sport != port:
            continue
        rtp = ip[ihl + 8:]
        if len(rtp) < 12 or rtp[0] >> 6 != 2 or (rtp[1] & 0x7F) in RTCP_TYPES:
            continue
        seq, ts, ssrc = struct.unpack("!HII", rtp[2:12])
        streams[ssrc].append((t, seq, ts, len(rtp), rtp[1] & 0x7F, bool(rtp[1] & 0x80), bool(rtp[0] & 0x10)))
    out = {}
    for ssrc, pk in streams.items():
        if len(pk) < 10:
            continue
        sizes = [p[3] for p in pk]
        audio = statistics.median(sizes) < 300 and len(set(p[2] for p in pk)) > 0.9 * len(pk)
        rate = 48000 if audio else 90000
        incs = [(b[2] - a[2]) % (1 << 32) for a, b in zip(pk, pk[1:])]
        frame_incs = [i for i in incs if i != 0]
        step = statistics.median(frame_incs) if frame_incs else 0
        transit = [(p[0] - p[2] / rate) * 1000 for p in pk]
        # unwrap RTP timestamp wrap-arounds
        fixed, off = [], 0.0
        for i, x in enumerate(transit):
            if i and x - fixed[-1] > 1000 * ((1 << 31) / rate):
                off -= 1000 * ((1 << 32) / rate)
            elif i and fixed[-1] - x > 1000 * ((1 << 31) / rate):
                off += 1000 * ((1 << 32) / rate)
            fixed.append(x + off)
        base = min(fixed)
        rel = sorted(x - base for x in fixed)
        frames = len(set(p[2] for p in pk))
        out[f"{ssrc:08x}"] = {
            "kind": "audio" if audio else "video",
            "payloadType": collections.Counter(p[4] for p in pk).most_common(1)[0][0],
            "packets": len(pk), "packetsPerSecond": round(len(pk) / seconds, 1),
            "frames": frames, "packetsPerFrame": round(len(pk) / frames, 2),
            "sizeP50": statistics.median(sizes), "sizeMax": max(sizes),
            "kbps": round(8 * sum(sizes) / seconds / 1000, 1),
            "headerExtension": f"{sum(p[6] for p in pk)}/{len(pk)}",
            "marker": f"{sum(p[5] for p in pk)}/{len(pk)}",
            "tsStepMedian": step,
            "tsStepsOffMedian": f"{sum(1 for i in frame_incs if i != step)}/{len(frame_incs)}",
            "tsStepsCommon": collections.Counter(frame_incs).most_common(6),
            "arrivalMinusRtpTimeMs": {"p50": round(rel[len(rel) // 2], 1), "p90": round(rel[int(0.9 * len(rel))], 1),
                                      "max": round(rel[-1], 1)},
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
