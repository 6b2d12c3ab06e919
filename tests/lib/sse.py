"""The service's Server-Sent Events (`GET /api/events?types=…`) read on a thread, for the Python
stages (events arrive while the test does something else). Each event goes into a queue as
(arrival time from `clock`, event dict).
"""
from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from typing import Callable


class EventStream:
    def __init__(self, port: int, types: str, headers: dict, clock: Callable[[], float] = time.monotonic,
                 timeout: float = 300):
        self.q: queue.Queue = queue.Queue()
        self.clock = clock
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", f"/api/events?types={types}", headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        data = None
        try:
            for raw in self.resp:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("data:"):
                    data = line[5:].strip()
                elif line == "" and data:
                    self.q.put((self.clock(), json.loads(data)))
                    data = None
        except Exception:  # noqa: BLE001 - the stream ends with the service or the test
            pass

    def drain(self) -> list:
        """Everything queued so far, as (time, event)."""
        out = []
        while True:
            try:
                out.append(self.q.get_nowait())
            except queue.Empty:
                return out

    def wait(self, pred: Callable[[dict], bool], timeout: float):
        """The first queued event that `pred` accepts within `timeout` s, as (time, event), or
        (None, None); the ones before it are dropped."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                at, e = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if pred(e):
                return at, e
        return None, None

    def close(self):
        try:
            self.conn.sock and self.conn.sock.shutdown(2)
        except OSError:
            pass
