//! PeerJS compatibility: PeerServer-style signaling and the device as a PeerJS peer.
//!
//! Routes (all behind the HTTP guard; see `key_in_request` for how the PeerJS key doubles as a
//! bearer token):
//! - `GET /peerjs` — PeerServer's banner JSON;
//! - `GET /peerjs/{key}/id` — a fresh random ID, `text/plain` (the PeerJS client asks this when
//!   it was given no ID);
//! - `GET /peerjs/{key}/peers` — 401: discovery is off, as PeerServer's default;
//! - `GET /peerjs/peerjs?key=&id=&token=` — the signaling WebSocket;
//! - `GET /vendor/peerjs.min.js`, `/vendor/peerjs.LICENSE.txt` — the PeerJS client library,
//!   embedded at build time (see `build.rs`), for the demo page and any page on the device.
//!
//! The protocol logic is the pure state machine in [`server`]; this file only moves frames
//! between sockets and it, under limits: frame size, connected peers (config), a bounded send
//! queue per socket (a client that reads too slowly is dropped, never buffered without end),
//! bounded in frames and in bytes per socket and over all sockets together.

pub mod binarypack;
pub mod dataconn;
pub mod device;
pub mod remote;
pub mod server;

use super::Owner;
use crate::config::PeerJsConfig;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use server::{Action, ConnId, Hello, Server, ServerMsg, Settings};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub use server::{AttachError, Kind};

/// Frames waiting to be written to one socket. Above this the client is too slow and is dropped.
/// Larger than what one connect can flush at once (OPEN + a full queue of 64 messages).
const SEND_QUEUE: usize = 256;
/// Bytes waiting to be written to one socket. Above this the client is too slow and is dropped:
/// a count alone let 256 × 60 KB frames (15 MB) wait for each socket that never reads.
const SOCKET_QUEUE_BYTES: usize = 1024 * 1024;
/// Bytes waiting over all sockets together: 64 slow peers cannot take more than this (the board
/// has 512 MB); the socket whose frame would cross it is dropped.
const TOTAL_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// A socket that takes longer than this to accept one frame is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages waiting for the local peer's `recv()`.
const LOCAL_QUEUE: usize = 1024;
/// How often queues are expired and silent clients dropped (PeerServer: 300 ms and 1 s).
const TICK: Duration = Duration::from_millis(250);

/// A message for the device's own peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The sender's peer ID (set by the server, cannot be forged).
    pub src: String,
    pub kind: Kind,
    /// PeerServer's payload as the sender wrote it: for `OFFER` `{sdp: {type, sdp}, type:
    /// "media"|"data", connectionId, label?, reliable?, serialization?, metadata?}`, for
    /// `ANSWER` `{sdp, type, connectionId}`, for `CANDIDATE` `{candidate: {candidate, sdpMid,
    /// sdpMLineIndex, …}, type, connectionId}`, for `LEAVE` usually `{connectionId}`; `Null` for
    /// `EXPIRE` (then `src` is the ID that never came).
    pub payload: Value,
    /// The login whose cookie opened the sender's socket (none: a configured token, or no
    /// password): what the device's peer opens for this message ends at that login's logout.
    pub owner: Option<Owner>,
}

enum Outlet {
    /// A socket's send queue and the bytes in it (shared with the socket's writer).
    Ws(mpsc::Sender<String>, Arc<AtomicUsize>),
    Local(mpsc::Sender<Incoming>),
}

struct Inner {
    sm: Server,
    outlets: HashMap<ConnId, Outlet>,
    /// The login each socket was opened with (none: a token from the config, or no password).
    owners: HashMap<ConnId, Owner>,
    /// Bytes queued over all sockets (see `TOTAL_QUEUE_BYTES`).
    queued: Arc<AtomicUsize>,
}

/// What the PeerJS routes need, built by the layer that mounts them (axum `FromRef`).
#[derive(Clone)]
pub struct PeerJsState {
    pub peerjs: Arc<PeerServer>,
    /// Whether a PeerJS `key` is a valid bearer token (checked by the layer that knows tokens).
    pub token_valid: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

/// The signaling server: one per device, shared by the HTTP handlers and the device's own peer.
pub struct PeerServer {
    enabled: bool,
    max_message_bytes: usize,
    inner: Mutex<Inner>,
    next_conn: AtomicU64,
    ticking: AtomicBool,
}

impl PeerServer {
    pub fn new(cfg: &PeerJsConfig) -> Arc<Self> {
        let settings = Settings {
            key: cfg.key.0.clone(),
            device_id: cfg.device_id.0.clone(),
            expire_timeout: Duration::from_secs(cfg.expire_timeout_s.get() as u64),
            alive_timeout: Duration::from_secs(cfg.alive_timeout_s.get() as u64),
            max_peers: cfg.max_peers.get() as usize,
            ..Settings::default()
        };
        Arc::new(Self {
            enabled: cfg.enabled,
            max_message_bytes: cfg.max_message_bytes.get() as usize,
            inner: Mutex::new(Inner {
                sm: Server::new(settings),
                outlets: HashMap::new(),
                owners: HashMap::new(),
                queued: Arc::new(AtomicUsize::new(0)),
            }),
            next_conn: AtomicU64::new(1),
            ticking: AtomicBool::new(false),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The configured device ID (`[peerjs] device_id`).
    pub fn device_id(&self) -> String {
        self.lock().sm.settings().device_id.clone()
    }

    /// Browser peers connected now.
    pub fn peer_count(&self) -> usize {
        self.lock().sm.peer_count()
    }

    /// Attaches the device's own peer under `id` (normally [`PeerServer::device_id`]): from
    /// now on it is a connected peer like any browser, except that it needs no heartbeat and
    /// its ID is never given to a browser.
    ///
    /// How to use it (the device's PeerJS peer):
    /// ```ignore
    /// let mut me = peer_server.attach_local(&peer_server.device_id())?;
    /// let tx = me.sender();                       // Clone + Send: hand it to per-call tasks
    /// while let Some(m) = me.recv().await {
    ///     match m.kind {
    ///         // A browser's peer.call(id) / peer.connect(id): answer on the same connectionId.
    ///         Kind::Offer => {
    ///             let conn_id = m.payload["connectionId"].as_str();   // "mc_…" media, "dc_…" data
    ///             let media = m.payload["type"] == "media";
    ///             // … set m.payload["sdp"]["sdp"] as remote description, create the answer, then
    ///             // (data: the browser made the channel, label = connectionId; "serialization",
    ///             // "reliable", "metadata" are in the OFFER's payload — PeerJS's ANSWER has no more
    ///             // than the three fields below, and PeerJS reads nothing else from it)
    ///             tx.send(&m.src, Kind::Answer, json!({
    ///                 "sdp": {"type": "answer", "sdp": answer_sdp},
    ///                 "type": m.payload["type"], "connectionId": conn_id,
    ///             }));
    ///             // and for every local ICE candidate (trickle both ways):
    ///             // tx.send(&m.src, Kind::Candidate, json!({"candidate": c.to_json(),
    ///             //     "type": m.payload["type"], "connectionId": conn_id}));
    ///         }
    ///         // payload.candidate = RTCIceCandidateInit {candidate, sdpMid, sdpMLineIndex, usernameFragment};
    ///         // it may come before the OFFER was handled: keep it for that connectionId.
    ///         Kind::Candidate => { /* add_ice_candidate on payload["connectionId"] */ }
    ///         // PeerJS 1.5 never sends LEAVE (it just closes the RTCPeerConnection); others may.
    ///         Kind::Leave => { /* m.src is gone: close its connections (payload may be Null) */ }
    ///         Kind::Expire => { /* m.src never connected: a message we sent is undeliverable */ }
    ///         Kind::Answer => { /* only if the device made an offer itself */ }
    ///     }
    /// }
    /// // recv() returned None: detached (another attach_local took the ID). Dropping the
    /// // LocalPeer detaches it too; its ID is then free for the next attach_local only.
    /// ```
    /// `send` never blocks: a message for an ID that is not connected is queued as for browsers,
    /// and comes back as `EXPIRE` if that ID does not connect within `expire_timeout_s`.
    /// Must be called inside the tokio runtime (it starts the server's timer).
    pub fn attach_local(self: &Arc<Self>, id: &str) -> Result<LocalPeer, AttachError> {
        self.ensure_ticker();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(LOCAL_QUEUE);
        let mut inner = self.lock();
        let actions = inner.sm.attach_local(Instant::now(), conn, id)?;
        inner.outlets.insert(conn, Outlet::Local(tx));
        apply(&mut inner, actions);
        drop(inner);
        log::info!("peerjs: the device is peer {id:?}");
        Ok(LocalPeer { sender: LocalSender(SenderKind::Local { server: self.clone(), conn }), id: id.to_string(), rx })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not take signaling down with it: the state stays usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, f: impl FnOnce(&mut Server) -> Vec<Action>) {
        let mut inner = self.lock();
        let actions = f(&mut inner.sm);
        apply(&mut inner, actions);
    }

    fn close_conn(&self, conn: ConnId) {
        let mut inner = self.lock();
        inner.sm.disconnect(conn);
        inner.outlets.remove(&conn);
        inner.owners.remove(&conn);
    }

    /// Ends every socket opened by `owner` (its login ended): the peers are disconnected at
    /// once and their sockets closed after what is already queued. Returns how many.
    pub fn end_owned_by(&self, owner: Owner) -> usize {
        let mut inner = self.lock();
        let conns: Vec<ConnId> = inner.owners.iter().filter(|(_, o)| **o == owner).map(|(c, _)| *c).collect();
        for conn in &conns {
            inner.sm.disconnect(*conn);
            // Dropping the sender ends the socket's writer, which then closes it.
            inner.outlets.remove(conn);
            inner.owners.remove(conn);
        }
        conns.len()
    }

    /// Whether the socket holding peer `id` was opened by `owner` and is still there (a logout
    /// may have closed it while the device was answering its offer).
    pub fn is_owned_by(&self, id: &str, owner: Owner) -> bool {
        let inner = self.lock();
        inner.sm.conn_of(id).and_then(|c| inner.owners.get(&c)).is_some_and(|o| *o == owner)
    }

    /// Bytes waiting in all sockets' send queues now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().queued.load(Ordering::Relaxed)
    }

    /// One timer task per server, started with the first connection; it ends with the server.
    fn ensure_ticker(self: &Arc<Self>) {
        if self.ticking.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.ticking.store(false, Ordering::Release);
            return;
        };
        rt.spawn(async move {
            let mut every = tokio::time::interval(TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(server) = weak.upgrade() else { break };
                server.run(|sm| sm.tick(Instant::now()));
            }
        });
    }

    /// A socket connected: its connection number, the receiving end of its send queue, the ID
    /// it got (None: refused, the queue then holds the reason and is closed) and the peer count.
    fn open_socket(self: &Arc<Self>, hello: Hello<'_>, owner: Option<Owner>) -> OpenSocket {
        self.ensure_ticker();
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel::<String>(SEND_QUEUE);
        let mut inner = self.lock();
        let queued = Arc::new(AtomicUsize::new(0));
        inner.outlets.insert(conn, Outlet::Ws(tx, queued.clone()));
        if let Some(owner) = owner {
            inner.owners.insert(conn, owner);
        }
        let actions = inner.sm.connect(Instant::now(), conn, hello);
        apply(&mut inner, actions);
        OpenSocket {
            conn,
            rx: QueueRx { rx, queued, total: inner.queued.clone() },
            id: inner.sm.id_of(conn).map(str::to_string),
            peers: inner.sm.peer_count(),
        }
    }

    /// A fresh ID as PeerServer makes them (a random UUID), not in use.
    fn random_id(&self) -> String {
        let inner = self.lock();
        loop {
            let mut b: [u8; 16] = rand::random();
            b[6] = (b[6] & 0x0f) | 0x40; // version 4
            b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
            let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
            let id = format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]);
            if !inner.sm.is_connected(&id) {
                return id;
            }
        }
    }
}

/// A socket just opened: its number, its send queue, the ID it got (None: refused, the queue
/// then holds the reason and is closed) and the peer count.
struct OpenSocket {
    conn: ConnId,
    rx: QueueRx,
    id: Option<String>,
    peers: usize,
}

/// The receiving end of a socket's send queue; gives the bytes back to the budgets as frames
/// leave it, and all that is left when it is dropped.
struct QueueRx {
    rx: mpsc::Receiver<String>,
    queued: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl QueueRx {
    async fn recv(&mut self) -> Option<String> {
        let text = self.rx.recv().await?;
        self.queued.fetch_sub(text.len(), Ordering::Relaxed);
        self.total.fetch_sub(text.len(), Ordering::Relaxed);
        Some(text)
    }

    #[cfg(test)]
    fn try_recv(&mut self) -> Result<String, mpsc::error::TryRecvError> {
        let text = self.rx.try_recv()?;
        self.queued.fetch_sub(text.len(), Ordering::Relaxed);
        self.total.fetch_sub(text.len(), Ordering::Relaxed);
        Ok(text)
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(text) = self.rx.try_recv() {
            self.queued.fetch_sub(text.len(), Ordering::Relaxed);
            self.total.fetch_sub(text.len(), Ordering::Relaxed);
        }
    }
}

/// Queues one frame for a socket within the budgets; `false`: the socket must be dropped
/// (too slow, or gone).
fn enqueue(tx: &mpsc::Sender<String>, queued: &AtomicUsize, total: &AtomicUsize, text: String, who: &str) -> bool {
    let n = text.len();
    let mine = queued.load(Ordering::Relaxed);
    let all = total.load(Ordering::Relaxed);
    if mine + n > SOCKET_QUEUE_BYTES {
        log::warn!("peerjs: {who:?} reads too slowly ({} KiB waiting), dropping it", mine / 1024);
        return false;
    }
    if all + n > TOTAL_QUEUE_BYTES {
        log::warn!("peerjs: {} KiB wait for slow sockets in all; dropping {who:?}", all / 1024);
        return false;
    }
    // Counted before the frame is visible to the writer, which subtracts it.
    queued.fetch_add(n, Ordering::Relaxed);
    total.fetch_add(n, Ordering::Relaxed);
    match tx.try_send(text) {
        Ok(()) => true,
        Err(e) => {
            queued.fetch_sub(n, Ordering::Relaxed);
            total.fetch_sub(n, Ordering::Relaxed);
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                log::warn!("peerjs: {who:?} reads too slowly ({SEND_QUEUE} frames waiting), dropping it");
            }
            false
        }
    }
}

/// Carries out the state machine's actions. A socket whose send queue is full is dropped, and
/// whatever that causes is carried out too.
fn apply(inner: &mut Inner, actions: Vec<Action>) {
    let mut work: VecDeque<Action> = actions.into();
    while let Some(action) = work.pop_front() {
        match action {
            Action::Send(conn, msg) => {
                let gone = match inner.outlets.get(&conn) {
                    None => false,
                    Some(Outlet::Ws(tx, queued)) => {
                        let who = inner.sm.id_of(conn).unwrap_or("?");
                        !enqueue(tx, queued, &inner.queued, msg.to_json(), who)
                    }
                    Some(Outlet::Local(tx)) => {
                        let ServerMsg::Relay(r) = msg else { continue };
                        let owner = inner.sm.conn_of(&r.src).and_then(|c| inner.owners.get(&c)).copied();
                        let incoming = Incoming { src: r.src, kind: r.kind, payload: r.payload.unwrap_or(Value::Null), owner };
                        match tx.try_send(incoming) {
                            Ok(()) => false,
                            Err(mpsc::error::TrySendError::Full(m)) => {
                                // The device's peer is ours: drop the message, keep the peer.
                                log::warn!("peerjs: the device's peer is not reading; dropped {} from {:?}", m.kind.as_str(), m.src);
                                false
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => true,
                        }
                    }
                };
                if gone {
                    // Dropping the sender ends the socket's writer, which then closes it.
                    inner.outlets.remove(&conn);
                    inner.owners.remove(&conn);
                    inner.sm.disconnect(conn);
                }
            }
            Action::Close(conn) => {
                inner.outlets.remove(&conn);
            }
        }
    }
}

/// The device's own peer: attached to the device's PeerServer with [`PeerServer::attach_local`]
/// (dropping it detaches), or connected to an external PeerServer ([`remote`]). `device.rs`
/// answers through either the same way.
pub struct LocalPeer {
    sender: LocalSender,
    id: String,
    rx: mpsc::Receiver<Incoming>,
}

impl LocalPeer {
    /// A peer on an external PeerServer: messages come in on `rx`, and go out as JSON frames on
    /// `out` (a bounded queue the client's socket writer drains; full → dropped).
    pub(crate) fn remote(id: String, out: mpsc::Sender<String>, rx: mpsc::Receiver<Incoming>) -> Self {
        LocalPeer { sender: LocalSender(SenderKind::Remote(out)), id, rx }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next message for the device's ID; `None` once detached (replaced by another
    /// `attach_local` of the same ID, or the remote client ended).
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.rx.recv().await
    }

    /// Relays a message to peer `dst` with `src` = this peer's ID. Never blocks.
    pub fn send(&self, dst: &str, kind: Kind, payload: Value) {
        self.sender.send(dst, kind, payload)
    }

    /// A cloneable handle that can send while another task waits in `recv`.
    pub fn sender(&self) -> LocalSender {
        self.sender.clone()
    }
}

impl Drop for LocalPeer {
    fn drop(&mut self) {
        if let SenderKind::Local { server, conn } = &self.sender.0 {
            server.close_conn(*conn);
        }
    }
}

/// Sends as the device's peer; does nothing once the [`LocalPeer`] is gone.
#[derive(Clone)]
pub struct LocalSender(SenderKind);

#[derive(Clone)]
enum SenderKind {
    Local { server: Arc<PeerServer>, conn: ConnId },
    Remote(mpsc::Sender<String>),
}

impl LocalSender {
    pub fn send(&self, dst: &str, kind: Kind, payload: Value) {
        match &self.0 {
            SenderKind::Local { server, conn } => server.run(|sm| sm.send_from(Instant::now(), *conn, kind, dst, payload)),
            SenderKind::Remote(out) => {
                // A client's message: PeerServer sets `src` itself.
                let frame = serde_json::json!({ "type": kind.as_str(), "dst": dst, "payload": payload }).to_string();
                if out.try_send(frame).is_err() {
                    log::warn!("peerjs remote: {} for {dst:?} dropped (not connected, or the send queue is full)", kind.as_str());
                }
            }
        }
    }

    /// Whether the socket holding peer `id` was opened by `owner` and is still there (see
    /// [`PeerServer::is_owned_by`]); always false on an external PeerServer (no logins there).
    pub fn is_owned_by(&self, id: &str, owner: Owner) -> bool {
        match &self.0 {
            SenderKind::Local { server, .. } => server.is_owned_by(id, owner),
            SenderKind::Remote(_) => false,
        }
    }
}

// ---- HTTP ----------------------------------------------------------------------------------

/// The PeerJS routes, merged into the device's router (behind its auth guard).
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    PeerJsState: axum::extract::FromRef<S>,
{
    Router::new()
        .route("/peerjs", get(banner))
        .route("/peerjs/", get(banner))
        .route("/peerjs/peerjs", get(websocket))
        .route("/peerjs/{key}/id", get(new_id))
        .route("/peerjs/{key}/peers", get(peers))
        .route("/vendor/peerjs.min.js", get(client_js))
        .route("/vendor/peerjs.LICENSE.txt", get(client_license))
}

/// The PeerJS key a request carries, as a bearer-token candidate for the auth guard.
///
/// Why: a browser cannot put an `Authorization` header on a WebSocket (nor does the PeerJS
/// client on its `fetch` of `/id`), but every PeerJS request carries the `key` option — in
/// the query (`/peerjs/peerjs?key=…`) or as a path segment (`/peerjs/<key>/id`). So a script
/// on another machine passes a bearer token as its key; a logged-in browser needs none (its
/// cookie goes along) and keeps the configured key.
pub fn key_in_request(uri: &Uri) -> Option<String> {
    let path = uri.path();
    if !(path == "/peerjs" || path.starts_with("/peerjs/")) {
        return None;
    }
    if let Ok(Query(q)) = Query::<HashMap<String, String>>::try_from_uri(uri)
        && let Some(k) = q.get("key").filter(|k| !k.is_empty())
    {
        return Some(k.clone());
    }
    let mut segs = path.trim_start_matches('/').split('/');
    match (segs.next(), segs.next(), segs.next(), segs.next()) {
        (Some("peerjs"), Some(key), Some("id" | "peers"), None) if !key.is_empty() => Some(key.to_string()),
        _ => None,
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], body.into())
        .into_response()
}

fn disabled() -> Response {
    text(StatusCode::NOT_FOUND, "PeerJS signaling is off ([peerjs] enabled = false)\n")
}

async fn banner(State(app): State<PeerJsState>) -> Response {
    if !app.peerjs.enabled() {
        return disabled();
    }
    axum::Json(serde_json::json!({
        "name": "PeerJS Server",
        "description": "A server side element to broker connections between PeerJS clients.",
        "website": "https://peerjs.com/",
        // Not in PeerServer's banner: the device's own peer ID, for pages that want to call it.
        "device_id": app.peerjs.device_id(),
    }))
    .into_response()
}

/// `GET /peerjs/<key>/id`. Like PeerServer, any key gets an ID; the key is checked on the
/// WebSocket, where the client can report it as `invalid-key`.
async fn new_id(State(app): State<PeerJsState>) -> Response {
    if !app.peerjs.enabled() {
        return disabled();
    }
    text(StatusCode::OK, app.peerjs.random_id())
}

async fn peers(State(app): State<PeerJsState>) -> Response {
    if !app.peerjs.enabled() {
        return disabled();
    }
    text(StatusCode::UNAUTHORIZED, "peer discovery is off: listing peers is not allowed (PeerServer allow_discovery = false)\n")
}

/// The PeerJS client library, embedded by `build.rs` (a stub that throws a clear error if it was
/// not installed at build time).
static PEERJS_JS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/peerjs.min.js"));
static PEERJS_LICENSE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/peerjs.LICENSE.txt"));

/// The PeerJS client library and its licenses, as served under `/vendor/` (also written by
/// `peercam export-page`).
pub fn client_library() -> (&'static [u8], &'static [u8]) {
    (PEERJS_JS, PEERJS_LICENSE)
}

async fn client_js() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PEERJS_JS).into_response()
}

async fn client_license() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PEERJS_LICENSE).into_response()
}

/// `GET /peerjs/peerjs?key=&id=&token=`: the signaling WebSocket.
async fn websocket(
    State(app): State<PeerJsState>,
    owner: Option<Extension<Owner>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !app.peerjs.enabled() {
        return disabled();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return text(
                e.status(),
                format!("this is the PeerJS signaling WebSocket (connect with the PeerJS client, path '/peerjs'): {e}\n"),
            )
        }
    };
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let key_is_token = q.get("key").is_some_and(|k| k != app.peerjs.lock().sm.settings().key.as_str() && (app.token_valid)(k));
    let server = app.peerjs.clone();
    // Frames up to twice the limit are read and answered with ERROR; beyond that the WebSocket
    // layer itself refuses them (and the socket is closed without a word).
    let hard_limit = server.max_message_bytes * 2;
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| serve_socket(server, socket, q, key_is_token, owner.map(|Extension(o)| o)))
}

async fn serve_socket(server: Arc<PeerServer>, mut socket: WebSocket, q: HashMap<String, String>, key_is_token: bool, owner: Option<Owner>) {
    let hello = Hello {
        id: q.get("id").map(String::as_str),
        token: q.get("token").map(String::as_str),
        key: q.get("key").map(String::as_str),
        key_is_token,
    };
    let OpenSocket { conn, mut rx, id, peers } = server.open_socket(hello, owner);
    match &id {
        Some(id) => log::info!("peerjs: peer {id:?} connected ({peers} connected)"),
        None => log::info!("peerjs: connection refused (id {:?})", q.get("id")),
    }
    let limit = server.max_message_bytes;
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(text) => {
                    match tokio::time::timeout(WRITE_TIMEOUT, socket.send(Message::Text(text.into()))).await {
                        Ok(Ok(())) => {}
                        _ => break,
                    }
                }
                None => {
                    // The server let go of this connection (refused, replaced, timed out,
                    // dropped): everything queued before has been written.
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(None))).await;
                    // Finish the closing handshake: read (and drop) what the client still sends
                    // until its Close. Closing with unread input makes the kernel reset the
                    // connection, and the client would lose the ERRORs it has not read yet.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(m)) = socket.recv().await {
                            if matches!(m, Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    break;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(t))) if t.len() > limit => server.run(|sm| sm.oversize(Instant::now(), conn, t.len(), limit)),
                Some(Ok(Message::Text(t))) => server.run(|sm| sm.message(Instant::now(), conn, t.as_str())),
                Some(Ok(Message::Binary(b))) if b.len() > limit => server.run(|sm| sm.oversize(Instant::now(), conn, b.len(), limit)),
                Some(Ok(Message::Binary(_))) => server.run(|sm| sm.binary(Instant::now(), conn)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // Closed, or a protocol error (e.g. a frame beyond the hard limit).
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            },
        }
    }
    server.close_conn(conn);
    if let Some(id) = id {
        log::info!("peerjs: peer {id:?} disconnected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server() -> Arc<PeerServer> {
        PeerServer::new(&PeerJsConfig::default())
    }

    fn open(s: &Arc<PeerServer>, hello: Hello<'_>) -> (ConnId, QueueRx, Option<String>, usize) {
        let o = s.open_socket(hello, None);
        (o.conn, o.rx, o.id, o.peers)
    }

    fn browser(s: &Arc<PeerServer>, id: &str) -> (ConnId, QueueRx) {
        let (conn, mut rx, got, _) = open(s, Hello { id: Some(id), token: Some("tok"), key: Some("peerjs"), key_is_token: false });
        assert_eq!(got.as_deref(), Some(id));
        assert_eq!(next(&mut rx)["type"], "OPEN");
        (conn, rx)
    }

    fn next(rx: &mut QueueRx) -> Value {
        serde_json::from_str(&rx.try_recv().expect("a frame")).unwrap()
    }

    fn say(s: &Arc<PeerServer>, conn: ConnId, text: &str) {
        s.run(|sm| sm.message(Instant::now(), conn, text));
    }

    #[tokio::test]
    async fn local_peer_gets_offers_and_its_answers_reach_the_browser() {
        let s = server();
        let (alice, mut alice_rx) = browser(&s, "alice");
        let mut me = s.attach_local(&s.device_id()).unwrap();
        assert_eq!(me.id(), "peercam");
        say(&s, alice, r#"{"type":"OFFER","dst":"peercam","payload":{"sdp":{"type":"offer","sdp":"v=0"},"type":"data","connectionId":"dc_1","serialization":"binary"}}"#);
        let m = me.recv().await.unwrap();
        assert_eq!((m.src.as_str(), m.kind), ("alice", Kind::Offer));
        assert_eq!(m.payload["connectionId"], "dc_1");
        let tx = me.sender();
        tokio::spawn(async move {
            tx.send("alice", Kind::Answer, json!({"sdp":{"type":"answer","sdp":"v=0"},"type":"data","connectionId":"dc_1"}));
        })
        .await
        .unwrap();
        let a = next(&mut alice_rx);
        assert_eq!(a, json!({"type":"ANSWER","src":"peercam","dst":"alice","payload":{"sdp":{"type":"answer","sdp":"v=0"},"type":"data","connectionId":"dc_1"}}));
        me.send("alice", Kind::Candidate, json!({"candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"},"type":"data","connectionId":"dc_1"}));
        assert_eq!(next(&mut alice_rx)["type"], "CANDIDATE");
        // A browser cannot take the device's ID, not even after the device detached.
        let (_, mut rx, got, _) = open(&s, Hello { id: Some("peercam"), token: Some("x"), key: Some("peerjs"), key_is_token: false });
        assert_eq!(got, None);
        assert_eq!(next(&mut rx)["type"], "ID-TAKEN");
        drop(me);
        let (_, mut rx, got, _) = open(&s, Hello { id: Some("peercam"), token: Some("x"), key: Some("peerjs"), key_is_token: false });
        assert_eq!(got, None);
        assert_eq!(next(&mut rx)["type"], "ID-TAKEN");
        // LEAVE without payload arrives as Null.
        let mut me = s.attach_local("peercam").unwrap();
        say(&s, alice, r#"{"type":"LEAVE","dst":"peercam"}"#);
        let m = me.recv().await.unwrap();
        assert_eq!((m.kind, m.payload), (Kind::Leave, Value::Null));
    }

    #[tokio::test]
    async fn replaced_local_peer_sees_the_end() {
        let s = server();
        let mut first = s.attach_local("peercam").unwrap();
        let _second = s.attach_local("peercam").unwrap();
        assert_eq!(first.recv().await, None);
        first.send("anyone", Kind::Offer, json!({})); // harmless
    }

    #[tokio::test]
    async fn a_slow_reader_is_dropped_not_buffered() {
        let s = server();
        let (alice, _alice_rx_never_read) = browser(&s, "alice");
        let (bob, mut bob_rx) = browser(&s, "bob");
        for _ in 0..SEND_QUEUE + 10 {
            say(&s, bob, r#"{"type":"CANDIDATE","dst":"alice","payload":{}}"#);
        }
        assert!(!s.lock().sm.is_connected("alice"), "alice's queue overflowed: dropped");
        assert!(!s.lock().outlets.contains_key(&alice));
        assert!(bob_rx.try_recv().is_err(), "bob got nothing odd");
        // bob still relays fine.
        let (_carol, mut carol_rx) = browser(&s, "carol");
        say(&s, bob, r#"{"type":"OFFER","dst":"carol","payload":{}}"#);
        assert_eq!(next(&mut carol_rx)["src"], "bob");
    }

    #[tokio::test]
    async fn send_queues_are_bounded_in_bytes() {
        let s = server();
        let (_alice, alice_rx_never_read) = browser(&s, "alice");
        let (bob, _bob_rx) = browser(&s, "bob");
        // 60 KB frames: far fewer than SEND_QUEUE of them fill SOCKET_QUEUE_BYTES.
        let big = format!(r#"{{"type":"CANDIDATE","dst":"alice","payload":{{"x":"{}"}}}}"#, "a".repeat(60_000));
        let mut sent = 0;
        while s.lock().sm.is_connected("alice") && sent < SEND_QUEUE {
            say(&s, bob, &big);
            sent += 1;
        }
        assert!(sent < 20, "alice was dropped after {sent} frames of 60 KB");
        assert!(s.queued_bytes() <= SOCKET_QUEUE_BYTES + 1024, "{}", s.queued_bytes());
        drop(alice_rx_never_read);
        assert_eq!(s.queued_bytes(), 0, "the bytes of a dropped queue are given back");
        // Many sockets that never read: together within TOTAL_QUEUE_BYTES.
        let mut held = Vec::new();
        for i in 0..40 {
            let id = format!("slow{i}");
            let (_, rx) = browser(&s, &id);
            held.push(rx);
            let frame = big.replace("\"alice\"", &format!("\"{id}\""));
            for _ in 0..20 {
                say(&s, bob, &frame);
            }
        }
        assert!(s.queued_bytes() <= TOTAL_QUEUE_BYTES, "{}", s.queued_bytes());
    }

    #[tokio::test]
    async fn end_owned_by_closes_that_logins_sockets() {
        let s = server();
        let (_, mut mine, _, _) = {
            let o = s.open_socket(Hello { id: Some("mine"), token: Some("t"), key: Some("peerjs"), key_is_token: false }, Some(Owner([1; 32])));
            (o.conn, o.rx, o.id, o.peers)
        };
        assert_eq!(next(&mut mine)["type"], "OPEN");
        let (_, _other) = browser(&s, "other");
        assert_eq!(s.end_owned_by(Owner([2; 32])), 0);
        assert_eq!(s.end_owned_by(Owner([1; 32])), 1);
        assert!(!s.lock().sm.is_connected("mine"));
        assert!(s.lock().sm.is_connected("other"));
        assert!(matches!(mine.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)), "its socket is closed");
    }

    #[tokio::test]
    async fn refused_connections_get_the_reason_then_end() {
        let s = server();
        let (_, mut rx, got, _) = open(&s, Hello { id: Some("x"), token: Some("t"), key: Some("wrong"), key_is_token: false });
        assert_eq!(got, None);
        assert_eq!(next(&mut rx)["type"], "INVALID-KEY");
        assert_eq!(next(&mut rx), json!({"type":"ERROR","payload":{"msg":"Invalid key provided"}}));
        assert!(matches!(rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)), "then the socket is closed");
    }

    #[test]
    fn random_ids_are_uuids() {
        let s = server();
        let id = s.random_id();
        assert_eq!(id.len(), 36);
        assert!(crate::config::is_valid_peer_id(&id), "{id}");
        assert_ne!(id, s.random_id());
    }

    #[test]
    fn the_key_is_found_in_query_or_path() {
        let k = |u: &str| key_in_request(&u.parse::<Uri>().unwrap());
        assert_eq!(k("/peerjs/peerjs?key=abc&id=x&token=y").as_deref(), Some("abc"));
        assert_eq!(k("/peerjs/peerjs?key=a%2Bb").as_deref(), Some("a+b"));
        assert_eq!(k("/peerjs/tok123/id?ts=1").as_deref(), Some("tok123"));
        assert_eq!(k("/peerjs/tok123/peers").as_deref(), Some("tok123"));
        assert_eq!(k("/peerjs/peerjs"), None, "the WebSocket path is not a key");
        assert_eq!(k("/peerjs"), None);
        assert_eq!(k("/api/settings?key=abc"), None, "only under /peerjs");
        assert_eq!(k("/peerjsx/peerjs?key=abc"), None);
        assert_eq!(k("/peerjs/a/b/c"), None);
    }
}
