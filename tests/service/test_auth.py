#!/usr/bin/env python3
"""Secure by default (issue 5): HTTPS with the self-signed certificate, login, cookies, tokens,
backoff, the HTTP->HTTPS redirect, config errors, the no-password loopback-only mode (over a veth
pair into a second namespace this test creates), and no secret in the service's log.

Run through tests/service/run.sh (a loopback-only network namespace per test). Stdlib only.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from svc import (BASE_CONFIG, BIN, Checker, Resp, Service, assert_loopback_only, hash_password,
                 insecure_context, load_note, merge, new_token, offer_sdp, request)

PASSWORD = "Tr0ub4dor&3 peercam"  # '&' and ' ' exercise the form encoding
HTTPS_PORT, REDIRECT_PORT, UDP_PORT = 18443, 18081, 18489
BASE = f"https://127.0.0.1:{HTTPS_PORT}"
# Over HTTPS the session cookie carries the __Host- prefix (issue 17).
COOKIE = "__Host-peercam_session"

c = Checker("auth")
secrets: dict[str, str] = {"password": PASSWORD}  # name -> value that must never reach the log


def form(password: str) -> bytes:
    return urllib.parse.urlencode({"password": password}).encode()


FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


def login(password: str, source: str = "127.0.0.1", base: str = BASE) -> Resp:
    return request("POST", base + "/login", form(password), FORM_HEADERS, source=source)


def cookie_of(r: Resp) -> tuple[str, dict]:
    """(value, {attribute lower-case: value}) of the peercam_session Set-Cookie."""
    for sc in r.all("set-cookie"):
        parts = [p.strip() for p in sc.split(";")]
        name, _, value = parts[0].partition("=")
        if name == COOKIE:
            attrs = {}
            for p in parts[1:]:
                k, _, v = p.partition("=")
                attrs[k.lower()] = v
            return value, attrs
    return "", {}


def expect_unauth(what: str, r: Resp, *, page: bool) -> None:
    """page=True: 303 to /login. Otherwise 401 with a Bearer challenge."""
    if page:
        ok = r.status == 303 and urllib.parse.urlsplit(r.header("location")).path == "/login"
        c.check(f"unauthenticated {what} -> 303 /login", ok, str(r))
    else:
        ok = r.status == 401 and r.header("www-authenticate").lower().startswith("bearer")
        c.check(f"unauthenticated {what} -> 401 Bearer", ok,
                f"{r} WWW-Authenticate: {r.header('www-authenticate')!r}")


def whep_post(token: str | None = None, cookie: str | None = None, base: str = BASE) -> Resp:
    h = {"Content-Type": "application/sdp"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if cookie:
        h["Cookie"] = f"{COOKIE}={cookie}"
    return request("POST", base + "/whep", offer_sdp(), h, timeout=15)


def whep_delete(r: Resp, token: str, base: str = BASE) -> Resp:
    loc = urllib.parse.urljoin(base + "/whep", r.header("location"))
    return request("DELETE", loc, None, {"Authorization": f"Bearer {token}"})


def openssl_text(cert: Path) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(cert)], capture_output=True,
                          text=True).stdout


def sans_of(cert: Path) -> list[str]:
    out = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)],
                         capture_output=True, text=True).stdout
    lines = out.splitlines()[1:]
    return [s.strip() for s in " ".join(lines).split(",") if s.strip()]


def vm_hwm_kib(svc: Service) -> int:
    """Peak resident memory of the service so far (VmHWM, KiB)."""
    try:
        for line in Path(f"/proc/{svc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, AttributeError):
        pass
    return 0


def served_cert(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        with insecure_context().wrap_socket(s, server_hostname="localhost") as t:
            return t.getpeercert(binary_form=True)


# =============================================================================================
# Part 1: HTTPS + password + tokens on loopback (loopback NOT exempt: the default)
# =============================================================================================

def part_https(work: Path) -> None:
    cfg_token, cfg_token_hash = new_token()
    secrets["config token"] = cfg_token
    pw_hash = hash_password(PASSWORD)
    c.check("peercam hash-password prints an Argon2id PHC string", pw_hash.startswith("$argon2id$"), pw_hash[:30] + "…")
    short = subprocess.run([str(BIN), "hash-password"], input="short\n", capture_output=True, text=True, timeout=30)
    c.check("hash-password refuses a password under 8 characters", short.returncode != 0,
            f"exit {short.returncode}: {short.stderr.strip()}")

    state = work / "state"
    config = merge(BASE_CONFIG, {
        "http": {"listen": f"127.0.0.1:{HTTPS_PORT}", "tls": True, "state_dir": str(state),
                 "redirect_listen": f"127.0.0.1:{REDIRECT_PORT}"},
        "auth": {"password_hash": pw_hash, "token_sha256": [cfg_token_hash], "login_attempts_before_backoff": 3},
        "webrtc": {"udp_port": UDP_PORT},
    })
    # RUST_LOG=debug: the secrets check at the end should hold at the most verbose level too.
    svc = Service("auth", config, env={"RUST_LOG": "debug"}, workdir=work)
    try:
        svc.start()
        c.check("service announces https://", svc.url.startswith("https://"), f"{svc.url} after {svc.ready_after:.2f} s")
        https_checks(svc, state, cfg_token)
    finally:
        rc, took = svc.stop()
        c.info(f"service stopped: exit {rc} after {took:.2f} s")
    log = svc.log_text()
    # Secrets: every one this test used or received must be absent from the service's output.
    for name, value in secrets.items():
        c.check(f"no secret in the service log: {name}", value not in log,
                f"{len(log.splitlines())} log lines at RUST_LOG=debug" if value not in log
                else next(l for l in log.splitlines() if value in l)[:200])
    c.check("log records logins and wrong passwords (without secrets)",
            "login from" in log and "wrong password from" in log)


def https_checks(svc: Service, state: Path, cfg_token: str) -> None:
    # ---- no credentials: everything but the login page is closed -------------------------
    expect_unauth("GET /", request("GET", BASE + "/"), page=True)
    expect_unauth("GET /app.js", request("GET", BASE + "/app.js"), page=True)
    expect_unauth("GET /index.html", request("GET", BASE + "/index.html"), page=True)
    expect_unauth("GET /api/settings", request("GET", BASE + "/api/settings"), page=False)
    expect_unauth("GET /api/devices", request("GET", BASE + "/api/devices"), page=False)
    expect_unauth("POST /api/token", request("POST", BASE + "/api/token"), page=False)
    expect_unauth("POST /api/constraints", request("POST", BASE + "/api/constraints", b"{}",
                                                   {"Content-Type": "application/json"}), page=False)
    expect_unauth("POST /whep (valid offer)", whep_post(), page=False)
    expect_unauth("DELETE /whep/<id>", request("DELETE", BASE + "/whep/0123456789abcdef"), page=False)
    expect_unauth("PATCH /whep/<id>", request("PATCH", BASE + "/whep/0123456789abcdef", b"",
                                              {"Content-Type": "application/trickle-ice-sdpfrag"}), page=False)
    expect_unauth("GET /peerjs/peerjs/id", request("GET", BASE + "/peerjs/peerjs/id"), page=False)
    ws_headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    expect_unauth("WebSocket upgrade /peerjs/peerjs?key&id&token",
                  request("GET", BASE + "/peerjs/peerjs?key=peerjs&id=intruder&token=t0k", None, ws_headers), page=False)
    forged = {"Cookie": f"{COOKIE}=" + "0" * 64}
    expect_unauth("GET / with a forged cookie", request("GET", BASE + "/", None, forged), page=True)
    expect_unauth("GET /api/settings with a forged cookie", request("GET", BASE + "/api/settings", None, forged), page=False)
    expect_unauth("GET /api/settings with a wrong bearer",
                  request("GET", BASE + "/api/settings", None, {"Authorization": "Bearer " + "f" * 64}), page=False)
    expect_unauth("GET /api/settings with Basic auth of the password",
                  request("GET", BASE + "/api/settings", None, {"Authorization": "Basic " + __import__("base64").b64encode(
                      f"admin:{PASSWORD}".encode()).decode()}), page=False)
    r = request("GET", BASE + "/login")
    c.check("GET /login is public (200, a password form)", r.status == 200 and 'name="password"' in r.text(), str(r))
    r = request("GET", BASE + "/style.css")
    c.check("GET /style.css is public (200)", r.status == 200, str(r))

    # ---- backoff: from 127.0.0.2 (any 127/8 address is loopback, so it is another client) ----
    statuses = []
    for _ in range(3):
        statuses.append(login("wrong password 1", source="127.0.0.2").status)
    t3 = time.monotonic()
    c.check("3 wrong passwords -> 401, 401, 401", statuses == [401, 401, 401], str(statuses))
    r4 = login("wrong password 2", source="127.0.0.2")
    r5 = login(PASSWORD, source="127.0.0.2")
    dt = time.monotonic() - t3
    c.check("4th attempt -> 429 with Retry-After", r4.status == 429 and r4.header("retry-after").isdigit(),
            f"{r4.status} Retry-After: {r4.header('retry-after')!r}, {dt * 1000:.0f} ms after the 3rd reply")
    c.check("the right password during the backoff -> 429 too", r5.status == 429 and not cookie_of(r5)[0],
            f"{r5.status} Retry-After: {r5.header('retry-after')!r}")
    other = login(PASSWORD, source="127.0.0.3")
    c.check("another client address is not blocked (right password -> 303)", other.status == 303 and bool(cookie_of(other)[0]),
            str(other))
    if cookie_of(other)[0]:
        secrets["cookie (127.0.0.3)"] = cookie_of(other)[0]
    wait = int(r5.header("retry-after") or r4.header("retry-after") or "2")
    time.sleep(wait + 0.2)
    after = login(PASSWORD, source="127.0.0.2")
    c.check(f"after Retry-After ({wait} s) the right password works again", after.status == 303, str(after))
    if cookie_of(after)[0]:
        secrets["cookie (127.0.0.2)"] = cookie_of(after)[0]

    # ---- a burst of parallel wrong passwords from one address (127.0.0.4) ----------------------
    # The backoff must hold for concurrent attempts too: an attacker who sends N at once must not
    # get N guesses (and N Argon2 verifications of 19 MiB each) before the first failure counts.
    burst = 12
    rss0 = vm_hwm_kib(svc)
    barrier = threading.Barrier(burst)
    results: list = [None] * burst

    def attempt(i: int) -> None:
        barrier.wait()
        results[i] = login(f"burst guess {i}", source="127.0.0.4").status

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(burst)]
    t0 = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    took = time.monotonic() - t0
    checked = results.count(401)
    c.check(f"{burst} parallel wrong passwords from one address: at most 3 are checked, the rest 429",
            checked <= 3 and results.count(429) == burst - checked,
            f"{checked} x 401 (password checked), {results.count(429)} x 429, others {[r for r in results if r not in (401, 429)]}; "
            f"{took * 1000:.0f} ms; service peak RSS {rss0 // 1024} -> {vm_hwm_kib(svc) // 1024} MiB")

    # ---- login, cookie flags -----------------------------------------------------------------
    wrong = login("not the password")
    c.check("POST /login wrong password -> 401 login page", wrong.status == 401 and 'name="password"' in wrong.text()
            and not cookie_of(wrong)[0], str(wrong))
    r = login(PASSWORD)
    cookie, attrs = cookie_of(r)
    c.check("POST /login right password -> 303 to / with Set-Cookie", r.status == 303 and
            urllib.parse.urlsplit(r.header("location")).path == "/" and bool(cookie), str(r))
    if not cookie:
        return
    secrets["session cookie"] = cookie
    for flag, ok in [("HttpOnly", "httponly" in attrs), ("SameSite=Strict", attrs.get("samesite", "").lower() == "strict"),
                     ("Secure", "secure" in attrs), ("Path=/", attrs.get("path") == "/")]:
        c.check(f"session cookie has {flag}", ok, "; ".join(f"{k}={v}" if v else k for k, v in attrs.items()))
    c.check("session cookie value is long and random-looking", len(cookie) >= 32, f"{len(cookie)} chars")
    ck = {"Cookie": f"{COOKIE}={cookie}"}
    r = request("GET", BASE + "/api/settings", None, ck)
    try:
        settings = json.loads(r.body)
    except ValueError:
        settings = None
    c.check("cookie works for GET /api/settings (200 JSON)", r.status == 200 and isinstance(settings, dict), str(r))
    r = request("GET", BASE + "/", None, ck)
    c.check("cookie works for GET / (200 page)", r.status == 200 and b"<video" in r.body, str(r))
    r = request("GET", BASE + "/peerjs/peerjs/id", None, ck)
    c.check("authorized GET /peerjs/peerjs/id is past the guard (not 401/403/303)", r.status not in (401, 403, 303),
            f"{r} (PeerJS signaling not built yet: 404 expected for now)")
    expect_unauth("POST /whep with the cookie only (WHEP takes bearer tokens only)", whep_post(cookie=cookie), page=False)

    # ---- a token minted for the session ------------------------------------------------------
    r = request("POST", BASE + "/api/token", b"", ck)
    try:
        minted_doc = json.loads(r.body)
    except ValueError:
        minted_doc = {}
    minted = minted_doc.get("token") or ""
    c.check("POST /api/token with the cookie -> {token, password_set: true}",
            r.status == 200 and len(minted) >= 32 and minted_doc.get("password_set") is True,
            f"{r} keys {sorted(minted_doc)}")
    secrets["minted token"] = minted or "<none>"
    r = whep_post(token=minted)
    c.check("minted token: POST /whep -> 201 with Location and an SDP answer",
            r.status == 201 and bool(r.header("location")) and r.text().startswith("v=0"),
            f"{r} {r.header('content-type')}")
    if r.status == 201:
        d = whep_delete(r, minted)
        c.check("minted token: DELETE <Location> -> 2xx", 200 <= d.status < 300, str(d))
    r = request("GET", BASE + "/api/settings", None, {"Authorization": f"Bearer {minted}"})
    c.check("minted token works for GET /api/settings", r.status == 200, str(r))
    # A viewer session opened with the minted token and left open: logout must end it.
    kept = whep_post(token=minted)
    kept_loc = kept.header("location") or ""

    def viewers() -> int:
        rr = request("GET", BASE + "/api/settings", None, {"Authorization": f"Bearer {cfg_token}"})
        try:
            return int(json.loads(rr.body).get("viewers", -1))
        except ValueError:
            return -1
    before_logout = viewers()
    c.check("a WHEP session opened with the minted token is live", kept.status == 201 and before_logout >= 1,
            f"{kept}, viewers {before_logout}")

    # ---- logout ends the session and its tokens ---------------------------------------------
    r = request("POST", BASE + "/logout", b"", ck)
    _, cleared = cookie_of(r)
    c.check("POST /logout -> 303 /login and clears the cookie (Max-Age=0)",
            r.status == 303 and urllib.parse.urlsplit(r.header("location")).path == "/login" and cleared.get("max-age") == "0",
            f"{r} Set-Cookie {r.all('set-cookie')}")
    after_logout = viewers()
    gone = whep_delete(kept, cfg_token) if kept_loc else None
    c.check("logout ends the viewer sessions its tokens opened (they do not keep watching)",
            after_logout == before_logout - 1 and gone is not None and gone.status == 404,
            f"viewers {before_logout} -> {after_logout}; DELETE {kept_loc} -> {gone}")
    expect_unauth("POST /whep with the minted token after logout", whep_post(token=minted), page=False)
    expect_unauth("GET /api/settings with the minted token after logout",
                  request("GET", BASE + "/api/settings", None, {"Authorization": f"Bearer {minted}"}), page=False)
    expect_unauth("GET /api/settings with the old cookie after logout", request("GET", BASE + "/api/settings", None, ck), page=False)
    expect_unauth("GET / with the old cookie after logout", request("GET", BASE + "/", None, ck), page=True)
    r = request("POST", BASE + "/api/token", b"", ck)
    c.check("no new token for the old cookie after logout", r.status == 401, str(r))

    # ---- a token from the config (peercam new-token) ----------------------------------------
    auth = {"Authorization": f"Bearer {cfg_token}"}
    r = request("GET", BASE + "/api/settings", None, auth)
    c.check("config token (peercam new-token) works for GET /api/settings", r.status == 200, str(r))
    r = whep_post(token=cfg_token)
    c.check("config token works for POST /whep (201)", r.status == 201, str(r))
    if r.status == 201:
        whep_delete(r, cfg_token)
    r = request("GET", BASE + "/api/settings", None, {"Authorization": f"bearer {cfg_token}"})
    c.check("the Bearer scheme is case-insensitive", r.status == 200, str(r))

    # ---- the self-signed certificate ---------------------------------------------------------
    cert, key = state / "tls-cert.pem", state / "tls-key.pem"
    c.check("self-signed certificate and key written to state_dir", cert.is_file() and key.is_file(),
            f"{sorted(p.name for p in state.iterdir()) if state.is_dir() else 'no state dir'}")
    if not (cert.is_file() and key.is_file()):
        return
    mode = stat.S_IMODE(key.stat().st_mode)
    c.check("private key file mode is 0600", mode == 0o600, oct(mode))
    pem = cert.read_bytes()
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    c.check("the service serves the certificate in state_dir", served_cert("127.0.0.1", HTTPS_PORT) == der)
    sans = sans_of(cert)
    host = socket.gethostname()
    c.info(f"certificate SANs: {', '.join(sans)}")
    for want in ["DNS:localhost", f"DNS:{host}", f"DNS:{host}.local", "IP Address:127.0.0.1"]:
        c.check(f"certificate SAN {want}", want in sans)
    text = openssl_text(cert)
    m = re.search(r"Not After\s*:\s*(.+)", text)
    alg = re.search(r"Public Key Algorithm:\s*(\S+)", text)
    c.info(f"certificate: {alg.group(1) if alg else '?'}, not after {m.group(1).strip() if m else '?'}")
    # Verified TLS, as a browser that accepted this certificate once would do it.
    verify = ssl.create_default_context(cafile=str(cert))
    r = request("GET", f"https://localhost:{HTTPS_PORT}/login", context=verify)
    c.check("TLS verifies against the saved certificate for https://localhost", r.status == 200, str(r))
    r = request("GET", f"https://127.0.0.1:{HTTPS_PORT}/login", context=verify)
    c.check("TLS verifies against the saved certificate for https://127.0.0.1", r.status == 200, str(r))
    r = request("GET", f"http://127.0.0.1:{HTTPS_PORT}/login")
    c.check("plain HTTP to the HTTPS port gets no page", r.status != 200, str(r))

    # ---- the redirect port ---------------------------------------------------------------------
    r = request("GET", f"http://127.0.0.1:{REDIRECT_PORT}/api/settings?x=1", None, {"Host": f"camera.test:{REDIRECT_PORT}"})
    want = f"https://camera.test:{HTTPS_PORT}/api/settings?x=1"
    c.check("redirect_listen: 308 to https://<host>:<https port><path>?<query>",
            r.status == 308 and r.header("location") == want, f"{r} (want {want})")
    r = request("GET", f"http://127.0.0.1:{REDIRECT_PORT}/")
    c.check("redirect_listen keeps an IP host", r.status == 308 and r.header("location") == f"https://127.0.0.1:{HTTPS_PORT}/",
            str(r))
    r = request("GET", f"http://127.0.0.1:{REDIRECT_PORT}/", None, {"Host": "evil.test\"><script>"})
    c.check("redirect_listen does not echo a malformed Host", r.status == 308 and "<" not in r.header("location")
            and '"' not in r.header("location"), str(r))

    # ---- restart: same certificate -------------------------------------------------------------
    rc, took = svc.stop()
    c.check("SIGTERM -> exit 0", rc == 0, f"exit {rc} after {took:.2f} s")
    svc.start()
    c.check("after a restart the certificate file is byte-identical", cert.read_bytes() == pem)
    c.check("after a restart the served certificate is the same", served_cert("127.0.0.1", HTTPS_PORT) == der)
    c.check("after a restart the key file is still 0600", stat.S_IMODE(key.stat().st_mode) == 0o600,
            oct(stat.S_IMODE(key.stat().st_mode)))
    r = request("GET", BASE + "/api/settings", None, auth)
    c.check("after a restart the config token still works", r.status == 200, str(r))
    again = cookie_of(login(PASSWORD))[0]
    if again:
        secrets["session cookie 2"] = again
        r = request("GET", BASE + "/api/settings", None, {"Cookie": f"{COOKIE}={again}"})
        c.check("after a restart login works", r.status == 200, str(r))


# =============================================================================================
# Part 2: configuration errors
# =============================================================================================

def part_config(work: Path) -> None:
    bad = work / "bad.toml"
    bad.write_text('[http]\nlisten = "127.0.0.1:18444"\n\n[auth]\npassword_hash = "hunter2"\n')  # line 5
    r = subprocess.run([str(BIN), "--config", str(bad), "check-config"], capture_output=True, text=True, timeout=30)
    err = (r.stderr + r.stdout).strip()
    c.check("check-config with password_hash = \"hunter2\" exits non-zero", r.returncode != 0, f"exit {r.returncode}")
    c.check("  ... names password_hash and line 5", "password_hash" in err and re.search(r"line 5\b", err) is not None,
            err.replace("\n", " | ")[:300])
    c.check("  ... says to use `peercam hash-password`", "hash-password" in err)
    r2 = subprocess.run([str(BIN), "run", "--config", str(bad)], capture_output=True, text=True, timeout=30)
    c.check("`peercam run` with that config refuses to start (non-zero exit)", r2.returncode != 0, f"exit {r2.returncode}")
    # A user who pasted the password itself into password_hash: the service's error goes to the journal.
    c.check("  ... and does not echo the misplaced plaintext password into its log", "hunter2" not in r2.stderr + r2.stdout,
            (r2.stderr + r2.stdout).replace("\n", " | ")[:300])
    bad.write_text('[auth]\ntoken_sha256 = ["abc"]\n')
    r = subprocess.run([str(BIN), "--config", str(bad), "check-config"], capture_output=True, text=True, timeout=30)
    err = (r.stderr + r.stdout).strip()
    c.check("check-config with a malformed token_sha256 exits non-zero naming it with line 2",
            r.returncode != 0 and "token_sha256" in err and re.search(r"line 2\b", err) is not None,
            f"exit {r.returncode}: " + err.replace("\n", " | ")[:300])


# =============================================================================================
# Part 3: a client that is not on the device, over a veth pair into a namespace this test makes
# =============================================================================================

class Lan:
    """A second network namespace ("the LAN") joined to ours by a veth pair: us 10.77.0.1, it 10.77.0.2.
    Requests from it go through curl run under nsenter."""

    def __init__(self):
        self.proc = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up; exec sleep 600"])
        mine = os.readlink("/proc/self/ns/net")
        for _ in range(100):
            try:
                if os.readlink(f"/proc/{self.proc.pid}/ns/net") != mine:
                    break
            except OSError:
                pass
            time.sleep(0.02)
        pid = str(self.proc.pid)
        cmds = [
            ["ip", "link", "add", "pc-dev", "type", "veth", "peer", "name", "pc-lan", "netns", pid],
            ["ip", "addr", "add", "10.77.0.1/24", "dev", "pc-dev"],
            ["ip", "link", "set", "pc-dev", "up"],
            ["nsenter", "-t", pid, "-n", "ip", "addr", "add", "10.77.0.2/24", "dev", "pc-lan"],
            ["nsenter", "-t", pid, "-n", "ip", "link", "set", "pc-lan", "up"],
        ]
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        for _ in range(50):  # wait until the link carries packets
            if subprocess.run(["nsenter", "-t", pid, "-n", "ping", "-c1", "-W1", "10.77.0.1"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.1)

    def request(self, method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> Resp:
        with tempfile.TemporaryDirectory() as d:
            hdr, out = Path(d) / "h", Path(d) / "b"
            cmd = ["nsenter", "-t", str(self.proc.pid), "-n", "curl", "-sk", "-X", method, "-D", str(hdr), "-o", str(out),
                   "--max-time", "10"]
            for k, v in (headers or {}).items():
                cmd += ["-H", f"{k}: {v}"]
            if body is not None:
                (Path(d) / "in").write_bytes(body)
                cmd += ["--data-binary", f"@{Path(d) / 'in'}"]
            r = subprocess.run(cmd + [url], capture_output=True, text=True)
            if r.returncode != 0 or not hdr.exists():
                return Resp(0, [], b"", error=f"curl exit {r.returncode} {r.stderr.strip()}")
            lines = hdr.read_text(errors="replace").splitlines()
            status = int(lines[0].split()[1]) if lines else 0
            headers_out = [(k.strip().lower(), v.strip()) for k, _, v in (l.partition(":") for l in lines[1:] if ":" in l)]
            return Resp(status, headers_out, out.read_bytes() if out.exists() else b"")

    def close(self):
        subprocess.run(["ip", "link", "del", "pc-dev"], capture_output=True)
        self.proc.kill()
        self.proc.wait()


def part_lan(work: Path) -> None:
    try:
        lan = Lan()
    except (subprocess.CalledProcessError, OSError) as e:
        c.check("veth pair into a second namespace", False, f"{e}: {getattr(e, 'stderr', b'')!r}")
        return
    port = HTTPS_PORT + 2
    try:
        # -- no password: loopback only, everyone else a 403 setup page ------------------------
        cfg = merge(BASE_CONFIG, {"http": {"listen": f"0.0.0.0:{port}", "tls": True, "state_dir": str(work / "state-lan")},
                                  "webrtc": {"udp_port": UDP_PORT + 2}})
        (work / "nopw").mkdir()
        with Service("auth-nopassword", cfg, workdir=work / "nopw") as svc:
            svc.start()
            local = f"https://127.0.0.1:{port}"
            remote = f"https://10.77.0.1:{port}"
            r = request("GET", local + "/")
            c.check("no password: loopback client gets the page (200)", r.status == 200 and b"<video" in r.body, str(r))
            r = request("GET", local + "/api/settings")
            c.check("no password: loopback client gets /api/settings (200)", r.status == 200, str(r))
            r = request("POST", local + "/api/token")
            try:
                doc = json.loads(r.body)
            except ValueError:
                doc = {}
            c.check("no password: POST /api/token on loopback -> token null, password_set false",
                    r.status == 200 and doc.get("token") is None and doc.get("password_set") is False, f"{r} {doc}")
            r = lan.request("GET", remote + "/")
            c.check("no password: LAN client GET / -> 403 setup page that says how to set one",
                    r.status == 403 and b"hash-password" in r.body, f"{r} {r.text()[:80]!r}")
            for method, path, body, h in [("GET", "/api/settings", None, {}), ("GET", "/app.js", None, {}),
                                          ("POST", "/whep", offer_sdp(), {"Content-Type": "application/sdp"}),
                                          ("GET", "/peerjs/peerjs/id", None, {})]:
                r = lan.request(method, remote + path, body, h)
                c.check(f"no password: LAN client {method} {path} -> 403", r.status == 403, str(r))
            r = lan.request("POST", remote + "/login", form("anything at all"), FORM_HEADERS)
            c.check("no password: LAN login attempt gets no cookie", r.status >= 400 and not cookie_of(r)[0], str(r))
            log = svc.log_text()
            c.check("no password: the log says how to set one", "hash-password" in log and "no password" in log.lower())
            sans = sans_of(work / "state-lan" / "tls-cert.pem")
            c.check("certificate SANs include the interface address 10.77.0.1", "IP Address:10.77.0.1" in sans, ", ".join(sans))

        # -- password + loopback_exempt: loopback free, LAN must log in --------------------------
        pw_hash = hash_password(PASSWORD)
        cfg = merge(BASE_CONFIG, {"http": {"listen": f"0.0.0.0:{port}", "tls": True, "state_dir": str(work / "state-lan")},
                                  "auth": {"password_hash": pw_hash, "loopback_exempt": True},
                                  "webrtc": {"udp_port": UDP_PORT + 2}})
        (work / "exempt").mkdir()
        with Service("auth-loopback-exempt", cfg, workdir=work / "exempt") as svc:
            svc.start()
            r = request("GET", f"https://127.0.0.1:{port}/api/settings")
            c.check("loopback_exempt: loopback client needs no login (200)", r.status == 200, str(r))
            r = lan.request("GET", remote + "/")
            c.check("loopback_exempt: LAN client GET / -> 303 /login", r.status == 303 and r.header("location").endswith("/login"),
                    str(r))
            r = lan.request("GET", remote + "/api/settings")
            c.check("loopback_exempt: LAN client /api/settings -> 401", r.status == 401, str(r))
            r = lan.request("POST", remote + "/login", form(PASSWORD), FORM_HEADERS)
            cookie = cookie_of(r)[0]
            c.check("loopback_exempt: LAN client can log in", r.status == 303 and bool(cookie), str(r))
            if cookie:
                r = lan.request("GET", remote + "/api/settings", None, {"Cookie": f"{COOKIE}={cookie}"})
                c.check("loopback_exempt: LAN client with its cookie gets /api/settings", r.status == 200, str(r))
                c.check("no secret in the log (LAN run)", PASSWORD not in svc.log_text() and cookie not in svc.log_text())
    finally:
        lan.close()


def main() -> int:
    assert_loopback_only()
    load_note(c)
    if not BIN.exists():
        c.check("peercam binary exists", False, str(BIN))
        return c.summary()
    with tempfile.TemporaryDirectory(prefix="peercam-auth-") as d:
        work = Path(d)
        for part in (part_https, part_config, part_lan):
            sub = work / part.__name__
            sub.mkdir()
            try:
                part(sub)
            except Exception as e:  # noqa: BLE001 - report, then go on with the next part
                import traceback
                c.check(f"{part.__name__} ran to the end", False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    return c.summary()


if __name__ == "__main__":
    raise SystemExit(main())
