//! The running service: logging, start-up order, and a clean shutdown on SIGTERM/SIGINT.

use crate::config::Config;
use crate::http::{self, AppState};
use crate::hub::Hub;
use crate::pipeline::Pipeline;
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
    let hub = Hub::new();
    let pipeline = Arc::new(Pipeline::start(&config, hub.clone()).map_err(anyhow::Error::msg)?);
    let engine = RtcEngine::new(&config.webrtc).await.map_err(anyhow::Error::msg)?;
    let sessions = Sessions::new(engine, hub, config.webrtc.max_viewers.get() as usize);
    let state = AppState {
        sessions: sessions.clone(),
        pipeline: pipeline.clone(),
        max_body_bytes: config.http.max_body_bytes.get() as usize,
    };
    let app = http::router(state);
    let listen = config.http.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {listen}: {e} (set [http] listen to a free address:port)")
    })?;
    let local = listener.local_addr()?;
    log::info!("WebRTC media on UDP {}", sessions.udp_addr());
    log::info!(
        "video: {} {}x{} @ {} fps; audio: {}",
        pipeline.video.source, pipeline.video.width, pipeline.video.height, pipeline.video.fps, pipeline.audio.source
    );
    let shown = if local.ip().is_unspecified() {
        format!("http://localhost:{}/", local.port())
    } else {
        format!("http://{local}/")
    };
    // Tests and scripts wait for this exact phrase.
    log::info!("listening on {shown}");
    eprintln!("peercam: open {shown} in a browser");

    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    log::info!("shutting down");
    // Bounded: a stuck peer must not keep the service from exiting.
    let _ = tokio::time::timeout(Duration::from_millis(1500), sessions.close_all()).await;
    pipeline.shutdown();
    Ok(())
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
