//! RTSP server (RFC 2326): `rtsp://<device>:8554/live` with the hub's H.264 and Opus, RTP
//! over TCP (interleaved) or UDP, for NVRs and players (Frigate, Home Assistant, VLC, ffmpeg,
//! GStreamer). See [README.md](README.md).
//!
//! A playing client is a reader of the hub like a WebRTC viewer: it joins at a keyframe, and
//! one that falls behind the ring skips to the next keyframe (`hub::Reader`), so a slow client
//! costs the others and the encoder nothing. Bounded on every side: [`MAX_REQUEST_BYTES`] per
//! request, `[rtsp] max_connections` connections (503 beyond), a request must arrive within
//! [`REQUEST_TIMEOUT`] of its first byte, an idle connection (not playing over TCP) is closed
//! after `session_timeout_s`, a write that does not finish within [`WRITE_TIMEOUT`] ends the
//! connection. Messages are parsed by `rtsp-types`; anything it refuses gets 400 and the
//! connection carries on with the next request.
//!
//! This layer knows nothing of logins: the layer above hands it an [`Authorize`] check.

pub mod proto;

use crate::hub::{Hub, Next};
use crate::rtc::plan::Stamper;
use proto::{Delivery, Target, Track};
use rtsp_types::{headers, Message, Method, ParseError, Request};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;

/// Largest request (headers and body).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A request must be complete this long after its first byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A write to a client that takes longer ends its connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Sender reports every this long per track.
const SR_INTERVAL: Duration = Duration::from_secs(2);

/// Whether a client may watch: its address and the password of its Basic `Authorization`
/// (a bearer token), if any.
pub type Authorize = Arc<dyn Fn(IpAddr, Option<&str>) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct RtspState {
    pub hub: Arc<Hub>,
    pub authorize: Authorize,
    pub max_connections: usize,
    pub session_timeout: Duration,
    pub profile_level_id: &'static str,
    /// Counters for `/api/settings`.
    pub stats: Arc<RtspStats>,
}

#[derive(Default)]
pub struct RtspStats {
    pub connections: AtomicUsize,
    pub playing: AtomicUsize,
    pub bad_requests: AtomicU64,
    pub unauthorized: AtomicU64,
}

/// Accepts connections until the listener fails (the service drops the task to stop it).
pub async fn serve(listener: TcpListener, state: RtspState) {
    let limit = Arc::new(tokio::sync::Semaphore::new(state.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("rtsp: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let state = state.clone();
                tokio::spawn(async move {
                    state.stats.connections.fetch_add(1, Ordering::Relaxed);
                    connection(stream, peer, &state).await;
                    state.stats.connections.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(_) => {
                log::info!("rtsp: {peer} refused: {} connections open", state.max_connections);
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(
                        WRITE_TIMEOUT,
                        stream.write_all(b"RTSP/1.0 503 Service Unavailable\r\nCSeq: 0\r\nContent-Length: 0\r\n\r\n"),
                    )
                    .await;
                });
            }
        }
    }
}

/// One track as set up.
struct Setup {
    track: Track,
    delivery: Delivery,
    ssrc: u32,
    /// UDP: the server's sockets (RTP, RTCP) and the client's address.
    udp: Option<(Arc<UdpSocket>, Arc<UdpSocket>, SocketAddr, SocketAddr)>,
}

struct Conn<'a> {
    state: &'a RtspState,
    peer: SocketAddr,
    local: SocketAddr,
    writer: Arc<Mutex<OwnedWriteHalf>>,
    session: Option<String>,
    setups: Vec<Setup>,
    /// The media task while playing; dropping the sender stops it.
    playing: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    /// The media task failed (a write timed out): the connection ends.
    failed: Arc<tokio::sync::Notify>,
    next_channel: u8,
}

async fn connection(stream: TcpStream, peer: SocketAddr, state: &RtspState) {
    let local = stream.local_addr().unwrap_or(peer);
    let (mut reader, writer) = stream.into_split();
    let mut conn = Conn {
        state,
        peer,
        local,
        writer: Arc::new(Mutex::new(writer)),
        session: None,
        setups: Vec::new(),
        playing: None,
        failed: Arc::new(tokio::sync::Notify::new()),
        next_channel: 0,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let mut started: Option<tokio::time::Instant> = None;
    'read: loop {
        // Whole messages first.
        loop {
            if buf.is_empty() {
                started = None;
                break;
            }
            let parsed = match Message::<Vec<u8>>::parse(&buf) {
                // A complete head whose first line is no RTSP request line is malformed, whatever
                // the parser still hopes for.
                Err(ParseError::Incomplete(_)) if !plausible_head(&buf) => Err(ParseError::Error),
                other => other,
            };
            match parsed {
                Ok((_, used)) if used > MAX_REQUEST_BYTES => {
                    conn.state.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                    let cseq = find_cseq(&buf);
                    let _ = conn.reply_raw(400, "Bad Request", cseq.as_deref(), "", "request too large\n").await;
                    break 'read;
                }
                Ok((msg, used)) => {
                    buf.drain(..used);
                    started = None;
                    match msg {
                        Message::Request(req) => {
                            if !conn.handle(req).await {
                                break 'read;
                            }
                        }
                        // Interleaved RTCP receiver reports and the like: not used.
                        Message::Data(_) | Message::Response(_) => {}
                    }
                }
                Err(ParseError::Incomplete(_)) => {
                    if buf.len() > MAX_REQUEST_BYTES {
                        conn.state.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.reply_raw(400, "Bad Request", None, "", "request too large\n").await;
                        break 'read;
                    }
                    break;
                }
                Err(ParseError::Error) => {
                    conn.state.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
                    log::info!("rtsp: {peer}: malformed request ({} bytes)", buf.len());
                    // Skip to the end of the bad message's head and go on with the next one.
                    let cseq = find_cseq(&buf);
                    match find_head_end(&buf) {
                        Some(end) => {
                            buf.drain(..end);
                            if conn.reply_raw(400, "Bad Request", cseq.as_deref(), "", "malformed request\n").await.is_err() {
                                break 'read;
                            }
                        }
                        None if buf.len() > MAX_REQUEST_BYTES => {
                            let _ = conn.reply_raw(400, "Bad Request", None, "", "malformed request\n").await;
                            break 'read;
                        }
                        None => break, // wait for the rest of the head
                    }
                }
            }
        }
        // Then more bytes, within the time left.
        let tcp_playing = conn.playing.is_some() && conn.setups.iter().any(|s| matches!(s.delivery, Delivery::Tcp { .. }));
        let wait = match started {
            Some(t) => REQUEST_TIMEOUT.saturating_sub(t.elapsed()),
            None if tcp_playing => Duration::from_secs(24 * 3600),
            None => state.session_timeout,
        };
        let failed = conn.failed.clone();
        let read = tokio::select! {
            r = tokio::time::timeout(wait, reader.read(&mut chunk)) => r,
            _ = failed.notified() => break,
        };
        let n = match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                log::debug!("rtsp: {peer}: timed out");
                break;
            }
        };
        if started.is_none() {
            started = Some(tokio::time::Instant::now());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    conn.stop_playing().await;
}

/// False for a buffer whose head is complete but does not start with an RTSP request or
/// response line (or an interleaved frame).
fn plausible_head(buf: &[u8]) -> bool {
    if buf.first() == Some(&b'$') || find_head_end(buf).is_none() {
        return true;
    }
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let line = line.trim_end();
    line.ends_with("RTSP/1.0") || line.ends_with("RTSP/2.0") || line.starts_with("RTSP/")
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
}

/// The CSeq of a message the parser refused, for its 400 (digits only).
fn find_cseq(buf: &[u8]) -> Option<String> {
    let head = &buf[..find_head_end(buf).unwrap_or(buf.len()).min(MAX_REQUEST_BYTES)];
    let text = String::from_utf8_lossy(head);
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim().eq_ignore_ascii_case("cseq")).then(|| v.trim().chars().take(10).filter(char::is_ascii_digit).collect::<String>()).filter(|s| !s.is_empty())
    })
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        454 => "Session Not Found",
        455 => "Method Not Valid in This State",
        459 => "Aggregate Operation Not Allowed",
        461 => "Unsupported Transport",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

const PUBLIC: &str = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER";

impl Conn<'_> {
    async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().await;
        match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(data)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")),
        }
    }

    /// A response: status, CSeq, `extra` header lines (each ending in CRLF), a body.
    async fn reply_raw(&self, code: u16, text: &str, cseq: Option<&str>, extra: &str, body: &str) -> std::io::Result<()> {
        let mut r = format!("RTSP/1.0 {code} {text}\r\n");
        if let Some(c) = cseq {
            r.push_str(&format!("CSeq: {c}\r\n"));
        }
        r.push_str("Server: peercam\r\n");
        r.push_str(extra);
        if !body.is_empty() {
            if !extra.to_ascii_lowercase().contains("content-type:") {
                r.push_str("Content-Type: text/plain\r\n");
            }
            r.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        r.push_str("\r\n");
        r.push_str(body);
        self.write(r.as_bytes()).await
    }

    async fn reply(&self, code: u16, cseq: &str, extra: &str, body: &str) -> bool {
        self.reply_raw(code, status_text(code), Some(cseq), extra, body).await.is_ok()
    }

    fn session_header(&self) -> String {
        match &self.session {
            Some(s) => format!("Session: {s};timeout={}\r\n", self.state.session_timeout.as_secs()),
            None => String::new(),
        }
    }

    /// Handles one request; false: close the connection.
    async fn handle(&mut self, req: Request<Vec<u8>>) -> bool {
        let Some(cseq) = req.header(&headers::CSEQ).map(|v| v.as_str().trim().to_string()) else {
            self.state.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return self.reply_raw(400, "Bad Request", None, "", "no CSeq\n").await.is_ok();
        };
        if cseq.len() > 10 || !cseq.chars().all(|c| c.is_ascii_digit()) {
            self.state.stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            return self.reply_raw(400, "Bad Request", None, "", "bad CSeq\n").await.is_ok();
        }
        let method = req.method().clone();
        if method == Method::Options {
            return self.reply(200, &cseq, &format!("Public: {PUBLIC}\r\n"), "").await;
        }
        // Everything else needs credentials (the token as Basic password).
        let password = req.header(&headers::AUTHORIZATION).and_then(|h| proto::basic_password(h.as_str()));
        if !(self.state.authorize)(self.peer.ip(), password.as_deref()) {
            self.state.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
            log::info!("rtsp: {} {:?}: unauthorized", self.peer, method);
            return self.reply(401, &cseq, "WWW-Authenticate: Basic realm=\"peercam\"\r\n", "").await;
        }
        let target = proto::target(&req);
        if target == Target::Unknown {
            return self.reply(404, &cseq, "", "only /live is served\n").await;
        }
        // A request naming a session must name ours.
        if let Some(s) = req.header(&headers::SESSION) {
            let id = s.as_str().split(';').next().unwrap_or("").trim();
            if self.session.as_deref() != Some(id) {
                return self.reply(454, &cseq, "", "").await;
            }
        }
        match method {
            Method::Describe => {
                if target != Target::Live {
                    return self.reply(404, &cseq, "", "DESCRIBE /live\n").await;
                }
                let id: u64 = rand::random::<u64>() >> 1;
                let sdp = proto::sdp(id, self.local.ip(), self.state.profile_level_id);
                let base = format!("rtsp://{}/live/", self.local);
                self.reply(200, &cseq, &format!("Content-Base: {base}\r\nContent-Type: application/sdp\r\n"), &sdp).await
            }
            Method::Setup => self.setup(&req, target, &cseq).await,
            Method::Play => {
                if self.setups.is_empty() {
                    return self.reply(455, &cseq, "", "SETUP first\n").await;
                }
                if self.playing.is_none() {
                    self.start_playing();
                }
                let extra = format!("{}Range: npt=now-\r\n", self.session_header());
                self.reply(200, &cseq, &extra, "").await
            }
            Method::Teardown => {
                self.stop_playing().await;
                self.setups.clear();
                let extra = self.session_header();
                self.session = None;
                self.reply(200, &cseq, &extra, "").await
            }
            Method::GetParameter => {
                let extra = self.session_header();
                self.reply(200, &cseq, &extra, "").await
            }
            _ => self.reply(501, &cseq, &format!("Public: {PUBLIC}\r\n"), "").await,
        }
    }

    async fn setup(&mut self, req: &Request<Vec<u8>>, target: Target, cseq: &str) -> bool {
        let Target::Track(track) = target else {
            return self.reply(459, cseq, "", "SETUP a track: /live/trackID=0 or /live/trackID=1\n").await;
        };
        if self.playing.is_some() {
            return self.reply(455, cseq, "", "already playing\n").await;
        }
        let delivery = match proto::choose_transport(req, self.next_channel) {
            Ok(d) => d,
            Err(e) => return self.reply(461, cseq, "", &format!("{e}\n")).await,
        };
        if let Some(prev) = self.setups.first() {
            // One way for the whole session.
            if std::mem::discriminant(&prev.delivery) != std::mem::discriminant(&delivery) {
                return self.reply(461, cseq, "", "use the same transport for both tracks\n").await;
            }
        }
        let udp = match delivery {
            Delivery::Udp { rtp, rtcp } => {
                let bind = SocketAddr::new(self.local.ip(), 0);
                let (a, b) = match (UdpSocket::bind(bind).await, UdpSocket::bind(bind).await) {
                    (Ok(a), Ok(b)) => (a, b),
                    _ => return self.reply(500, cseq, "", "cannot open UDP ports\n").await,
                };
                let ip = self.peer.ip();
                Some((Arc::new(a), Arc::new(b), SocketAddr::new(ip, rtp), SocketAddr::new(ip, rtcp)))
            }
            Delivery::Tcp { rtcp, .. } => {
                self.next_channel = rtcp.wrapping_add(1);
                None
            }
        };
        let server_ports = udp.as_ref().map(|(a, b, _, _)| (a.local_addr().map(|x| x.port()).unwrap_or(0), b.local_addr().map(|x| x.port()).unwrap_or(0)));
        let ssrc: u32 = rand::random();
        self.setups.retain(|s| s.track != track);
        self.setups.push(Setup { track, delivery, ssrc, udp });
        if self.session.is_none() {
            let id: u64 = rand::random();
            self.session = Some(format!("{id:016x}"));
        }
        let extra = format!("Transport: {}\r\n{}", proto::transport_reply(delivery, ssrc, server_ports), self.session_header());
        self.reply(200, cseq, &extra, "").await
    }

    fn start_playing(&mut self) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let tracks: Vec<Out> = self
            .setups
            .iter()
            .map(|s| Out {
                track: s.track,
                delivery: s.delivery,
                ssrc: s.ssrc,
                udp: s.udp.clone(),
                stamper: Stamper::new(s.track == Track::Video, rand::random()),
                packets: 0,
                octets: 0,
            })
            .collect();
        let hub = self.state.hub.clone();
        let writer = self.writer.clone();
        let stats = self.state.stats.clone();
        let peer = self.peer;
        let failed = self.failed.clone();
        log::info!("rtsp: {peer} plays {} track(s) over {}", tracks.len(), match tracks[0].delivery {
            Delivery::Tcp { .. } => "TCP",
            Delivery::Udp { .. } => "UDP",
        });
        let task = tokio::spawn(async move {
            stats.playing.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = media(hub, tracks, writer, stop_rx).await {
                log::info!("rtsp: {peer}: stopped: {e}");
                failed.notify_one();
            }
            stats.playing.fetch_sub(1, Ordering::Relaxed);
        });
        self.playing = Some((stop_tx, task));
    }

    async fn stop_playing(&mut self) {
        if let Some((stop, task)) = self.playing.take() {
            drop(stop);
            let _ = task.await;
        }
    }
}

/// One playing track.
struct Out {
    track: Track,
    delivery: Delivery,
    ssrc: u32,
    udp: Option<(Arc<UdpSocket>, Arc<UdpSocket>, SocketAddr, SocketAddr)>,
    stamper: Stamper,
    packets: u32,
    octets: u32,
}

impl Out {
    /// The unit's RTP packets: one buffer of interleaved frames (TCP), or sent one by one (UDP).
    async fn send_unit(&mut self, unit: &crate::codec::EncodedUnit, writer: &Mutex<OwnedWriteHalf>, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.clear();
        let n = unit.payloads.len();
        for (i, payload) in unit.payloads.iter().enumerate() {
            let s = self.stamper.stamp(i, n, unit.capture_unix_us, unit.keyframe);
            self.packets = self.packets.wrapping_add(1);
            self.octets = self.octets.wrapping_add(payload.len() as u32);
            match (self.delivery, &self.udp) {
                (Delivery::Tcp { rtp, .. }, _) => {
                    proto::interleave(buf, rtp, 12 + payload.len());
                    proto::rtp_packet(buf, self.track.payload_type(), s.marker, s.sequence_number, s.timestamp, self.ssrc, payload);
                }
                (Delivery::Udp { .. }, Some((sock, _, to, _))) => {
                    buf.clear();
                    proto::rtp_packet(buf, self.track.payload_type(), s.marker, s.sequence_number, s.timestamp, self.ssrc, payload);
                    // UDP drops what it cannot carry; an error (the client's port closed) is not fatal.
                    let _ = sock.send_to(buf, to).await;
                }
                (Delivery::Udp { .. }, None) => {}
            }
        }
        if let Delivery::Tcp { .. } = self.delivery {
            let mut w = writer.lock().await;
            match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read")),
            }
        }
        Ok(())
    }

    async fn send_report(&mut self, writer: &Mutex<OwnedWriteHalf>) -> std::io::Result<()> {
        let now = crate::capture::unix_now_us();
        let sr = proto::sender_report(self.ssrc, now, crate::codec::rtp_timestamp(now, self.track.clock_rate()), self.packets, self.octets);
        match (self.delivery, &self.udp) {
            (Delivery::Tcp { rtcp, .. }, _) => {
                let mut buf = Vec::with_capacity(32);
                proto::interleave(&mut buf, rtcp, sr.len());
                buf.extend_from_slice(&sr);
                let mut w = writer.lock().await;
                match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&buf)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read")),
                }
            }
            (Delivery::Udp { .. }, Some((_, sock, _, to))) => {
                let _ = sock.send_to(&sr, to).await;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads the hub for the set-up tracks and sends until stopped or a write fails.
async fn media(hub: Arc<Hub>, mut tracks: Vec<Out>, writer: Arc<Mutex<OwnedWriteHalf>>, mut stop: tokio::sync::oneshot::Receiver<()>) -> std::io::Result<()> {
    // Makes the pipeline capture and encode while this client plays.
    let _viewer = hub.demand.join();
    let vi = tracks.iter().position(|t| t.track == Track::Video);
    // A client that set up video wants the camera and the video encoder running (an audio-only
    // client, like a listen-only viewer, does not).
    let _watcher = vi.map(|_| hub.demand.watch());
    let ai = tracks.iter().position(|t| t.track == Track::Audio);
    let mut video = vi.map(|_| hub.video.subscribe());
    let mut audio = ai.map(|_| hub.audio.subscribe());
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut reports = tokio::time::interval(SR_INTERVAL);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            n = async { video.as_mut().expect("guarded").next(&hub.video).await }, if video.is_some() => match n {
                Next::Unit(u) => tracks[vi.expect("video set up")].send_unit(&u, &writer, &mut buf).await?,
                Next::Skipped(n) => log::debug!("rtsp: a slow client skipped {n} video units; waits for the next keyframe"),
                Next::Closed => return Ok(()),
            },
            n = async { audio.as_mut().expect("guarded").next(&hub.audio).await }, if audio.is_some() => match n {
                Next::Unit(u) => tracks[ai.expect("audio set up")].send_unit(&u, &writer, &mut buf).await?,
                Next::Skipped(_) => {}
                Next::Closed => return Ok(()),
            },
            _ = reports.tick() => {
                for t in tracks.iter_mut() {
                    if t.packets > 0 {
                        t.send_report(&writer).await?;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server(max: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = RtspState {
            hub: Hub::new(),
            authorize: Arc::new(|_ip, token| token == Some("good")),
            max_connections: max,
            session_timeout: Duration::from_secs(30),
            profile_level_id: "42e01f",
            stats: Arc::new(RtspStats::default()),
        };
        tokio::spawn(serve(listener, state));
        addr
    }

    async fn exchange(s: &mut TcpStream, req: &[u8]) -> String {
        s.write_all(req).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("an answer").unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    fn basic(token: &str) -> String {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("u:{token}")))
    }

    #[tokio::test]
    async fn answers_auth_errors_and_garbage_and_keeps_serving() {
        let addr = server(2).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let r = exchange(&mut s, b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").await;
        assert!(r.starts_with("RTSP/1.0 200") && r.contains("CSeq: 1") && r.contains("Public: OPTIONS, DESCRIBE"), "{r}");
        let r = exchange(&mut s, b"DESCRIBE rtsp://h/live RTSP/1.0\r\nCSeq: 2\r\n\r\n").await;
        assert!(r.starts_with("RTSP/1.0 401") && r.contains("Basic realm"), "{r}");
        let r = exchange(&mut s, format!("DESCRIBE rtsp://h/live RTSP/1.0\r\nCSeq: 3\r\nAuthorization: {}\r\n\r\n", basic("bad")).as_bytes()).await;
        assert!(r.starts_with("RTSP/1.0 401"), "{r}");
        let r = exchange(&mut s, b"GARBAGE\x00\xff\r\nfoo\r\n\r\n").await;
        assert!(r.starts_with("RTSP/1.0 400"), "{r}");
        let r = exchange(&mut s, b"OPTIONS * RTSP/1.0\r\nCSeq: 4\r\n\r\n").await;
        assert!(r.starts_with("RTSP/1.0 200") && r.contains("CSeq: 4"), "the same connection goes on: {r}");
        let r = exchange(&mut s, format!("DESCRIBE rtsp://h/live RTSP/1.0\r\nCSeq: 5\r\nAuthorization: {}\r\n\r\n", basic("good")).as_bytes()).await;
        assert!(r.starts_with("RTSP/1.0 200") && r.contains("application/sdp"), "{r}");
        let r = exchange(&mut s, format!("DESCRIBE rtsp://h/other RTSP/1.0\r\nCSeq: 6\r\nAuthorization: {}\r\n\r\n", basic("good")).as_bytes()).await;
        assert!(r.starts_with("RTSP/1.0 404"), "{r}");
        let r = exchange(&mut s, format!("PLAY rtsp://h/live RTSP/1.0\r\nCSeq: 7\r\nAuthorization: {}\r\n\r\n", basic("good")).as_bytes()).await;
        assert!(r.starts_with("RTSP/1.0 455"), "PLAY before SETUP: {r}");
        let r = exchange(&mut s, b"OPTIONS * RTSP/1.0\r\n\r\n").await;
        assert!(r.starts_with("RTSP/1.0 400"), "no CSeq: {r}");
        // an oversized request: 400 and closed
        let mut big = b"OPTIONS * RTSP/1.0\r\nCSeq: 8\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_REQUEST_BYTES + 10));
        let mut s2 = TcpStream::connect(addr).await.unwrap();
        let r = exchange(&mut s2, &big).await;
        assert!(r.starts_with("RTSP/1.0 400"), "{r}");
        // the cap: the first connection is still open; a second fits, a third gets 503
        let _s3 = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s4 = TcpStream::connect(addr).await.unwrap();
        let r = exchange(&mut s4, b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n").await;
        assert!(r.starts_with("RTSP/1.0 503"), "{r}");
    }

    #[tokio::test]
    async fn setup_and_play_over_tcp_send_interleaved_rtp() {
        let addr = server(4).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let auth = basic("good");
        let r = exchange(&mut s, format!("SETUP rtsp://h/live/trackID=1 RTSP/1.0\r\nCSeq: 1\r\nAuthorization: {auth}\r\nTransport: RTP/AVP/TCP;unicast;interleaved=2-3\r\n\r\n").as_bytes()).await;
        assert!(r.starts_with("RTSP/1.0 200") && r.contains("interleaved=2-3"), "{r}");
        let session = r.lines().find_map(|l| l.strip_prefix("Session: ")).unwrap().split(';').next().unwrap().to_string();
        let r = exchange(&mut s, format!("PLAY rtsp://h/live RTSP/1.0\r\nCSeq: 2\r\nAuthorization: {auth}\r\nSession: nope\r\n\r\n").as_bytes()).await;
        assert!(r.starts_with("RTSP/1.0 454"), "{r}");
        let r = exchange(&mut s, format!("PLAY rtsp://h/live RTSP/1.0\r\nCSeq: 3\r\nAuthorization: {auth}\r\nSession: {session}\r\n\r\n").as_bytes()).await;
        assert!(r.starts_with("RTSP/1.0 200"), "{r}");
        // Nothing publishes into this hub: the first bytes after PLAY's answer are the sender
        // report on the RTCP channel, or nothing — but the connection stays open and answers.
        let r = exchange(&mut s, format!("GET_PARAMETER rtsp://h/live RTSP/1.0\r\nCSeq: 4\r\nAuthorization: {auth}\r\nSession: {session}\r\n\r\n").as_bytes()).await;
        assert!(r.contains("RTSP/1.0 200") && r.contains("CSeq: 4"), "{r}");
        let r = exchange(&mut s, format!("TEARDOWN rtsp://h/live RTSP/1.0\r\nCSeq: 5\r\nAuthorization: {auth}\r\nSession: {session}\r\n\r\n").as_bytes()).await;
        assert!(r.contains("RTSP/1.0 200") && r.contains("CSeq: 5"), "{r}");
    }
}
