//! The running service: logging, start-up order, and a clean shutdown on SIGTERM/SIGINT.

use crate::config::Config;
use crate::http::auth::Auth;
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

/// Journald when started by systemd with its journal connected, readable stderr otherwise.
/// `RUST_LOG` overrides the configured level. The WebRTC stack is noisy at info: it logs at warn.
pub fn init_logging(level: log::LevelFilter) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    if journal {
        if let Ok(logger) = systemd_journal_logger::JournalLog::new() {
            if logger.install().is_ok() {
                log::set_max_level(level);
                return;
            }
        }
    }
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level)
        .filter_module("webrtc", log::LevelFilter::Warn)
        .filter_module("webrtc_ice", log::LevelFilter::Warn)
        .filter_module("webrtc_dtls", log::LevelFilter::Warn)
        .filter_module("webrtc_srtp", log::LevelFilter::Warn)
        .filter_module("webrtc_sctp", log::LevelFilter::Warn)
        .filter_module("webrtc_mdns", log::LevelFilter::Warn)
        .filter_module("interceptor", log::LevelFilter::Warn)
        .format_timestamp_millis();
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    let _ = builder.try_init();
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // webrtc (DTLS) and rcgen use ring; make it rustls' provider before anything builds a config.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let hub = Hub::new();
    let pipeline = Arc::new(Pipeline::start(&config, hub.clone()).map_err(anyhow::Error::msg)?);
    let engine = RtcEngine::new(&config.webrtc).await.map_err(anyhow::Error::msg)?;
    let speaker = match config.speaker.device.as_str() {
        "" => {
            log::info!("talk-back is off ([speaker] device is empty)");
            None
        }
        device => Some(Speaker::new(device, config.speaker.volume_percent.get())),
    };
    let room = Room::new(pipeline.clone(), speaker, engine.udp_addr.port());
    let sessions = Sessions::new(engine, hub, room, config.webrtc.max_viewers.get() as usize);
    let auth = Arc::new(Auth::new(&config.auth));
    if !auth.password_set() {
        log::warn!(
            "no password is set: only clients on this machine (loopback) are served. \
             Run `peercam hash-password` and put the result in [auth] password_hash"
        );
    }
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
    let state = AppState {
        sessions: sessions.clone(),
        pipeline: pipeline.clone(),
        max_body_bytes: config.http.max_body_bytes.get() as usize,
        auth,
        tls: config.http.tls,
        peerjs: peerjs.clone(),
    };
    let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let listen = config.http.listen;
    let listener = bind(listen, "[http] listen")?;
    let local = listener.local_addr()?;
    let handle = axum_server::Handle::<SocketAddr>::new();
    let scheme = if config.http.tls { "https" } else { "http" };
    let header_timeout = Duration::from_secs(config.http.header_timeout_s.get() as u64);

    let server = if config.http.tls {
        let files = tls::cert_files(&config.http.tls_cert, &config.http.tls_key, &config.http.state_dir())
            .map_err(anyhow::Error::msg)?;
        let tls_config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
            .await
            .map_err(|e| anyhow::anyhow!("cannot load the TLS certificate {}: {e}", files.cert.display()))?;
        let mut server = axum_server::tls_rustls::from_tcp_rustls(listener, tls_config)?.handle(handle.clone());
        server.http_builder().http1().header_read_timeout(header_timeout);
        tokio::spawn(async move { server.serve(app).await })
    } else {
        let mut server = axum_server::from_tcp(listener)?.handle(handle.clone());
        server.http_builder().http1().header_read_timeout(header_timeout);
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
        let server = axum_server::from_tcp(listener)?.handle(handle.clone());
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
    handle.graceful_shutdown(Some(Duration::from_millis(300)));
    // Bounded: a stuck peer must not keep the service from exiting.
    let _ = tokio::time::timeout(Duration::from_millis(1000), sessions.close_all()).await;
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
