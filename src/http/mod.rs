//! HTTP: the embedded page, WHEP and the JSON API, on one axum router, all behind `auth`.

pub mod auth;
pub mod tls;

use crate::pipeline::Pipeline;
use crate::rtc::session::Sessions;
use crate::rtc::control::{self, ControlError};
use crate::rtc::room::Origin;
use crate::signal::whep;
use auth::{Auth, Decision, LoginResult};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use std::net::SocketAddr;
use serde_json::{json, Value};
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
    pub auth: Arc<Auth>,
    /// Served over HTTPS: cookies get the Secure flag.
    pub tls: bool,
    /// PeerServer-compatible signaling (`/peerjs`), shared with the device's own PeerJS peer.
    pub peerjs: Arc<crate::signal::peerjs::PeerServer>,
}

pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/", get(index))
        .route("/whep", post(whep::post))
        .route("/whep/{id}", axum::routing::delete(whep::delete).patch(whep::patch))
        .route("/api/settings", get(settings))
        .route("/api/devices", get(devices))
        .route("/api/constraints", post(apply_constraints))
        .route("/api/tracks", post(set_tracks))
        .route("/api/token", post(mint_token))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/peerjs-demo", get(|| async { serve_asset("peerjs-demo.html") }))
        .merge(crate::signal::peerjs::routes())
        .route("/{*path}", get(asset))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Pages anyone may load: the login form and what it needs.
fn is_public(path: &str) -> bool {
    matches!(path, "/login" | "/style.css" | "/favicon.ico")
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| auth::cookie_value(h, auth::COOKIE))
}

/// Every request passes here: page, API, WHEP, signaling, WebSocket upgrades alike.
async fn guard(State(app): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if is_public(&path) {
        return next.run(req).await;
    }
    let headers = req.headers();
    // WHEP is for programs: bearer tokens only (RFC 9725), never the browser's cookie.
    let cookie = if path.starts_with("/whep") { None } else { session_cookie(headers) };
    let mut decision = app.auth.decide(peer.ip(), cookie, bearer(headers));
    // Browsers cannot set headers on a WebSocket: PeerJS clients may pass a bearer token as their
    // PeerJS `key` instead (see `peerjs::key_in_request`).
    if decision == Decision::NeedsLogin
        && let Some(key) = crate::signal::peerjs::key_in_request(req.uri())
    {
        decision = app.auth.decide(peer.ip(), cookie, Some(&key));
    }
    match decision {
        Decision::Allow => next.run(req).await,
        Decision::NeedsPasswordSetup => {
            let page = asset_text("setup.html").unwrap_or_else(|| "This camera has no password yet.".into());
            (StatusCode::FORBIDDEN, Html(page)).into_response()
        }
        Decision::NeedsLogin => {
            let wants_page = req.method() == Method::GET
                && !path.starts_with("/api/")
                && !path.starts_with("/whep")
                && !path.starts_with("/peerjs");
            if wants_page {
                Redirect::to("/login").into_response()
            } else {
                let mut r = (StatusCode::UNAUTHORIZED, "log in first, or send Authorization: Bearer <token>\n").into_response();
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"peercam\""));
                r
            }
        }
    }
}

fn asset_text(name: &str) -> Option<String> {
    WebAssets::get(name).map(|f| String::from_utf8_lossy(&f.data).into_owned())
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    e: Option<String>,
}

async fn login_page(State(app): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    login_response(&app, StatusCode::OK, q.e.as_deref())
}

fn login_response(app: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let message = match error {
        _ if !app.auth.password_set() => "No password is set on this camera yet: see the instructions below.",
        Some("wrong") => "Wrong password.",
        Some("wait") => "Too many wrong passwords: wait a moment, then try again.",
        _ => "",
    };
    let page = asset_text("login.html").unwrap_or_default().replace("{{message}}", message);
    (status, [(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    password: String,
}

async fn login(State(app): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, Form(form): Form<LoginForm>) -> Response {
    let auth = app.auth.clone();
    // Argon2 takes tens of milliseconds of CPU and ~19 MiB per check: off the async workers, and
    // at most two at once, so a burst of logins cannot exhaust a small board's memory.
    static ARGON2_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    let Ok(_slot) = ARGON2_SLOTS.acquire().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "login is unavailable\n").into_response();
    };
    let result = tokio::task::spawn_blocking(move || auth.login(peer.ip(), &form.password)).await;
    match result {
        Ok(LoginResult::Ok(cookie)) => {
            log::info!("login from {peer}");
            let ttl = app.auth.session_ttl();
            (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, "/".to_string()), (header::SET_COOKIE, auth::session_cookie(&cookie, app.tls, ttl))],
            )
                .into_response()
        }
        Ok(LoginResult::Wrong) => {
            log::warn!("wrong password from {peer}");
            login_response(&app, StatusCode::UNAUTHORIZED, Some("wrong"))
        }
        Ok(LoginResult::TooMany(wait)) => {
            log::warn!("login from {peer} refused: backing off for {} s", wait.as_secs() + 1);
            let mut r = login_response(&app, StatusCode::TOO_MANY_REQUESTS, Some("wait"));
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs() + 1));
            r
        }
        Ok(LoginResult::NoPasswordSet) => login_response(&app, StatusCode::FORBIDDEN, None),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("login failed: {e}\n")).into_response(),
    }
}

async fn logout(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(c) = session_cookie(&headers) {
        if let Some(login) = app.auth.logout(c) {
            let ended = app.sessions.end_owned_by(login).await;
            if ended > 0 {
                log::info!("logout ended {ended} viewer session(s) of that login");
            }
        }
    }
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/login".to_string()), (header::SET_COOKIE, auth::clear_cookie(app.tls))],
    )
        .into_response()
}

/// A bearer token for the page's own WHEP requests, valid until logout. `null` when this client
/// needs none (no password set, loopback).
async fn mint_token(State(app): State<AppState>, headers: HeaderMap) -> Json<Value> {
    let token = session_cookie(&headers).and_then(|c| app.auth.mint_token(c));
    Json(json!({ "token": token, "password_set": app.auth.password_set() }))
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
    app.sessions.room.settings()
}

async fn settings(State(app): State<AppState>) -> Json<Value> {
    Json(settings_json(&app))
}

/// Cameras and sound devices with everything they offer (`peercam devices --json`). Probing
/// does blocking ioctls, so it runs off the async runtime.
async fn devices() -> Response {
    match tokio::task::spawn_blocking(crate::capture::devices::list).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("device listing failed: {e}\n")).into_response(),
    }
}

/// A control reply as an HTTP response: the result, or the error object with a fitting status.
fn control_response(result: Result<Value, ControlError>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            let status = match e.code {
                "overconstrained" => StatusCode::UNPROCESSABLE_ENTITY,
                "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, Json(json!({ "error": e.to_json() }))).into_response()
        }
    }
}

/// Reads a JSON body as `T`, with the control protocol's errors (field named, no panic).
fn json_body<T: for<'de> serde::Deserialize<'de>>(body: &Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Result<T, ControlError> {
    let bytes = match body {
        Ok(b) => b,
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(ControlError::new("too_large", "the body is too large")),
        Err(r) => return Err(ControlError::new("bad_message", format!("cannot read the body: {r}"))),
    };
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ControlError::new("bad_json", format!("not JSON: {e}")))?;
    control::from_body(value)
}

/// `POST /api/constraints`: the control channel's `apply_constraints` for scripts, e.g.
/// `{"video": {"width": 640, "height": 360, "frame_rate": 15}}`.
async fn apply_constraints(State(app): State<AppState>, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let result = match json_body::<control::Apply>(&body) {
        Ok(apply) => app.sessions.room.apply(Origin::Api, apply).await,
        Err(e) => Err(e),
    };
    control_response(result)
}

/// `POST /api/tracks`: `{"kind": "video"|"audio", "enabled": false}` — privacy mode for everyone.
async fn set_tracks(State(app): State<AppState>, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let result = match json_body::<control::TrackEnabled>(&body) {
        Ok(t) => app.sessions.room.handle(Origin::Api, control::Request::SetTrackEnabled(t)).await,
        Err(e) => Err(e),
    };
    control_response(result)
}
