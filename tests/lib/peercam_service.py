"""The one Python launcher of the peercam service, shared by tests/interop and tests/service.

`Service(name, config)` writes `config` (TOML text, or a dict of tables written as TOML) to
<workdir>/peercam.toml, runs `peercam run --config <that file>` with <workdir> as its working
directory, copies its stdout+stderr to <artifacts>/<name>-service.log (every run of it, for
restarts) and keeps the lines in memory, and waits for its `listening on http(s)://` line.
`stop()` sends SIGTERM (or another signal), then SIGKILL after `kill_after` seconds.

Command: $PEERCAM_BIN (default <repo>/target/release/peercam) followed by $PEERCAM_ARGS
(default `run --config {config}`); $PEERCAM_CMD replaces the whole command (shell words;
`{config}` is the config path).
Logs must come to our pipe, never to the journal: JOURNAL_STREAM is removed from the
environment, and so are the systemd notify variables unless the test passes its own.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Optional, Union

REPO = Path(__file__).resolve().parent.parent.parent
LISTEN_RE = re.compile(r"listening on (https?)://([^\s/,;\"']+)")


def binary() -> Path:
    return Path(os.environ.get("PEERCAM_BIN", str(REPO / "target" / "release" / "peercam")))


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


class Service:
    """`peercam run --config <workdir>/peercam.toml`. start() may be called again after stop()
    (a restart with the same config and state dir); close() (or leaving `with`) stops it and
    removes the temporary workdir."""

    def __init__(self, name: str, config: Union[str, dict], env: Optional[dict] = None,
                 workdir: Optional[Path] = None, artifacts: Optional[Path] = None):
        self.name = name
        self.artifacts = artifacts or Path.cwd() / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"peercam-{name}-")
            workdir = Path(self._tmp.name)
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.config = config
        self.config_path = self.dir / "peercam.toml"
        self.config_path.write_text(config if isinstance(config, str) else to_toml(config))
        self.env = env or {}
        self.log_path = self.artifacts / f"{name}-service.log"
        self.log_path.write_text("")
        self.proc: Optional[subprocess.Popen] = None
        self.lines: list[str] = []
        self.url = ""
        self.spawned_at = 0.0
        self.ready_after = 0.0
        self.runs = 0
        self._lock = threading.Lock()

    def command(self) -> list[str]:
        cfg = str(self.config_path)
        if os.environ.get("PEERCAM_CMD"):
            return [w.replace("{config}", cfg) for w in shlex.split(os.environ["PEERCAM_CMD"])]
        args = os.environ.get("PEERCAM_ARGS", "run --config {config}")
        return [str(binary())] + [w.replace("{config}", cfg) for w in shlex.split(args)]

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> "Service":
        self.runs += 1
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(k, None)
        env.setdefault("RUST_LOG", "info")
        env.update(self.env)
        ready = threading.Event()
        self.url = ""
        cmd = self.command()
        with open(self.log_path, "a") as f:
            f.write(f"===== run {self.runs}: {shlex.join(cmd)}\n")
        self.spawned_at = time.monotonic()
        try:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as e:
            raise RuntimeError(f"cannot start service {cmd}: {e}") from e
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
                            u = urllib.parse.urlsplit(f"{m.group(1)}://{m.group(2)}")
                            host = u.hostname or "127.0.0.1"
                            if host in ("0.0.0.0", "::", "localhost"):
                                host = "127.0.0.1"
                            self.url = f"{m.group(1)}://{host}:{u.port or (443 if m.group(1) == 'https' else 80)}"
                            self.ready_after = time.monotonic() - self.spawned_at
                            ready.set()
            ready.set()  # EOF: unblock the waiter

        threading.Thread(target=reader, daemon=True).start()
        if wait_ready:
            if not ready.wait(timeout) or not self.url:
                rc = self.proc.poll()
                self.stop()
                raise RuntimeError(f"{self.name}: service not listening after {timeout} s (exit {rc}); "
                                   f"cmd: {shlex.join(cmd)}; log {self.log_path}:\n" + "\n".join(self.lines[-30:]))
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def log_tail(self, n: int = 40) -> str:
        with self._lock:
            return "\n".join(self.lines[-n:])

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
