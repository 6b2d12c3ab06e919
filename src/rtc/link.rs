//! One viewer's link: what it carries, measured from what the viewer reports back.
//!
//! Every RTP packet a session sends (video and audio) gets a transport-wide sequence number
//! (the `transport-cc` header extension, negotiated in every answer); the browser reports when
//! each arrived (RTCP transport feedback, every ~50-100 ms) and the congestion controller
//! (`congestion`, a GCC-style delay- and loss-based estimator, time passed in) turns that into
//! this viewer's estimate. REMB and receiver-report loss stand in for peers without
//! transport-cc. The estimate goes to the ladder (`hub::ladder`), which says which rung this
//! viewer reads and sets the encoders' targets; the pacer spreads the viewer's video at a small
//! multiple of its estimate so a keyframe does not land in the bottleneck queue at once.
//!
//! Nothing here is per frame on the encode path: it is per viewer, on the session's tasks.

use crate::hub::ladder::{LinkReport, Rung};
use crate::hub::Hub;
use congestion::{Config as CcConfig, Controller};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use webrtc::rtcp;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_cc::{PacketStatusChunk, SymbolTypeTcc, TransportLayerCc};

/// How often the link is re-evaluated (controller timers, ladder report).
pub const TICK: Duration = Duration::from_millis(50);
/// Bytes a packet costs on the wire beyond its RTP payload: RTP header (12) + extensions (8) +
/// SRTP tag (10) + UDP/IPv4 (28).
pub const PACKET_OVERHEAD: usize = 58;
/// What the audio takes of a link: Opus at up to 48 kbit/s plus 50 packets/s of overhead —
/// the bound for the controller's range, and the video budget's reserve until the audio's
/// real rate is measured (Opus at the default 32 kbit/s sends ~25: the rest goes to video).
const AUDIO_RESERVE_BPS: u64 = 48_000 + AUDIO_OVERHEAD_BPS;
const AUDIO_OVERHEAD_BPS: u64 = 50 * PACKET_OVERHEAD as u64 * 8;
/// The audio's rate is measured over this long.
const AUDIO_METER: Duration = Duration::from_secs(1);
/// A link is "degraded" (logged) when its video budget is below this share of the configured
/// bitrate, and recovered above the second share.
const DEGRADED_SHARE: f64 = 0.5;
const RECOVERED_SHARE: f64 = 0.8;
/// Where a new viewer's estimate starts: enough for a clean first keyframe at 720p; the
/// controller's fast start takes it to the link's rate within ~1-2 s, or backs off at once.
pub const START_BPS: u64 = 1_500_000;
/// Packets one transport feedback may describe (its count field is 16 bits; a browser reports
/// far fewer). Bounds the work per feedback from an untrusted peer.
const MAX_FEEDBACK_PACKETS: usize = 4096;

pub struct Link {
    viewer: u64,
    hub: Arc<Hub>,
    state: Mutex<LinkState>,
    /// The rung the ladder gave this viewer (read by the video send loop every unit).
    low: AtomicBool,
    /// Listen-only: no video goes to this viewer, so it takes no part in the video rates.
    video_off: AtomicBool,
}

struct LinkState {
    cc: Controller,
    next_seq: u16,
    transport_cc: bool,
    degraded: bool,
    /// When the last RTCP from the peer arrived (see [`Link::feedback_silent`]).
    last_rtcp: Option<Instant>,
    /// Scratch for parsed feedback (reused; bounded by MAX_FEEDBACK_PACKETS).
    scratch: Vec<(u16, Option<i64>)>,
    /// (when, hub audio bytes then) at the start of the current measurement.
    audio_mark: Option<(Instant, u64)>,
    /// What audio takes of this link (payload + overhead), once measured.
    audio_reserve_bps: u64,
    /// Releases the video (and its retransmissions) at the pacing rate.
    pacer: Pacer,
    /// NACK retransmissions: bytes sent and packets dropped (window full) since the start, and
    /// (when, bytes then) for the rate reported.
    resent_bytes: u64,
    resends_dropped: u64,
    resent_mark: Option<(Instant, u64)>,
    resent_bps: u64,
}

impl Link {
    pub fn new(viewer: u64, hub: Arc<Hub>, now: Instant) -> Arc<Self> {
        let cfg = hub.rates.config();
        let max = cfg.max_bps as u64 + AUDIO_RESERVE_BPS;
        let min = cfg.min_bps as u64 + AUDIO_RESERVE_BPS;
        let cc = Controller::new(CcConfig { start_bps: START_BPS.clamp(min, max), min_bps: min, max_bps: max }, now);
        let link = Arc::new(Self {
            viewer,
            hub,
            state: Mutex::new(LinkState {
                cc,
                next_seq: rand::random(),
                transport_cc: false,
                degraded: false,
                last_rtcp: None,
                scratch: Vec::new(),
                audio_mark: None,
                audio_reserve_bps: AUDIO_RESERVE_BPS,
                pacer: Pacer::new(now),
                resent_bytes: 0,
                resends_dropped: 0,
                resent_mark: None,
                resent_bps: 0,
            }),
            low: AtomicBool::new(false),
            video_off: AtomicBool::new(false),
        });
        link.tick(now);
        link
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The transport-wide sequence number for a packet of `payload_len` bytes leaving now.
    pub fn next_transport_seq(&self, payload_len: usize, now: Instant) -> u16 {
        let mut s = self.lock();
        let seq = s.next_seq;
        s.next_seq = seq.wrapping_add(1);
        s.cc.on_packet_sent(seq, payload_len + PACKET_OVERHEAD, now);
        seq
    }

    /// RTCP from the viewer (any of the session's senders): transport feedback, REMB, loss.
    pub fn on_rtcp(&self, packets: &[Box<dyn rtcp::packet::Packet + Send + Sync>], now: Instant) {
        let mut s = self.lock();
        s.last_rtcp = Some(now);
        for p in packets {
            let any = p.as_any();
            if let Some(fb) = any.downcast_ref::<TransportLayerCc>() {
                let mut scratch = std::mem::take(&mut s.scratch);
                feedback_packets(fb, &mut scratch);
                s.cc.on_transport_feedback(&scratch, now);
                s.scratch = scratch;
                s.transport_cc = true;
            } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                if remb.bitrate.is_finite() && remb.bitrate > 0.0 {
                    s.cc.on_remb(remb.bitrate as u64, now);
                }
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                if !s.transport_cc {
                    if let Some(worst) = rr.reports.iter().map(|r| r.fraction_lost).max() {
                        s.cc.on_receiver_report(worst, None, now);
                    }
                }
            }
        }
    }

    /// Runs the controller's timers, reports to the ladder and takes the rung it gives back.
    pub fn tick(&self, now: Instant) {
        let report = {
            let mut s = self.lock();
            s.cc.handle_timeout(now);
            let audio_bytes = self.hub.audio.bytes_published();
            match s.audio_mark {
                Some((t, b)) if now.saturating_duration_since(t) >= AUDIO_METER => {
                    let secs = now.saturating_duration_since(t).as_secs_f64();
                    let payload_bps = audio_bytes.saturating_sub(b) as f64 * 8.0 / secs;
                    // No audio (disabled, or not flowing yet): keep the default reserve.
                    if payload_bps > 1_000.0 {
                        s.audio_reserve_bps = (payload_bps as u64 + AUDIO_OVERHEAD_BPS).min(4 * AUDIO_RESERVE_BPS);
                    }
                    s.audio_mark = Some((now, audio_bytes));
                }
                Some(_) => {}
                None => s.audio_mark = Some((now, audio_bytes)),
            }
            match s.resent_mark {
                Some((t, b)) if now.saturating_duration_since(t) >= AUDIO_METER => {
                    let secs = now.saturating_duration_since(t).as_secs_f64();
                    s.resent_bps = (s.resent_bytes.saturating_sub(b) as f64 * 8.0 / secs) as u64;
                    s.resent_mark = Some((now, s.resent_bytes));
                }
                Some(_) => {}
                None => s.resent_mark = Some((now, s.resent_bytes)),
            }
            let st = s.cc.stats();
            let estimate = s.cc.target_bps();
            let report = LinkReport {
                video_budget_bps: video_budget(estimate, s.audio_reserve_bps),
                estimate_bps: estimate.min(u32::MAX as u64) as u32,
                loss: st.loss_fraction as f32,
                rtt_ms: st.rtt.map(|d| d.as_millis().min(u32::MAX as u128) as u32),
                received_bps: st.acked_bps.min(u32::MAX as u64) as u32,
                transport_cc: s.transport_cc,
                limited: st.link_capacity_bps.is_some() || st.loss_based_bps <= estimate,
                resent_bps: s.resent_bps.min(u32::MAX as u64) as u32,
                resent_bytes: s.resent_bytes,
                resends_dropped: s.resends_dropped,
            };
            if log::log_enabled!(log::Level::Debug) {
                log::debug!(
                    "{}: target {} delay {} loss {} acked {} state {:?} trend {:.2}/{:.1} overuse {} rung {:?}",
                    super::room::viewer_label(self.viewer), estimate / 1000, st.delay_based_bps / 1000, st.loss_based_bps / 1000, st.acked_bps / 1000,
                    st.state, st.modified_trend, st.threshold, st.overuse, self.rung()
                );
            }
            let max = self.hub.rates.config().max_bps as f64;
            let budget = report.video_budget_bps as f64;
            if !s.degraded && budget < DEGRADED_SHARE * max {
                s.degraded = true;
                log::info!(
                    "{}: link degraded: {} kbit/s estimated, {:.1} % loss, rtt {}",
                    super::room::viewer_label(self.viewer),
                    report.estimate_bps / 1000,
                    report.loss * 100.0,
                    report.rtt_ms.map_or("?".into(), |r| format!("{r} ms"))
                );
            } else if s.degraded && budget >= RECOVERED_SHARE * max {
                s.degraded = false;
                log::info!(
                    "{}: link recovered: {} kbit/s estimated",
                    super::room::viewer_label(self.viewer),
                    report.estimate_bps / 1000
                );
            }
            report
        };
        if self.video_off.load(Ordering::Relaxed) {
            // Listen-only: this link carries no video, so it has no say in the video rates.
            self.hub.rates.leave(self.viewer);
            return;
        }
        let rung = self.hub.rates.report(self.viewer, report, now);
        self.low.store(rung == Rung::Low, Ordering::Relaxed);
    }

    /// The peer sends transport-cc feedback (every ~50-100 ms) and none came for `longer` than
    /// this: the peer is probably gone rather than the link slow.
    pub fn feedback_silent(&self, now: Instant, longer: Duration) -> bool {
        let s = self.lock();
        s.transport_cc && s.last_rtcp.is_some_and(|t| now.saturating_duration_since(t) > longer)
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The viewer stopped (`true`) or resumed its video (listen-only).
    pub fn set_video_off(&self, off: bool) {
        self.video_off.store(off, Ordering::Relaxed);
        if off {
            self.hub.rates.leave(self.viewer);
        }
    }

    pub fn rung(&self) -> Rung {
        if self.low.load(Ordering::Relaxed) { Rung::Low } else { Rung::Main }
    }

    /// More video data is in flight than the congestion window allows: the send loop holds
    /// video until feedback reports some of it (see `congestion::Controller::congested`).
    pub fn congested(&self, now: Instant) -> bool {
        self.lock().cc.congested(now)
    }

    /// How long the next video packet must wait for the pacer (call [`Link::paced`] once it
    /// has left).
    pub fn pace(&self, now: Instant) -> Duration {
        let mut s = self.lock();
        let rate = s.cc.pacing_bps();
        s.pacer.wait(rate, now)
    }

    /// A video packet of `payload_len` bytes left: charge the pacer.
    pub fn paced(&self, payload_len: usize) {
        self.lock().pacer.sent(payload_len + PACKET_OVERHEAD);
    }

    /// A NACK asks for a packet of `payload_len` bytes again ([`super::egress`]): refused while
    /// the congestion window is full (it would only add to the loss), otherwise charged to the
    /// pacer so the new video waits for it, as the original did.
    pub fn admit_resend(&self, payload_len: usize, now: Instant) -> bool {
        let mut s = self.lock();
        if s.cc.congested(now) {
            s.resends_dropped += 1;
            return false;
        }
        s.pacer.sent(payload_len + PACKET_OVERHEAD);
        s.resent_bytes += (payload_len + PACKET_OVERHEAD) as u64;
        true
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.hub.rates.leave(self.viewer);
    }
}

/// What the video may use of a link estimate: the audio's share and the packet overhead off.
fn video_budget(estimate_bps: u64, audio_reserve_bps: u64) -> u32 {
    let v = estimate_bps.saturating_sub(audio_reserve_bps) as f64 * (1200.0 / (1200.0 + PACKET_OVERHEAD as f64));
    v.min(u32::MAX as f64) as u32
}

/// Expands a transport feedback into `(transport seq, arrival µs on the viewer's clock or None
/// when lost)` for every packet it reports. Malformed feedback yields what can be read of it.
pub fn feedback_packets(fb: &TransportLayerCc, out: &mut Vec<(u16, Option<i64>)>) {
    out.clear();
    let count = (fb.packet_status_count as usize).min(MAX_FEEDBACK_PACKETS);
    let mut seq = fb.base_sequence_number;
    // reference time: 24 bits, 64 ms units; deltas are µs already (250 µs resolution).
    let mut arrival = fb.reference_time as i64 * 64_000;
    let mut deltas = fb.recv_deltas.iter();
    let mut push = |symbol: SymbolTypeTcc, out: &mut Vec<(u16, Option<i64>)>| -> bool {
        if out.len() >= count {
            return false;
        }
        let at = match symbol {
            SymbolTypeTcc::PacketReceivedSmallDelta | SymbolTypeTcc::PacketReceivedLargeDelta => match deltas.next() {
                Some(d) => {
                    arrival = arrival.saturating_add(d.delta);
                    Some(arrival)
                }
                None => None,
            },
            _ => None,
        };
        out.push((seq, at));
        seq = seq.wrapping_add(1);
        true
    };
    for chunk in &fb.packet_chunks {
        match chunk {
            PacketStatusChunk::RunLengthChunk(c) => {
                for _ in 0..c.run_length {
                    if !push(c.packet_status_symbol, out) {
                        return;
                    }
                }
            }
            PacketStatusChunk::StatusVectorChunk(c) => {
                for s in &c.symbol_list {
                    if !push(*s, out) {
                        return;
                    }
                }
            }
        }
    }
}

/// Video waits at most this long for the congestion window to open before a packet goes anyway
/// (feedback may be delayed; a held stream must not stall for good).
pub const MAX_WINDOW_HOLD: Duration = Duration::from_millis(300);
/// A viewer more than this many frames behind live (its link held it back) skips to a fresh
/// keyframe instead of sending stale frames: ~250 ms at 30 fps. The hub's ring (32) is the
/// hard limit; this one keeps latency, not memory, bounded.
pub const MAX_BACKLOG_FRAMES: usize = 8;

/// Releases one viewer's video packets at its pacing rate: a token bucket that may run one
/// packet into debt and holds a burst of at most `BURST` worth of sending.
pub struct Pacer {
    budget_bytes: f64,
    last: Instant,
}

/// The burst a pacer lets through at once (at its rate): small enough that a keyframe is spread
/// over several of these instead of filling the bottleneck's queue, large enough that a small
/// frame goes out in one go.
const BURST: Duration = Duration::from_millis(5);

impl Pacer {
    pub fn new(now: Instant) -> Self {
        Self { budget_bytes: 0.0, last: now }
    }

    /// How long to wait before a packet of `size` bytes may leave at `rate_bps`; call
    /// [`Pacer::sent`] once it has.
    pub fn wait(&mut self, rate_bps: u64, now: Instant) -> Duration {
        let rate = rate_bps.max(8_000) as f64 / 8.0;
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let cap = (rate * BURST.as_secs_f64()).max(2.0 * 1500.0);
        self.budget_bytes = (self.budget_bytes + dt * rate).min(cap);
        if self.budget_bytes >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.budget_bytes / rate)
        }
    }

    pub fn sent(&mut self, size: usize) {
        self.budget_bytes -= size as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc::rtcp::transport_feedbacks::transport_layer_cc::{
        RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
    };

    fn rd(us: i64) -> RecvDelta {
        RecvDelta { type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta, delta: us }
    }

    #[test]
    fn feedback_expands_runs_vectors_losses_and_wraps() {
        let fb = TransportLayerCc {
            base_sequence_number: 65534,
            packet_status_count: 5,
            reference_time: 2,
            packet_chunks: vec![
                PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                    type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                    packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                    run_length: 2,
                }),
                PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                    type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                    symbol_size: SymbolSizeTypeTcc::TwoBit,
                    // padding symbols past the count must be ignored
                    symbol_list: vec![
                        SymbolTypeTcc::PacketNotReceived,
                        SymbolTypeTcc::PacketReceivedSmallDelta,
                        SymbolTypeTcc::PacketReceivedSmallDelta,
                        SymbolTypeTcc::PacketReceivedSmallDelta,
                    ],
                }),
            ],
            recv_deltas: vec![rd(1000), rd(250), rd(500), rd(750)],
            ..Default::default()
        };
        let mut out = vec![];
        feedback_packets(&fb, &mut out);
        assert_eq!(
            out,
            vec![
                (65534, Some(128_000 + 1000)),
                (65535, Some(128_000 + 1250)),
                (0, None),
                (1, Some(128_000 + 1750)),
                (2, Some(128_000 + 2500)),
            ]
        );
    }

    #[test]
    fn hostile_feedback_is_bounded_and_does_not_panic() {
        let fb = TransportLayerCc {
            base_sequence_number: 1,
            packet_status_count: u16::MAX,
            reference_time: u32::MAX,
            packet_chunks: vec![
                PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                    type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                    packet_status_symbol: SymbolTypeTcc::PacketReceivedLargeDelta,
                    run_length: 8191,
                });
                20
            ],
            recv_deltas: vec![RecvDelta { type_tcc_packet: SymbolTypeTcc::PacketReceivedLargeDelta, delta: i64::MAX }; 3],
            ..Default::default()
        };
        let mut out = vec![];
        feedback_packets(&fb, &mut out);
        assert_eq!(out.len(), MAX_FEEDBACK_PACKETS);
        assert!(out[5].1.is_none(), "deltas ran out: reported without a time");
    }

    #[test]
    fn pacer_spreads_a_burst_at_its_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        let mut now = t0;
        // 100 packets of 1250 B = 1 Mbit at 4 Mbit/s: about 250 ms, minus the first burst
        for _ in 0..100 {
            let w = p.wait(4_000_000, now);
            now += w;
            p.sent(1250);
        }
        let took = now - t0;
        assert!(took >= Duration::from_millis(230) && took <= Duration::from_millis(260), "{took:?}");
        // idle time does not bank more than the burst
        let later = now + Duration::from_secs(5);
        let mut sent_now = 0;
        while p.wait(4_000_000, later).is_zero() {
            p.sent(1250);
            sent_now += 1;
        }
        assert!(sent_now <= 3, "{sent_now} packets went out at once after idling");
    }

    #[test]
    fn video_budget_leaves_room_for_audio() {
        assert_eq!(video_budget(10_000, AUDIO_RESERVE_BPS), 0);
        let b = video_budget(1_000_000, AUDIO_RESERVE_BPS) as u64;
        assert!(b < 1_000_000 - AUDIO_RESERVE_BPS && b > 850_000, "{b}");
    }

    #[test]
    fn resends_wait_in_the_pacer_like_new_video() {
        let hub = crate::hub::Hub::new();
        let t0 = Instant::now();
        let link = Link::new(8, hub, t0);
        let t = t0 + Duration::from_secs(1);
        assert_eq!(link.pace(t), Duration::ZERO, "nothing sent: no wait");
        // 30 retransmitted packets (~37 kB) at a ~1.9 Mbit/s pacing rate: the next video packet
        // waits for them instead of going out at once.
        for _ in 0..30 {
            assert!(link.admit_resend(1200, t), "no feedback yet: the window does not hold");
        }
        let wait = link.pace(t);
        assert!(wait > Duration::from_millis(50), "video waits {wait:?} behind the resends");
        let s = link.lock();
        assert_eq!(s.resent_bytes, 30 * (1200 + PACKET_OVERHEAD) as u64);
        assert_eq!(s.resends_dropped, 0);
    }

    #[test]
    fn the_audio_reserve_is_what_the_audio_really_sends() {
        let hub = crate::hub::Hub::new();
        let t0 = Instant::now();
        let link = Link::new(7, hub.clone(), t0);
        let budget = |hub: &crate::hub::Hub| hub.rates.viewers().iter().find(|v| v.viewer == 7).unwrap().link.video_budget_bps;
        let before = budget(&hub);
        // Opus at ~24 kbit/s: 50 packets of 60 bytes a second
        for i in 0..50u64 {
            hub.audio.publish(crate::codec::EncodedUnit {
                payloads: vec![bytes::Bytes::from(vec![0u8; 60])],
                keyframe: false,
                capture_unix_us: i * 20_000,
                index: i,
            });
        }
        link.tick(t0 + Duration::from_millis(1000));
        let after = budget(&hub);
        // 48 kbit/s reserved before; 24 kbit/s measured: video gets the difference
        let gained = after as i64 - before as i64;
        assert!((20_000..26_000).contains(&gained), "budget {before} -> {after}");
    }
}
