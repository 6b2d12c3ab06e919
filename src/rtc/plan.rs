//! Pure decisions of a session, taken out of its async callbacks so they are tested alone:
//! what an offer made for a purpose becomes ([`plan`]), and how each outgoing RTP packet is
//! stamped ([`Stamper`]).

use super::offer::{self, OfferError, OfferSummary};
use crate::codec::rtp_timestamp;

/// What a peer connection is for, without its handlers (see `session::Purpose`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurposeKind {
    /// WHEP or the page: media, talk-back, the `control` channel.
    Watch,
    /// A PeerJS call: media and talk-back; its data channel is PeerJS's own, not control.
    Call,
    /// A PeerJS data connection: no media.
    Data,
}

/// What the session sets up for an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Add a video track (the viewer receives video).
    pub send_video: bool,
    pub send_audio: bool,
    /// The viewer's audio goes to the room (talk-back).
    pub talkback: bool,
    /// Serve a `control` data channel.
    pub control: bool,
    /// The viewer will talk only after `talk request` (it has a control channel).
    pub expects_control: bool,
    /// The session reads the hub (makes the encoders run, has a link).
    pub media: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Offer(#[from] OfferError),
    #[error("a data connection's offer carries audio or video")]
    MediaInDataConnection,
    #[error("a data connection's offer has no data channel (m=application)")]
    NoDataChannel,
}

/// Decides what to set up for `offer_sdp` made for `purpose`.
pub fn plan(purpose: PurposeKind, offer_sdp: &str) -> Result<(Plan, OfferSummary), PlanError> {
    let summary = offer::inspect(offer_sdp)?;
    let receives = |m: &Option<offer::MediaLine>| m.as_ref().is_some_and(|l| l.direction.remote_receives());
    let plan = match purpose {
        PurposeKind::Data => {
            if summary.video.is_some() || summary.audio.is_some() {
                return Err(PlanError::MediaInDataConnection);
            }
            if !summary.data_channel {
                return Err(PlanError::NoDataChannel);
            }
            Plan { send_video: false, send_audio: false, talkback: false, control: false, expects_control: false, media: false }
        }
        PurposeKind::Watch | PurposeKind::Call => {
            let (send_video, send_audio) = (receives(&summary.video), receives(&summary.audio));
            let control = purpose == PurposeKind::Watch;
            Plan {
                send_video,
                send_audio,
                talkback: true,
                control,
                expects_control: control && summary.data_channel,
                media: true,
            }
        }
    };
    Ok((plan, summary))
}

/// The RTP header fields of one track's packets, per viewer: its own sequence numbers (so a
/// viewer that skipped units sees no gap), timestamps from capture time, the marker bit.
#[derive(Debug, Clone)]
pub struct Stamper {
    video: bool,
    seq: u16,
    delivered_any: bool,
}

/// One packet's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sequence_number: u16,
    pub timestamp: u32,
    pub marker: bool,
    /// Carry the playout-delay extension (min = max = 0): video keyframes, as libwebrtc does.
    pub playout_delay: bool,
}

impl Stamper {
    pub fn new(video: bool, first_seq: u16) -> Self {
        Self { video, seq: first_seq, delivered_any: false }
    }

    pub fn clock_rate(&self) -> u32 {
        if self.video { 90_000 } else { 48_000 }
    }

    /// Packet `i` of `count` of a unit captured at `capture_unix_us`.
    pub fn stamp(&mut self, i: usize, count: usize, capture_unix_us: u64, keyframe: bool) -> Stamp {
        let last = count.saturating_sub(1);
        let s = Stamp {
            sequence_number: self.seq,
            timestamp: rtp_timestamp(capture_unix_us, self.clock_rate()),
            // Video: last packet of a frame. Audio: start of a talkspurt only — the device sends
            // continuously, so just the very first packet.
            marker: if self.video { i == last } else { !self.delivered_any && i == 0 },
            playout_delay: self.video && keyframe,
        };
        self.seq = self.seq.wrapping_add(1);
        s
    }

    /// Whether a packet has reached the viewer yet (the audio marker and the keyframe retry
    /// depend on it).
    pub fn delivered(&mut self) {
        self.delivered_any = true;
    }

    pub fn delivered_any(&self) -> bool {
        self.delivered_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/offers/");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{OFFERS}{name}")).unwrap()
    }

    fn data_only() -> String {
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
         a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11\r\n\
         a=setup:actpass\r\na=sctp-port:5000\r\n"
            .into()
    }

    #[test]
    fn watch_sends_what_the_viewer_receives_and_serves_control() {
        let (p, s) = plan(PurposeKind::Watch, &fixture("chromium_recvonly.sdp")).unwrap();
        assert!(p.send_video && p.send_audio && p.talkback && p.control && p.media);
        assert_eq!(p.expects_control, s.data_channel);
        // A call answers media the same way but has no control channel: its caller talks by
        // sending audio.
        let (c, _) = plan(PurposeKind::Call, &fixture("chromium_sendrecv_audio.sdp")).unwrap();
        assert!(c.send_video && c.send_audio && c.talkback && c.media);
        assert!(!c.control && !c.expects_control);
    }

    #[test]
    fn data_connections_take_only_data_offers() {
        let (p, s) = plan(PurposeKind::Data, &data_only()).unwrap();
        assert!(s.data_channel);
        assert!(!p.media && !p.send_video && !p.send_audio && !p.talkback && !p.control);
        assert_eq!(
            plan(PurposeKind::Data, &fixture("chromium_recvonly.sdp")).unwrap_err(),
            PlanError::MediaInDataConnection
        );
        // A data-only offer is no watch offer's business either way: nothing to send.
        let (w, _) = plan(PurposeKind::Watch, &data_only()).unwrap();
        assert!(!w.send_video && !w.send_audio);
    }

    #[test]
    fn bad_offers_keep_their_reason() {
        assert!(matches!(plan(PurposeKind::Watch, "nonsense"), Err(PlanError::Offer(OfferError::Malformed(_)))));
        assert!(matches!(
            plan(PurposeKind::Watch, &fixture("chromium_vp8_only.sdp")),
            Err(PlanError::Offer(OfferError::NoH264 { .. }))
        ));
    }

    #[test]
    fn too_many_candidates_are_refused() {
        let mut sdp = fixture("chromium_recvonly.sdp");
        let ok = plan(PurposeKind::Watch, &sdp).unwrap().1.candidates;
        assert!(ok > 0 && ok <= offer::MAX_REMOTE_CANDIDATES);
        for i in 0..offer::MAX_REMOTE_CANDIDATES {
            sdp.push_str(&format!("a=candidate:{i} 1 udp 2122260223 10.0.{}.{} 9 typ host\r\n", i / 200, i % 200 + 1));
        }
        match plan(PurposeKind::Watch, &sdp) {
            Err(PlanError::Offer(OfferError::TooManyCandidates { count, max })) => {
                assert_eq!((count, max), (ok + offer::MAX_REMOTE_CANDIDATES, offer::MAX_REMOTE_CANDIDATES));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn video_stamps_mark_frame_ends_and_keyframes() {
        let mut s = Stamper::new(true, 65534);
        let at = 1_000_000u64; // 1 s after the epoch
        let stamps: Vec<Stamp> = (0..3).map(|i| s.stamp(i, 3, at, true)).collect();
        assert_eq!(stamps.iter().map(|x| x.sequence_number).collect::<Vec<_>>(), vec![65534, 65535, 0], "wraps");
        assert_eq!(stamps.iter().map(|x| x.marker).collect::<Vec<_>>(), vec![false, false, true]);
        assert!(stamps.iter().all(|x| x.timestamp == rtp_timestamp(at, 90_000) && x.playout_delay));
        // 33 ms later, a delta frame of one packet: marker, no playout delay, +2970 ticks.
        let next = s.stamp(0, 1, at + 33_000, false);
        assert!(next.marker && !next.playout_delay);
        assert_eq!(next.timestamp.wrapping_sub(stamps[0].timestamp), 2970);
    }

    #[test]
    fn audio_marks_only_the_first_packet_delivered() {
        let mut s = Stamper::new(false, 7);
        let first = s.stamp(0, 1, 20_000, false);
        assert!(first.marker && !first.playout_delay);
        // Nothing delivered yet (the track was not bound): the next first packet still marks.
        assert!(s.stamp(0, 1, 40_000, false).marker);
        s.delivered();
        let third = s.stamp(0, 1, 60_000, false);
        assert!(!third.marker);
        assert_eq!(third.timestamp.wrapping_sub(first.timestamp), 1920, "48 kHz: 20 ms = 960 ticks");
        assert_eq!(third.sequence_number, 9);
    }
}
