//! The device as a client of an external PeerServer (`[remote]`, docs/remote.md): any PeerServer
//! 1.x (npm `peer`) that both the device and a remote viewer reach.
//!
//! The device keeps one WebSocket to `<peerserver>/peerjs?key=&id=&token=` (PeerServer 1.x's
//! client protocol: `OPEN`, `ID-TAKEN`, `INVALID-KEY`, `ERROR`; `OFFER` / `ANSWER` / `CANDIDATE` /
//! `LEAVE` / `EXPIRE` relayed with `src` set by the server; the client sends `HEARTBEAT` every few
//! seconds). What arrives for the device goes to the same peer code as its own PeerServer's
//! (`device.rs`, through a [`LocalPeer`] of the remote kind), except that every OFFER must carry a
//! valid viewer token in `metadata.token` (anyone can reach a public PeerServer).
//!
//! Kept up: a WebSocket ping with every heartbeat, and a server silent (no frame, no pong) for
//! three heartbeats is given up; a lost or refused connection is retried after a capped
//! exponential backoff with jitter (1 s doubling up to `max_backoff_s`, each wait drawn from its
//! upper half), reset once the server said `OPEN`. `ID-TAKEN` (another device, or a stale
//! connection under another token, holds the ID) is logged as such and retried the same way.
//! The connection token is random per process and kept across reconnects, so a reconnect after
//! a network blip reclaims the ID from a server that still remembers the old socket.
//!
//! Bounded: frames at most `[peerjs] max_message_bytes`, a send queue of `OUT_QUEUE` frames
//! (dropped while disconnected: a stale ANSWER is of no use later), `IN_QUEUE` messages waiting
//! for the device's peer (beyond: dropped with a warning).

use super::device::{self, Admit, Connections};
use super::{Incoming, Kind, LocalPeer};
use crate::rtc::session::Sessions;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Frames waiting to be sent to the PeerServer.
const OUT_QUEUE: usize = 256;
/// Messages waiting for the device's peer.
const IN_QUEUE: usize = 1024;
/// TCP + TLS + WebSocket handshake, and any one write.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct RemoteSettings {
    /// `ws://host:port/path` or `wss://…`, as PeerJS clients name the server.
    pub base: String,
    pub key: String,
    pub id: String,
    pub heartbeat: Duration,
    pub max_backoff: Duration,
    pub max_message_bytes: usize,
}

/// Capped exponential backoff with jitter: the n-th wait lies in `[d/2, d]` with
/// `d = min(first · 2^n, max)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    n: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { first, max: max.max(first), n: 0 }
    }

    /// The next wait; `unit` in `0..=1` is the random draw.
    pub fn next(&mut self, unit: f64) -> Duration {
        let d = self.first.saturating_mul(1u32 << self.n.min(20)).min(self.max);
        self.n = self.n.saturating_add(1);
        d.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.n = 0;
    }
}

/// How one connection ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The server had said OPEN; then the connection was lost.
    Lost(String),
    /// Never got to OPEN.
    Failed(String),
    IdTaken,
    InvalidKey,
}

/// `<base>/peerjs?key=&id=&token=`.
pub fn socket_url(base: &str, key: &str, id: &str, token: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect()
    };
    let sep = if base.ends_with('/') { "" } else { "/" };
    format!("{base}{sep}peerjs?key={}&id={}&token={}", enc(key), enc(id), enc(token))
}

/// Starts the client and the device's peer behind it; runs for the life of the process.
pub fn start(s: RemoteSettings, sessions: Arc<Sessions>, admit: Admit) {
    let (out_tx, out_rx) = mpsc::channel::<String>(OUT_QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<Incoming>(IN_QUEUE);
    let me = LocalPeer::remote(s.id.clone(), out_tx, in_rx);
    tokio::spawn(device::run_admitting(me, sessions, Connections::default(), Some(admit)));
    tokio::spawn(run(s, out_rx, in_tx));
}

async fn run(s: RemoteSettings, mut out_rx: mpsc::Receiver<String>, in_tx: mpsc::Sender<Incoming>) {
    // PeerJS's own tokens are `Math.random().toString(36).slice(2)`; any ≤ 128 characters do.
    let token: String = (0..16).map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::random_range(0..36)])).collect();
    let mut backoff = Backoff::new(FIRST_BACKOFF, s.max_backoff);
    let shown = redact(&s.base);
    loop {
        match connection(&s, &token, &mut out_rx, &in_tx).await {
            End::Lost(why) => {
                backoff.reset();
                log::warn!("peerjs remote: lost the PeerServer {shown}: {why}");
            }
            End::Failed(why) => log::warn!("peerjs remote: cannot connect to the PeerServer {shown}: {why}"),
            End::IdTaken => log::error!(
                "peerjs remote: the PeerServer {shown} says the ID {:?} is taken (ID-TAKEN): another device uses it, \
                 or an old connection of this one is still open there; retrying",
                s.id
            ),
            End::InvalidKey => log::error!("peerjs remote: the PeerServer {shown} refused the key (INVALID-KEY): check [remote] key; retrying"),
        }
        if in_tx.is_closed() {
            return;
        }
        let wait = backoff.next(rand::random::<f64>());
        log::info!("peerjs remote: reconnecting in {:.1} s", wait.as_secs_f64());
        // Meanwhile what the device's peer sends cannot be delivered: dropped, not kept.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                m = out_rx.recv() => if m.is_none() { return },
            }
        }
    }
}

/// The URL for logs: without user info (`ws://user:pass@host` would put a secret in the journal).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://…@{host}{path}"),
        None => url.to_string(),
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// TCP, and TLS for `wss://` (the system's CA bundle), to the URL's host.
async fn dial(url: &str) -> Result<(Box<dyn Io>, tokio_tungstenite::tungstenite::handshake::client::Request), String> {
    let request = url.into_client_request().map_err(|e| format!("bad PeerServer URL: {e}"))?;
    let uri = request.uri().clone();
    let tls = uri.scheme_str() == Some("wss");
    let host = uri.host().ok_or("the PeerServer URL has no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("TCP to {host}:{port}: {e}"))?;
    tcp.set_nodelay(true).ok();
    if !tls {
        return Ok((Box::new(tcp), request));
    }
    let config = tls_config()?;
    let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("TLS name {host:?}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
    Ok((Box::new(stream), request))
}

/// Roots from the system bundle (Debian's `ca-certificates`), or `SSL_CERT_FILE`. (Also the
/// WHIP client's, `signal::whip`.)
pub(crate) fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let path = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from).unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path).map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
    for c in certs.flatten() {
        roots.add(c).ok();
    }
    if roots.is_empty() {
        return Err(format!("no CA certificate in {}", path.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn connection(s: &RemoteSettings, token: &str, out_rx: &mut mpsc::Receiver<String>, in_tx: &mpsc::Sender<Incoming>) -> End {
    let url = socket_url(&s.base, &s.key, &s.id, token);
    let handshake = async {
        let (io, request) = dial(&url).await?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(s.max_message_bytes))
            .max_frame_size(Some(s.max_message_bytes));
        tokio_tungstenite::client_async_with_config(request, io, Some(config))
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| format!("WebSocket handshake: {e}"))
    };
    let mut ws = match tokio::time::timeout(IO_TIMEOUT, handshake).await {
        Err(_) => return End::Failed(format!("no connection within {} s", IO_TIMEOUT.as_secs())),
        Ok(Err(e)) => return End::Failed(e),
        Ok(Ok(ws)) => ws,
    };
    // Anything queued before this connection was for an earlier one.
    while out_rx.try_recv().is_ok() {}
    let mut opened = false;
    let end = |opened: bool, why: String| if opened { End::Lost(why) } else { End::Failed(why) };
    let mut beat = tokio::time::interval(s.heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let mut last_rx = tokio::time::Instant::now();
    loop {
        tokio::select! {
            frame = ws.next() => {
                let frame = match frame {
                    None => return end(opened, "the server closed the connection".into()),
                    Some(Err(e)) => return end(opened, format!("{e}")),
                    Some(Ok(f)) => f,
                };
                last_rx = tokio::time::Instant::now();
                match frame {
                    WsMessage::Text(t) => match on_text(t.as_str(), in_tx) {
                        Step::Continue => {}
                        Step::Opened => {
                            opened = true;
                            log::info!("peerjs remote: connected to the PeerServer {} as {:?}", redact(&s.base), s.id);
                        }
                        Step::End(e) => {
                            let _ = ws.close(None).await;
                            return e;
                        }
                    },
                    WsMessage::Close(_) => return end(opened, "the server closed the connection".into()),
                    _ => {} // pings are answered by tungstenite; pongs and binary frames only prove life
                }
            }
            out = out_rx.recv() => {
                let Some(text) = out else { return end(opened, "the device's peer ended".into()) };
                match tokio::time::timeout(IO_TIMEOUT, ws.send(WsMessage::text(text))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return end(opened, format!("send: {e}")),
                    Err(_) => return end(opened, "the server does not take what the device sends".into()),
                }
            }
            _ = beat.tick() => {
                if last_rx.elapsed() > 3 * s.heartbeat {
                    return end(opened, format!("silent for {:.0} s", last_rx.elapsed().as_secs_f64()));
                }
                let sent = async {
                    ws.send(WsMessage::text(r#"{"type":"HEARTBEAT"}"#)).await?;
                    ws.send(WsMessage::Ping(Vec::new().into())).await
                };
                match tokio::time::timeout(IO_TIMEOUT, sent).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return end(opened, format!("heartbeat: {e}")),
                    Err(_) => return end(opened, "heartbeat not sent in time".into()),
                }
            }
        }
    }
}

enum Step {
    Continue,
    Opened,
    End(End),
}

/// Server text (at most 200 characters of it) for a log line.
fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(200).collect()
}

/// One frame from the PeerServer.
fn on_text(text: &str, in_tx: &mpsc::Sender<Incoming>) -> Step {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        log::debug!("peerjs remote: a frame that is not JSON ({} bytes); ignored", text.len());
        return Step::Continue;
    };
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "OPEN" => return Step::Opened,
        "ID-TAKEN" => return Step::End(End::IdTaken),
        "INVALID-KEY" => return Step::End(End::InvalidKey),
        "HEARTBEAT" => {}
        "ERROR" => log::warn!("peerjs remote: the PeerServer says: {}", excerpt(v.get("payload").unwrap_or(&Value::Null))),
        other => match Kind::parse(other) {
            Some(kind) => {
                let src = v.get("src").and_then(Value::as_str).unwrap_or("");
                if !crate::config::is_valid_peer_id(src) {
                    log::debug!("peerjs remote: {other} without a valid src; ignored");
                    return Step::Continue;
                }
                let payload = v.get("payload").cloned().unwrap_or(Value::Null);
                let m = Incoming { src: src.to_string(), kind, payload, owner: None };
                if let Err(e) = in_tx.try_send(m) {
                    log::warn!("peerjs remote: the device's peer is not reading; dropped {other} ({e})");
                }
            }
            None => log::debug!("peerjs remote: unknown message type {:?}; ignored", other.chars().take(32).collect::<String>()),
        },
    }
    Step::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let hi: Vec<u64> = (0..6).map(|_| b.next(1.0).as_millis() as u64).collect();
        assert_eq!(hi, [1000, 2000, 4000, 8000, 8000, 8000]);
        b.reset();
        assert_eq!(b.next(0.0), Duration::from_millis(500), "the lower half of the first step");
        for _ in 0..100 {
            b.next(0.5); // no overflow however long it fails
        }
        assert!(b.next(0.3) <= Duration::from_secs(8));
    }

    #[test]
    fn socket_url_is_peerjs_shaped() {
        assert_eq!(socket_url("ws://10.88.0.1:9000/", "peerjs", "peercam", "abc"), "ws://10.88.0.1:9000/peerjs?key=peerjs&id=peercam&token=abc");
        assert_eq!(socket_url("wss://x.example/myapp", "k", "my cam", "t"), "wss://x.example/myapp/peerjs?key=k&id=my%20cam&token=t");
    }

    #[test]
    fn secrets_in_the_url_are_not_logged() {
        assert_eq!(redact("wss://user:pw@host:1/p"), "wss://…@host:1/p");
        assert_eq!(redact("ws://host/p@x"), "ws://host/p@x");
    }

    #[tokio::test]
    async fn server_frames() {
        let (tx, mut rx) = mpsc::channel(4);
        assert!(matches!(on_text(r#"{"type":"OPEN"}"#, &tx), Step::Opened));
        assert!(matches!(on_text(r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#, &tx), Step::End(End::IdTaken)));
        assert!(matches!(on_text(r#"{"type":"INVALID-KEY"}"#, &tx), Step::End(End::InvalidKey)));
        for junk in ["", "null", "[]", "{", r#"{"type":5}"#, r#"{"type":"OFFER"}"#, r#"{"type":"OFFER","src":"a b  c"}"#, r#"{"type":"WHAT"}"#] {
            assert!(matches!(on_text(junk, &tx), Step::Continue), "{junk}");
        }
        assert!(rx.try_recv().is_err(), "nothing malformed reaches the device's peer");
        on_text(r#"{"type":"OFFER","src":"viewer","dst":"peercam","payload":{"connectionId":"mc_1"}}"#, &tx);
        let m = rx.try_recv().unwrap();
        assert_eq!((m.src.as_str(), m.kind, m.owner), ("viewer", Kind::Offer, None));
        // a full queue drops, never blocks
        for _ in 0..10 {
            on_text(r#"{"type":"CANDIDATE","src":"viewer","payload":{}}"#, &tx);
        }
    }
}
