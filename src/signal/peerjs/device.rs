//! The device as a PeerJS peer (ID `[peerjs] device_id`, default `peercam`).
//!
//! - `peer.call('peercam', stream)` → a watch session like the page's: the device answers with
//!   its camera and microphone (H.264 + Opus, whatever the offer lists first) and plays the
//!   caller's microphone through talk-back. The caller takes a free speaker by sending audio, as
//!   WHEP clients do (a PeerJS call has no control channel).
//! - `peer.connect('peercam', {serialization})` → a data-only session; messages are control
//!   requests (`CONTROL.md`), framed per serialization (`dataconn`); replies and room events come
//!   back the same way. Binary data (ArrayBuffer, Uint8Array) is echoed back unchanged.
//!
//! The answer already carries the device's candidates (gathering completes in milliseconds on
//! host candidates); the browser's trickled candidates are added as they come, also before the
//! answer exists (queued per connection).

use super::dataconn::{DecodeError, Decoder, Encoder, Frame, Message, Serialization};
use super::binarypack::Value as PackValue;
use super::{Incoming, LocalPeer, LocalSender};
use super::server::Kind;
use crate::rtc::control::{self, ControlError};
use crate::rtc::room::{Origin, Room};
use crate::rtc::session::{self, pump, DataChannel, DataHandler, MessageFn, Purpose, RemoteCandidate, Sessions};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Trickled candidates kept for a connection that is still being answered.
const MAX_EARLY_CANDIDATES: usize = 32;
/// Connections (calls and data connections, answering or live) the device keeps at once; an
/// offer past this is refused. Live ones are also bounded by `[webrtc] max_viewers`.
pub const MAX_CONNECTIONS: usize = 256;

enum Conn {
    /// Answering; candidates that arrive meanwhile wait here.
    Answering(Vec<RemoteCandidate>),
    Ready { session: String },
}

/// The device's PeerJS connections by `(remote peer, connectionId)`. An entry goes when its
/// session ends — however it ends: PeerJS 1.5 closes a call without sending LEAVE.
#[derive(Clone, Default)]
pub struct Connections(Arc<Mutex<HashMap<(String, String), Conn>>>, Arc<std::sync::atomic::AtomicUsize>);

impl Connections {
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// Candidates that came for a connection the device does not know (never offered, or
    /// already ended): dropped.
    pub fn dropped_candidates(&self) -> usize {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks a viewer token (`metadata.token` of an OFFER): the tag the calls it opens carry (its
/// digest; revoking it ends them), `None` when unknown or revoked. Handed down by the layer that
/// keeps the tokens.
pub type Admit = Arc<dyn Fn(&str) -> Option<[u8; 32]> + Send + Sync>;

/// Runs the device's peer until it is detached.
pub async fn run(me: LocalPeer, sessions: Arc<Sessions>) {
    run_with(me, sessions, Connections::default()).await
}

/// [`run`] with the connection map given (tests look at it).
pub async fn run_with(me: LocalPeer, sessions: Arc<Sessions>, conns: Connections) {
    run_admitting(me, sessions, conns, None).await
}

/// [`run_with`], and with `admit` every OFFER must carry a valid viewer token in
/// `metadata.token` (the device's peer on an external PeerServer, where anyone can call):
/// without one the connection is refused with LEAVE before anything is opened.
pub async fn run_admitting(mut me: LocalPeer, sessions: Arc<Sessions>, conns: Connections, admit: Option<Admit>) {
    let tx = me.sender();
    while let Some(m) = me.recv().await {
        match m.kind {
            Kind::Offer => {
                let tag = match &admit {
                    None => None,
                    Some(check) => match admitted(&m, check) {
                        Ok(tag) => Some((tag, check.clone())),
                        Err(why) => {
                            let cid = connection_id(&m.payload).unwrap_or_default();
                            log::warn!("peerjs: refused {} from {:?}: {why}", cid, m.src);
                            tx.send(&m.src, Kind::Leave, json!({"connectionId": cid}));
                            continue;
                        }
                    },
                };
                let Some(cid) = connection_id(&m.payload) else {
                    log::info!("peerjs: OFFER from {} without connectionId; ignored", m.src);
                    continue;
                };
                // Registered here, before the answer is made: the caller's candidates follow the
                // OFFER at once and must find the connection (kept until it is answered).
                let key = (m.src.clone(), cid.clone());
                {
                    let mut c = lock(&conns.0);
                    if c.len() >= MAX_CONNECTIONS && !c.contains_key(&key) {
                        drop(c);
                        log::warn!("peerjs: {MAX_CONNECTIONS} connections open; {cid} from {} refused", m.src);
                        tx.send(&m.src, Kind::Leave, json!({"connectionId": cid}));
                        continue;
                    }
                    c.insert(key, Conn::Answering(Vec::new()));
                }
                let (sessions, tx, conns) = (sessions.clone(), tx.clone(), conns.clone());
                tokio::spawn(async move { answer(m, cid, sessions, tx, conns, tag).await });
            }
            Kind::Candidate => candidate(&m, &conns, &sessions).await,
            Kind::Leave | Kind::Expire => {
                let gone: Vec<String> = {
                    let mut c = lock(&conns.0);
                    let keys: Vec<_> = c.keys().filter(|(src, _)| *src == m.src).cloned().collect();
                    keys.into_iter()
                        .filter_map(|k| match c.remove(&k) {
                            Some(Conn::Ready { session }) => Some(session),
                            _ => None,
                        })
                        .collect()
                };
                for s in gone {
                    sessions.remove(&s, "PeerJS peer left").await;
                }
            }
            Kind::Answer => log::debug!("peerjs: unexpected ANSWER from {} (the device never calls)", m.src),
        }
    }
    log::info!("peerjs: the device's peer was detached");
}

/// The viewer token of an OFFER, checked: its tag, or why it is refused (for the log; the token
/// itself is never logged).
fn admitted(m: &Incoming, check: &Admit) -> Result<[u8; 32], &'static str> {
    let token = m.payload.get("metadata").and_then(|md| md.get("token"));
    match token {
        None | Some(Value::Null) => Err("no viewer token (metadata.token)"),
        Some(Value::String(t)) if t.is_empty() => Err("no viewer token (metadata.token is empty)"),
        Some(Value::String(t)) => check(t).ok_or("unknown or revoked viewer token"),
        Some(_) => Err("metadata.token is not a string"),
    }
}

fn connection_id(payload: &Value) -> Option<String> {
    payload.get("connectionId").and_then(Value::as_str).map(str::to_string)
}

/// Answers an OFFER whose connection `run_admitting` registered (as `Answering`).
async fn answer(m: Incoming, cid: String, sessions: Arc<Sessions>, tx: LocalSender, conns: Connections, tag: Option<([u8; 32], Admit)>) {
    let p = &m.payload;
    let key = (m.src.clone(), cid.clone());
    let kind = p.get("type").and_then(Value::as_str).unwrap_or("media").to_string();
    let Some(sdp) = p.get("sdp").and_then(|s| s.get("sdp")).and_then(Value::as_str).map(str::to_string) else {
        lock(&conns.0).remove(&key);
        log::info!("peerjs: OFFER {cid} from {} has no sdp; ignored", m.src);
        return;
    };
    let purpose = if kind == "data" {
        let ser = p.get("serialization").and_then(Value::as_str).unwrap_or("binary");
        let ser: Serialization = ser.parse().unwrap_or_default();
        // PeerJS names the channel after `label`, or the connection id when none was given.
        let label = p.get("label").and_then(Value::as_str).unwrap_or(&cid).to_string();
        Purpose::Data { label, handler: data_handler(ser) }
    } else {
        Purpose::Call
    };
    match sessions.answer_for(sdp, purpose).await {
        Ok(answered) => {
            let session = answered.id.clone();
            if let Some((digest, check)) = &tag {
                // Revoking the token ends this call (`Sessions::end_owned_by` with its digest).
                sessions.set_owner(&session, session::OwnerTag::new(*digest));
                let token = m.payload.get("metadata").and_then(|md| md.get("token")).and_then(Value::as_str).unwrap_or("");
                if check(token).is_none() {
                    // Revoked while we were answering: the revocation did not see this session.
                    lock(&conns.0).remove(&key);
                    sessions.remove(&session, "its viewer token was revoked while it was being answered").await;
                    log::warn!("peerjs: refused {kind} {cid} from {:?}: its viewer token was revoked", m.src);
                    tx.send(&m.src, Kind::Leave, json!({"connectionId": cid}));
                    return;
                }
            }
            if let Some(owner) = m.owner {
                // Opened through a socket of a browser login: its logout ends this call too
                // (`Sessions::end_owned_by`), not only the signaling socket.
                sessions.set_owner(&session, session::OwnerTag::new(owner.0));
                if !tx.is_owned_by(&m.src, owner) {
                    // The logout came while we were answering: it did not see this session.
                    lock(&conns.0).remove(&key);
                    sessions.remove(&session, "its login ended while it was being answered").await;
                    log::info!("peerjs: {kind} {cid} from {} ended: its login was logged out", m.src);
                    return;
                }
            }
            let mut reply = json!({
                "sdp": {"type": "answer", "sdp": answered.answer},
                "type": kind,
                "connectionId": cid,
            });
            for k in ["label", "reliable", "serialization"] {
                if let Some(v) = p.get(k) {
                    reply[k] = v.clone();
                }
            }
            tx.send(&m.src, Kind::Answer, reply);
            let early = match lock(&conns.0).insert(key.clone(), Conn::Ready { session: session.clone() }) {
                Some(Conn::Answering(c)) => c,
                _ => Vec::new(),
            };
            for c in early {
                if let Err(e) = sessions.add_candidate(&session, c).await {
                    log::debug!("peerjs: early candidate: {e}");
                }
            }
            log::info!("peerjs: {} {} from {} answered (session {session})", kind, cid, m.src);
            // Forget the connection when its session ends (ICE failure, close, DELETE…).
            let (end, conns) = (answered.end, conns.clone());
            tokio::spawn(async move {
                end.ended().await;
                let mut c = lock(&conns.0);
                if matches!(c.get(&key), Some(Conn::Ready { session: s }) if *s == session) {
                    c.remove(&key);
                }
            });
        }
        Err(e) => {
            lock(&conns.0).remove(&key);
            log::info!("peerjs: cannot answer {kind} {cid} from {}: {e}", m.src);
            // PeerJS has no "rejected" message: closing is what the browser would see from a
            // peer that refused; LEAVE tells its connection to close now, not after a timeout.
            tx.send(&m.src, Kind::Leave, json!({"connectionId": cid}));
        }
    }
}

async fn candidate(m: &Incoming, conns: &Connections, sessions: &Sessions) {
    let Some(cid) = connection_id(&m.payload) else { return };
    let Some(c) = m.payload.get("candidate") else { return };
    let init = RemoteCandidate {
        candidate: c.get("candidate").and_then(Value::as_str).unwrap_or("").to_string(),
        sdp_mid: c.get("sdpMid").and_then(Value::as_str).map(str::to_string),
        sdp_mline_index: c.get("sdpMLineIndex").and_then(Value::as_u64).and_then(|i| u16::try_from(i).ok()),
        username_fragment: c.get("usernameFragment").and_then(Value::as_str).map(str::to_string),
    };
    if init.candidate.is_empty() {
        return; // end-of-candidates
    }
    let session = {
        let mut map = lock(&conns.0);
        match map.get_mut(&(m.src.clone(), cid)) {
            Some(Conn::Answering(early)) => {
                if early.len() < MAX_EARLY_CANDIDATES {
                    early.push(init);
                }
                return;
            }
            Some(Conn::Ready { session }) => session.clone(),
            None => {
                conns.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::debug!("peerjs: a candidate from {} for an unknown connection; dropped", m.src);
                return;
            }
        }
    };
    if let Err(e) = sessions.add_candidate(&session, init).await {
        log::debug!("peerjs: {e}");
    }
}

/// A PeerJS data connection's channel: control requests in, replies and events out.
fn data_handler(serialization: Serialization) -> DataHandler {
    Arc::new(move |dc: DataChannel, room: Weak<Room>, viewer: u64| {
        serve_data(dc, room, viewer, serialization);
    })
}

async fn send_frames(dc: &DataChannel, frames: Vec<Frame>) -> Result<(), session::SendError> {
    for f in frames {
        match f {
            Frame::Text(t) => dc.send_text(t).await?,
            Frame::Binary(b) => dc.send_binary(Bytes::from(b)).await?,
        };
    }
    Ok(())
}

fn serve_data(dc: DataChannel, room: Weak<Room>, viewer: u64, serialization: Serialization) {
    let decoder = Arc::new(Mutex::new(Decoder::new(serialization)));
    let encoder = Arc::new(Mutex::new(Encoder::new(serialization)));
    let encode = {
        let encoder = encoder.clone();
        move |v: &Value| lock(&encoder).encode_json(v).unwrap_or_default()
    };

    // Events, once the channel is open: each event's JSON value is made once for every viewer
    // and framed here for this connection's serialization.
    let opened = {
        let (dc, room, encode) = (dc.downgrade(), room.clone(), encode.clone());
        move || {
            let Some(mut events) = room.upgrade().and_then(|r| r.attach_events(viewer)) else { return };
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    let Some(dc) = dc.upgrade() else { return };
                    if send_frames(&dc, encode(event.json())).await.is_err() {
                        return;
                    }
                }
            });
        }
    };

    let weak_dc = dc.downgrade();
    let on_message: MessageFn = Arc::new(move |msg: session::Message| {
        let (room, dc, decoder, encode, encoder) = (room.clone(), weak_dc.clone(), decoder.clone(), encode.clone(), encoder.clone());
        Box::pin(async move {
            let (Some(room), Some(dc)) = (room.upgrade(), dc.upgrade()) else { return };
            let frame = if msg.is_string {
                Frame::Text(String::from_utf8_lossy(&msg.data).into_owned())
            } else {
                Frame::Binary(msg.data.to_vec())
            };
            let decoded = lock(&decoder).push(frame);
            let frames = match decoded {
                Ok(None) => return, // a chunk of a larger message
                Ok(Some(Message::Close)) => {
                    dc.close().await;
                    return;
                }
                // Arbitrary binary data: echoed back as is.
                Ok(Some(Message::Data(PackValue::Bin(bytes)))) => {
                    lock(&encoder).encode(&PackValue::Bin(bytes)).unwrap_or_default()
                }
                Ok(Some(Message::Data(value))) => {
                    // `raw` (and a string sent with any serialization) carries the JSON text.
                    let text = match &value {
                        PackValue::Str(s) => s.clone(),
                        other => other.to_json().to_string(),
                    };
                    let reply = room.handle_message(Origin::Viewer(viewer), &text).await;
                    encode(&reply.to_json())
                }
                Err(e @ (DecodeError::FrameTooLarge { .. } | DecodeError::MessageTooLarge { .. })) => {
                    // Refused, not kept: a chunked message stops being reassembled here.
                    log::debug!("peerjs data: {e}");
                    let err = ControlError::new("too_large", format!("{e}: a data connection to the device carries messages of at most {} bytes", super::dataconn::MAX_MESSAGE));
                    encode(&control::Reply::error(Value::Null, err).to_json())
                }
                Err(e) => {
                    let err = ControlError::new("bad_message", format!("cannot decode the {serialization} message: {e}"));
                    encode(&control::Reply::error(Value::Null, err).to_json())
                }
            };
            if let Err(e) = send_frames(&dc, frames).await {
                log::debug!("peerjs data reply not sent: {e}");
            }
        })
    });
    pump(dc, super::dataconn::READ_BUFFER, opened, on_message);
}
