"""A PeerJS client in Python (asyncio, stdlib only): what the `peerjs` 1.5 browser library does on
the wire, for headless tests that cannot afford a browser per peer (tests/soak, tests/security).

  * WebSocket: a minimal RFC 6455 client (text frames, client masking, ping/close handling).
  * PeerJS signaling (`src/signal/peerjs/README.md`): connect to `/peerjs/peerjs?key=…&id=…&token=…`,
    wait for `OPEN`, send `HEARTBEAT` every 5 s as peerjs does, `OFFER`/`CANDIDATE`/`LEAVE` to a
    peer, read `ANSWER`/`CANDIDATE`/`LEAVE`/`EXPIRE`/`ERROR`.
  * The offer payloads peerjs 1.5 sends for `peer.call(id, stream)` (`type: "media"`, connection
    id `mc_…`) and `peer.connect(id, {serialization})` (`type: "data"`, `dc_…`, label = connection
    id, the data channel made by the caller).

WebRTC itself is aiortc (tests/interop's venv): the caller makes the RTCPeerConnection, gathers
(aiortc puts its candidates in the SDP, so no trickling is needed) and hands the SDP here.
Loopback only, as every test of this repository.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import string
import struct
from typing import Optional


class WebSocketClosed(Exception):
    pass


class WebSocket:
    """One client WebSocket over asyncio streams (no TLS, no extensions, no fragmentation sent)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.r = reader
        self.w = writer
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int, path: str, headers: Optional[dict] = None,
                      timeout: float = 10.0) -> "WebSocket":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        h = {"Host": f"{host}:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13", **(headers or {})}
        writer.write((f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/") else b"0"
        if status != b"101":
            writer.close()
            raise ConnectionError(f"WebSocket upgrade of {path} -> {head.splitlines()[0].decode(errors='replace')}")
        return cls(reader, writer)

    async def send_text(self, text: str) -> None:
        await self._send(0x1, text.encode())

    async def _send(self, opcode: int, data: bytes) -> None:
        if self.closed:
            raise WebSocketClosed("closed")
        n = len(data)
        hdr = bytes([0x80 | opcode])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            hdr += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.w.write(hdr + mask + masked)
        await self.w.drain()

    async def recv(self) -> Optional[str]:
        """The next text message; None when the server closed the connection."""
        while True:
            try:
                b0, b1 = await self.r.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", await self.r.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", await self.r.readexactly(8))[0]
                payload = await self.r.readexactly(n)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                self.closed = True
                return None
            op = b0 & 0x0F
            if op == 0x8:
                self.closed = True
                return None
            if op == 0x9:
                await self._send(0xA, payload)
                continue
            if op in (0x1, 0x0):
                return payload.decode("utf-8", "replace")

    async def close(self) -> None:
        if not self.closed:
            try:
                await self._send(0x8, struct.pack(">H", 1000))
            except (OSError, WebSocketClosed):
                pass
        self.closed = True
        self.w.close()
        try:
            await asyncio.wait_for(self.w.wait_closed(), 2)
        except (OSError, asyncio.TimeoutError):
            pass


def random_id(prefix: str = "") -> str:
    return prefix + "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(12))


class PeerJsPeer:
    """A peer on the device's PeerServer. `open()` connects and waits for OPEN; messages from
    other peers land in `inbox` (a bounded queue: a test that stops reading loses the newest)."""

    def __init__(self, host: str, port: int, peer_id: Optional[str] = None, key: str = "peerjs",
                 headers: Optional[dict] = None):
        self.host, self.port = host, port
        self.id = peer_id or random_id("py-")
        self.key = key
        self.headers = headers or {}
        self.ws: Optional[WebSocket] = None
        self.inbox: asyncio.Queue = asyncio.Queue(maxsize=256)
        self.errors: list[str] = []
        self._tasks: list[asyncio.Task] = []

    async def open(self, timeout: float = 10.0) -> "PeerJsPeer":
        token = random_id()
        self.ws = await WebSocket.connect(self.host, self.port,
                                          f"/peerjs/peerjs?key={self.key}&id={self.id}&token={token}", self.headers)
        first = await asyncio.wait_for(self.ws.recv(), timeout)
        msg = json.loads(first) if first else {}
        if msg.get("type") != "OPEN":
            await self.ws.close()
            raise ConnectionError(f"PeerJS: expected OPEN, got {first!r}")
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._heartbeat())]
        return self

    async def _read(self) -> None:
        while self.ws is not None:
            text = await self.ws.recv()
            if text is None:
                return
            try:
                msg = json.loads(text)
            except ValueError:
                self.errors.append(f"not JSON: {text[:80]!r}")
                continue
            if msg.get("type") == "ERROR":
                self.errors.append(str(msg.get("payload")))
            try:
                self.inbox.put_nowait(msg)
            except asyncio.QueueFull:
                pass

    async def _heartbeat(self) -> None:
        # peerjs 1.5 sends one every 5 s (pingInterval).
        while self.ws is not None and not self.ws.closed:
            await asyncio.sleep(5)
            try:
                await self.ws.send_text('{"type":"HEARTBEAT"}')
            except (OSError, WebSocketClosed):
                return

    async def send(self, kind: str, dst: str, payload) -> None:
        await self.ws.send_text(json.dumps({"type": kind, "dst": dst, "payload": payload}))

    async def wait_for(self, pred, timeout: float = 10.0) -> Optional[dict]:
        """The first inbox message satisfying `pred` within `timeout` s (others are dropped)."""
        loop = asyncio.get_event_loop()
        end = loop.time() + timeout
        while True:
            left = end - loop.time()
            if left <= 0:
                return None
            try:
                msg = await asyncio.wait_for(self.inbox.get(), left)
            except asyncio.TimeoutError:
                return None
            if pred(msg):
                return msg

    async def offer(self, dst: str, sdp: str, kind: str, connection_id: str, **extra) -> Optional[dict]:
        """Sends an OFFER as peerjs does and waits for the ANSWER (or LEAVE: refused) for it."""
        payload = {"sdp": {"type": "offer", "sdp": sdp}, "type": kind, "connectionId": connection_id, **extra}
        await self.send("OFFER", dst, payload)
        return await self.wait_for(
            lambda m: m.get("type") in ("ANSWER", "LEAVE", "EXPIRE")
            and ((m.get("payload") or {}).get("connectionId") in (connection_id, None)), 15)

    async def close(self, leave_to: Optional[str] = None) -> None:
        """Disconnects. peerjs 1.5 sends no LEAVE when a call closes; `leave_to` sends one first."""
        if self.ws is None:
            return
        if leave_to:
            try:
                await self.send("LEAVE", leave_to, None)
            except (OSError, WebSocketClosed):
                pass
        for t in self._tasks:
            t.cancel()
        await self.ws.close()
        self.ws = None


def media_offer_extra() -> dict:
    """What peerjs 1.5 adds to a call's OFFER besides sdp/type/connectionId."""
    return {"metadata": None}


def data_offer_extra(connection_id: str, serialization: str = "json") -> dict:
    """What peerjs 1.5 adds to a data connection's OFFER (label = connection id by default)."""
    return {"label": connection_id, "serialization": serialization, "reliable": True, "metadata": None}
