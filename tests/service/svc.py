"""Shared helpers for the service tests (issue 5: auth, HTTPS, systemd notify, shutdown).

Each test starts the peercam binary itself with a temporary config (TOML written here), reads its
stdout+stderr into artifacts/<name>-service.log, waits for the `listening on http(s)://` line, and
always stops it (SIGTERM, then SIGKILL). Everything talks to loopback only; run.sh puts every test
in its own loopback-only network namespace (`unshare -n`), and assert_loopback_only() refuses to
run anywhere else.

PASS/FAIL bookkeeping is the interop suite's Checker (tests/interop/peercam_interop.py).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ARTIFACTS = HERE / "artifacts"
FIXTURES = REPO / "tests" / "fixtures" / "offers"
BIN = Path(os.environ.get("PEERCAM_BIN", str(REPO / "target" / "release" / "peercam")))

sys.path.insert(0, str(REPO / "tests" / "interop"))
from peercam_interop import Checker  # noqa: E402  (reused, not modified)

LISTEN_RE = re.compile(r"listening on (https?)://([^\s/]+)/")


def assert_loopback_only() -> None:
    """Network rule of this project's tests: only loopback (or namespaces the test creates)."""
    ifaces = [l.split(":")[0].strip() for l in Path("/proc/net/dev").read_text().splitlines()[2:] if ":" in l]
    if ifaces != ["lo"]:
        sys.exit(f"not in a loopback-only network namespace (interfaces: {ifaces}); use tests/service/run.sh")


def load_note(c: Checker) -> None:
    c.info(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} on {os.cpu_count()} CPUs")


# ---- the binary's helper commands -------------------------------------------------------------

def hash_password(password: str) -> str:
    r = subprocess.run([str(BIN), "hash-password"], input=password + "\n", capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"peercam hash-password failed ({r.returncode}): {r.stderr}")
    return r.stdout.strip()


def new_token() -> tuple[str, str]:
    """(token, sha256 hex) parsed from `peercam new-token`."""
    r = subprocess.run([str(BIN), "new-token"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"peercam new-token failed ({r.returncode}): {r.stderr}")
    token = re.search(r"token[^:]*:\s*(\S+)", r.stdout)
    digest = re.search(r'token_sha256\s*=\s*\["([0-9a-f]{64})"\]', r.stdout)
    if not token or not digest:
        raise RuntimeError(f"cannot parse `peercam new-token` output: {r.stdout!r}")
    return token.group(1), digest.group(1)


# ---- the service ------------------------------------------------------------------------------

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def to_toml(config: dict) -> str:
    return "\n".join(f"[{table}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in kv.items())
                     for table, kv in config.items())


BASE_CONFIG = {
    "http": {"listen": "127.0.0.1:18443"},
    "video": {"source": "testsrc", "width": 640, "height": 480, "fps": 30, "bitrate_kbps": 1000},
    "audio": {"source": "tone"},
    "webrtc": {"udp_port": 18489, "include_loopback": True},
}


def merge(base: dict, over: dict) -> dict:
    out = {t: dict(kv) for t, kv in base.items()}
    for t, kv in over.items():
        out.setdefault(t, {}).update(kv)
    return out


class Service:
    """`peercam run --config <tmp>/peercam.toml`. start() may be called again after stop() (a
    restart with the same config and state dir); the log file collects every run."""

    def __init__(self, name: str, config: dict, env: Optional[dict] = None, workdir: Optional[Path] = None):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"peercam-{name}-")
            workdir = Path(self._tmp.name)
        self.dir = workdir
        self.config = config
        self.config_path = self.dir / "peercam.toml"
        self.config_path.write_text(to_toml(config))
        self.env = env or {}
        self.log_path = ARTIFACTS / f"{name}-service.log"
        self.log_path.write_text("")
        self.proc: Optional[subprocess.Popen] = None
        self.lines: list[str] = []
        self.url = ""
        self.spawned_at = 0.0
        self.ready_after = 0.0
        self.runs = 0
        self._lock = threading.Lock()

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> "Service":
        self.runs += 1
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)  # logs must come to our pipe, never to the journal
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(k, None)
        env.setdefault("RUST_LOG", "info")
        env.update(self.env)
        ready = threading.Event()
        self.url = ""
        with open(self.log_path, "a") as f:
            f.write(f"===== run {self.runs}: {BIN} run --config {self.config_path}\n")
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen([str(BIN), "run", "--config", str(self.config_path)], cwd=self.dir,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        proc = self.proc

        def reader():
            with open(self.log_path, "a", encoding="utf-8", errors="replace") as log:
                for raw in proc.stdout:
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    with self._lock:
                        self.lines.append(line)
                    log.write(line + "\n")
                    log.flush()
                    if not ready.is_set():
                        m = LISTEN_RE.search(line)
                        if m:
                            self.url = f"{m.group(1)}://{m.group(2)}"
                            self.ready_after = time.monotonic() - self.spawned_at
                            ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if wait_ready:
            if not ready.wait(timeout) or not self.url:
                rc = self.proc.poll()
                self.stop()
                raise RuntimeError(f"{self.name}: service not listening after {timeout} s (exit {rc}); "
                                   f"log {self.log_path}:\n" + "\n".join(self.lines[-30:]))
        return self

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, kill_after: float = 5.0) -> tuple[Optional[int], float]:
        """Sends `sig`, waits; SIGKILL after `kill_after` s. Returns (exit code, seconds to exit)."""
        if self.proc is None:
            return None, 0.0
        t0 = time.monotonic()
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(kill_after)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        elapsed = time.monotonic() - t0
        rc = self.proc.returncode
        self.proc = None
        time.sleep(0.1)  # let the reader thread drain the pipe
        return rc, elapsed

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- HTTP(S) ----------------------------------------------------------------------------------

@dataclass
class Resp:
    status: int
    headers: list  # [(name lower-case, value)], repeated headers kept
    body: bytes
    error: str = ""

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name.lower()), "")

    def all(self, name: str) -> list:
        return [v for k, v in self.headers if k == name.lower()]

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __str__(self) -> str:
        if self.error:
            return f"error {self.error}"
        loc = self.header("location")
        return f"{self.status}" + (f" -> {loc}" if loc else "")


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def request(method: str, url: str, body: Optional[bytes] = None, headers: Optional[dict] = None,
            source: Optional[str] = None, context: Optional[ssl.SSLContext] = None, timeout: float = 10.0) -> Resp:
    """One request on its own connection. `source`: local address to send from (any 127.x.y.z is
    loopback, which lets one test be several clients for the per-address login backoff)."""
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    src = (source, 0) if source else None
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, source_address=src,
                                           context=context or insecure_context())
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout, source_address=src)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, [(k.lower(), v) for k, v in r.getheaders()], data)
    except (OSError, http.client.HTTPException) as e:
        text = f"{type(e).__name__}: {e}"
        return Resp(0, [], b"", error="".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text))
    finally:
        conn.close()


def offer_sdp() -> bytes:
    return (FIXTURES / "chromium_recvonly.sdp").read_bytes()
