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

use super::dataconn::{Decoder, Encoder, Frame, Message, Serialization};
use super::binarypack::Value as PackValue;
use super::{Incoming, LocalPeer, LocalSender};
use super::server::Kind;
use crate::rtc::control::{self, ControlError};
use crate::rtc::room::{Origin, Room};
use crate::rtc::session::{pump, DataHandler, MessageFn, Purpose, Sessions};
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::peer_connection::RTCPeerConnection;

/// Trickled candidates kept for a connection that is still being answered.
const MAX_EARLY_CANDIDATES: usize = 32;

enum Conn {
    /// Answering; candidates that arrive meanwhile wait here.
    Answering(Vec<RTCIceCandidateInit>),
    Ready { session: String, pc: Arc<RTCPeerConnection> },
}

type Conns = Arc<Mutex<HashMap<(String, String), Conn>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the device's peer until it is detached.
pub async fn run(mut me: LocalPeer, sessions: Arc<Sessions>) {
    let conns: Conns = Arc::new(Mutex::new(HashMap::new()));
    let tx = me.sender();
    while let Some(m) = me.recv().await {
        match m.kind {
            Kind::Offer => {
                let (sessions, tx, conns) = (sessions.clone(), tx.clone(), conns.clone());
                tokio::spawn(async move { answer(m, sessions, tx, conns).await });
            }
            Kind::Candidate => candidate(&m, &conns).await,
            Kind::Leave | Kind::Expire => {
                let gone: Vec<String> = {
                    let mut c = lock(&conns);
                    let keys: Vec<_> = c.keys().filter(|(src, _)| *src == m.src).cloned().collect();
                    keys.into_iter()
                        .filter_map(|k| match c.remove(&k) {
                            Some(Conn::Ready { session, .. }) => Some(session),
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

fn connection_id(payload: &Value) -> Option<String> {
    payload.get("connectionId").and_then(Value::as_str).map(str::to_string)
}

async fn answer(m: Incoming, sessions: Arc<Sessions>, tx: LocalSender, conns: Conns) {
    let p = &m.payload;
    let Some(cid) = connection_id(p) else {
        log::info!("peerjs: OFFER from {} without connectionId; ignored", m.src);
        return;
    };
    let kind = p.get("type").and_then(Value::as_str).unwrap_or("media").to_string();
    let Some(sdp) = p.get("sdp").and_then(|s| s.get("sdp")).and_then(Value::as_str).map(str::to_string) else {
        log::info!("peerjs: OFFER {cid} from {} has no sdp; ignored", m.src);
        return;
    };
    let key = (m.src.clone(), cid.clone());
    lock(&conns).insert(key.clone(), Conn::Answering(Vec::new()));
    let purpose = if kind == "data" {
        let ser = p.get("serialization").and_then(Value::as_str).unwrap_or("binary");
        let ser: Serialization = ser.parse().unwrap_or_default();
        Purpose::Data(data_handler(ser))
    } else {
        Purpose::Call
    };
    match sessions.answer_for(sdp, purpose).await {
        Ok((session, answer_sdp, pc)) => {
            let mut reply = json!({
                "sdp": {"type": "answer", "sdp": answer_sdp},
                "type": kind,
                "connectionId": cid,
            });
            for k in ["label", "reliable", "serialization"] {
                if let Some(v) = p.get(k) {
                    reply[k] = v.clone();
                }
            }
            tx.send(&m.src, Kind::Answer, reply);
            let early = match lock(&conns).insert(key, Conn::Ready { session: session.clone(), pc: pc.clone() }) {
                Some(Conn::Answering(c)) => c,
                _ => Vec::new(),
            };
            for c in early {
                if let Err(e) = pc.add_ice_candidate(c).await {
                    log::debug!("peerjs: early candidate refused: {e}");
                }
            }
            log::info!("peerjs: {} {} from {} answered (session {session})", kind, cid, m.src);
        }
        Err(e) => {
            lock(&conns).remove(&key);
            log::info!("peerjs: cannot answer {kind} {cid} from {}: {e}", m.src);
            // PeerJS has no "rejected" message: closing is what the browser would see from a
            // peer that refused; LEAVE tells its connection to close now, not after a timeout.
            tx.send(&m.src, Kind::Leave, json!({"connectionId": cid}));
        }
    }
}

async fn candidate(m: &Incoming, conns: &Conns) {
    let Some(cid) = connection_id(&m.payload) else { return };
    let Some(c) = m.payload.get("candidate") else { return };
    let init = RTCIceCandidateInit {
        candidate: c.get("candidate").and_then(Value::as_str).unwrap_or("").to_string(),
        sdp_mid: c.get("sdpMid").and_then(Value::as_str).map(str::to_string),
        sdp_mline_index: c.get("sdpMLineIndex").and_then(Value::as_u64).map(|i| i as u16),
        username_fragment: c.get("usernameFragment").and_then(Value::as_str).map(str::to_string),
    };
    if init.candidate.is_empty() {
        return; // end-of-candidates
    }
    let pc = {
        let mut map = lock(conns);
        match map.get_mut(&(m.src.clone(), cid)) {
            Some(Conn::Answering(early)) => {
                if early.len() < MAX_EARLY_CANDIDATES {
                    early.push(init);
                }
                return;
            }
            Some(Conn::Ready { pc, .. }) => pc.clone(),
            None => return,
        }
    };
    if let Err(e) = pc.add_ice_candidate(init).await {
        log::debug!("peerjs: candidate refused: {e}");
    }
}

/// A PeerJS data connection's channel: control requests in, replies and events out.
fn data_handler(serialization: Serialization) -> DataHandler {
    Arc::new(move |dc: Arc<RTCDataChannel>, room: Weak<Room>, viewer: u64| {
        serve_data(dc, room, viewer, serialization);
    })
}

async fn send_frames(dc: &RTCDataChannel, frames: Vec<Frame>) -> Result<(), webrtc::Error> {
    for f in frames {
        match f {
            Frame::Text(t) => dc.send_text(t).await?,
            Frame::Binary(b) => dc.send(&Bytes::from(b)).await?,
        };
    }
    Ok(())
}

fn serve_data(dc: Arc<RTCDataChannel>, room: Weak<Room>, viewer: u64, serialization: Serialization) {
    let decoder = Arc::new(Mutex::new(Decoder::new(serialization)));
    let encoder = Arc::new(Mutex::new(Encoder::new(serialization)));
    let encode = {
        let encoder = encoder.clone();
        move |v: &Value| lock(&encoder).encode_json(v).unwrap_or_default()
    };

    // Events, once the channel is open.
    let opened = {
        let (dc, room, encode) = (Arc::downgrade(&dc), room.clone(), encode.clone());
        move || {
            let Some(mut events) = room.upgrade().and_then(|r| r.attach_events(viewer)) else { return };
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    let Some(dc) = dc.upgrade() else { return };
                    let v: Value = serde_json::from_str(&event).unwrap_or(Value::Null);
                    if send_frames(&dc, encode(&v)).await.is_err() {
                        return;
                    }
                }
            });
        }
    };

    let weak_dc = Arc::downgrade(&dc);
    let on_message: MessageFn = Arc::new(move |msg: DataChannelMessage| {
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
                    let _ = dc.close().await;
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
                    let reply = room.handle_text(Origin::Viewer(viewer), &text).await;
                    encode(&serde_json::from_str(&reply).unwrap_or(Value::Null))
                }
                Err(e) => {
                    let err = ControlError::new("bad_message", format!("cannot decode the {serialization} message: {e}"));
                    let reply = control::reply_err(&Value::Null, &err);
                    encode(&serde_json::from_str(&reply).unwrap_or(Value::Null))
                }
            };
            if let Err(e) = send_frames(&dc, frames).await {
                log::debug!("peerjs data reply not sent: {e}");
            }
        })
    });
    pump(dc, opened, on_message);
}
