//! HTTP: the embedded page, WHEP and the JSON API, on one axum router.

use crate::pipeline::Pipeline;
use crate::rtc::session::Sessions;
use crate::signal::whep;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The page, embedded at build time: no files are needed at run time.
#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct WebAssets;

#[derive(Clone)]
pub struct AppState {
    pub sessions: Arc<Sessions>,
    pub pipeline: Arc<Pipeline>,
    pub max_body_bytes: usize,
}

pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/whep", post(whep::post))
        .route("/whep/{id}", axum::routing::delete(whep::delete).patch(whep::patch))
        .route("/api/settings", get(settings))
        .route("/{*path}", get(asset))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn index() -> Response {
    serve_asset("index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    serve_asset(&path)
}

fn serve_asset(path: &str) -> Response {
    match WebAssets::get(path) {
        Some(file) => {
            let mime = file.metadata.mimetype().to_string();
            (
                [(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, "no-cache".to_string())],
                file.data.into_owned(),
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no such page: /{path}\n")).into_response(),
    }
}

/// What is actually being sent (the getSettings of the W3C model) plus counters.
pub fn settings_json(app: &AppState) -> Value {
    let p = &app.pipeline;
    let mut video = serde_json::to_value(&p.video).unwrap_or(Value::Null);
    let mut audio = serde_json::to_value(&p.audio).unwrap_or(Value::Null);
    if let Value::Object(v) = &mut video {
        v.insert("encoded_frames".into(), json!(p.hub.video.units_published()));
        v.insert("keyframes".into(), json!(p.hub.video.keyframes_published()));
        v.insert("encoders_started".into(), json!(p.stats.encoders_started.load(Ordering::Relaxed)));
        v.insert("frames_captured".into(), json!(p.stats.frames_captured.load(Ordering::Relaxed)));
        v.insert("frames_dropped".into(), json!(p.stats.frames_dropped.load(Ordering::Relaxed)));
        v.insert("encode_ms".into(), json!(p.stats.encode_us.load(Ordering::Relaxed) as f64 / 1000.0));
    }
    if let Value::Object(a) = &mut audio {
        a.insert("encoded_frames".into(), json!(p.hub.audio.units_published()));
    }
    json!({
        "video": video,
        "audio": audio,
        "viewers": app.sessions.count(),
        "webrtc": { "udp_port": app.sessions.udp_addr().port() },
        "version": env!("CARGO_PKG_VERSION"),
    })
}

async fn settings(State(app): State<AppState>) -> Json<Value> {
    Json(settings_json(&app))
}
