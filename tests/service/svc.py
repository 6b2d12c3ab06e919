"""Shared helpers for the service tests (issue 5: auth, HTTPS, systemd notify, shutdown).

Each test starts the peercam binary itself with a temporary config through the shared launcher
(tests/lib/peercam_service.py: stdout+stderr into artifacts/<name>-service.log, waits for the
`listening on http(s)://` line, always stops it: SIGTERM, then SIGKILL). Everything talks to loopback only; run.sh puts every test
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
sys.path.insert(0, str(REPO / "tests" / "lib"))
from peercam_interop import Checker  # noqa: E402
import peercam_service  # noqa: E402  (the one Python launcher, shared with tests/interop)
from peercam_service import to_toml, toml_value  # noqa: E402,F401  (tests use them)



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


class Service(peercam_service.Service):
    """The shared launcher (tests/lib/peercam_service.py), logging to tests/service/artifacts.
    `with Service(...) as svc:` does not start it: call start() (again after stop() for a
    restart with the same config and state dir)."""

    def __init__(self, name: str, config: dict, env: Optional[dict] = None, workdir: Optional[Path] = None):
        super().__init__(name, config, env=env, workdir=workdir, artifacts=ARTIFACTS)


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
