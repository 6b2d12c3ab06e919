//! HTTP: the embedded page, WHEP and the JSON API, on one axum router, all behind `auth`.
//!
//! This layer mounts `signal`'s routers (WHEP, PeerJS) and hands them their sub-states
//! (`FromRef`); it tells them which login a request belongs to with a `signal::Owner` request
//! extension. Every request passes `guard` (credentials, cross-site and `Host` checks) and
//! `read_body` (the body within `header_timeout_s`), every response `security_headers`.

pub mod auth;
pub mod limits;
mod recordings;
pub mod tls;
pub mod viewers;

use crate::pipeline::Pipeline;
use crate::rtc::session::Sessions;
use crate::rtc::control::{self, ControlError};
use crate::rtc::room::Origin;
use crate::signal::peerjs::PeerJsState;
use crate::signal::whep::{self, WhepState};
use crate::signal::Owner;
use axum::extract::FromRef;
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
use std::time::Duration;

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
    /// A request body must arrive within this (`[http] header_timeout_s`).
    pub body_timeout: Duration,
    /// Names of this machine trusted in `Host:` for loopback trust ([`auth::own_names`]).
    pub own_names: Arc<Vec<String>>,
    /// Viewer tokens for remote viewers (`metadata.token` of a PeerJS call through `[remote]`).
    pub viewer_tokens: Arc<viewers::ViewerTokens>,
    /// STUN/TURN for the page (`GET /api/ice`): `[webrtc] ice_servers` + `[ice]`.
    pub ice: Arc<IcePage>,
    /// The recorder (`[record]`); `None` when recording is off.
    pub recorder: Option<Arc<crate::pipeline::record::Recorder>>,
}

/// What `GET /api/ice` hands out.
pub struct IcePage {
    /// Servers with fixed credentials (from the config).
    pub servers: Vec<crate::config::IceServer>,
    /// coturn's shared secret, the URLs and lifetime of minted credentials (`[ice] turn_*`).
    pub turn: Option<(crate::config::Secret, Vec<String>, u64)>,
}

impl IcePage {
    pub fn from_config(c: &crate::config::Config) -> Self {
        let servers = c.webrtc.ice_servers.iter().chain(&c.ice.servers).cloned().collect();
        let turn = c.ice.mints_turn().then(|| {
            (c.ice.turn_secret.clone(), c.ice.turn_urls.iter().map(|u| u.0.clone()).collect(), c.ice.turn_ttl_s.get() as u64)
        });
        Self { servers, turn }
    }
}

impl FromRef<AppState> for WhepState {
    fn from_ref(app: &AppState) -> Self {
        let sessions = app.sessions.clone();
        WhepState {
            sessions: app.sessions.clone(),
            max_body_bytes: app.max_body_bytes,
            // A WHEP session opened with a token minted for a browser login ends at its logout.
            on_owned: Arc::new(move |id, owner| sessions.set_owner(id, auth::LoginId::from(owner))),
        }
    }
}

impl FromRef<AppState> for PeerJsState {
    fn from_ref(app: &AppState) -> Self {
        let auth = app.auth.clone();
        PeerJsState { peerjs: app.peerjs.clone(), token_valid: Arc::new(move |t| auth.token_valid(t)) }
    }
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
        .route("/api/lullaby", get(lullaby_status).post(lullaby))
        .route("/api/sound", get(sound).post(set_sound))
        .route("/api/events", get(events))
        .route("/api/snapshot.jpg", get(snapshot))
        .route("/api/motion", get(motion).post(set_motion))
        .route("/api/recordings", get(recordings::list))
        .route("/api/recordings/{name}", get(recordings::download).delete(recordings::delete))
        .route("/api/test-pattern", get(test_pattern).post(set_test_pattern))
        .route("/api/night", get(night).post(set_night))
        .route("/api/token", post(mint_token))
        .route("/api/ice", get(ice_servers))
        .route("/api/viewer-tokens", get(list_viewer_tokens).post(create_viewer_token))
        .route("/api/viewer-tokens/{id}", axum::routing::delete(revoke_viewer_token))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/peerjs-demo", get(|| async { serve_asset("peerjs-demo.html") }))
        .merge(crate::signal::peerjs::routes())
        .route("/{*path}", get(asset))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn_with_state(state.clone(), security_headers))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The page's Content-Security-Policy: only the device's own scripts (no inline script, no
/// eval), inline styles (the small pages carry a `<style>`), media and WebSockets to itself,
/// never framed (clickjacking), forms post only to itself.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
                   media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// Security headers on every response; HSTS only over HTTPS (a browser ignores it over HTTP).
async fn security_headers(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    if app.tls {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    r
}

/// Reads a request body to its end within `body_timeout` (a client sending one byte every few
/// seconds cannot hold a connection and a task) and within `max_body_bytes`, then hands it on.
async fn read_body(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let limit = app.max_body_bytes;
    let too_large = || (StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than the limit of {limit} bytes\n")).into_response();
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return too_large();
    }
    let (parts, mut body) = req.into_parts();
    let deadline = tokio::time::Instant::now() + app.body_timeout;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        use axum::body::HttpBody;
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout_at(deadline, frame).await {
            Err(_) => {
                log::info!("{} {}: request body not received within {} s", parts.method, parts.uri.path(), app.body_timeout.as_secs());
                let mut r = (StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time\n").into_response();
                r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return (StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}\n")).into_response(),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return too_large();
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(buf))).await
}

/// Whether a browser sent this request from another site: `Sec-Fetch-Site` says so, or the
/// `Origin` is not this host. Requests without either header (curl, scripts, WHEP clients,
/// old browsers on same-origin GETs) are not cross-site by this test.
fn cross_site(headers: &HeaderMap, host: Option<&str>) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("Sec-Fetch-Site: {site}"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
        let same = host.is_some_and(|h| !authority.is_empty() && authority.eq_ignore_ascii_case(h));
        if !same {
            return Some(format!("Origin: {origin} is not {}", host.unwrap_or("this host")));
        }
    }
    None
}

/// The host the client asked for: `Host:` (HTTP/1) or the URI's authority (HTTP/2).
fn request_host(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
}

fn forbidden(msg: String) -> Response {
    (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg + "\n").into_response()
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

fn session_cookie(headers: &HeaderMap, tls: bool) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|h| auth::cookie_value(h, auth::cookie_name(tls)))
}

/// Every request passes here: page, API, WHEP, signaling, WebSocket upgrades alike.
async fn guard(State(app): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let host = request_host(&req);
    // Cross-site requests that change state, and cross-site WebSocket upgrades, are refused
    // whatever their credentials: SameSite=Strict does not stop a sibling host (another *.lan
    // name is the same site), and WebSockets are not subject to CORS at all.
    let upgrade = req.headers().get(header::UPGRADE).is_some();
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if (changes_state || upgrade)
        && let Some(why) = cross_site(req.headers(), host.as_deref())
    {
        log::info!("refused a cross-site {} {path} from {peer} ({why})", req.method());
        return forbidden(format!("cross-site request refused ({why})"));
    }
    if is_public(&path) {
        return next.run(req).await;
    }
    let host_local = host.as_deref().is_some_and(|h| auth::host_is_local(h, &app.own_names));
    let headers = req.headers();
    // WHEP is for programs: bearer tokens only (draft-ietf-wish-whep), never the browser's cookie.
    let cookie = if path.starts_with("/whep") { None } else { session_cookie(headers, app.tls) };
    let mut token = bearer(headers).map(str::to_string);
    let mut decision = app.auth.decide(peer.ip(), host_local, cookie, token.as_deref());
    // Browsers cannot set headers on a WebSocket: PeerJS clients may pass a bearer token as their
    // PeerJS `key` instead (see `peerjs::key_in_request`).
    if decision == Decision::NeedsLogin
        && let Some(key) = crate::signal::peerjs::key_in_request(req.uri())
    {
        decision = app.auth.decide(peer.ip(), host_local, cookie, Some(&key));
        token = Some(key);
    }
    match decision {
        Decision::Allow => {
            // What this request opens ends with the login it came with.
            if let Some(login) = app.auth.login_of(cookie, token.as_deref()) {
                req.extensions_mut().insert::<Owner>(login.owner());
            }
            next.run(req).await
        }
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
    if let Some(c) = session_cookie(&headers, app.tls) {
        if let Some(login) = app.auth.logout(c) {
            // Sockets first: a PeerJS call the device is answering right now checks its socket
            // after it is marked as this login's, so it is ended either here or by that check.
            let sockets = app.peerjs.end_owned_by(login.owner());
            if sockets > 0 {
                log::info!("logout closed {sockets} PeerJS socket(s) of that login");
            }
            // WHEP sessions of the login's minted tokens, and PeerJS calls and data connections
            // to the device made through its sockets.
            let ended = app.sessions.end_owned_by(login).await;
            if ended > 0 {
                log::info!("logout ended {ended} viewer session(s) of that login (WHEP and PeerJS calls)");
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
    let token = session_cookie(&headers, app.tls).and_then(|c| app.auth.mint_token(c));
    Json(json!({ "token": token, "password_set": app.auth.password_set() }))
}

/// `GET /api/ice`: the ICE servers for this client's `RTCPeerConnection` (`iceServers`), with TURN
/// credentials minted for it when `[ice] turn_secret` is set (TURN REST API: `username` =
/// `<expiry-unix>:<who>`, `credential` = base64(HMAC-SHA1(secret, username))). Behind the login
/// like every `/api` route: an unauthenticated client gets 401 and no credentials.
async fn ice_servers(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let mut list: Vec<Value> = app
        .ice
        .servers
        .iter()
        .map(|s| {
            let mut v = json!({ "urls": s.urls.iter().map(|u| u.0.clone()).collect::<Vec<_>>() });
            if !s.username.is_empty() {
                v["username"] = json!(s.username);
                v["credential"] = json!(s.credential);
            }
            v
        })
        .collect();
    let mut ttl = Value::Null;
    let mut expires = Value::Null;
    if let Some((secret, urls, ttl_s)) = &app.ice.turn {
        // `who` names the viewer in coturn's log without revealing a secret: a login's id prefix.
        let who = app
            .auth
            .login_of(session_cookie(&headers, app.tls), bearer(&headers))
            .map(|l| format!("viewer-{}", &l.short()))
            .unwrap_or_else(|| "viewer".into());
        let now = crate::rtc::ice::unix_now();
        let (username, credential) = crate::rtc::ice::turn_credentials(&secret.0, &who, now, *ttl_s);
        list.push(json!({ "urls": urls, "username": username, "credential": credential }));
        ttl = json!(ttl_s);
        expires = json!(now + ttl_s);
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "iceServers": list, "ttl_s": ttl, "expires_unix": expires })),
    )
        .into_response()
}

/// `GET /api/viewer-tokens`: the viewer tokens (id, name, created; never the token).
async fn list_viewer_tokens(State(app): State<AppState>) -> Json<Value> {
    let list: Vec<Value> = app.viewer_tokens.list().iter().map(|e| e.public_json()).collect();
    Json(json!({ "tokens": list }))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct NewViewerToken {
    name: String,
}

/// `POST /api/viewer-tokens` `{"name": "grandma"}` → 201 `{id, name, created_unix, token}`: the
/// token is shown this once (only its SHA-256 is kept).
async fn create_viewer_token(State(app): State<AppState>, headers: HeaderMap, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let req: NewViewerToken = match &body {
        Ok(b) if b.is_empty() => NewViewerToken::default(),
        _ => match json_body::<NewViewerToken>(&headers, &body) {
            Ok(r) => r,
            Err(e) => return control_response(Err(e)),
        },
    };
    let store = app.viewer_tokens.clone();
    let now = crate::rtc::ice::unix_now();
    match tokio::task::spawn_blocking(move || store.create(&req.name, now)).await {
        Ok(Ok((entry, token))) => {
            log::info!("viewer token {} ({:?}) created", entry.id, entry.name);
            let mut v = entry.public_json();
            v["token"] = json!(token);
            (StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(v)).into_response()
        }
        Ok(Err(e)) => control_response(Err(ControlError::new("bad_request", e))),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `DELETE /api/viewer-tokens/<id>`: revoked now; the calls it opened end.
async fn revoke_viewer_token(State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let store = app.viewer_tokens.clone();
    let id2 = id.clone();
    match tokio::task::spawn_blocking(move || store.revoke(&id2)).await {
        Ok(Ok(Some(digest))) => {
            let ended = app.sessions.end_owned_by(crate::rtc::session::OwnerTag::new(digest)).await;
            log::info!("viewer token {id} revoked; {ended} call(s) it opened ended");
            Json(json!({ "revoked": id, "ended_sessions": ended })).into_response()
        }
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, Json(json!({ "error": { "code": "not_found", "message": format!("no viewer token {id:?}") } }))).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": { "code": "state_dir", "message": e } }))).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn index() -> Response {
    serve_asset("index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    serve_asset(&path)
}

/// The viewer page's files for hosting anywhere (`peercam export-page`): the page opened as
/// `…/#device=ID&token=…&server=…` calls the device through an external PeerServer
/// (docs/remote.md). The login, setup and PeerJS demo pages stay on the device.
const EXPORTED: [&str; 3] = ["index.html", "app.js", "style.css"];

/// Writes the page and `vendor/peerjs.min.js` (+ its licenses) into `dir` (made if missing);
/// returns the files written.
pub fn export_page(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, String> {
    let (js, license) = crate::signal::peerjs::client_library();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for name in EXPORTED {
        let file = WebAssets::get(name).ok_or_else(|| format!("{name} is not embedded in this build"))?;
        files.push((name.to_string(), file.data.into_owned()));
    }
    files.push(("vendor/peerjs.min.js".into(), js.to_vec()));
    files.push(("vendor/peerjs.LICENSE.txt".into(), license.to_vec()));
    let mut written = Vec::new();
    for (name, data) in files {
        let path = dir.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
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
                "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, Json(json!({ "error": e.to_json() }))).into_response()
        }
    }
}

/// Reads a JSON body as `T`, with the control protocol's errors (field named, no panic).
fn json_body<T: for<'de> serde::Deserialize<'de>>(headers: &HeaderMap, body: &Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Result<T, ControlError> {
    // Only `application/json`: a form or `text/plain` body is what a cross-site form can send
    // without a CORS preflight.
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ControlError::new("unsupported_media_type", format!("send the body as Content-Type: application/json (got {content_type:?})")));
    }
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
async fn apply_constraints(State(app): State<AppState>, headers: HeaderMap, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let result = match json_body::<control::Apply>(&headers, &body) {
        Ok(apply) => app.sessions.room.apply(Origin::Api, apply).await,
        Err(e) => Err(e),
    };
    control_response(result)
}

/// `POST /api/tracks`: `{"kind": "video"|"audio", "enabled": false}` — privacy mode for everyone.
/// `GET /api/lullaby`: what plays and the sounds there are.
async fn lullaby_status(State(app): State<AppState>) -> Response {
    let room = Arc::clone(&app.sessions.room);
    match tokio::task::spawn_blocking(move || room.lullaby_json()).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("lullaby status failed: {e}\n")).into_response(),
    }
}

/// `POST /api/lullaby`: the control channel's `lullaby`, e.g.
/// `{"action": "start", "sound": "pink", "volume_percent": 40, "timer_min": 45}` or `{"action": "stop"}`.
async fn lullaby(State(app): State<AppState>, headers: HeaderMap, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let result = match json_body::<Value>(&headers, &body).and_then(control::LullabyAction::from_json) {
        Ok(a) => app.sessions.room.handle(Origin::Api, control::Request::Lullaby(a)).await,
        Err(e) => Err(e),
    };
    control_response(result)
}

async fn set_tracks(State(app): State<AppState>, headers: HeaderMap, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let result = match json_body::<control::TrackEnabled>(&headers, &body) {
        Ok(t) => app.sessions.room.handle(Origin::Api, control::Request::SetTrackEnabled(t)).await,
        Err(e) => Err(e),
    };
    control_response(result)
}

/// `GET /api/sound`: thresholds, last level, which alerts are on.
async fn sound(State(app): State<AppState>) -> Response {
    control_response(app.sessions.room.handle(Origin::Api, control::Request::GetSound).await)
}

/// `POST /api/sound`: change thresholds live (only the keys given), e.g.
/// `{"noise_threshold_db": -40}` → what `GET /api/sound` shows.
async fn set_sound(State(app): State<AppState>, headers: HeaderMap, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let result = match json_body::<crate::pipeline::sound::SoundChange>(&headers, &body) {
        Ok(c) => app.sessions.room.handle(Origin::Api, control::Request::SetSound(c)).await,
        Err(e) => Err(e),
    };
    control_response(result)
}

#[derive(serde::Deserialize)]
struct SnapshotQuery {
    width: Option<String>,
}

/// Snapshots being encoded at once (each costs a frame copy and a JPEG encode): more get 503.
const MAX_SNAPSHOTS: usize = 2;
static SNAPSHOTS_NOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn json_error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// `GET /api/snapshot.jpg[?width=N]`: a JPEG of the next raw frame (the camera is opened for it
/// if nobody watches; no encoder starts). `width` (16–4096) scales it down, aspect kept.
async fn snapshot(State(app): State<AppState>, Query(q): Query<SnapshotQuery>) -> Response {
    use crate::pipeline::SnapshotError;
    use std::sync::atomic::Ordering;
    let width = match q.width.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(w) => match w.parse::<u32>() {
            Ok(w) if (16..=4096).contains(&w) => Some(w),
            _ => return json_error(StatusCode::BAD_REQUEST, "bad_width", format!("width must be a whole number from 16 to 4096 (got {w:?})")),
        },
    };
    struct Slot;
    impl Drop for Slot {
        fn drop(&mut self) {
            SNAPSHOTS_NOW.fetch_sub(1, Ordering::SeqCst);
        }
    }
    if SNAPSHOTS_NOW.fetch_add(1, Ordering::SeqCst) >= MAX_SNAPSHOTS {
        SNAPSHOTS_NOW.fetch_sub(1, Ordering::SeqCst);
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many snapshots at once; try again".into());
    }
    let _slot = Slot;
    let frame = match app.pipeline.snapshot().await {
        Ok(f) => f,
        Err(e) => {
            let (status, code) = match e {
                SnapshotError::Still(_) => (StatusCode::INTERNAL_SERVER_ERROR, "decode_failed"),
                SnapshotError::Paused => (StatusCode::CONFLICT, "paused"),
                SnapshotError::Offline(_) | SnapshotError::Busy | SnapshotError::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            return json_error(status, code, e.to_string());
        }
    };
    let captured_ms = frame.capture_unix_us / 1000;
    match tokio::task::spawn_blocking(move || crate::codec::jpeg::encode_i420(&frame, width)).await {
        Ok(Ok(jpeg)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (header::HeaderName::from_static("x-capture-time-ms"), HeaderValue::from(captured_ms)),
            ],
            jpeg,
        )
            .into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "encode_failed", e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "encode_failed", format!("the encoder task failed: {e}")),
    }
}

/// `GET /api/motion`: on/off, parameters, and the detector's state.
async fn motion(State(app): State<AppState>) -> Json<Value> {
    Json(app.sessions.room.motion())
}

/// `POST /api/motion`: change motion detection live (only the keys given), e.g.
/// `{"enabled": true, "min_area_percent": 2, "masks": [[0, 0, 1, 0.1]]}`.
async fn set_motion(State(app): State<AppState>, headers: HeaderMap, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let result = json_body::<crate::pipeline::motion::MotionChange>(&headers, &body).and_then(|c| app.sessions.room.set_motion(&c));
    control_response(result)
}

/// `GET /api/test-pattern`: `{"active": <the source is the test pattern>, "moving": …}`.
async fn test_pattern(State(app): State<AppState>) -> Json<Value> {
    let (active, moving) = app.pipeline.test_pattern();
    Json(json!({"active": active, "moving": moving, "dark": app.pipeline.test_pattern_dark()}))
}

/// `GET /api/night`: night vision's mode, state, lines and error.
async fn night(State(app): State<AppState>) -> Json<Value> {
    Json(app.sessions.room.night())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NightChange {
    mode: crate::pipeline::night::Mode,
}

/// `POST /api/night` `{"mode": "off"|"on"|"auto"|"watching"}`: for everyone, live; answers with
/// the status once the lines have been driven.
async fn set_night(State(app): State<AppState>, headers: HeaderMap, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    match json_body::<NightChange>(&headers, &body) {
        Ok(c) => control_response(app.sessions.room.set_night(c.mode, Origin::Api).await),
        Err(e) => control_response(Err(e)),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPatternChange {
    moving: Option<bool>,
    /// Drawn at an eighth of its brightness (a dark room, for night vision's `auto`).
    dark: Option<bool>,
}

/// `POST /api/test-pattern` `{"moving": false}`: stops (or restarts) the test pattern's box and
/// strip — a scene without (or with) motion.
/// `{"dark": true}` draws it dark (night vision's `auto`); either key may be left out.
async fn set_test_pattern(State(app): State<AppState>, headers: HeaderMap, body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    match json_body::<TestPatternChange>(&headers, &body) {
        Ok(c) => {
            if let Some(m) = c.moving {
                app.pipeline.set_test_pattern_moving(m);
            }
            if let Some(d) = c.dark {
                app.pipeline.set_test_pattern_dark(d);
            }
            test_pattern(State(app)).await.into_response()
        }
        Err(e) => control_response(Err(e)),
    }
}

/// Most event types a `?types=` filter may name.
const MAX_TYPE_FILTER: usize = 16;

#[derive(serde::Deserialize)]
struct EventsQuery {
    types: Option<String>,
}

/// `GET /api/events`: the control channel's events as Server-Sent Events. Each has `id:` (the
/// log's number) and `event:` (its name) and carries the same JSON object as `data:`.
/// `Last-Event-ID` (header, sent by `EventSource` on reconnect) replays what the log still holds
/// after it; `?types=noise,cry` keeps only those. Bounded: at most `rtc::events::MAX_SUBSCRIBERS`
/// streams at once (503 beyond); a stream that falls behind skips events rather than queueing.
async fn events(State(app): State<AppState>, headers: HeaderMap, Query(q): Query<EventsQuery>) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    let types: Option<Vec<String>> = q.types.as_deref().map(|t| {
        t.split(',').map(str::trim).filter(|s| !s.is_empty()).take(MAX_TYPE_FILTER).map(|s| s.chars().take(32).collect()).collect()
    });
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let sub = match app.sessions.room.events().subscribe(after) {
        Ok(s) => s,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], format!("{e}; try again later\n")).into_response(),
    };
    let wanted = move |name: &str| types.as_ref().is_none_or(|t| t.iter().any(|x| x == name));
    let to_sse = |e: &crate::rtc::events::Logged| SseEvent::default().id(e.id.to_string()).event(e.name).data(&*e.text);
    let mut first: Vec<Result<SseEvent, std::convert::Infallible>> = Vec::new();
    if sub.gap {
        // Some of what the client missed is gone: say so (a comment) before the rest.
        first.push(Ok(SseEvent::default().comment("some events were missed: the log no longer holds them")));
    }
    let mut last_sent = after.unwrap_or(0);
    for e in &sub.backlog {
        if wanted(e.name) {
            first.push(Ok(to_sse(e)));
        }
        last_sent = last_sent.max(e.id);
    }
    let stream = event_stream(first, sub.live, move |e| (e.id > last_sent && wanted(e.name)).then(|| to_sse(&e)), sub.place);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

/// The backlog, then the live feed (skipping what lagged), as a `Stream` (an unfold). `hold` keeps the subscription (its place) alive.
fn event_stream<F, H>(
    first: Vec<Result<axum::response::sse::Event, std::convert::Infallible>>,
    live: tokio::sync::broadcast::Receiver<Arc<crate::rtc::events::Logged>>,
    map: F,
    hold: H,
) -> impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>
where
    F: Fn(Arc<crate::rtc::events::Logged>) -> Option<axum::response::sse::Event> + Send + 'static,
    H: Send + 'static,
{
    use tokio::sync::broadcast::error::RecvError;
    let first = first.into_iter();
    futures_util::stream::unfold((first, live, map, hold), |(mut first, mut live, map, hold)| async move {
        if let Some(e) = first.next() {
            return Some((e, (first, live, map, hold)));
        }
        loop {
            match live.recv().await {
                Ok(e) => {
                    if let Some(ev) = map(e) {
                        return Some((Ok(ev), (first, live, map, hold)));
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
}
