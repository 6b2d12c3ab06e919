//! Viewer sessions: a peer connection that sends the hub's H.264 and Opus to one viewer.
//!
//! Per viewer the device only stamps RTP headers (its own sequence numbers, so a viewer that
//! skipped units sees a clean stream) and encrypts; payloads come packetized from the hub.
//! A session ends on `DELETE`, on ICE failure (the peer vanished: within `peer_timeout_s`) or
//! when the peer closes; its viewer count goes with it.

use super::control;
use super::offer::{self, OfferError};
use super::room::{Origin, Room, ViewerHandle};
use super::{h264_capability, opus_capability, RtcEngine};
use crate::codec::rtp_timestamp;
use crate::hub::{Hub, Next, Stream, ViewerGuard};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::data_channel_state::RTCDataChannelState;
use webrtc::data_channel::RTCDataChannel;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_remote::TrackRemote;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

/// How long the answer may wait for the device's own ICE candidates. Host candidates on the mux
/// take milliseconds; this bounds a slow STUN server.
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves a data channel of a data-only session: `(channel, room, viewer id)`.
pub type DataHandler = Arc<dyn Fn(Arc<RTCDataChannel>, Weak<Room>, u64) + Send + Sync>;

/// What a peer connection is for.
pub enum Purpose {
    /// Watch and listen (WHEP, the page): media, talk-back, `control` channel.
    ///
    /// `lip_sync`: video and audio in one stream (msid), so the browser syncs them — and holds
    /// the video back to its audio jitter buffer (Chromium's NetEq keeps ~70 ms). Without it
    /// (the page asks with `POST /whep?sync=0`) each track is its own stream and the picture
    /// shows as soon as it is decoded; audio then trails the picture by a few tens of ms, which
    /// a baby monitor's user does not notice but its latency does.
    Watch { lip_sync: bool },
    /// A PeerJS call: media and talk-back. Its data channel (PeerJS opens one to notice the
    /// call closing) is not a control channel, so the caller talks by sending audio.
    Call,
    /// Data only (a PeerJS `connect`): no media, so the encoders are not started for it.
    Data(DataHandler),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Offer(#[from] OfferError),
    #[error("the offer was rejected by the WebRTC stack: {0}")]
    Negotiation(String),
    #[error("too many viewers ({0}); try again later")]
    Full(usize),
    #[error("{0}")]
    Internal(String),
}

pub struct Session {
    pub id: String,
    pub pc: Arc<RTCPeerConnection>,
    pub created: Instant,
    phase: Arc<watch::Sender<Phase>>,
    _viewer: Option<ViewerGuard>,
    /// The viewer's place in the room (public id, talk-back, events).
    pub member: ViewerHandle,
    /// The login whose token opened it: logging out ends the session too.
    owner: Mutex<Option<crate::http::auth::LoginId>>,
}

/// Where a session is: its send loops start at `Connected` and stop at `Ended`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Negotiating,
    Connected,
    Ended,
}

/// All live sessions.
pub struct Sessions {
    engine: RtcEngine,
    hub: Arc<Hub>,
    pub room: Arc<Room>,
    max_viewers: usize,
    live: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn new(engine: RtcEngine, hub: Arc<Hub>, room: Arc<Room>, max_viewers: usize) -> Arc<Self> {
        Arc::new(Self { engine, hub, room, max_viewers, live: Mutex::new(HashMap::new()) })
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    pub fn udp_addr(&self) -> std::net::SocketAddr {
        self.engine.udp_addr
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers a WHEP offer: checks it, builds the peer connection, waits for the device's
    /// candidates and returns `(session id, answer SDP)`.
    pub async fn answer(self: &Arc<Self>, offer_sdp: String) -> Result<(String, String), SessionError> {
        self.answer_whep(offer_sdp, true).await
    }

    /// [`Sessions::answer`]; `lip_sync: false` puts video and audio in separate streams (see
    /// [`Purpose::Watch`]).
    pub async fn answer_whep(self: &Arc<Self>, offer_sdp: String, lip_sync: bool) -> Result<(String, String), SessionError> {
        self.answer_for(offer_sdp, Purpose::Watch { lip_sync }).await.map(|(id, answer, _)| (id, answer))
    }

    /// Answers an offer made for `purpose`; also returns the peer connection (PeerJS adds the
    /// browser's trickled candidates to it).
    pub async fn answer_for(
        self: &Arc<Self>,
        offer_sdp: String,
        purpose: Purpose,
    ) -> Result<(String, String, Arc<RTCPeerConnection>), SessionError> {
        let summary = match (offer::inspect(&offer_sdp), &purpose) {
            (Err(OfferError::NoMedia), Purpose::Data(_)) if offer_sdp.contains("m=application") => {
                offer::OfferSummary { video: None, audio: None, data_channel: true }
            }
            (Err(e), _) => return Err(e.into()),
            (Ok(s), Purpose::Data(_)) if s.video.is_none() && s.audio.is_none() && s.data_channel => s,
            (Ok(_), Purpose::Data(_)) => {
                return Err(SessionError::Negotiation("a data connection's offer carries audio or video".into()));
            }
            (Ok(s), _) => s,
        };
        if self.count() >= self.max_viewers {
            return Err(SessionError::Full(self.max_viewers));
        }
        let pc = self.engine.new_peer_connection().await.map_err(SessionError::Internal)?;
        match self.negotiate(&pc, offer_sdp, &summary, purpose).await {
            Ok((id, answer)) => Ok((id, answer, pc)),
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }

    async fn negotiate(
        self: &Arc<Self>,
        pc: &Arc<RTCPeerConnection>,
        offer_sdp: String,
        summary: &offer::OfferSummary,
        purpose: Purpose,
    ) -> Result<(String, String), SessionError> {
        let neg = |e: webrtc::Error| SessionError::Negotiation(e.to_string());
        let (phase_tx, phase_rx) = watch::channel(Phase::Negotiating);
        let phase_tx = Arc::new(phase_tx);

        let mut senders = Vec::new();
        if summary.video.as_ref().is_some_and(|v| v.direction.remote_receives()) {
            let track = Arc::new(TrackLocalStaticRTP::new(h264_capability(), "video".into(), stream_id(&purpose, "video")));
            // Send-only even when the offer is sendrecv (a PeerJS caller sending its camera):
            // the device has no use for the viewer's video, so the browser should not upload it.
            let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Sendonly, send_encodings: vec![] };
            let transceiver = pc
                .add_transceiver_from_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>, Some(init))
                .await
                .map_err(neg)?;
            let sender = transceiver.sender().await;
            senders.push((track, sender, MediaKind::Video));
        }
        if summary.audio.as_ref().is_some_and(|a| a.direction.remote_receives()) {
            let track = Arc::new(TrackLocalStaticRTP::new(opus_capability(), "audio".into(), stream_id(&purpose, "audio")));
            let sender = pc.add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>).await.map_err(neg)?;
            senders.push((track, sender, MediaKind::Audio));
        }

        let offer = RTCSessionDescription::offer(offer::video_as_recvonly(&offer_sdp)).map_err(neg)?;
        pc.set_remote_description(offer).await.map_err(neg)?;
        let answer = pc.create_answer(None).await.map_err(neg)?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(answer).await.map_err(neg)?;
        if tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await.is_err() {
            log::warn!("ICE gathering did not finish in {GATHER_TIMEOUT:?}; answering with the candidates so far");
        }
        let answer_sdp = pc
            .local_description()
            .await
            .ok_or_else(|| SessionError::Internal("no local description after answering".into()))?
            .sdp;

        let id = new_id();
        let member = self.room.join(matches!(purpose, Purpose::Watch { .. }) && summary.data_channel);
        let viewer = member.id;
        let watching = !matches!(purpose, Purpose::Data(_));
        let session = Arc::new(Session {
            id: id.clone(),
            pc: Arc::clone(pc),
            created: Instant::now(),
            phase: Arc::clone(&phase_tx),
            // Only sessions with media make the encoders run.
            _viewer: watching.then(|| self.hub.demand.join()),
            member,
            owner: Mutex::new(None),
        });
        match purpose {
            Purpose::Watch { .. } => {
                attach_talkback(pc, &self.room, viewer);
                attach_control(pc, &self.room, viewer);
            }
            Purpose::Call => attach_talkback(pc, &self.room, viewer),
            Purpose::Data(handler) => {
                let room = Arc::downgrade(&self.room);
                pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
                    handler(dc, room.clone(), viewer);
                    Box::pin(async {})
                }));
            }
        }
        self.lock().insert(id.clone(), Arc::clone(&session));

        // End the session when the peer goes away; start sending once DTLS is up.
        let weak: Weak<Sessions> = Arc::downgrade(self);
        let sid = id.clone();
        pc.on_peer_connection_state_change(Box::new(move |state| {
            log::debug!("session {sid}: {state}");
            match state {
                RTCPeerConnectionState::Connected => {
                    phase_tx.send_if_modified(|p| {
                        let change = *p == Phase::Negotiating;
                        if change {
                            *p = Phase::Connected;
                        }
                        change
                    });
                }
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                    if let Some(sessions) = weak.upgrade() {
                        let sid = sid.clone();
                        tokio::spawn(async move { sessions.remove(&sid, "peer gone").await });
                    }
                }
                _ => {}
            }
            Box::pin(async {})
        }));

        for (track, sender, kind) in senders {
            let hub = Arc::clone(&self.hub);
            tokio::spawn(send_loop(hub.clone(), track, kind, phase_rx.clone()));
            tokio::spawn(rtcp_loop(hub, sender, kind));
        }
        log::info!("session {id} started ({} viewers)", self.count());
        Ok((id, answer_sdp))
    }

    /// Ends a session. Returns false if there was none with that id.
    pub async fn remove(&self, id: &str, why: &str) -> bool {
        let session = self.lock().remove(id);
        match session {
            Some(s) => {
                let _ = s.phase.send(Phase::Ended);
                let _ = s.pc.close().await;
                log::info!("session {id} ended: {why} ({} viewers)", self.count());
                true
            }
            None => false,
        }
    }

    /// Marks a session as opened by `owner` (a login's minted token).
    pub fn set_owner(&self, id: &str, owner: crate::http::auth::LoginId) {
        if let Some(s) = self.lock().get(id) {
            *s.owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(owner);
        }
    }

    /// Ends every session a login opened (at logout: its viewers must not keep watching).
    pub async fn end_owned_by(&self, owner: crate::http::auth::LoginId) -> usize {
        let ids: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, s)| *s.owner.lock().unwrap_or_else(|e| e.into_inner()) == Some(owner))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.remove(id, "its login logged out").await;
        }
        ids.len()
    }

    pub async fn close_all(&self) {
        let all: Vec<Arc<Session>> = self.lock().drain().map(|(_, s)| s).collect();
        for s in all {
            let _ = s.phase.send(Phase::Ended);
            let _ = s.pc.close().await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum MediaKind {
    Video,
    Audio,
}

impl MediaKind {
    fn stream(self, hub: &Hub) -> &Stream {
        match self {
            MediaKind::Video => &hub.video,
            MediaKind::Audio => &hub.audio,
        }
    }
    fn clock_rate(self) -> u32 {
        match self {
            MediaKind::Video => 90_000,
            MediaKind::Audio => 48_000,
        }
    }
}

/// Copies the hub's units to one track. Ends when the track's peer connection is gone.
async fn send_loop(
    hub: Arc<Hub>,
    track: Arc<TrackLocalStaticRTP>,
    kind: MediaKind,
    mut phase: watch::Receiver<Phase>,
) {
    // Subscribing only once DTLS is up means the first unit this viewer reads is a fresh IDR
    // requested right now, not one that went out before its SRTP was ready.
    match phase.wait_for(|p| *p != Phase::Negotiating).await {
        Ok(p) if *p == Phase::Connected => {}
        _ => return,
    }
    let stream = kind.stream(&hub);
    let mut reader = stream.subscribe();
    let mut seq: u16 = rand::random();
    let mut delivered_any = false;
    let mut unbound_retries = 10;
    loop {
        let next = tokio::select! {
            next = reader.next(stream) => next,
            _ = phase.wait_for(|p| *p == Phase::Ended) => return,
        };
        let unit = match next {
            Next::Unit(u) => u,
            Next::Skipped(n) => {
                log::debug!("{kind:?} reader lagged by {n} units; waiting for a keyframe");
                continue;
            }
            Next::Closed => return,
        };
        let timestamp = rtp_timestamp(unit.capture_unix_us, kind.clock_rate());
        let last = unit.payloads.len().saturating_sub(1);
        let mut written = 0usize;
        for (i, payload) in unit.payloads.iter().enumerate() {
            let packet = rtp::packet::Packet {
                header: rtp::header::Header {
                    version: 2,
                    // Video: last packet of a frame. Audio: start of a talkspurt only — we send
                    // continuously, so just the first packet.
                    marker: match kind {
                        MediaKind::Video => i == last,
                        MediaKind::Audio => !delivered_any && i == 0,
                    },
                    sequence_number: seq,
                    timestamp,
                    ..Default::default()
                },
                payload: payload.clone(),
            };
            seq = seq.wrapping_add(1);
            match track.write_rtp(&packet).await {
                Ok(n) => written += n,
                Err(webrtc::Error::ErrClosedPipe) => return,
                Err(e) => log::debug!("{kind:?} write: {e}"),
            }
        }
        if written == 0 && !delivered_any && unbound_retries > 0 && matches!(kind, MediaKind::Video) {
            // The sender was not bound yet: this keyframe reached nobody. Ask for another
            // (a few times only: a track that never binds must not force IDRs forever).
            unbound_retries -= 1;
            reader = stream.subscribe();
            continue;
        }
        delivered_any |= written > 0;
    }
}

/// Reads RTCP from the viewer: PLI/FIR become (rate-limited) keyframe requests.
async fn rtcp_loop(hub: Arc<Hub>, sender: Arc<RTCRtpSender>, kind: MediaKind) {
    while let Ok((packets, _)) = sender.read_rtcp().await {
        if matches!(kind, MediaKind::Video) {
            for p in packets {
                let any = p.as_any();
                if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                    hub.video.request_keyframe();
                }
            }
        }
    }
}

/// The viewer's audio (talk-back) goes to the room, which plays the talker's; remote video (a
/// PeerJS caller's camera, if it sends despite the sendonly answer) is read and dropped so
/// nothing queues up.
fn attach_talkback(pc: &Arc<RTCPeerConnection>, room: &Arc<Room>, viewer: u64) {
    let room = Arc::downgrade(room);
    pc.on_track(Box::new(move |track: Arc<TrackRemote>, _, _| {
        let room = room.clone();
        tokio::spawn(async move {
            let audio = track.kind() == RTPCodecType::Audio;
            if audio {
                log::debug!("{}: receiving audio ({})", super::room::viewer_label(viewer), track.codec().capability.mime_type);
            }
            while let Ok((packet, _)) = track.read_rtp().await {
                if !audio {
                    continue;
                }
                let Some(room) = room.upgrade() else { return };
                let h = &packet.header;
                room.talk_packet(viewer, h.sequence_number, h.timestamp, packet.payload);
            }
        });
        Box::pin(async {})
    }));
}

/// The `control` data channel the page opens: requests in, replies and room events out.
fn attach_control(pc: &Arc<RTCPeerConnection>, room: &Arc<Room>, viewer: u64) {
    let room = Arc::downgrade(room);
    pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
        let room = room.clone();
        Box::pin(async move {
            if dc.label() != "control" {
                log::debug!("{}: ignoring data channel {:?}", super::room::viewer_label(viewer), dc.label());
                return;
            }
            serve_control(dc, room, viewer);
        })
    }));
}

/// What to do with one incoming data channel message.
pub type MessageFn = Arc<dyn Fn(DataChannelMessage) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Once the channel is open: runs `on_open`, then hands every message to `on_message`, in order.
///
/// Reads the channel itself (channels are detached, see `rtc`): webrtc 0.17's own read loop
/// takes an empty message for the end of the channel and stops reading, so one empty `send('')`
/// would silence a viewer's control channel for good.
pub fn pump(dc: Arc<RTCDataChannel>, on_open: impl FnOnce() + Send + 'static, on_message: MessageFn) {
    let once: Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>> = Arc::new(Mutex::new(Some(Box::new(on_open))));
    let start = move |dc: Arc<RTCDataChannel>| {
        let Some(opened) = once.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        opened();
        let on_message = on_message.clone();
        tokio::spawn(async move {
            let raw = match dc.detach().await {
                Ok(raw) => raw,
                Err(e) => {
                    log::warn!("data channel {:?}: cannot read it: {e}", dc.label());
                    return;
                }
            };
            // SCTP hands over whole messages; peers keep to 64 KiB (no max-message-size offered).
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match raw.read_data_channel(&mut buf).await {
                    Ok((0, false)) => break, // end of the channel (an empty *binary* message looks the same)
                    Ok((n, is_string)) => {
                        on_message(DataChannelMessage { is_string, data: bytes::Bytes::copy_from_slice(&buf[..n]) }).await
                    }
                    Err(e) => {
                        log::debug!("data channel {:?} ended: {e}", dc.label());
                        break;
                    }
                }
            }
        });
    };
    let on_open_dc = Arc::downgrade(&dc);
    let start2 = start.clone();
    dc.on_open(Box::new(move || {
        if let Some(dc) = on_open_dc.upgrade() {
            start2(dc);
        }
        Box::pin(async {})
    }));
    if dc.ready_state() == RTCDataChannelState::Open {
        start(dc);
    }
}

/// Wires one control channel to the room: requests in, replies and room events out.
pub fn serve_control(dc: Arc<RTCDataChannel>, room: Weak<Room>, viewer: u64) {
    let opened = {
        let (dc, room) = (Arc::downgrade(&dc), room.clone());
        move || {
            let Some(mut events) = room.upgrade().and_then(|r| r.attach_events(viewer)) else { return };
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    let Some(dc) = dc.upgrade() else { return };
                    if dc.send_text(event.to_string()).await.is_err() {
                        break;
                    }
                }
            });
        }
    };
    let reply_dc = Arc::downgrade(&dc);
    let on_message: MessageFn = Arc::new(move |msg: DataChannelMessage| {
        let (room, dc) = (room.clone(), reply_dc.clone());
        Box::pin(async move {
            let (Some(room), Some(dc)) = (room.upgrade(), dc.upgrade()) else { return };
            let reply = if !msg.is_string {
                let e = control::ControlError::new("bad_message", "binary messages are not part of the protocol: send JSON text");
                control::reply_err(&serde_json::Value::Null, &e)
            } else {
                match std::str::from_utf8(&msg.data) {
                    Ok(text) => room.handle_text(Origin::Viewer(viewer), text).await,
                    Err(_) => control::reply_err(
                        &serde_json::Value::Null,
                        &control::ControlError::new("bad_json", "the message is not UTF-8 text"),
                    ),
                }
            };
            if let Err(e) = dc.send_text(reply).await {
                log::debug!("control reply not sent: {e}");
            }
        })
    });
    pump(dc, opened, on_message);
}

/// The msid stream of a track: one shared stream (lip-synced) unless the viewer asked otherwise.
fn stream_id(purpose: &Purpose, kind: &str) -> String {
    match purpose {
        Purpose::Watch { lip_sync: false } => format!("peercam-{kind}"),
        _ => "peercam".into(),
    }
}

fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
