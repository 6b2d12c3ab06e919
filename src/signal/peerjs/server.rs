//! PeerServer 1.x (npm `peer` 1.0.2) semantics as a pure state machine: no sockets, no clock.
//!
//! The I/O layer (`super`) feeds it events — a WebSocket connected (`connect`), a text frame
//! (`message`), a binary or oversize frame, a socket closed (`disconnect`), the device's own peer
//! attached (`attach_local`) or sending (`send_from`), and the passing of time (`tick`) — each
//! with `now`, and carries out the [`Action`]s it returns, in order.
//!
//! What PeerServer does, and so does this:
//! - `?id=&token=&key=`: all three required, the key must match, an ID held by another token gets
//!   `ID-TAKEN`, the same token replaces the old socket, a new ID gets `OPEN`;
//! - `OFFER`, `ANSWER`, `CANDIDATE`, `LEAVE`, `EXPIRE` are relayed with `src` set by the server
//!   (a client cannot forge it); `HEARTBEAT` keeps a client alive;
//! - a message for an ID that is not connected is queued (except `LEAVE`/`EXPIRE`) and delivered
//!   when it connects; after `expire_timeout` its sender gets one `EXPIRE` per destination
//!   (`src` = the ID that never came) — what the PeerJS client reports as `peer-unavailable`;
//! - a client silent for `alive_timeout` is closed and forgotten.
//!
//! Where it differs, on purpose:
//! - queues are bounded (per destination and in total, by count and bytes); a message that does
//!   not fit is answered with `EXPIRE` at once instead of growing memory;
//! - malformed input (not JSON, no `type`, unknown type, no `dst`, binary frames) gets
//!   `ERROR {msg}` instead of being silently dropped; after [`Settings::max_bad_messages`] of them
//!   the socket is closed. An oversize frame is closed at once;
//! - a wrong key gets `INVALID-KEY` (so the PeerJS client reports `invalid-key`) followed by
//!   PeerServer's own `ERROR {"msg":"Invalid key provided"}` (which PeerJS would report as a
//!   generic `server-error`; other clients may know only that one);
//! - IDs must be what the PeerJS client itself accepts, ≤ 64 characters; tokens ≤ 128;
//! - the device's own ID is reserved for the local peer;
//! - a same-token reconnect gets `OPEN` too (PeerServer sends nothing, leaving the client waiting
//!   for its `open` event); any message, not only `HEARTBEAT`, proves a client alive.

use crate::config::is_valid_peer_id;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// One socket (or the local peer), numbered by the I/O layer. An ID can move to a new
/// connection (same-token reconnect), so the state machine talks about connections.
pub type ConnId = u64;

pub const INVALID_KEY: &str = "Invalid key provided";
pub const INVALID_TOKEN: &str = "Invalid token provided";
pub const INVALID_WS_PARAMETERS: &str = "No id, token, or key supplied to websocket server";
pub const CONNECTION_LIMIT_EXCEED: &str = "Server has reached its concurrent user limit";
pub const ID_TAKEN: &str = "ID is taken";
const MAX_TOKEN_LEN: usize = 128;

/// The messages relayed between peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Offer,
    Answer,
    Candidate,
    Leave,
    Expire,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Offer => "OFFER",
            Kind::Answer => "ANSWER",
            Kind::Candidate => "CANDIDATE",
            Kind::Leave => "LEAVE",
            Kind::Expire => "EXPIRE",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "OFFER" => Kind::Offer,
            "ANSWER" => Kind::Answer,
            "CANDIDATE" => Kind::Candidate,
            "LEAVE" => Kind::Leave,
            "EXPIRE" => Kind::Expire,
            _ => return None,
        })
    }
}

/// A relayed message: `{type, src, dst, payload}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Relay {
    pub kind: Kind,
    pub src: String,
    pub dst: String,
    /// Absent in `EXPIRE` and in what clients sent without one (kept absent, as PeerServer does).
    pub payload: Option<Value>,
}

/// What the server sends to one connection.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMsg {
    Open,
    IdTaken,
    InvalidKey,
    Error(String),
    Relay(Relay),
}

impl ServerMsg {
    /// The JSON text frame, in PeerServer's shapes.
    pub fn to_json(&self) -> String {
        let v = match self {
            ServerMsg::Open => json!({ "type": "OPEN" }),
            ServerMsg::IdTaken => json!({ "type": "ID-TAKEN", "payload": { "msg": ID_TAKEN } }),
            ServerMsg::InvalidKey => json!({ "type": "INVALID-KEY", "payload": { "msg": INVALID_KEY } }),
            ServerMsg::Error(msg) => json!({ "type": "ERROR", "payload": { "msg": msg } }),
            ServerMsg::Relay(r) => {
                let mut m = Map::new();
                m.insert("type".into(), r.kind.as_str().into());
                m.insert("src".into(), r.src.clone().into());
                m.insert("dst".into(), r.dst.clone().into());
                if let Some(p) = &r.payload {
                    m.insert("payload".into(), p.clone());
                }
                Value::Object(m)
            }
        };
        v.to_string()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this message on the connection.
    Send(ConnId, ServerMsg),
    /// Close the connection after what was sent before; the state machine has forgotten it.
    Close(ConnId),
}

/// The query of a WebSocket connect. `key_is_token`: the I/O layer found the key to be a valid
/// bearer token (accepted in place of the configured key, see `super`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Hello<'a> {
    pub id: Option<&'a str>,
    pub token: Option<&'a str>,
    pub key: Option<&'a str>,
    pub key_is_token: bool,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub key: String,
    /// Reserved for the local peer (the device).
    pub device_id: String,
    pub expire_timeout: Duration,
    pub alive_timeout: Duration,
    /// Browser peers (local peers do not count).
    pub max_peers: usize,
    pub max_queued_per_peer: usize,
    pub max_queued_total: usize,
    pub max_queued_bytes: usize,
    /// Malformed messages one connection may send before it is closed.
    pub max_bad_messages: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            key: "peerjs".into(),
            device_id: "peercam".into(),
            expire_timeout: Duration::from_secs(5),
            alive_timeout: Duration::from_secs(60),
            max_peers: 64,
            // An offer plus a burst of trickled candidates is ~10-20 messages.
            max_queued_per_peer: 64,
            max_queued_total: 1024,
            max_queued_bytes: 2 << 20,
            max_bad_messages: 16,
        }
    }
}

struct Client {
    conn: ConnId,
    token: String,
    last_seen: Instant,
    local: bool,
}

struct Conn {
    id: String,
    bad: u32,
}

struct Queue {
    since: Instant,
    msgs: VecDeque<(Relay, usize)>,
    bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachError {
    /// A browser peer holds the ID (only possible for IDs other than the reserved device ID).
    Taken(String),
    Invalid(String),
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Taken(id) => write!(f, "peer ID {id:?} is held by a browser peer"),
            AttachError::Invalid(id) => write!(f, "{id:?} is not a valid PeerJS ID"),
        }
    }
}

impl std::error::Error for AttachError {}

pub struct Server {
    s: Settings,
    clients: HashMap<String, Client>,
    conns: HashMap<ConnId, Conn>,
    queues: HashMap<String, Queue>,
    queued_msgs: usize,
    queued_bytes: usize,
}

impl Server {
    pub fn new(s: Settings) -> Self {
        Self { s, clients: HashMap::new(), conns: HashMap::new(), queues: HashMap::new(), queued_msgs: 0, queued_bytes: 0 }
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// Connected browser peers.
    pub fn peer_count(&self) -> usize {
        self.clients.values().filter(|c| !c.local).count()
    }

    pub fn is_connected(&self, id: &str) -> bool {
        self.clients.contains_key(id)
    }

    /// The connection holding a peer ID.
    pub fn conn_of(&self, id: &str) -> Option<ConnId> {
        self.clients.get(id).map(|c| c.conn)
    }

    /// The ID a connection holds, if it is registered.
    pub fn id_of(&self, conn: ConnId) -> Option<&str> {
        self.conns.get(&conn).map(|c| c.id.as_str())
    }

    /// Messages waiting for IDs that have not connected (count, bytes).
    pub fn queued(&self) -> (usize, usize) {
        (self.queued_msgs, self.queued_bytes)
    }

    /// A WebSocket connected with this query.
    pub fn connect(&mut self, now: Instant, conn: ConnId, hello: Hello<'_>) -> Vec<Action> {
        let refuse = |msgs: Vec<ServerMsg>| {
            let mut a: Vec<Action> = msgs.into_iter().map(|m| Action::Send(conn, m)).collect();
            a.push(Action::Close(conn));
            a
        };
        let (Some(id), Some(token), Some(key)) = (
            hello.id.filter(|s| !s.is_empty()),
            hello.token.filter(|s| !s.is_empty()),
            hello.key.filter(|s| !s.is_empty()),
        ) else {
            return refuse(vec![ServerMsg::Error(INVALID_WS_PARAMETERS.into())]);
        };
        if key != self.s.key && !hello.key_is_token {
            return refuse(vec![ServerMsg::InvalidKey, ServerMsg::Error(INVALID_KEY.into())]);
        }
        if !is_valid_peer_id(id) {
            return refuse(vec![ServerMsg::Error(
                "Invalid id: use letters and digits with single spaces, _ or - between them, at most 64 characters".into(),
            )]);
        }
        if token.len() > MAX_TOKEN_LEN {
            return refuse(vec![ServerMsg::Error(INVALID_TOKEN.into())]);
        }
        if id == self.s.device_id {
            return refuse(vec![ServerMsg::IdTaken]);
        }
        match self.clients.get_mut(id) {
            Some(c) if c.local || c.token != token => return refuse(vec![ServerMsg::IdTaken]),
            Some(c) => {
                // The same client again (its old socket not noticed dead yet): the new socket
                // takes over, the old one is closed.
                let old = std::mem::replace(&mut c.conn, conn);
                c.last_seen = now;
                self.conns.remove(&old);
                self.conns.insert(conn, Conn { id: id.to_string(), bad: 0 });
                let mut actions = vec![Action::Close(old), Action::Send(conn, ServerMsg::Open)];
                actions.extend(self.flush_queue(id));
                return actions;
            }
            None => {}
        }
        if self.peer_count() >= self.s.max_peers {
            return refuse(vec![ServerMsg::Error(CONNECTION_LIMIT_EXCEED.into())]);
        }
        self.register(now, conn, id, token, false);
        let mut actions = vec![Action::Send(conn, ServerMsg::Open)];
        actions.extend(self.flush_queue(id));
        actions
    }

    /// The device's own peer takes `id` on connection `conn` (no heartbeat needed). A local peer
    /// already on that ID is replaced (its connection gets `Close`). Returns the deliveries of
    /// messages that were waiting for the ID.
    pub fn attach_local(&mut self, now: Instant, conn: ConnId, id: &str) -> Result<Vec<Action>, AttachError> {
        if !is_valid_peer_id(id) {
            return Err(AttachError::Invalid(id.to_string()));
        }
        let mut actions = Vec::new();
        match self.clients.get(id) {
            Some(c) if !c.local => return Err(AttachError::Taken(id.to_string())),
            Some(c) => {
                let old = c.conn;
                self.conns.remove(&old);
                actions.push(Action::Close(old));
            }
            None => {}
        }
        self.register(now, conn, id, "", true);
        actions.extend(self.flush_queue(id));
        Ok(actions)
    }

    fn register(&mut self, now: Instant, conn: ConnId, id: &str, token: &str, local: bool) {
        self.clients.insert(id.to_string(), Client { conn, token: token.to_string(), last_seen: now, local });
        self.conns.insert(conn, Conn { id: id.to_string(), bad: 0 });
    }

    /// A text frame from a connection.
    pub fn message(&mut self, now: Instant, conn: ConnId, text: &str) -> Vec<Action> {
        let Some(src) = self.conns.get(&conn).map(|c| c.id.clone()) else { return Vec::new() };
        if let Some(c) = self.clients.get_mut(&src) {
            c.last_seen = now;
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.bad(conn, format!("Invalid message: not JSON ({e})")),
        };
        let Some(obj) = value.as_object() else {
            return self.bad(conn, "Invalid message: expected a JSON object {type, dst, payload}".into());
        };
        let Some(ty) = obj.get("type").and_then(Value::as_str) else {
            return self.bad(conn, "Invalid message: no \"type\"".into());
        };
        if ty == "HEARTBEAT" {
            return Vec::new();
        }
        let Some(kind) = Kind::parse(ty) else {
            let shown: String = ty.chars().take(32).collect();
            return self.bad(conn, format!("Invalid message: unknown type {shown:?}"));
        };
        let dst = match obj.get("dst") {
            Some(Value::String(d)) if !d.is_empty() => d.clone(),
            None | Some(Value::Null) if kind == Kind::Leave => {
                // PeerServer: LEAVE without dst = the client leaves the server.
                return self.drop_conn(conn);
            }
            _ => return self.bad(conn, format!("Invalid message: {ty} needs a \"dst\" peer ID")),
        };
        let payload = obj.get("payload").cloned();
        self.relay(now, Relay { kind, src, dst, payload }, text.len())
    }

    /// The local peer (attached on `conn`) sends a message.
    pub fn send_from(&mut self, now: Instant, conn: ConnId, kind: Kind, dst: &str, payload: Value) -> Vec<Action> {
        let Some(src) = self.conns.get(&conn).map(|c| c.id.clone()) else { return Vec::new() };
        let size = payload.to_string().len() + dst.len() + 64;
        self.relay(now, Relay { kind, src, dst: dst.to_string(), payload: Some(payload) }, size)
    }

    /// A binary frame: PeerJS signaling is JSON text only.
    pub fn binary(&mut self, _now: Instant, conn: ConnId) -> Vec<Action> {
        if !self.conns.contains_key(&conn) {
            return Vec::new();
        }
        self.bad(conn, "Invalid message: binary frames are not supported, send JSON text".into())
    }

    /// A frame over the size limit: ERROR, then the socket is closed.
    pub fn oversize(&mut self, _now: Instant, conn: ConnId, len: usize, limit: usize) -> Vec<Action> {
        let mut actions = vec![Action::Send(conn, ServerMsg::Error(format!("Message too large: {len} bytes, the limit is {limit}")))];
        actions.extend(self.drop_conn(conn));
        if !matches!(actions.last(), Some(Action::Close(_))) {
            actions.push(Action::Close(conn));
        }
        actions
    }

    /// The socket closed (or the I/O layer gave up on it, e.g. a full send queue). Silent, as in
    /// PeerServer: peers notice through their own connections.
    pub fn disconnect(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn)
            && self.clients.get(&c.id).is_some_and(|cl| cl.conn == conn)
        {
            self.clients.remove(&c.id);
        }
    }

    /// Time passes: expire queued messages, drop silent clients.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let expired: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| now.saturating_duration_since(q.since) >= self.s.expire_timeout)
            .map(|(dst, _)| dst.clone())
            .collect();
        for dst in expired {
            let Some(q) = self.queues.remove(&dst) else { continue };
            self.queued_msgs -= q.msgs.len();
            self.queued_bytes -= q.bytes;
            // One EXPIRE per sender, as PeerServer's `seen` set does.
            let mut seen = HashSet::new();
            for (m, _) in q.msgs {
                if seen.insert(m.src.clone()) {
                    actions.extend(self.expire_to(&m.src, &dst));
                }
            }
        }
        let silent: Vec<ConnId> = self
            .clients
            .values()
            .filter(|c| !c.local && now.saturating_duration_since(c.last_seen) >= self.s.alive_timeout)
            .map(|c| c.conn)
            .collect();
        for conn in silent {
            if let Some(id) = self.id_of(conn).map(str::to_string) {
                self.clear_queue(&id);
            }
            actions.extend(self.drop_conn(conn));
        }
        actions
    }

    /// When `tick` next has work to do (for an I/O layer that sleeps until then).
    pub fn next_deadline(&self) -> Option<Instant> {
        let q = self.queues.values().map(|q| q.since + self.s.expire_timeout);
        let c = self.clients.values().filter(|c| !c.local).map(|c| c.last_seen + self.s.alive_timeout);
        q.chain(c).min()
    }

    fn relay(&mut self, now: Instant, r: Relay, size: usize) -> Vec<Action> {
        if let Some(c) = self.clients.get(&r.dst) {
            return vec![Action::Send(c.conn, ServerMsg::Relay(r))];
        }
        // Not connected: wait for it, except for messages that only make sense to a live peer.
        if matches!(r.kind, Kind::Leave | Kind::Expire) {
            return Vec::new();
        }
        let per_peer = self.queues.get(&r.dst).map_or(0, |q| q.msgs.len());
        if per_peer >= self.s.max_queued_per_peer
            || self.queued_msgs >= self.s.max_queued_total
            || self.queued_bytes + size > self.s.max_queued_bytes
        {
            log::debug!("peerjs: queue for {:?} full, EXPIRE to {:?}", r.dst, r.src);
            return self.expire_to(&r.src, &r.dst);
        }
        let q = self.queues.entry(r.dst.clone()).or_insert_with(|| Queue { since: now, msgs: VecDeque::new(), bytes: 0 });
        q.msgs.push_back((r, size));
        q.bytes += size;
        self.queued_msgs += 1;
        self.queued_bytes += size;
        Vec::new()
    }

    /// Tells `to` that `unreachable` never came.
    fn expire_to(&self, to: &str, unreachable: &str) -> Vec<Action> {
        match self.clients.get(to) {
            Some(c) => vec![Action::Send(
                c.conn,
                ServerMsg::Relay(Relay { kind: Kind::Expire, src: unreachable.to_string(), dst: to.to_string(), payload: None }),
            )],
            None => Vec::new(),
        }
    }

    fn flush_queue(&mut self, id: &str) -> Vec<Action> {
        let Some(conn) = self.clients.get(id).map(|c| c.conn) else { return Vec::new() };
        let Some(q) = self.queues.remove(id) else { return Vec::new() };
        self.queued_msgs -= q.msgs.len();
        self.queued_bytes -= q.bytes;
        q.msgs.into_iter().map(|(m, _)| Action::Send(conn, ServerMsg::Relay(m))).collect()
    }

    fn clear_queue(&mut self, id: &str) {
        if let Some(q) = self.queues.remove(id) {
            self.queued_msgs -= q.msgs.len();
            self.queued_bytes -= q.bytes;
        }
    }

    fn bad(&mut self, conn: ConnId, msg: String) -> Vec<Action> {
        let Some(c) = self.conns.get_mut(&conn) else { return Vec::new() };
        c.bad += 1;
        let mut actions = vec![Action::Send(conn, ServerMsg::Error(msg))];
        if c.bad >= self.s.max_bad_messages {
            actions.push(Action::Send(conn, ServerMsg::Error("Too many invalid messages: closing".into())));
            actions.extend(self.drop_conn(conn));
        }
        actions
    }

    /// Forgets a connection (and its ID, if it still holds it) and closes it.
    fn drop_conn(&mut self, conn: ConnId) -> Vec<Action> {
        self.disconnect(conn);
        vec![Action::Close(conn)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello<'a>(id: &'a str, token: &'a str) -> Hello<'a> {
        Hello { id: Some(id), token: Some(token), key: Some("peerjs"), key_is_token: false }
    }

    fn server() -> (Server, Instant) {
        (Server::new(Settings::default()), Instant::now())
    }

    /// Sends and closes, as (conn, JSON value) / (conn, "CLOSE").
    fn show(actions: &[Action]) -> Vec<(ConnId, Value)> {
        actions
            .iter()
            .map(|a| match a {
                Action::Send(c, m) => (*c, serde_json::from_str(&m.to_json()).unwrap()),
                Action::Close(c) => (*c, json!("CLOSE")),
            })
            .collect()
    }

    fn types(actions: &[Action]) -> Vec<(ConnId, String)> {
        show(actions)
            .into_iter()
            .map(|(c, v)| (c, v.get("type").and_then(Value::as_str).unwrap_or("CLOSE").to_string()))
            .collect()
    }

    fn t(c: ConnId, s: &str) -> (ConnId, String) {
        (c, s.to_string())
    }

    #[test]
    fn open_on_connect_and_relay_sets_src() {
        let (mut s, now) = server();
        assert_eq!(types(&s.connect(now, 1, hello("alice", "t1"))), vec![t(1, "OPEN")]);
        assert_eq!(types(&s.connect(now, 2, hello("bob", "t2"))), vec![t(2, "OPEN")]);
        let out = s.message(now, 1, r#"{"type":"OFFER","src":"mallory","dst":"bob","payload":{"sdp":{"type":"offer","sdp":"v=0"},"type":"media","connectionId":"mc_1"}}"#);
        assert_eq!(
            show(&out),
            vec![(2, json!({"type":"OFFER","src":"alice","dst":"bob","payload":{"sdp":{"type":"offer","sdp":"v=0"},"type":"media","connectionId":"mc_1"}}))],
            "src is the sender's ID, whatever it claimed"
        );
        let out = s.message(now, 2, r#"{"type":"ANSWER","dst":"alice","payload":{"sdp":{"type":"answer","sdp":"v=0"},"type":"media","connectionId":"mc_1"}}"#);
        assert_eq!(show(&out)[0].0, 1);
        assert_eq!(show(&out)[0].1["src"], "bob");
        for ty in ["CANDIDATE", "LEAVE", "EXPIRE"] {
            let out = s.message(now, 2, &format!(r#"{{"type":"{ty}","dst":"alice","payload":{{"connectionId":"x"}}}}"#));
            assert_eq!(types(&out), vec![t(1, ty)]);
        }
        assert!(s.message(now, 1, r#"{"type":"HEARTBEAT"}"#).is_empty());
    }

    #[test]
    fn missing_parameters_and_wrong_key_are_refused() {
        let (mut s, now) = server();
        for h in [
            Hello { id: None, ..hello("a", "t") },
            Hello { token: None, ..hello("a", "t") },
            Hello { key: None, ..hello("a", "t") },
            Hello { id: Some(""), ..hello("a", "t") },
        ] {
            let out = show(&s.connect(now, 1, h));
            assert_eq!(out[0].1, json!({"type":"ERROR","payload":{"msg":INVALID_WS_PARAMETERS}}));
            assert_eq!(out[1].1, json!("CLOSE"));
        }
        let out = show(&s.connect(now, 1, Hello { key: Some("nope"), ..hello("a", "t") }));
        assert_eq!(out[0].1["type"], "INVALID-KEY", "the PeerJS client maps this to invalid-key");
        assert_eq!(out[1].1, json!({"type":"ERROR","payload":{"msg":"Invalid key provided"}}));
        assert_eq!(out[2].1, json!("CLOSE"));
        assert!(!s.is_connected("a"));
        // A key the I/O layer found to be a bearer token is accepted in place of the key.
        let out = s.connect(now, 2, Hello { key: Some("0123abcd"), key_is_token: true, ..hello("a", "t") });
        assert_eq!(types(&out), vec![t(2, "OPEN")]);
    }

    #[test]
    fn invalid_ids_and_tokens_are_refused() {
        let (mut s, now) = server();
        let long = "x".repeat(65);
        for id in ["a b!", "-a", "a--b", long.as_str(), "<script>"] {
            let out = show(&s.connect(now, 1, hello(id, "t")));
            assert_eq!(out[0].1["type"], "ERROR", "{id}");
            assert!(out[0].1["payload"]["msg"].as_str().unwrap().contains("Invalid id"));
            assert_eq!(out[1].1, json!("CLOSE"));
        }
        let out = show(&s.connect(now, 1, hello("ok-id", &"t".repeat(200))));
        assert_eq!(out[0].1["payload"]["msg"], INVALID_TOKEN);
        assert_eq!(s.peer_count(), 0);
    }

    #[test]
    fn duplicate_id_is_taken_same_token_replaces() {
        let (mut s, now) = server();
        s.connect(now, 1, hello("alice", "t1"));
        let out = show(&s.connect(now, 2, hello("alice", "other")));
        assert_eq!(out, vec![(2, json!({"type":"ID-TAKEN","payload":{"msg":"ID is taken"}})), (2, json!("CLOSE"))]);
        assert_eq!(s.id_of(1), Some("alice"), "the first holder keeps it");
        // Same token: the new socket takes over, the old one is closed.
        assert_eq!(types(&s.connect(now, 3, hello("alice", "t1"))), vec![t(1, "CLOSE"), t(3, "OPEN")]);
        assert_eq!(s.id_of(3), Some("alice"));
        assert_eq!(s.id_of(1), None);
        // The old socket's close event must not remove the new one.
        s.disconnect(1);
        assert!(s.is_connected("alice"));
        s.connect(now, 4, hello("bob", "t2"));
        let out = s.message(now, 4, r#"{"type":"OFFER","dst":"alice","payload":{}}"#);
        assert_eq!(types(&out), vec![t(3, "OFFER")]);
        // After a real disconnect the ID is free again.
        s.disconnect(3);
        assert_eq!(types(&s.connect(now, 5, hello("alice", "new"))), vec![t(5, "OPEN")]);
    }

    #[test]
    fn device_id_is_reserved() {
        let (mut s, now) = server();
        assert_eq!(types(&s.connect(now, 1, hello("peercam", "t"))), vec![t(1, "ID-TAKEN"), t(1, "CLOSE")]);
        s.attach_local(now, 9, "peercam").unwrap();
        assert_eq!(types(&s.connect(now, 2, hello("peercam", ""))), vec![t(2, "ERROR"), t(2, "CLOSE")]);
        assert_eq!(types(&s.connect(now, 2, hello("peercam", "t"))), vec![t(2, "ID-TAKEN"), t(2, "CLOSE")]);
        assert_eq!(s.id_of(9), Some("peercam"));
    }

    #[test]
    fn queued_until_the_destination_connects() {
        let (mut s, now) = server();
        s.connect(now, 1, hello("alice", "t1"));
        assert!(s.message(now, 1, r#"{"type":"OFFER","dst":"bob","payload":{"n":1}}"#).is_empty());
        assert!(s.message(now, 1, r#"{"type":"CANDIDATE","dst":"bob","payload":{"n":2}}"#).is_empty());
        // LEAVE and EXPIRE for an absent peer are dropped, not queued.
        assert!(s.message(now, 1, r#"{"type":"LEAVE","dst":"bob"}"#).is_empty());
        assert_eq!(s.queued().0, 2);
        let out = show(&s.connect(now + Duration::from_secs(2), 2, hello("bob", "t2")));
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].1["type"], "OPEN");
        assert_eq!((out[1].0, &out[1].1["type"], &out[1].1["payload"]["n"], &out[1].1["src"]), (2, &json!("OFFER"), &json!(1), &json!("alice")));
        assert_eq!(out[2].1["payload"]["n"], 2, "in order");
        assert_eq!(s.queued(), (0, 0));
        assert!(s.tick(now + Duration::from_secs(10)).iter().all(|a| !matches!(a, Action::Send(_, ServerMsg::Relay(_)))));
    }

    #[test]
    fn expire_for_an_id_that_never_comes() {
        let (mut s, now) = server();
        s.connect(now, 1, hello("alice", "t1"));
        s.connect(now, 2, hello("carol", "t3"));
        s.message(now, 1, r#"{"type":"OFFER","dst":"ghost","payload":{}}"#);
        s.message(now, 1, r#"{"type":"CANDIDATE","dst":"ghost","payload":{}}"#);
        s.message(now, 2, r#"{"type":"OFFER","dst":"ghost","payload":{}}"#);
        assert!(s.tick(now + Duration::from_millis(4900)).is_empty(), "not before expire_timeout");
        assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(5)));
        let mut out = show(&s.tick(now + Duration::from_secs(5)));
        out.sort_by_key(|(c, _)| *c);
        assert_eq!(
            out,
            vec![
                (1, json!({"type":"EXPIRE","src":"ghost","dst":"alice"})),
                (2, json!({"type":"EXPIRE","src":"ghost","dst":"carol"})),
            ],
            "one EXPIRE per sender, src = the missing ID"
        );
        assert_eq!(s.queued(), (0, 0));
        // If ghost connects later, nothing stale is delivered.
        assert_eq!(types(&s.connect(now + Duration::from_secs(6), 3, hello("ghost", "g"))), vec![t(3, "OPEN")]);
    }

    #[test]
    fn queues_are_bounded_and_overflow_expires_at_once() {
        let mut s = Server::new(Settings { max_queued_per_peer: 3, max_queued_total: 5, ..Settings::default() });
        let now = Instant::now();
        s.connect(now, 1, hello("alice", "t1"));
        for _ in 0..3 {
            assert!(s.message(now, 1, r#"{"type":"CANDIDATE","dst":"ghost","payload":{}}"#).is_empty());
        }
        let out = show(&s.message(now, 1, r#"{"type":"CANDIDATE","dst":"ghost","payload":{}}"#));
        assert_eq!(out, vec![(1, json!({"type":"EXPIRE","src":"ghost","dst":"alice"}))]);
        for _ in 0..2 {
            assert!(s.message(now, 1, r#"{"type":"OFFER","dst":"ghost2","payload":{}}"#).is_empty());
        }
        assert_eq!(types(&s.message(now, 1, r#"{"type":"OFFER","dst":"ghost3","payload":{}}"#)), vec![t(1, "EXPIRE")], "total bound");
        assert_eq!(s.queued().0, 5);
        // Byte bound.
        let mut s = Server::new(Settings { max_queued_bytes: 1000, ..Settings::default() });
        s.connect(now, 1, hello("alice", "t1"));
        let big = format!(r#"{{"type":"OFFER","dst":"ghost","payload":{{"sdp":"{}"}}}}"#, "x".repeat(600));
        assert!(s.message(now, 1, &big).is_empty());
        assert_eq!(types(&s.message(now, 1, &big)), vec![t(1, "EXPIRE")]);
        assert!(s.queued().1 <= 1000);
    }

    #[test]
    fn silent_clients_time_out_heartbeats_keep_them() {
        let (mut s, now) = server();
        s.connect(now, 1, hello("alice", "t1"));
        s.connect(now, 2, hello("bob", "t2"));
        s.attach_local(now, 9, "peercam").unwrap();
        for i in 1..=11 {
            assert!(s.message(now + Duration::from_secs(5 * i), 1, r#"{"type":"HEARTBEAT"}"#).is_empty());
        }
        assert!(s.tick(now + Duration::from_secs(59)).is_empty());
        let out = types(&s.tick(now + Duration::from_secs(60)));
        assert_eq!(out, vec![t(2, "CLOSE")], "bob was silent for alive_timeout");
        assert!(s.is_connected("alice"));
        assert!(!s.is_connected("bob"));
        assert!(s.is_connected("peercam"), "the local peer needs no heartbeat");
        assert_eq!(types(&s.tick(now + Duration::from_secs(115))), vec![t(1, "CLOSE")]);
        assert!(s.tick(now + Duration::from_secs(3600)).is_empty());
        assert!(s.is_connected("peercam"));
    }

    #[test]
    fn malformed_messages_get_error_and_repeat_offenders_are_closed() {
        let (mut s, now) = server();
        s.connect(now, 1, hello("alice", "t1"));
        s.connect(now, 2, hello("bob", "t2"));
        let cases = [
            ("not json", "not JSON"),
            ("[1,2]", "JSON object"),
            ("{\"dst\":\"bob\"}", "no \"type\""),
            ("{\"type\":42}", "no \"type\""),
            ("{\"type\":\"DANCE\",\"dst\":\"bob\"}", "unknown type \"DANCE\""),
            ("{\"type\":\"OFFER\",\"payload\":{}}", "needs a \"dst\""),
            ("{\"type\":\"OFFER\",\"dst\":7}", "needs a \"dst\""),
            ("{\"type\":\"CANDIDATE\",\"dst\":\"\"}", "needs a \"dst\""),
            ("\u{0}\u{ffff}", "not JSON"),
        ];
        for (text, what) in cases {
            let out = show(&s.message(now, 1, text));
            assert_eq!(out.len(), 1, "{text}: {out:?}");
            assert_eq!(out[0].0, 1);
            assert_eq!(out[0].1["type"], "ERROR");
            let msg = out[0].1["payload"]["msg"].as_str().unwrap();
            assert!(msg.contains(what), "{text}: {msg}");
        }
        assert_eq!(types(&s.binary(now, 1)), vec![t(1, "ERROR")]);
        // The other peer is unaffected.
        assert_eq!(types(&s.message(now, 2, r#"{"type":"OFFER","dst":"alice","payload":{}}"#)), vec![t(1, "OFFER")]);
        // The 16th bad message closes the socket.
        let mut closed = false;
        for _ in 0..10 {
            let out = types(&s.message(now, 1, "garbage"));
            if out.contains(&t(1, "CLOSE")) {
                closed = true;
                break;
            }
        }
        assert!(closed);
        assert!(!s.is_connected("alice"));
        assert!(s.message(now, 1, "garbage").is_empty(), "a forgotten connection gets nothing");
        assert!(s.is_connected("bob"));
    }

    #[test]
    fn oversize_closes_and_frees_the_id() {
        let (mut s, now) = server();
        s.connect(now, 1, hello("alice", "t1"));
        let out = show(&s.oversize(now, 1, 70000, 65536));
        assert_eq!(out[0].1["type"], "ERROR");
        assert!(out[0].1["payload"]["msg"].as_str().unwrap().contains("70000"));
        assert_eq!(out[1].1, json!("CLOSE"));
        assert!(!s.is_connected("alice"));
    }

    #[test]
    fn leave_without_dst_leaves_the_server() {
        let (mut s, now) = server();
        s.connect(now, 1, hello("alice", "t1"));
        assert_eq!(types(&s.message(now, 1, r#"{"type":"LEAVE"}"#)), vec![t(1, "CLOSE")]);
        assert!(!s.is_connected("alice"));
    }

    #[test]
    fn max_peers_is_enforced_local_peers_do_not_count() {
        let mut s = Server::new(Settings { max_peers: 2, ..Settings::default() });
        let now = Instant::now();
        s.attach_local(now, 9, "peercam").unwrap();
        s.connect(now, 1, hello("a", "t"));
        s.connect(now, 2, hello("b", "t"));
        let out = show(&s.connect(now, 3, hello("c", "t")));
        assert_eq!(out[0].1, json!({"type":"ERROR","payload":{"msg":CONNECTION_LIMIT_EXCEED}}));
        assert_eq!(out[1].1, json!("CLOSE"));
        s.disconnect(1);
        assert_eq!(types(&s.connect(now, 3, hello("c", "t"))), vec![t(3, "OPEN")]);
    }

    #[test]
    fn local_peer_receives_and_replies() {
        let (mut s, now) = server();
        // A browser calls the device before it attached: queued, then delivered on attach.
        s.connect(now, 1, hello("alice", "t1"));
        assert!(s.message(now, 1, r#"{"type":"OFFER","dst":"peercam","payload":{"type":"media","connectionId":"mc_x"}}"#).is_empty());
        let out = s.attach_local(now, 9, "peercam").unwrap();
        assert_eq!(
            out,
            vec![Action::Send(
                9,
                ServerMsg::Relay(Relay {
                    kind: Kind::Offer,
                    src: "alice".into(),
                    dst: "peercam".into(),
                    payload: Some(json!({"type":"media","connectionId":"mc_x"}))
                })
            )]
        );
        let out = s.message(now, 1, r#"{"type":"CANDIDATE","dst":"peercam","payload":{"candidate":{"candidate":"c"}}}"#);
        assert!(matches!(&out[..], [Action::Send(9, ServerMsg::Relay(Relay { kind: Kind::Candidate, src, .. }))] if src == "alice"));
        // The device answers.
        let out = show(&s.send_from(now, 9, Kind::Answer, "alice", json!({"sdp":{"type":"answer","sdp":"v=0"},"type":"media","connectionId":"mc_x"})));
        assert_eq!(out, vec![(1, json!({"type":"ANSWER","src":"peercam","dst":"alice","payload":{"sdp":{"type":"answer","sdp":"v=0"},"type":"media","connectionId":"mc_x"}}))]);
        // To an absent peer: queued, then EXPIRE comes back to the device.
        assert!(s.send_from(now, 9, Kind::Offer, "nobody", json!({})).is_empty());
        let out = s.tick(now + Duration::from_secs(5));
        assert!(matches!(&out[..], [Action::Send(9, ServerMsg::Relay(Relay { kind: Kind::Expire, src, .. }))] if src == "nobody"));
        // A second attach replaces the first.
        assert_eq!(s.attach_local(now, 10, "peercam").unwrap(), vec![Action::Close(9)]);
        assert!(s.send_from(now, 9, Kind::Answer, "alice", json!({})).is_empty(), "the replaced one is forgotten");
        // A browser's ID cannot be taken by a local peer.
        assert_eq!(s.attach_local(now, 11, "alice"), Err(AttachError::Taken("alice".into())));
        assert!(matches!(s.attach_local(now, 11, "bad id!"), Err(AttachError::Invalid(_))));
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        let (mut s, now) = server();
        s.connect(now, 1, hello("alice", "t1"));
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let pieces = ["{", "}", "\"type\"", ":", "\"OFFER\"", "\"dst\"", "\"alice\"", ",", "[", "]", "null", "1e999", "\"\\ud800\"", "\"payload\"", "\u{fffd}"];
        for _ in 0..5000 {
            let mut text = String::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            let _ = s.message(now, 1, &text);
            if !s.is_connected("alice") {
                s.connect(now, 1, hello("alice", "t1"));
            }
        }
    }
}
