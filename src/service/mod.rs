//! The running service: logging, start-up order, and a clean shutdown on SIGTERM/SIGINT.

use crate::config::Config;
use crate::http::auth::Auth;
use crate::http::limits::{ConnLimits, LimitAcceptor};
use crate::http::{self, tls, AppState};
use std::net::SocketAddr;
use crate::hub::Hub;
use crate::pipeline::Pipeline;
use crate::rtc::room::Room;
use crate::rtc::talkback::speaker::Speaker;
use crate::rtc::session::Sessions;
use crate::rtc::RtcEngine;
use std::sync::Arc;
use std::time::Duration;

mod record;

/// The WebRTC stack's crates: noisy at info (every STUN check, every DTLS record), so they log
/// at warn at most, to the journal and to stderr alike.
const QUIET_CRATES: &[&str] = &["webrtc", "webrtc_ice", "webrtc_dtls", "webrtc_srtp", "webrtc_sctp", "webrtc_mdns", "webrtc_data", "webrtc_util", "interceptor", "rtp", "rtcp", "sdp", "stun", "turn"];

/// The most verbose level a log target may use: warn for [`QUIET_CRATES`] (and their modules).
fn target_limit(target: &str, level: log::LevelFilter) -> log::LevelFilter {
    let krate = target.split("::").next().unwrap_or(target);
    if QUIET_CRATES.contains(&krate) { level.min(log::LevelFilter::Warn) } else { level }
}

/// The journal logger behind the same per-crate limits as stderr (the journal logger itself
/// has only one level for everything).
struct Filtered<L> {
    inner: L,
    level: log::LevelFilter,
}

impl<L: log::Log> log::Log for Filtered<L> {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= target_limit(m.target(), self.level) && self.inner.enabled(m)
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            self.inner.log(r);
        }
    }
    fn flush(&self) {
        self.inner.flush();
    }
}

/// Journald when started by systemd with its journal connected, readable stderr otherwise.
/// `RUST_LOG` overrides the configured level on stderr. The WebRTC stack is noisy at info: it
/// logs at warn ([`QUIET_CRATES`]).
pub fn init_logging(level: log::LevelFilter) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if journal {
        if let Ok(logger) = systemd_journal_logger::JournalLog::new() {
            if log::set_boxed_logger(Box::new(Filtered { inner: logger, level })).is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    for krate in QUIET_CRATES {
        builder.filter_module(krate, log::LevelFilter::Warn);
    }
    builder.format_timestamp_millis();
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    let _ = builder.try_init();
}

/// hyper's own limits: the HTTP/1 header read (each request, keep-alive too), and for HTTP/2 a
/// bounded number of streams and header size. Idle connections of either kind end in
/// `http::limits::Guarded`; HTTP/2 keep-alive pings are left off, since a client answering
/// them would never count as idle.
/// (A macro: hyper-util's builder type is not a direct dependency to name.)
macro_rules! http_timeouts {
    ($builder:expr, $header_timeout:expr) => {{
        let b = $builder;
        b.http1().header_read_timeout($header_timeout);
        b.http2().max_concurrent_streams(32).max_header_list_size(64 * 1024);
    }};
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // webrtc (DTLS) and rcgen use ring; make it rustls' provider before anything builds a config.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let v = &config.video;
    let hub = Hub::with_ladder(crate::hub::ladder::LadderConfig::new(
        v.ladder,
        v.min_bitrate_kbps.get() * 1000,
        v.bitrate_kbps.get() * 1000,
    ));
    let pipeline = Arc::new(Pipeline::start(&config, hub.clone()).map_err(anyhow::Error::msg)?);
    let engine = RtcEngine::with_ice(&config.webrtc, &config.ice).await.map_err(anyhow::Error::msg)?;
    let speaker = match config.speaker.device.as_str() {
        "" => {
            log::info!("talk-back is off ([speaker] device is empty)");
            None
        }
        device => Some(Speaker::new(device, config.speaker.volume_percent.get())),
    };
    let room = Room::new(pipeline.clone(), speaker, engine.udp_addr.port());
    room.set_sounds_dir(config.http.state_dir().join("sounds"));
    // Events off the device: both read the room's event log and are off unless configured.
    let mqtt = crate::notify::mqtt::start(&config.mqtt, room.clone());
    crate::notify::webhook::start(&config.webhook, room.events().clone());
    if !config.sound.enabled {
        log::info!("sound analysis is off ([sound] enabled = false)");
    } else if config.sound.listen_without_viewers {
        log::info!("sound analysis: listening also while nobody watches ([sound] listen_without_viewers)");
    }
    let sessions = Sessions::new(engine, hub, room.clone(), config.webrtc.max_viewers.get() as usize);
    let auth = Arc::new(Auth::new(&config.auth));
    if !auth.password_set() {
        log::warn!(
            "no password is set: only clients on this machine (loopback) are served. \
             Run `peercam hash-password` and put the result in [auth] password_hash"
        );
    }
    let rtsp = if config.rtsp.enabled {
        let listener = bind(config.rtsp.listen, "[rtsp] listen")?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let auth = auth.clone();
        let state = crate::signal::rtsp::RtspState {
            hub: pipeline.hub.clone(),
            // The HTTP API's rules: a token (as the Basic password), or loopback while no
            // password is set (or with loopback_exempt). RTSP has no Host header to check and no
            // browser speaks it, so loopback counts as loopback here.
            authorize: Arc::new(move |ip, token| auth.decide(ip, true, None, token) == crate::http::auth::Decision::Allow),
            max_connections: config.rtsp.max_connections.get() as usize,
            session_timeout: Duration::from_secs(config.rtsp.session_timeout_s.get() as u64),
            profile_level_id: crate::codec::h264::PROFILE_LEVEL_ID,
            stats: Arc::new(crate::signal::rtsp::RtspStats::default()),
        };
        log::info!("RTSP on rtsp://{addr}/live");
        Some(tokio::spawn(crate::signal::rtsp::serve(listener, state)))
    } else {
        None
    };
    let recorder = record::start(&config, &pipeline, &room);
    let recorder_to_stop = recorder.clone();
    let peerjs = crate::signal::peerjs::PeerServer::new(&config.peerjs);
    if peerjs.enabled() {
        // The device answers PeerJS calls and data connections under its own ID.
        match peerjs.attach_local(&peerjs.device_id()) {
            Ok(me) => {
                tokio::spawn(crate::signal::peerjs::device::run(me, sessions.clone()));
            }
            Err(e) => log::error!("peerjs: the device cannot be peer {:?}: {e}", peerjs.device_id()),
        }
    }
    let viewer_tokens = Arc::new(crate::http::viewers::ViewerTokens::load(&config.http.state_dir()));
    if config.remote.enabled() {
        // The device's peer on an external PeerServer: remote viewers prove who they are with a
        // viewer token (docs/remote.md).
        let id = if config.remote.device_id.is_empty() { config.peerjs.device_id.0.clone() } else { config.remote.device_id.clone() };
        if !crate::config::is_valid_peer_id(&id) {
            anyhow::bail!("[remote] device_id {id:?} is not a PeerJS ID: letters and digits, with single spaces, _ or - between them, at most 64");
        }
        let settings = crate::signal::peerjs::remote::RemoteSettings {
            base: config.remote.peerserver.0.clone(),
            key: config.remote.key.0.clone(),
            id,
            heartbeat: Duration::from_secs(config.remote.heartbeat_s.get() as u64),
            max_backoff: Duration::from_secs(config.remote.max_backoff_s.get() as u64),
            max_message_bytes: config.peerjs.max_message_bytes.get() as usize,
        };
        let tokens = viewer_tokens.clone();
        crate::signal::peerjs::remote::start(settings, sessions.clone(), Arc::new(move |t: &str| tokens.check(t)));
    }
    // WHIP publishing to a media server (docs/many-viewers.md): a reader of the same encode.
    let whip = if config.publish.enabled() {
        let p = &config.publish;
        let settings = crate::signal::whip::WhipSettings {
            url: p.whip_url.0.clone(),
            token: p.bearer_token.0.clone(),
            max_backoff: Duration::from_secs(p.max_backoff_s.get() as u64),
            video: p.video,
            audio: p.audio,
        };
        Some(crate::signal::whip::start(settings, sessions.clone()).map_err(anyhow::Error::msg)?)
    } else {
        None
    };
    let state = AppState {
        sessions: sessions.clone(),
        pipeline: pipeline.clone(),
        max_body_bytes: config.http.max_body_bytes.get() as usize,
        auth,
        tls: config.http.tls,
        peerjs: peerjs.clone(),
        body_timeout: Duration::from_secs(config.http.header_timeout_s.get() as u64),
        own_names: Arc::new(crate::http::auth::own_names()),
        viewer_tokens,
        ice: Arc::new(crate::http::IcePage::from_config(&config)),
        recorder,
    };
    let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let listen = config.http.listen;
    let listener = bind(listen, "[http] listen")?;
    let local = listener.local_addr()?;
    let handle = axum_server::Handle::<SocketAddr>::new();
    let scheme = if config.http.tls { "https" } else { "http" };
    let header_timeout = Duration::from_secs(config.http.header_timeout_s.get() as u64);
    // One set of connection caps over every listener (the redirect port counts too).
    let limits = LimitAcceptor(ConnLimits::new(
        config.http.max_connections_per_client.get() as usize,
        config.http.max_connections.get() as usize,
        Duration::from_secs(config.http.idle_timeout_s.get() as u64),
    ));

    let server = if config.http.tls {
        let tls_config = tls_config(&config, &room).await?;
        // The handshake, then the first request, each within header_timeout_s.
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls_config)
            .handshake_timeout(header_timeout)
            .acceptor(limits.clone());
        let mut server = axum_server::from_tcp(listener)?
            .acceptor(acceptor)
            .first_request_timeout(header_timeout)
            .handle(handle.clone());
        http_timeouts!(server.http_builder(), header_timeout);
        tokio::spawn(async move { server.serve(app).await })
    } else {
        let mut server = axum_server::from_tcp(listener)?
            .acceptor(limits.clone())
            .first_request_timeout(header_timeout)
            .handle(handle.clone());
        http_timeouts!(server.http_builder(), header_timeout);
        tokio::spawn(async move { server.serve(app).await })
    };
    if let Some(redirect) = config.http.redirect_listen {
        let listener = bind(redirect, "[http] redirect_listen")?;
        let https_port = local.port();
        let redirect_app = axum::Router::new()
            .fallback(move |headers: axum::http::HeaderMap, uri: axum::http::Uri| async move {
                to_https(&headers, &uri, https_port)
            })
            .into_make_service();
        let mut server = axum_server::from_tcp(listener)?
            .acceptor(limits.clone())
            .first_request_timeout(header_timeout)
            .handle(handle.clone());
        http_timeouts!(server.http_builder(), header_timeout);
        tokio::spawn(async move { server.serve(redirect_app).await });
        log::info!("plain HTTP on {redirect} redirects to HTTPS");
    }

    log::info!("WebRTC media on UDP {}", sessions.udp_addr());
    let (video, audio) = (pipeline.video_settings(), pipeline.audio_settings());
    log::info!(
        "video: {} {}x{} @ {} fps; audio: {}",
        video.source, video.width, video.height, video.fps, audio.source
    );
    let shown = if local.ip().is_unspecified() {
        format!("{scheme}://localhost:{}/", local.port())
    } else {
        format!("{scheme}://{local}/")
    };
    // Tests and scripts wait for this exact phrase.
    log::info!("listening on {shown}");
    eprintln!("peercam: open {shown} in a browser");
    // Sockets are bound and the pipeline threads run: tell systemd (Type=notify).
    notify("READY=1");
    let watchdog = tokio::spawn(watchdog(pipeline.clone()));

    tokio::select! {
        _ = shutdown_signal() => {}
        result = server => {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::error!("HTTP server failed: {e}"),
                Err(e) => log::error!("HTTP server task failed: {e}"),
            }
        }
    }

    log::info!("shutting down");
    notify("STOPPING=1");
    watchdog.abort();
    if let Some(r) = &rtsp {
        r.abort();
    }
    if let Some(w) = whip {
        // DELETE of the resource, so the media server ends it now rather than at its timeout.
        w.stop(Duration::from_millis(1000)).await;
    }
    handle.graceful_shutdown(Some(Duration::from_millis(300)));
    // Bounded: a stuck peer must not keep the service from exiting.
    let _ = tokio::time::timeout(Duration::from_millis(1000), sessions.close_all()).await;
    if let Some(m) = &mqtt {
        // Retained `offline` now rather than the broker's will a keep-alive later.
        m.stop(Duration::from_millis(300)).await;
    }
    if let Some(r) = &recorder_to_stop {
        // The clip being written gets its last fragment and its length (nothing recorded lost).
        r.stop(Duration::from_millis(2000)).await;
    }
    pipeline.shutdown();
    Ok(())
}



/// sd_notify(3): one datagram to `$NOTIFY_SOCKET`, a path or (leading `@`) an abstract socket
/// name, as systemd, nspawn and containers use. Silently nothing when not started by systemd.
fn notify(state: &str) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let result = UnixDatagram::unbound().and_then(|sock| {
        let bytes = target.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), std::path::Path::new(&target))
        }
    });
    if let Err(e) = result {
        log::debug!("sd_notify {state}: {e}");
    }
}

fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e} (set {key} to a free address:port)"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn to_https(headers: &axum::http::HeaderMap, uri: &axum::http::Uri, port: u16) -> axum::response::Response {
    use axum::response::IntoResponse;
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map(|(name, _)| name).unwrap_or(h).trim_start_matches('[').trim_end_matches(']'))
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c)))
        .unwrap_or("localhost");
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let target = if port == 443 { format!("https://{host}{path}") } else { format!("https://{host}:{port}{path}") };
    axum::response::Redirect::permanent(&target).into_response()
}

/// The HTTPS certificate: the user's, else the self-signed one kept in the state directory. A
/// state directory that is full or read-only costs only the certificate's persistence: the
/// problem is logged (path and what to do) and shown in `/api/settings`; HTTPS and streaming go on.
async fn tls_config(config: &Config, room: &Room) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    use axum_server::tls_rustls::RustlsConfig;
    let state_dir = config.http.state_dir();
    let mut certs = tls::load_or_make(&config.http.tls_cert, &config.http.tls_key, &state_dir).map_err(anyhow::Error::msg)?;
    let loaded = RustlsConfig::from_pem(certs.cert.clone(), certs.key.clone()).await;
    let loaded = match (loaded, &certs.origin) {
        (Err(e), tls::Origin::Kept(path)) => {
            // Readable but not loadable (a damaged key, say): the device's own file, so make a new one.
            log::warn!("the kept HTTPS certificate {} cannot be loaded ({e}); making a new one", path.display());
            certs = tls::make(&state_dir);
            RustlsConfig::from_pem(certs.cert.clone(), certs.key.clone()).await
        }
        (r, _) => r,
    };
    let shown = match &certs.origin {
        tls::Origin::Given(p) | tls::Origin::Kept(p) | tls::Origin::Made(p) => p.display().to_string(),
        tls::Origin::Unsaved(_) => "a certificate made for this run".to_string(),
    };
    let loaded = loaded.map_err(|e| anyhow::anyhow!("cannot load the TLS certificate {shown}: {e}"))?;
    if let tls::Origin::Unsaved(why) = &certs.origin {
        log::error!("{why}");
        room.report_problem(why.clone());
    }
    Ok(loaded)
}

/// Sends WATCHDOG=1 at half the systemd interval, but only while the pipeline is healthy: a
/// capture thread that stopped looping means no keep-alive, and systemd restarts the service.
async fn watchdog(pipeline: Arc<Pipeline>) {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let period = interval / 2;
    let mut warned = false;
    loop {
        tokio::time::sleep(period).await;
        match pipeline.health() {
            Ok(()) => {
                warned = false;
                notify("WATCHDOG=1");
            }
            Err(why) => {
                if !warned {
                    log::error!("withholding the watchdog keep-alive: {why}");
                    warned = true;
                }
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot listen for SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webrtc_crates_log_at_warn_at_most_even_in_the_journal() {
        struct Sink(std::sync::Mutex<Vec<String>>);
        impl log::Log for Sink {
            fn enabled(&self, _: &log::Metadata) -> bool {
                true
            }
            fn log(&self, r: &log::Record) {
                self.0.lock().unwrap().push(format!("{} {}", r.level(), r.target()));
            }
            fn flush(&self) {}
        }
        let f = Filtered { inner: Sink(Default::default()), level: log::LevelFilter::Debug };
        let rec = |level, target| log::Record::builder().level(level).target(target).args(format_args!("x")).build();
        use log::Log;
        f.log(&rec(log::Level::Info, "webrtc_ice::agent"));
        f.log(&rec(log::Level::Debug, "webrtc"));
        f.log(&rec(log::Level::Warn, "webrtc_dtls::conn"));
        f.log(&rec(log::Level::Debug, "peercam::http"));
        f.log(&rec(log::Level::Info, "interceptor::twcc"));
        assert_eq!(*f.inner.0.lock().unwrap(), vec!["WARN webrtc_dtls::conn", "DEBUG peercam::http"]);
    }
}
