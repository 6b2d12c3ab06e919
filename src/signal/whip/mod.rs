//! WHIP publishing (RFC 9725): the device sends its one encode to a media server or SFU
//! (`[publish] whip_url`), which serves the many viewers one Pi cannot upload to. See README.md
//! beside this file and docs/many-viewers.md.
//!
//! One task keeps one publication up:
//! 1. an SDP offer from `rtc::publish` (send-only H.264 + Opus; ICE gathering complete, so no
//!    trickle is needed), `POST`ed with `Content-Type: application/sdp` and the bearer token;
//! 2. `201 Created` → the `Location` (resolved against the URL: it may be relative) and the SDP
//!    answer; `307`/`308` are followed (3 at most); anything else is an error that says what;
//! 3. ICE + DTLS must come up within [`CONNECT_TIMEOUT`];
//! 4. while it lasts the publication is a hub reader like any viewer;
//! 5. when ICE loses the server (no consent within `[webrtc] peer_timeout_s`: the network
//!    dropped, the device's address changed) the device first tries an **ICE restart** on the
//!    same resource (RFC 9725 §4.4.1): a new offer with fresh credentials and candidates, sent as
//!    an ICE fragment in a `PATCH` with `If-Match: "*"`; the server's `200` fragment gives its new
//!    credentials, and ICE comes back under the same DTLS session, so the server's viewers keep
//!    their subscription. While the server cannot be reached the restart is retried (backoff)
//!    for [`RESTART_WINDOW`];
//! 6. a server that cannot restart (`405`/`501`: remembered, not asked again), forgot the
//!    resource (`404`: it restarted), or any other failure → the resource is `DELETE`d (best
//!    effort) and a new one is made after a capped exponential backoff with jitter (1 s doubling
//!    to `max_backoff_s`; reset by a publication that came up). The same failure again is logged
//!    once, not at every attempt.
//!
//! At shutdown (SIGTERM) the service calls [`WhipHandle::stop`]: the resource is `DELETE`d and
//! the peer connection closed, bounded in time. Not done: trickle ICE (the offer carries every
//! candidate), the `Link: rel="ice-server"` headers of the endpoint.
//!
//! The bearer token is never logged, and neither is the URL's path (some services make a stream
//! key of it): logs and `/api/settings` name the endpoint by `scheme://host[:port]` only.

pub mod proto;

use crate::rtc::publish::{Publication, Trouble};
use crate::rtc::session::Sessions;
use crate::signal::peerjs::remote::Backoff;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use proto::{Endpoint, LogOnce, Posted, Reply, RestartRefused, State, WhipError};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// One HTTP exchange with the endpoint: connect, TLS, request and the whole reply.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// ICE and DTLS must be up this long after the answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A `DELETE` when the publication is replaced (best effort: the server may be gone).
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);
/// An SDP answer is a few KiB; a reply larger than this is not read.
const MAX_REPLY_BYTES: usize = 64 * 1024;
const MAX_REDIRECTS: usize = 3;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long ICE restarts are tried while the server cannot be reached, before the publication
/// is replaced. A server keeps a session whose ICE went quiet for about this long (Janus: its
/// ICE failure and DTLS timeouts), so later a restart would mostly meet a `404`.
pub const RESTART_WINDOW: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct WhipSettings {
    pub url: String,
    /// Empty: no `Authorization` header.
    pub token: String,
    pub max_backoff: Duration,
    pub video: bool,
    pub audio: bool,
}

impl std::fmt::Debug for WhipSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the token nor the URL's path (see the module doc).
        let origin = Endpoint::parse(&self.url).map(|e| e.origin()).unwrap_or_default();
        f.debug_struct("WhipSettings")
            .field("url", &format!("{origin}/…"))
            .field("token", &if self.token.is_empty() { "" } else { "(set)" })
            .field("max_backoff", &self.max_backoff)
            .field("video", &self.video)
            .field("audio", &self.audio)
            .finish()
    }
}

/// What `/api/settings` shows as `publish`.
struct Status {
    state: State,
    origin: String,
    /// Unix ms when `state` was entered.
    since_ms: u64,
    /// Publications made after the first (republished by itself).
    reconnects: u64,
    /// Attempts that failed, in all.
    failures: u64,
    /// ICE restarts that brought the publication back on the same resource.
    ice_restarts: u64,
    last_error: Option<String>,
    video: bool,
    audio: bool,
}

impl Status {
    fn set(&mut self, state: State) {
        if self.state != state {
            self.state = state;
            self.since_ms = unix_ms();
        }
    }

    fn json(&self) -> Value {
        json!({
            "state": self.state.to_string(),
            "url_host": self.origin,
            "since": self.since_ms,
            "reconnects": self.reconnects,
            "failures": self.failures,
            "ice_restarts": self.ice_restarts,
            "last_error": self.last_error,
            "video": self.video,
            "audio": self.audio,
        })
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The running publisher.
pub struct WhipHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl WhipHandle {
    /// Ends the publication (`DELETE` of the resource, peer connection closed), waiting at most
    /// `within`.
    pub async fn stop(self, within: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(within, &mut task).await.is_err() {
            log::warn!("whip: did not stop within {within:?}; the endpoint may keep the resource until it times out");
            task.abort();
        }
    }
}

/// Starts publishing to `settings.url`, and shows its state in `/api/settings` as `publish`.
/// The URL must be valid (checked with the config).
pub fn start(settings: WhipSettings, sessions: Arc<Sessions>) -> Result<WhipHandle, String> {
    let endpoint = Endpoint::parse(&settings.url).map_err(|e| format!("[publish] whip_url: {e}"))?;
    let status = Arc::new(Mutex::new(Status {
        state: State::Connecting,
        origin: endpoint.origin(),
        since_ms: unix_ms(),
        reconnects: 0,
        failures: 0,
        ice_restarts: 0,
        last_error: None,
        video: settings.video,
        audio: settings.audio,
    }));
    let shown = Arc::clone(&status);
    sessions.room.add_settings_section("publish", Arc::new(move || shown.lock().unwrap_or_else(|e| e.into_inner()).json()));
    let (stop_tx, stop_rx) = watch::channel(false);
    log::info!(
        "whip: publishing {} to {} (WHIP)",
        match (settings.video, settings.audio) {
            (true, true) => "video and audio",
            (true, false) => "video",
            _ => "audio",
        },
        endpoint.origin()
    );
    let task = tokio::spawn(run(settings, endpoint, sessions, status, stop_rx));
    Ok(WhipHandle { stop: stop_tx, task })
}

/// A publication that is up, and the resource to `DELETE` when it ends.
struct Live {
    publication: Publication,
    resource: String,
}

async fn run(s: WhipSettings, endpoint: Endpoint, sessions: Arc<Sessions>, status: Arc<Mutex<Status>>, mut stop: watch::Receiver<bool>) {
    let origin = endpoint.origin();
    let set = |f: &dyn Fn(&mut Status)| f(&mut status.lock().unwrap_or_else(|e| e.into_inner()));
    let mut backoff = Backoff::new(FIRST_BACKOFF, s.max_backoff);
    let mut quiet = LogOnce::default();
    let mut published_before = false;
    // Until a server answers 405/501 to a restart.
    let mut restarts_supported = true;
    loop {
        set(&|st| st.set(State::Connecting));
        let attempt = tokio::select! {
            a = publish_once(&s, &sessions) => a,
            _ = stopped(&mut stop) => break,
        };
        match attempt {
            Ok(mut live) => {
                let unlogged = quiet.reset();
                let again = if unlogged > 0 { format!(" (after {} more failed attempts)", unlogged + 1) } else { String::new() };
                log::info!("whip: publishing to {origin}{again}");
                set(&|st| {
                    st.set(State::Publishing);
                    st.last_error = None;
                    if published_before {
                        st.reconnects += 1;
                    }
                });
                published_before = true;
                backoff.reset();
                let (why, resource_gone) = loop {
                    let trouble = tokio::select! {
                        t = live.publication.trouble() => t,
                        _ = stopped(&mut stop) => {
                            end(live, &s.token, &origin, "shutting down").await;
                            set(&|st| st.set(State::Stopped));
                            return;
                        }
                    };
                    let Trouble::Ended(why) = trouble else {
                        if !restarts_supported {
                            break ("ICE lost the media server (it does not support ICE restarts)".to_string(), false);
                        }
                        log::warn!("whip: ICE lost {origin}; restarting ICE on the same resource (PATCH)");
                        set(&|st| st.set(State::Restarting));
                        let restarted = tokio::select! {
                            r = restart_ice(&s, &mut live) => r,
                            _ = stopped(&mut stop) => {
                                end(live, &s.token, &origin, "shutting down").await;
                                set(&|st| st.set(State::Stopped));
                                return;
                            }
                        };
                        match restarted {
                            Ok(attempts) => {
                                log::info!("whip: ICE restarted{}; publishing to {origin} again on the same resource",
                                    if attempts > 1 { format!(" (at attempt {attempts})") } else { String::new() });
                                set(&|st| {
                                    st.set(State::Publishing);
                                    st.ice_restarts += 1;
                                });
                                continue;
                            }
                            Err(e) => {
                                let gone = matches!(e, RestartRefused::Gone { .. });
                                if matches!(e, RestartRefused::Unsupported { .. }) {
                                    restarts_supported = false;
                                }
                                break (format!("ICE lost; the ICE restart failed: {e}"), gone);
                            }
                        }
                    };
                    break (why, false);
                };
                log::warn!("whip: lost the publication to {origin}: {why}; publishing again");
                set(&|st| st.last_error = Some(format!("lost: {why}")));
                if resource_gone {
                    live.publication.close().await;
                } else {
                    end(live, &s.token, &origin, "lost").await;
                }
            }
            Err(e) => {
                let text = e.to_string();
                if quiet.first(&e.kind()) {
                    log::warn!("whip: {text} (retrying with a backoff up to {} s; the same error again is not logged)", s.max_backoff.as_secs());
                } else {
                    log::debug!("whip: {text}");
                }
                set(&|st| {
                    st.set(State::Retrying);
                    st.failures += 1;
                    st.last_error = Some(text.clone());
                });
            }
        }
        let wait = backoff.next(rand::random::<f64>());
        log::debug!("whip: next attempt in {:.1} s", wait.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut stop) => break,
        }
    }
    set(&|st| st.set(State::Stopped));
}

/// ICE restart on the same resource (RFC 9725 §4.4.1): a fresh offer's credentials and
/// candidates in a `PATCH`, the server's in its `200`; ICE must be up again within
/// [`CONNECT_TIMEOUT`]. A server that cannot be reached is asked again (1, 2, 4 … s) for
/// [`RESTART_WINDOW`]. Returns the attempts it took.
async fn restart_ice(s: &WhipSettings, live: &mut Live) -> Result<u32, RestartRefused> {
    let origin = Endpoint::parse(&live.resource).map(|e| e.origin()).unwrap_or_default();
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(FIRST_BACKOFF, s.max_backoff.min(Duration::from_secs(8)));
    let mut attempts = 0;
    loop {
        attempts += 1;
        // A new offer each time: the addresses may have changed since the last one.
        let offer = live.publication.restart_offer().await.map_err(|e| RestartRefused::Other(e.into()))?;
        let fragment = proto::restart_fragment(&offer)
            .map_err(|why| RestartRefused::Other(WhipError::Rtc(crate::rtc::publish::PublishError::RestartOffer(why))))?;
        let sent = request_with("PATCH", &live.resource, &s.token, Some((proto::SDPFRAG, fragment)), Some("\"*\"")).await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(e @ (WhipError::Connect { .. } | WhipError::Timeout { .. } | WhipError::Http { .. })) => {
                let wait = backoff.next(rand::random::<f64>());
                if started.elapsed() + wait > RESTART_WINDOW {
                    return Err(RestartRefused::Other(e));
                }
                log::debug!("whip: ICE restart: {e}; again in {:.1} s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(e) => return Err(RestartRefused::Other(e)),
        };
        let ice = proto::restarted(&reply, &origin, &s.token)?;
        let old = live.publication.remote_sdp().await.ok_or_else(|| {
            RestartRefused::Other(WhipError::BadAnswer { origin: origin.clone(), why: "no earlier answer to restart from".into() })
        })?;
        live.publication
            .accept_restart(&proto::restarted_answer(&old, &ice), CONNECT_TIMEOUT)
            .await
            .map_err(|e| RestartRefused::Other(e.into()))?;
        return Ok(attempts);
    }
}

/// Resolves once the service asked the publisher to stop (the guard `wait_for` returns is not
/// held across the awaits that follow).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

/// Closes the publication and deletes its resource (best effort, bounded).
async fn end(live: Live, token: &str, origin: &str, why: &str) {
    // DELETE first: a server still there then ends its side on purpose, not by a timeout.
    delete(&live.resource, token, origin, why).await;
    live.publication.close().await;
}

async fn delete(resource: &str, token: &str, origin: &str, why: &str) {
    let result = tokio::time::timeout(DELETE_TIMEOUT, request("DELETE", resource, token, None)).await;
    match result {
        Ok(Ok(r)) if (200..300).contains(&r.status) => log::info!("whip: resource on {origin} deleted ({why})"),
        // 404: the server already forgot it (it restarted): nothing left to do.
        Ok(Ok(r)) => log::debug!("whip: DELETE of the resource on {origin} ({why}): {}", r.status),
        Ok(Err(e)) => log::debug!("whip: DELETE of the resource on {origin} ({why}): {e}"),
        Err(_) => log::debug!("whip: DELETE of the resource on {origin} ({why}): no answer in {DELETE_TIMEOUT:?}"),
    }
}

/// Offer, POST, answer, connected — or the reason why not (the offer's peer connection and
/// any resource made on the way are cleaned up).
async fn publish_once(s: &WhipSettings, sessions: &Arc<Sessions>) -> Result<Live, WhipError> {
    let offer = sessions.publish_offer(s.video, s.audio).await?;
    let mut url = s.url.clone();
    let mut redirects = 0;
    let (resource, answer) = loop {
        let origin = Endpoint::parse(&url).map(|e| e.origin()).unwrap_or_default();
        let reply = match request("POST", &url, &s.token, Some(offer.sdp.clone())).await {
            Ok(r) => r,
            Err(e) => {
                offer.close().await;
                return Err(e);
            }
        };
        match proto::posted(&reply, &url, &origin, &s.token) {
            Ok(Posted::Created { resource, answer }) => break (resource, answer),
            Ok(Posted::Redirect(to)) if redirects < MAX_REDIRECTS => {
                redirects += 1;
                url = to;
            }
            Ok(Posted::Redirect(_)) => {
                offer.close().await;
                return Err(WhipError::Redirects { origin, max: MAX_REDIRECTS });
            }
            Err(e) => {
                offer.close().await;
                return Err(e);
            }
        }
    };
    let origin = Endpoint::parse(&resource).map(|e| e.origin()).unwrap_or_default();
    let mut publication = match offer.accept(&answer).await {
        Ok(p) => p,
        Err(e) => {
            delete(&resource, &s.token, &origin, "its answer was unusable").await;
            return Err(e.into());
        }
    };
    if let Err(e) = publication.connected(CONNECT_TIMEOUT).await {
        publication.close().await;
        delete(&resource, &s.token, &origin, "it did not connect").await;
        return Err(e.into());
    }
    Ok(Live { publication, resource })
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One HTTP/1.1 request on a fresh connection (TLS for `https://`, the system's CA bundle),
/// bounded in time and in the size of the reply read.
async fn request(method: &str, url: &str, token: &str, sdp: Option<String>) -> Result<Reply, WhipError> {
    request_with(method, url, token, sdp.map(|b| ("application/sdp", b)), None).await
}

/// [`request`] with any body type and an optional `If-Match`.
async fn request_with(
    method: &str,
    url: &str,
    token: &str,
    body: Option<(&str, String)>,
    if_match: Option<&str>,
) -> Result<Reply, WhipError> {
    let e = Endpoint::parse(url).map_err(|why| WhipError::Connect { origin: "(bad URL)".into(), why })?;
    let origin = e.origin();
    match tokio::time::timeout(HTTP_TIMEOUT, exchange(&e, method, token, body, if_match)).await {
        Ok(r) => r,
        Err(_) => Err(WhipError::Timeout { origin, seconds: HTTP_TIMEOUT.as_secs() }),
    }
}

async fn exchange(e: &Endpoint, method: &str, token: &str, body: Option<(&str, String)>, if_match: Option<&str>) -> Result<Reply, WhipError> {
    let origin = e.origin();
    let connect = |why: String| WhipError::Connect { origin: origin.clone(), why };
    let http = |why: String| WhipError::Http { origin: origin.clone(), why };
    let tcp = tokio::net::TcpStream::connect((e.host.as_str(), e.port)).await.map_err(|err| connect(err.to_string()))?;
    tcp.set_nodelay(true).ok();
    let io: Box<dyn Io> = if e.tls {
        let config = crate::signal::peerjs::remote::tls_config().map_err(&connect)?;
        let name = rustls_pki_types::ServerName::try_from(e.host.clone()).map_err(|err| connect(format!("TLS name: {err}")))?;
        Box::new(tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|err| connect(format!("TLS: {err}")))?)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(|err| http(err.to_string()))?;
    let conn = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(&e.path_and_query)
        .header(hyper::header::HOST, &e.authority)
        .header(hyper::header::USER_AGENT, concat!("peercam/", env!("CARGO_PKG_VERSION")));
    if !token.is_empty() {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some((content_type, _)) = &body {
        req = req.header(hyper::header::CONTENT_TYPE, *content_type).header(hyper::header::ACCEPT, *content_type);
    }
    if let Some(tag) = if_match {
        req = req.header(hyper::header::IF_MATCH, tag);
    }
    let req = req.body(Full::new(Bytes::from(body.map(|(_, b)| b).unwrap_or_default()))).map_err(|err| http(err.to_string()))?;
    let result = async {
        let response = sender.send_request(req).await.map_err(|err| http(err.to_string()))?;
        let header = |name: hyper::header::HeaderName| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (status, content_type, location) =
            (response.status().as_u16(), header(hyper::header::CONTENT_TYPE), header(hyper::header::LOCATION));
        let bytes = Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|err| http(format!("reading the reply (at most {MAX_REPLY_BYTES} bytes): {err}")))?
            .to_bytes();
        Ok(Reply { status, content_type, location, body: String::from_utf8_lossy(&bytes).into_owned() })
    }
    .await;
    conn.abort();
    result
}
