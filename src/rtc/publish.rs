//! Publishing: the device as the *offerer* of one peer connection that sends the hub's stream
//! to a media server (an SFU), for WHIP (`signal::whip`, RFC 9725).
//!
//! A publication is a reader of the hub like any viewer: the same send and RTCP loops as a
//! viewer session (`session::send_loop` / `rtcp_loop`), so the SFU gets the one encode, its
//! PLI/FIR become (rate-limited) keyframe requests, and its REMB / transport-cc / receiver
//! reports drive a [`Link`] that reports to the ladder like a viewer's — a weak uplink moves the
//! publication to the low rung instead of stalling anything. Nothing queues for it: a reader
//! that falls behind the hub's ring skips to the next keyframe.
//!
//! It is not a room member: it takes no `max_viewers` place, gets no events and cannot talk.
//! It holds a viewer and a watcher guard while it lives, so the camera, microphone and encoders
//! run for the SFU's viewers as they do for local ones.

use super::link::Link;
use super::room::PUBLISHER_ID_BASE;
use super::session::{self, MediaKind, Phase, Sessions, VideoWish, GATHER_TIMEOUT};
use super::{h264_capability, opus_capability};
use crate::hub::{Hub, ViewerGuard};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecParameters;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocal;

/// Link ids of publications: one per attempt, so a dropped old link never removes a newer
/// one's entry from the ladder.
static NEXT_PUBLICATION: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("nothing to publish (neither video nor audio)")]
    Nothing,
    #[error("cannot make the offer: {0}")]
    Offer(String),
    #[error("the media server's answer was rejected by the WebRTC stack: {0}")]
    Answer(String),
    #[error("ICE/DTLS did not connect within {0:?}")]
    NotConnected(Duration),
    #[error("the connection ended before it was up: {0}")]
    Ended(String),
    #[error("cannot make the ICE restart offer: {0}")]
    RestartOffer(String),
}

/// What befell a publication that was up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// ICE lost the media server (no consent within `[webrtc] peer_timeout_s`); DTLS and the
    /// streams are intact, so an ICE restart can bring it back on the same resource.
    IceLost,
    /// Over for good (DTLS failed, closed): why.
    Ended(String),
}

/// The STUN-discovered public address as a srflx candidate, as for an answer
/// (`RtcEngine::finish_answer`); kept for the offers of ICE restarts.
type Finish = Arc<dyn Fn(String) -> String + Send + Sync>;

/// An offer made, waiting for the media server's answer.
pub struct Offer {
    /// The SDP offer, with the device's ICE candidates (gathering complete: no trickle needed).
    pub sdp: String,
    pc: Arc<RTCPeerConnection>,
    senders: Vec<(Arc<TrackLocalStaticRTP>, Arc<RTCRtpSender>, MediaKind)>,
    hub: Arc<Hub>,
    egress: Arc<super::egress::Egress>,
    finish: Finish,
}

/// A publication (answer applied). Dropping it does not close the peer connection: call
/// [`Publication::close`].
pub struct Publication {
    pc: Arc<RTCPeerConnection>,
    phase_tx: Arc<watch::Sender<Phase>>,
    phase: watch::Receiver<Phase>,
    why: Arc<Mutex<Option<String>>>,
    /// `true` while ICE has lost the server (failed); `false` once connected (again).
    ice_lost: watch::Receiver<bool>,
    link: Arc<Link>,
    finish: Finish,
    _viewer: ViewerGuard,
}

impl Sessions {
    /// Makes a send-only offer (H.264 constrained baseline and/or Opus) on the device's shared
    /// UDP port and waits for ICE gathering (bounded), so the offer carries every candidate.
    pub async fn publish_offer(&self, video: bool, audio: bool) -> Result<Offer, PublishError> {
        if !video && !audio {
            return Err(PublishError::Nothing);
        }
        let (engine, hub) = self.parts();
        let pc = engine.new_peer_connection().await.map_err(PublishError::Offer)?;
        match make_offer(&pc, engine, video, audio).await {
            Ok((sdp, senders)) => {
                let (public, udp_addr) = (engine.public, engine.udp_addr);
                let finish: Finish = Arc::new(move |sdp| match public {
                    Some(p) => super::ice::add_srflx(&sdp, p, udp_addr),
                    None => sdp,
                });
                Ok(Offer { sdp, pc, senders, hub: Arc::clone(hub), egress: Arc::clone(&engine.egress), finish })
            }
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }
}

async fn make_offer(
    pc: &Arc<RTCPeerConnection>,
    engine: &super::RtcEngine,
    video: bool,
    audio: bool,
) -> Result<(String, Vec<(Arc<TrackLocalStaticRTP>, Arc<RTCRtpSender>, MediaKind)>), PublishError> {
    let err = |e: webrtc::Error| PublishError::Offer(e.to_string());
    let mut senders = Vec::new();
    let sendonly = || Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Sendonly, send_encodings: vec![] });
    if video {
        let track = Arc::new(TrackLocalStaticRTP::new(h264_capability(), "video".into(), "peercam".into()));
        let t = pc
            .add_transceiver_from_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>, sendonly())
            .await
            .map_err(err)?;
        // Offer the one profile the encoder makes: the engine also registers other H.264
        // profiles (for answering offers that list only those), and an SFU that takes the
        // first H.264 it reads should take this one.
        t.set_codec_preferences(vec![RTCRtpCodecParameters { capability: h264_capability(), payload_type: 102, ..Default::default() }])
            .await
            .map_err(err)?;
        senders.push((track, t.sender().await, MediaKind::Video));
    }
    if audio {
        let track = Arc::new(TrackLocalStaticRTP::new(opus_capability(), "audio".into(), "peercam".into()));
        let t = pc
            .add_transceiver_from_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>, sendonly())
            .await
            .map_err(err)?;
        senders.push((track, t.sender().await, MediaKind::Audio));
    }
    let offer = pc.create_offer(None).await.map_err(err)?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await.map_err(err)?;
    if tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await.is_err() {
        log::warn!("publish: ICE gathering did not finish in {GATHER_TIMEOUT:?}; offering the candidates so far");
    }
    let sdp = pc.local_description().await.ok_or_else(|| PublishError::Offer("no local description after the offer".into()))?.sdp;
    // The same as for an answer: the STUN-discovered public address as a srflx candidate.
    Ok((engine.finish_answer(sdp), senders))
}

/// Feedback silence after which a publication stops taking part in the video rates: a killed
/// server goes silent long before ICE gives up (`[webrtc] peer_timeout_s`), and the congestion
/// controller's feedback timeout (1 s) would meanwhile read the silence as a collapsing link
/// and start the half-size encoder for nobody.
const SILENT: Duration = Duration::from_millis(500);

/// `session::link_loop`, but a link whose server went silent leaves the ladder (keeping its
/// rung) until feedback comes back.
async fn link_loop(link: Arc<Link>, mut phase: watch::Receiver<Phase>) {
    let mut tick = tokio::time::interval(super::link::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                let quiet = link.feedback_silent(now, SILENT);
                if quiet != silent {
                    silent = quiet;
                    log::debug!("publish: the media server's feedback {}", if quiet { "stopped; out of the video rates" } else { "is back" });
                    link.set_video_off(quiet);
                }
                if !quiet {
                    link.tick(now);
                }
            }
            _ = phase.wait_for(|p| *p == Phase::Ended) => return,
        }
    }
}

impl Offer {
    /// Applies the media server's answer and starts the send loops (they send once ICE and DTLS
    /// are up). The peer connection is closed on error.
    pub async fn accept(self, answer_sdp: &str) -> Result<Publication, PublishError> {
        let Offer { sdp: _, pc, senders, hub, egress, finish } = self;
        let applied = async {
            let answer = RTCSessionDescription::answer(answer_sdp.to_string()).map_err(|e| PublishError::Answer(e.to_string()))?;
            pc.set_remote_description(answer).await.map_err(|e| PublishError::Answer(e.to_string()))
        };
        if let Err(e) = applied.await {
            let _ = pc.close().await;
            return Err(e);
        }
        let (phase_tx, phase) = watch::channel(Phase::Negotiating);
        let phase_tx = Arc::new(phase_tx);
        let why: Arc<Mutex<Option<String>>> = Arc::default();
        let (lost_tx, ice_lost) = watch::channel(false);
        let lost_tx = Arc::new(lost_tx);
        {
            // webrtc-rs reports the ICE state before the peer connection state it changes.
            let lost = Arc::clone(&lost_tx);
            pc.on_ice_connection_state_change(Box::new(move |state| {
                match state {
                    RTCIceConnectionState::Failed => {
                        lost.send_replace(true);
                    }
                    RTCIceConnectionState::Connected | RTCIceConnectionState::Completed => {
                        lost.send_replace(false);
                    }
                    _ => {}
                }
                Box::pin(async {})
            }));
        }
        {
            let (tx, why, lost) = (Arc::clone(&phase_tx), Arc::clone(&why), Arc::clone(&lost_tx));
            pc.on_peer_connection_state_change(Box::new(move |state| {
                log::debug!("publish: peer connection {state}");
                let end = match state {
                    RTCPeerConnectionState::Connected => {
                        tx.send_if_modified(|p| {
                            let change = *p == Phase::Negotiating;
                            if change {
                                *p = Phase::Connected;
                            }
                            change
                        });
                        None
                    }
                    // ICE lost a publication that was up: the WHIP client decides (ICE restart,
                    // or a new publication). Before it was ever up, or DTLS: over.
                    RTCPeerConnectionState::Failed if *lost.borrow() && *tx.borrow() == Phase::Connected => None,
                    RTCPeerConnectionState::Failed => Some("ICE/DTLS failed (the media server stopped answering)"),
                    RTCPeerConnectionState::Closed => Some("the peer connection closed"),
                    _ => None,
                };
                if let Some(reason) = end {
                    why.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| reason.to_string());
                    let _ = tx.send(Phase::Ended);
                }
                Box::pin(async {})
            }));
        }
        let id = PUBLISHER_ID_BASE + NEXT_PUBLICATION.fetch_add(1, Ordering::Relaxed);
        let link = Link::new(id, Arc::clone(&hub), Instant::now());
        tokio::spawn(link_loop(Arc::clone(&link), phase.clone()));
        for (track, sender, kind) in senders {
            // Never listen-only: a channel whose sender is gone reads `false` and never changes.
            let video = matches!(kind, MediaKind::Video)
                .then(|| VideoWish { watcher: Some(hub.demand.watch()), listen_only: watch::channel(false).1 });
            tokio::spawn(session::send_loop(
                Arc::clone(&hub),
                track,
                Arc::clone(&sender),
                kind,
                Arc::clone(&link),
                Arc::clone(&egress),
                phase.clone(),
                video,
            ));
            tokio::spawn(session::rtcp_loop(Arc::clone(&hub), sender, kind, Arc::clone(&link)));
        }
        let _viewer = hub.demand.join();
        Ok(Publication { pc, phase_tx, phase, why, ice_lost, link, finish, _viewer })
    }

    /// Gives the offer up (the server refused it).
    pub async fn close(self) {
        let _ = self.pc.close().await;
    }
}

impl Publication {
    /// Waits until ICE and DTLS are up, at most `within`.
    pub async fn connected(&mut self, within: Duration) -> Result<(), PublishError> {
        let up = tokio::time::timeout(within, self.phase.wait_for(|p| *p != Phase::Negotiating))
            .await
            .map(|r| r.is_ok_and(|p| *p == Phase::Connected));
        match up {
            Err(_) => Err(PublishError::NotConnected(within)),
            Ok(true) => Ok(()),
            Ok(false) => Err(PublishError::Ended(self.reason())),
        }
    }

    /// Resolves when ICE lost the server or the publication ended.
    pub async fn trouble(&mut self) -> Trouble {
        let ended = tokio::select! {
            _ = self.phase.wait_for(|p| *p == Phase::Ended) => true,
            r = self.ice_lost.wait_for(|lost| *lost) => r.is_err(),
        };
        if ended || *self.phase.borrow() == Phase::Ended { Trouble::Ended(self.reason()) } else { Trouble::IceLost }
    }

    /// A new offer with fresh ICE credentials and candidates (gathered again: the device's
    /// addresses may have changed), for an ICE restart. The media, DTLS and SRTP stay.
    pub async fn restart_offer(&self) -> Result<String, PublishError> {
        let err = |e: webrtc::Error| PublishError::RestartOffer(e.to_string());
        let offer = self.pc.create_offer(Some(RTCOfferOptions { ice_restart: true, ..Default::default() })).await.map_err(err)?;
        // After create_offer: it restarted gathering (a promise taken before would read the
        // previous gathering's "complete").
        let mut gathered = self.pc.gathering_complete_promise().await;
        self.pc.set_local_description(offer).await.map_err(err)?;
        if tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await.is_err() {
            log::warn!("publish: ICE gathering for the restart did not finish in {GATHER_TIMEOUT:?}; offering the candidates so far");
        }
        let sdp = self.pc.local_description().await.ok_or_else(|| PublishError::RestartOffer("no local description".into()))?.sdp;
        Ok((self.finish)(sdp))
    }

    /// The media server's current answer (the base of the restart's answer).
    pub async fn remote_sdp(&self) -> Option<String> {
        self.pc.remote_description().await.map(|d| d.sdp)
    }

    /// Applies the answer to [`Self::restart_offer`] and waits until ICE is up again, at most
    /// `within`.
    pub async fn accept_restart(&mut self, answer_sdp: &str, within: Duration) -> Result<(), PublishError> {
        let answer = RTCSessionDescription::answer(answer_sdp.to_string()).map_err(|e| PublishError::Answer(e.to_string()))?;
        self.pc.set_remote_description(answer).await.map_err(|e| PublishError::Answer(e.to_string()))?;
        let back = tokio::time::timeout(within, async {
            tokio::select! {
                _ = self.phase.wait_for(|p| *p == Phase::Ended) => false,
                r = self.ice_lost.wait_for(|lost| !*lost) => r.is_ok(),
            }
        })
        .await;
        match back {
            Err(_) => Err(PublishError::NotConnected(within)),
            Ok(true) => Ok(()),
            Ok(false) => Err(PublishError::Ended(self.reason())),
        }
    }

    fn reason(&self) -> String {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| "ended".into())
    }

    /// The rung the media server's link reads now (`Low` on a weak uplink).
    pub fn link_rung(&self) -> crate::hub::ladder::Rung {
        self.link.rung()
    }

    /// Stops sending and closes the peer connection.
    pub async fn close(&self) {
        self.why.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| "closed by the device".into());
        let _ = self.phase_tx.send(Phase::Ended);
        let _ = self.pc.close().await;
    }
}
