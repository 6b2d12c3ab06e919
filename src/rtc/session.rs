//! Viewer sessions: a peer connection that sends the hub's H.264 and Opus to one viewer.
//!
//! Per viewer the device only stamps RTP headers (its own sequence numbers, so a viewer that
//! skipped units sees a clean stream) and encrypts; payloads come packetized from the hub.
//! A session ends on `DELETE`, on ICE failure (the peer vanished: within `peer_timeout_s`) or
//! when the peer closes; its viewer count goes with it.

use super::control;
use super::egress::Egress;
use super::link::{self, Link};
use super::offer::{self, OfferError};
use super::plan::{self, Plan, PlanError, PurposeKind, Stamper};
use super::room::{Origin, Room, RoomError, ViewerHandle};
use super::{h264_capability, opus_capability, RtcEngine};
use crate::hub::ladder::Rung;
use crate::hub::{Hub, Next, Reader, ViewerGuard};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use webrtc::data_channel::data_channel_state::RTCDataChannelState;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
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
pub(super) const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves a data channel of a data-only session: `(channel, room, viewer id)`.
pub type DataHandler = Arc<dyn Fn(DataChannel, Weak<Room>, u64) + Send + Sync>;

/// Data channels one peer connection may open; the ones past this are closed at once. A
/// session serves one (control, or its PeerJS data channel); the margin is for PeerJS's own.
pub const MAX_DATA_CHANNELS: usize = 4;

/// The largest data-channel message read: Chromium's own limit (it advertises no
/// `max-message-size`, so peers keep to 256 KiB). One buffer this size per *served* channel —
/// at most one per session — so that a control message too large for the protocol (16 KiB)
/// still gets its `too_large` reply instead of ending the channel.
pub const MAX_DATA_MESSAGE: usize = 256 * 1024;

/// Marks which login opened a session, so logging out ends it. Opaque to `rtc`: the layer
/// that knows logins (http) makes one from its own id (`OwnerTag::new(bytes)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerTag([u8; 32]);

impl OwnerTag {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// A data channel as the signaling layer sees it (no WebRTC types above `rtc`).
#[derive(Clone)]
pub struct DataChannel(Arc<RTCDataChannel>);

/// A message read from a data channel.
#[derive(Debug, Clone)]
pub struct Message {
    pub is_string: bool,
    pub data: bytes::Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot send on data channel {label:?}: {why}")]
pub struct SendError {
    label: String,
    why: String,
}

impl DataChannel {
    pub fn label(&self) -> &str {
        self.0.label()
    }

    fn error(&self, e: webrtc::Error) -> SendError {
        SendError { label: self.label().to_string(), why: e.to_string() }
    }

    pub async fn send_text(&self, text: String) -> Result<(), SendError> {
        self.0.send_text(text).await.map(drop).map_err(|e| self.error(e))
    }

    pub async fn send_binary(&self, data: bytes::Bytes) -> Result<(), SendError> {
        self.0.send(&data).await.map(drop).map_err(|e| self.error(e))
    }

    pub async fn close(&self) {
        let _ = self.0.close().await;
    }

    pub fn downgrade(&self) -> WeakDataChannel {
        WeakDataChannel(Arc::downgrade(&self.0))
    }
}

#[derive(Clone)]
pub struct WeakDataChannel(Weak<RTCDataChannel>);

impl WeakDataChannel {
    pub fn upgrade(&self) -> Option<DataChannel> {
        self.0.upgrade().map(DataChannel)
    }
}

/// A remote ICE candidate trickled after the offer (PeerJS sends them one by one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteCandidate {
    pub candidate: String,
    pub sdp_mid: Option<String>,
    pub sdp_mline_index: Option<u16>,
    pub username_fragment: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    #[error("no session {0:?} (it may have ended)")]
    NoSession(String),
    #[error("session {session}: more than {max} remote ICE candidates; this one is ignored")]
    TooMany { session: String, max: usize },
    #[error("session {session}: candidate refused: {why}")]
    Refused { session: String, why: String },
}

/// Resolves when its session has ended (removed, peer gone, closed).
pub struct SessionEnd(watch::Receiver<Phase>);

impl SessionEnd {
    pub async fn ended(mut self) {
        let _ = self.0.wait_for(|p| *p == Phase::Ended).await;
    }
}

/// An answered offer.
pub struct Answered {
    pub id: String,
    pub answer: String,
    pub end: SessionEnd,
}

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
    /// Data only (a PeerJS `connect`): no media, so the encoders are not started for it. Only
    /// the first channel labelled `label` (the offer's) is handed to `handler`.
    Data { label: String, handler: DataHandler },
}

impl Purpose {
    pub fn kind(&self) -> PurposeKind {
        match self {
            Purpose::Watch { .. } => PurposeKind::Watch,
            Purpose::Call => PurposeKind::Call,
            Purpose::Data { .. } => PurposeKind::Data,
        }
    }
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
    owner: Mutex<Option<OwnerTag>>,
    /// Remote ICE candidates taken so far (offer + trickled), held under
    /// `offer::MAX_REMOTE_CANDIDATES`.
    candidates: AtomicUsize,
    /// What the viewer's link carries (sessions with media only).
    pub link: Option<Arc<Link>>,
}

/// Where a session is: its send loops start at `Connected` and stop at `Ended`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Negotiating,
    Connected,
    Ended,
}

/// All live sessions.
pub struct Sessions {
    engine: RtcEngine,
    hub: Arc<Hub>,
    pub room: Arc<Room>,
    live: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    /// `max_viewers` bounds the sessions of every kind (the room holds the count: a place is
    /// reserved before negotiating, so concurrent offers cannot overshoot it).
    pub fn new(engine: RtcEngine, hub: Arc<Hub>, room: Arc<Room>, max_viewers: usize) -> Arc<Self> {
        room.set_max_viewers(max_viewers);
        Arc::new(Self { engine, hub, room, live: Mutex::new(HashMap::new()) })
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    pub fn udp_addr(&self) -> std::net::SocketAddr {
        self.engine.udp_addr
    }

    /// The engine and hub, for the device's own outgoing peer connection (`publish`).
    pub(super) fn parts(&self) -> (&RtcEngine, &Arc<Hub>) {
        (&self.engine, &self.hub)
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
        self.answer_for(offer_sdp, Purpose::Watch { lip_sync }).await.map(|a| (a.id, a.answer))
    }

    /// Answers an offer made for `purpose`. The returned [`SessionEnd`] tells when it is over
    /// (PeerJS forgets its connection then).
    pub async fn answer_for(self: &Arc<Self>, offer_sdp: String, purpose: Purpose) -> Result<Answered, SessionError> {
        let (plan, summary) = plan::plan(purpose.kind(), &offer_sdp).map_err(|e| match e {
            PlanError::Offer(OfferError::TooManyCandidates { .. }) => SessionError::Negotiation(e.to_string()),
            PlanError::Offer(o) => SessionError::Offer(o),
            other => SessionError::Negotiation(other.to_string()),
        })?;
        // The place is held from here; dropped (freed) on any failure below.
        let slot = self.room.reserve().map_err(|e| match e {
            RoomError::Full(n) => SessionError::Full(n),
            other => SessionError::Internal(other.to_string()),
        })?;
        let pc = self.engine.new_peer_connection().await.map_err(SessionError::Internal)?;
        match self.negotiate(&pc, offer_sdp, plan, summary.candidates, purpose, slot).await {
            Ok(a) => Ok(a),
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
        plan: Plan,
        candidates: usize,
        purpose: Purpose,
        slot: super::room::Slot,
    ) -> Result<Answered, SessionError> {
        let neg = |e: webrtc::Error| SessionError::Negotiation(e.to_string());
        let (phase_tx, phase_rx) = watch::channel(Phase::Negotiating);
        let phase_tx = Arc::new(phase_tx);

        let mut senders = Vec::new();
        if plan.send_video {
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
        if plan.send_audio {
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
        let answer_sdp = self.engine.finish_answer(answer_sdp);

        let id = new_id();
        let member = slot.join(plan.expects_control);
        let viewer = member.id;
        let watching = plan.media;
        let link = (watching && !senders.is_empty()).then(|| Link::new(viewer, Arc::clone(&self.hub), Instant::now()));
        let session = Arc::new(Session {
            id: id.clone(),
            pc: Arc::clone(pc),
            created: Instant::now(),
            phase: Arc::clone(&phase_tx),
            // Only sessions with media make the encoders run.
            _viewer: watching.then(|| self.hub.demand.join()),
            member,
            owner: Mutex::new(None),
            candidates: AtomicUsize::new(candidates),
            link: link.clone(),
        });
        if plan.talkback {
            attach_talkback(pc, &self.room, viewer);
        }
        let served: Option<(String, DataHandler)> = match purpose {
            Purpose::Watch { .. } => {
                let room = Arc::downgrade(&self.room);
                let control: DataHandler =
                    Arc::new(move |dc: DataChannel, _: Weak<Room>, viewer: u64| serve_control(dc, room.clone(), viewer));
                Some(("control".to_string(), control))
            }
            Purpose::Call => None,
            Purpose::Data { label, handler } => Some((label, handler)),
        };
        attach_data_channels(pc, &self.room, viewer, served);
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

        if let Some(link) = &link {
            tokio::spawn(link_loop(Arc::clone(link), phase_rx.clone()));
            for (track, sender, kind) in senders {
                let (hub, link) = (Arc::clone(&self.hub), Arc::clone(link));
                let egress = Arc::clone(&self.engine.egress);
                // The video sender holds the viewer's wish for video (the camera runs for it)
                // and drops it while the viewer listens only.
                let video = matches!(kind, MediaKind::Video).then(|| VideoWish {
                    watcher: Some(hub.demand.watch()),
                    listen_only: session.member.listen_only(),
                });
                tokio::spawn(send_loop(hub.clone(), track, Arc::clone(&sender), kind, link.clone(), egress, phase_rx.clone(), video));
                tokio::spawn(rtcp_loop(hub, sender, kind, link));
            }
        }
        log::info!("session {id} started ({} viewers)", self.count());
        Ok(Answered { id, answer: answer_sdp, end: SessionEnd(phase_rx) })
    }

    /// Adds a trickled remote candidate to a session, within its cap.
    pub async fn add_candidate(&self, id: &str, c: RemoteCandidate) -> Result<(), CandidateError> {
        let session = self.lock().get(id).cloned().ok_or_else(|| CandidateError::NoSession(id.to_string()))?;
        let max = offer::MAX_REMOTE_CANDIDATES;
        if session.candidates.fetch_add(1, Ordering::Relaxed) >= max {
            session.candidates.fetch_sub(1, Ordering::Relaxed);
            return Err(CandidateError::TooMany { session: id.to_string(), max });
        }
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
        };
        session
            .pc
            .add_ice_candidate(init)
            .await
            .map_err(|e| CandidateError::Refused { session: id.to_string(), why: e.to_string() })
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
    pub fn set_owner(&self, id: &str, owner: impl Into<OwnerTag>) {
        let owner = owner.into();
        if let Some(s) = self.lock().get(id) {
            *s.owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(owner);
        }
    }

    /// Ends every session a login opened (at logout: its viewers must not keep watching).
    pub async fn end_owned_by(&self, owner: impl Into<OwnerTag>) -> usize {
        let owner = owner.into();
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
pub(super) enum MediaKind {
    Video,
    Audio,
}


/// Re-evaluates the viewer's link every `link::TICK` while the session lives.
pub(super) async fn link_loop(link: Arc<Link>, mut phase: watch::Receiver<Phase>) {
    let mut tick = tokio::time::interval(link::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => link.tick(Instant::now()),
            _ = phase.wait_for(|p| *p == Phase::Ended) => return,
        }
    }
}

/// The negotiated one-byte id of a header extension, if the viewer takes it.
async fn extension_id(sender: &RTCRtpSender, uri: &str) -> Option<u8> {
    sender
        .get_parameters()
        .await
        .rtp_parameters
        .header_extensions
        .iter()
        .find(|e| e.uri == uri)
        .and_then(|e| u8::try_from(e.id).ok())
        .filter(|id| (1..=14).contains(id))
}

/// Where a video sender reads from: its rung, and the other rung while switching (the old one
/// keeps flowing until the new one's first keyframe arrives, so the picture never stops).
struct RungReader {
    rung: Rung,
    reader: Reader,
    next: Option<(Rung, Reader)>,
}

impl RungReader {
    fn new(hub: &Hub, rung: Rung) -> Self {
        Self { rung, reader: hub.video_rung(rung).subscribe(), next: None }
    }

    /// Starts (or cancels) a switch to the rung the ladder gives the viewer now.
    fn follow(&mut self, hub: &Hub, want: Rung) {
        if want == self.rung {
            self.next = None;
        } else if self.next.as_ref().map(|n| n.0) != Some(want) {
            log::debug!("switching to the {want:?} rung");
            self.next = Some((want, hub.video_rung(want).subscribe()));
        }
    }

    async fn next(&mut self, hub: &Hub) -> Next {
        enum From {
            Current(Next),
            Switching(Next),
        }
        let Self { rung, reader, next } = self;
        let current = async { reader.next(hub.video_rung(*rung)).await };
        let switching = async {
            match next.as_mut() {
                Some((rung, reader)) => reader.next(hub.video_rung(*rung)).await,
                None => std::future::pending().await,
            }
        };
        let got = tokio::select! {
            biased;
            n = switching => From::Switching(n),
            n = current => From::Current(n),
        };
        match got {
            // The new rung's first unit is a keyframe (readers start at one): switch here.
            From::Switching(Next::Unit(u)) => {
                if let Some((rung, reader)) = self.next.take() {
                    (self.rung, self.reader) = (rung, reader);
                }
                Next::Unit(u)
            }
            From::Switching(_) => {
                self.next = None; // lagged or closed while waiting: try again on the next unit
                Next::Skipped(0)
            }
            From::Current(n) => n,
        }
    }

    /// Frames published on the rung being read that this viewer has not sent yet.
    fn backlog(&self) -> usize {
        self.reader.backlog()
    }

    /// PLI/FIR go to the encoder of the rung being read.
    fn rung(&self) -> Rung {
        self.rung
    }
}

/// Copies the hub's units to one track: RTP headers stamped per viewer (own sequence numbers,
/// capture-time timestamps, transport-wide sequence numbers for congestion control); video
/// paced at the viewer's link rate and read from the rung its link carries. Ends when the
/// session does.
/// A video sender's part in the demand for video, and the viewer's listen-only switch.
pub(super) struct VideoWish {
    pub(super) watcher: Option<crate::hub::WatcherGuard>,
    pub(super) listen_only: watch::Receiver<bool>,
}

impl VideoWish {
    /// Resolves when the viewer switches listen-only on or off; returns the new value.
    async fn changed(&mut self) -> bool {
        if self.listen_only.changed().await.is_err() {
            // The viewer left the room: the session ends through its phase.
            std::future::pending::<()>().await;
        }
        *self.listen_only.borrow_and_update()
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn send_loop(
    hub: Arc<Hub>,
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<RTCRtpSender>,
    kind: MediaKind,
    link: Arc<Link>,
    egress: Arc<Egress>,
    mut phase: watch::Receiver<Phase>,
    mut wish: Option<VideoWish>,
) {
    // Subscribing only once DTLS is up means the first unit this viewer reads is a fresh IDR
    // requested right now, not one that went out before its SRTP was ready.
    match phase.wait_for(|p| *p != Phase::Negotiating).await {
        Ok(p) if *p == Phase::Connected => {}
        _ => return,
    }
    let twcc = extension_id(&sender, webrtc::sdp::extmap::TRANSPORT_CC_URI).await;
    // NACK retransmissions of this stream count on this viewer's link (see `egress`).
    for encoding in sender.get_parameters().await.encodings {
        egress.register(encoding.ssrc, &link);
    }
    let video = matches!(kind, MediaKind::Video);
    let playout_delay = if video { extension_id(&sender, super::PLAYOUT_DELAY_URI).await } else { None };
    let listening = wish.as_mut().is_some_and(|w| *w.listen_only.borrow_and_update());
    let mut rungs = (video && !listening).then(|| RungReader::new(&hub, link.rung()));
    if listening {
        apply_listen_only(&mut wish, &link, true);
    }
    let mut audio_reader = (!video).then(|| hub.audio.subscribe());
    let mut stamper = Stamper::new(video, rand::random());
    let mut unbound_retries = 10;
    loop {
        let next = tokio::select! {
            next = async {
                match (&mut rungs, &mut audio_reader) {
                    (Some(r), _) => r.next(&hub).await,
                    (None, Some(a)) => a.next(&hub.audio).await,
                    // Video paused (listen-only): nothing to read until it resumes.
                    (None, None) if video => std::future::pending().await,
                    (None, None) => Next::Closed,
                }
            } => next,
            on = async {
                match wish.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                apply_listen_only(&mut wish, &link, on);
                // Resuming starts at a fresh keyframe, like a new viewer.
                rungs = (!on).then(|| RungReader::new(&hub, link.rung()));
                continue;
            }
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
        if let Some(r) = rungs.as_mut() {
            if r.backlog() > link::MAX_BACKLOG_FRAMES && !unit.keyframe {
                // The link held this viewer back (a capacity drop): stale frames would only
                // arrive late. Start again at a fresh keyframe of the rung the link carries now.
                log::debug!("video backlog of {} frames; skipping to a new keyframe", r.backlog());
                *r = RungReader::new(&hub, link.rung());
                continue;
            }
        }
        let count = unit.payloads.len();
        let mut written = 0usize;
        for (i, payload) in unit.payloads.iter().enumerate() {
            if video {
                // Hold while the congestion window is full (the bottleneck's queue would drop
                // what we add); bounded, so a late feedback cannot stall the stream.
                let held_since = Instant::now();
                while link.congested(Instant::now()) && held_since.elapsed() < link::MAX_WINDOW_HOLD {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let wait = link.pace(Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let stamp = stamper.stamp(i, count, unit.capture_unix_us, unit.keyframe);
            let mut packet = rtp::packet::Packet {
                header: rtp::header::Header {
                    version: 2,
                    marker: stamp.marker,
                    sequence_number: stamp.sequence_number,
                    timestamp: stamp.timestamp,
                    ..Default::default()
                },
                payload: payload.clone(),
            };
            if let Some(id) = twcc {
                let tseq = link.next_transport_seq(payload.len(), Instant::now());
                let _ = packet.header.set_extension(id, bytes::Bytes::copy_from_slice(&tseq.to_be_bytes()));
            }
            if let (Some(id), true) = (playout_delay, stamp.playout_delay) {
                // min = max = 0 (12 bits each, 10 ms units): show frames as soon as decoded.
                // Sent with keyframes, as libwebrtc does; the receiver keeps the last value.
                let _ = packet.header.set_extension(id, bytes::Bytes::from_static(&[0, 0, 0]));
            }
            if video {
                link.paced(payload.len());
            }
            match track.write_rtp(&packet).await {
                Ok(n) => written += n,
                Err(webrtc::Error::ErrClosedPipe) => return,
                Err(e) => log::debug!("{kind:?} write: {e}"),
            }
        }
        if let Some(r) = rungs.as_mut() {
            if written == 0 && !stamper.delivered_any() && unbound_retries > 0 {
                // The sender was not bound yet: this keyframe reached nobody. Ask for another
                // (a few times only: a track that never binds must not force IDRs forever).
                unbound_retries -= 1;
                *r = RungReader::new(&hub, r.rung());
                continue;
            }
            r.follow(&hub, link.rung());
        }
        if written > 0 {
            stamper.delivered();
        }
    }
}

/// Listen-only on: no video for this viewer, and the camera need not run for it; off: both back.
fn apply_listen_only(wish: &mut Option<VideoWish>, link: &Link, on: bool) {
    if let Some(w) = wish.as_mut() {
        match (on, w.watcher.is_some()) {
            (true, true) => w.watcher = None,
            (false, false) => w.watcher = Some(link.hub().demand.watch()),
            _ => {}
        }
    }
    link.set_video_off(on);
}

/// Reads RTCP from the viewer: link feedback to the link; PLI/FIR become (rate-limited)
/// keyframe requests to the rung the viewer reads.
pub(super) async fn rtcp_loop(hub: Arc<Hub>, sender: Arc<RTCRtpSender>, kind: MediaKind, link: Arc<Link>) {
    while let Ok((packets, _)) = sender.read_rtcp().await {
        link.on_rtcp(&packets, Instant::now());
        if matches!(kind, MediaKind::Video) {
            for p in &packets {
                let any = p.as_any();
                if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                    hub.video_rung(link.rung()).request_keyframe();
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

/// Data channels the viewer opens: the first one labelled as expected (`control` for watch
/// sessions, the offer's label for PeerJS data) is served; other labels and repeats are closed;
/// past [`MAX_DATA_CHANNELS`] every new one is closed. A call serves none (PeerJS opens one to
/// notice the call closing: it stays open, unread).
fn attach_data_channels(pc: &Arc<RTCPeerConnection>, room: &Arc<Room>, viewer: u64, served: Option<(String, DataHandler)>) {
    let room = Arc::downgrade(room);
    let opened = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(Mutex::new(served));
    let who = super::room::viewer_label(viewer);
    let is_call = served.lock().unwrap_or_else(|e| e.into_inner()).is_none();
    pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
        let n = opened.fetch_add(1, Ordering::Relaxed) + 1;
        let dc = DataChannel(dc);
        let label = dc.label().to_string();
        let take = {
            let mut slot = served.lock().unwrap_or_else(|e| e.into_inner());
            match slot.as_ref() {
                Some((want, _)) if *want == label && n <= MAX_DATA_CHANNELS => slot.take().map(|(_, h)| h),
                _ => None,
            }
        };
        let (room, who) = (room.clone(), who.clone());
        Box::pin(async move {
            if let Some(handler) = take {
                handler(dc, room, viewer);
            } else if n > MAX_DATA_CHANNELS {
                log::info!("{who}: data channel {label:?} closed: a connection may open {MAX_DATA_CHANNELS}");
                dc.close().await;
            } else if !is_call {
                log::info!("{who}: data channel {label:?} closed: this session serves one channel, already open or not this label");
                dc.close().await;
            }
        })
    }));
}

/// What to do with one incoming data channel message.
pub type MessageFn = Arc<dyn Fn(Message) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// Once the channel is open: runs `on_open`, then hands every message to `on_message`, in order.
/// A message longer than `max_message` bytes is not read: the stack ends the channel (the
/// session goes on) — the read buffer, one per served channel, is this size.
///
/// Reads the channel itself (channels are detached, see `rtc`): webrtc 0.17's own read loop
/// takes an empty message for the end of the channel and stops reading, so one empty `send('')`
/// would silence a viewer's control channel for good.
pub fn pump(dc: DataChannel, max_message: usize, on_open: impl FnOnce() + Send + 'static, on_message: MessageFn) {
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
            let mut buf = vec![0u8; max_message];
            loop {
                match raw.read_data_channel(&mut buf).await {
                    Ok((0, false)) => break, // end of the channel (an empty *binary* message looks the same)
                    Ok((n, is_string)) => {
                        on_message(Message { is_string, data: bytes::Bytes::copy_from_slice(&buf[..n]) }).await
                    }
                    Err(webrtc::data::Error::Sctp(webrtc::sctp::Error::ErrShortBuffer { .. })) => {
                        // webrtc-data has already reset the stream: say why it ended.
                        log::info!("data channel {:?} closed: a message over {max_message} bytes (the limit for this channel)", dc.label());
                        break;
                    }
                    Err(e) => {
                        log::debug!("data channel {:?} ended: {e}", dc.label());
                        break;
                    }
                }
            }
        });
    };
    let dc = dc.0;
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
pub fn serve_control(dc: DataChannel, room: Weak<Room>, viewer: u64) {
    let opened = {
        let (dc, room) = (dc.downgrade(), room.clone());
        move || {
            let Some(mut events) = room.upgrade().and_then(|r| r.attach_events(viewer)) else { return };
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    let Some(dc) = dc.upgrade() else { return };
                    if dc.send_text(event.text().to_string()).await.is_err() {
                        break;
                    }
                }
            });
        }
    };
    let reply_dc = dc.downgrade();
    let on_message: MessageFn = Arc::new(move |msg: Message| {
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
    pump(dc, MAX_DATA_MESSAGE, opened, on_message);
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
