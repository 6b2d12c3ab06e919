//! A sans-I/O, sender-side congestion controller for WebRTC media in the manner of libwebrtc's
//! GoogCC: a delay-based estimate from transport-wide congestion control feedback
//! (trendline + adaptive-threshold overuse detector + AIMD, with a fast start), a loss-based
//! ceiling, REMB as a cap, and a feedback timeout.
//!
//! No sockets, threads, clocks or allocations that grow with input: the caller reports what
//! happened and passes the time in; [`Controller::target_bps`] says what to send.
//!
//! ```
//! use congestion::{Config, Controller};
//! use std::time::{Duration, Instant};
//!
//! let t0 = Instant::now();
//! let mut cc = Controller::new(Config { start_bps: 1_000_000, min_bps: 100_000, max_bps: 8_000_000 }, t0);
//! cc.on_packet_sent(0, 1200, t0);
//! cc.on_packet_sent(1, 1200, t0 + Duration::from_millis(1));
//! cc.on_transport_feedback(&[(0, Some(5_000)), (1, None)], t0 + Duration::from_millis(60));
//! cc.handle_timeout(t0 + Duration::from_millis(100));
//! assert!((100_000..=8_000_000).contains(&cc.target_bps()));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acked;
mod aimd;
mod base_delay;
mod history;
mod inter_arrival;
mod loss;
mod trendline;

pub use aimd::State;

use acked::AckedBitrate;
use aimd::{Input, RateControl};
use base_delay::BaseDelay;
use history::{History, Status};
use inter_arrival::InterArrival;
use loss::LossWindow;
use std::time::{Duration, Instant};
use trendline::{Trendline, Usage};

/// Pacing rate = this x target (libwebrtc's factor): a keyframe several times the average frame
/// leaves within a fraction of a frame interval instead of trickling out at the average rate,
/// while a burst never hits the bottleneck at line rate.
pub const PACING_FACTOR: f64 = 2.5;

/// Loss above this cuts the loss-based ceiling by half the loss...
const LOSS_HIGH: f64 = 0.10;
/// ...below this the ceiling may rise; in between it holds.
const LOSS_LOW: f64 = 0.02;
/// Loss-based cuts at most once per this + RTT (the loss window must first see the result).
const LOSS_DECREASE_INTERVAL_US: i64 = 300_000;
/// A loss cut less than this ago means a loss episode is under way.
const LOSS_EPISODE_US: i64 = 5_000_000;
/// Loss-based ceiling increase per second while loss is low.
const LOSS_INCREASE_RATE: f64 = 0.08;
/// With the delay signal (transport-cc), loss that has stayed low this long after the last
/// loss cut releases the ceiling to the delay-based estimate: the loss was a drop-tail queue
/// overflowing (a capacity drop), which the delay-based part has already handled. Climbing back
/// at 8 %/s instead (the classic rule) holds a recovered link down for ten seconds or more.
const LOSS_RELEASE_US: i64 = 1_000_000;
/// The delay-based estimate may run at most this far above the other limits (loss ceiling,
/// REMB): it is untested up there, and a limit lifting must not release an arbitrary jump.
const OTHER_LIMIT_HEADROOM: f64 = 1.5;
/// A one-way delay change beyond this between packets is not a queue but a garbage timestamp
/// (or a receiver clock jump).
const MAX_OWD_JUMP_US: i64 = 10_000_000;
/// After this many packets in a row with out-of-range timing, believe the new clock.
const BAD_TIMING_RESYNC: u32 = 50;
/// No transport feedback for this long: the delay signal before it says nothing about after.
const STREAM_TIMEOUT_US: i64 = 2_000_000;
/// Receiver reports drive the loss-based part only when transport-cc has been silent this long.
const TCC_STALE_US: i64 = 2_000_000;
/// Feedback timeout with transport-cc: hold after this long without feedback while sending...
const TCC_HOLD_AFTER_US: i64 = 1_000_000;
/// ...halve after this long, and again every REDUCE_EVERY_US.
const TCC_REDUCE_AFTER_US: i64 = 3_000_000;
/// Without transport-cc, receiver reports/REMB come about once a second: wait longer.
const RR_HOLD_AFTER_US: i64 = 2_000_000;
const RR_REDUCE_AFTER_US: i64 = 6_000_000;
const REDUCE_EVERY_US: i64 = 1_000_000;
/// In the fast start, a queue this deep (over the lowest one-way delay seen) ends it even
/// before the trendline (which needs 20 groups) can see it: doubling overshoots quickly.
const STARTUP_QUEUE_EXIT_US: i64 = 30_000;
/// For a few seconds after the fast start (or when starting above the link's capacity), a
/// queue this deep is overuse too, until it has drained once: a queue pinned at a full
/// drop-tail buffer does not grow, so the trendline sees nothing.
const WARMUP_QUEUE_US: i64 = 100_000;
const WARMUP_US: i64 = 5_000_000;
/// On overuse, back off enough to drain the standing queue in about this long (within
/// [0.5, 0.85] x acked; 0.85 for a queue below ~150 ms).
const DRAIN_TIME_US: f64 = 1_000_000.0;
/// The congestion window: the data in flight (sent, not yet reported by feedback) may be at
/// most the target rate times (the lowest feedback round trip + the feedback interval + this). Beyond it the sender
/// holds video: after a capacity drop the bottleneck's queue is full and drops what arrives,
/// so sending into it only costs losses and retransmission rounds; holding lets it drain.
/// (libwebrtc's congestion window, with a shorter accepted queue: a monitor would rather skip
/// frames than show them late.)
const WINDOW_QUEUE_US: i64 = 100_000;
/// The window never closes below this (a few packets).
const MIN_WINDOW_BYTES: u64 = 6_000;
/// The window applies only while feedback flows: without it nothing would open it again (the
/// feedback timeout handles silence).
const WINDOW_FEEDBACK_FRESH_US: i64 = 500_000;
/// RTT samples above this are garbage.
const MAX_RTT_US: i64 = 30_000_000;
/// RTT assumed until one is measured (libwebrtc's default).
const DEFAULT_RTT_US: i64 = 200_000;
/// Timestamps are µs since the controller was created, capped far below i64::MAX so that sums
/// of them cannot overflow.
const MAX_TIME_US: i64 = 1 << 53;

/// Rates in bit/s. `min_bps` <= `start_bps` <= `max_bps` (fixed up if not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where the estimate starts.
    pub start_bps: u64,
    /// The estimate never goes below this.
    pub min_bps: u64,
    /// The estimate never goes above this.
    pub max_bps: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { start_bps: 1_000_000, min_bps: 100_000, max_bps: 10_000_000 }
    }
}

/// A snapshot of the controller, for logs and for what the application shows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// What the encoders should target: min(delay-based, loss-based, REMB) within [min, max].
    pub target_bps: u64,
    /// The delay-based estimate (with transport-cc; without it, the receiver-report/REMB-driven
    /// estimate).
    pub delay_based_bps: u64,
    /// The loss-based ceiling (`max_bps` when loss has not limited anything).
    pub loss_based_bps: u64,
    /// What the receiver reported as received over the last ~500 ms (0 before it is known or
    /// while feedback has timed out).
    pub acked_bps: u64,
    /// Recent fraction of packets lost, 0..=1 (transport-cc, or the last receiver report).
    pub loss_fraction: f64,
    /// Round-trip time: from transport feedback (now - send time of the newest reported packet,
    /// smoothed), else from receiver reports.
    pub rtt: Option<Duration>,
    /// What the rate controller is doing.
    pub state: State,
    /// The delay trendline slope (ms of queue growth per ms; > 0: the queue grows).
    pub trend: f64,
    /// The scaled trend the detector compares with its threshold.
    pub modified_trend: f64,
    /// The detector's adaptive threshold (6..=600).
    pub threshold: f64,
    /// The link is overused (the detector says so, or the fast start saw a queue).
    pub overuse: bool,
    /// The last REMB, if any.
    pub remb_bps: Option<u64>,
    /// The link capacity estimate (average acknowledged rate at overuse), if known.
    pub link_capacity_bps: Option<u64>,
}

#[derive(Clone, Copy)]
struct Arrived {
    seq: u64,
    send: i64,
    /// Arrival time mapped onto the local timeline: send time + change in one-way delay.
    arrival: i64,
    size: u32,
}

/// The congestion controller for one link (one peer connection). See the crate docs.
pub struct Controller {
    min: f64,
    max: f64,
    epoch: Instant,
    history: History,
    inter_arrival: InterArrival,
    trendline: Trendline,
    acked: AckedBitrate,
    acked_recent: AckedBitrate,
    loss_window: LossWindow,
    rate: RateControl,
    loss_based: f64,
    last_loss_update: Option<i64>,
    last_loss_decrease: Option<i64>,
    remb: Option<f64>,
    feedback_rtt: Option<i64>,
    /// Lowest feedback round trip lately (creeps up 1 ms per feedback so that it follows a
    /// path that got longer).
    min_feedback_rtt: Option<i64>,
    /// Smoothed time between transport feedbacks (data waits this long to be reported on).
    feedback_interval: Option<i64>,
    rr_rtt: Option<i64>,
    /// One-way delay (receiver clock - send time) of the packet timing is measured against.
    owd_ref: Option<i64>,
    bad_timing: u32,
    /// Bumped whenever timing is resynchronised (arrivals before and after do not mix).
    timing_epoch: u32,
    /// Lowest relative one-way delay lately (the empty-queue delay).
    base_owd: BaseDelay,
    /// The post-startup deep-queue check is over (the queue drained once).
    warmup_over: bool,
    tcc_seen: bool,
    last_tcc: Option<i64>,
    /// First packet sent since the last feedback: the feedback timeout runs from here.
    waiting_since: Option<i64>,
    timeout_hold: bool,
    last_timeout_cut: Option<i64>,
    loss_fraction: f64,
    /// What the loss-based part did last (reported while it is the binding limit).
    loss_state: State,
    target: f64,
    overuse: bool,
    scratch: Vec<Arrived>,
}

impl Controller {
    /// A controller starting at `config.start_bps`.
    pub fn new(config: Config, now: Instant) -> Self {
        let min = config.min_bps.max(1) as f64;
        let max = (config.max_bps as f64).max(min);
        let start = (config.start_bps as f64).clamp(min, max);
        Self {
            min,
            max,
            epoch: now,
            history: History::default(),
            inter_arrival: InterArrival::default(),
            trendline: Trendline::default(),
            acked: AckedBitrate::new(acked::WINDOW_US),
            acked_recent: AckedBitrate::new(acked::RECENT_WINDOW_US),
            loss_window: LossWindow::default(),
            rate: RateControl::new(start, min, max),
            loss_based: max,
            last_loss_update: None,
            last_loss_decrease: None,
            remb: None,
            feedback_rtt: None,
            min_feedback_rtt: None,
            feedback_interval: None,
            rr_rtt: None,
            owd_ref: None,
            bad_timing: 0,
            timing_epoch: 0,
            base_owd: BaseDelay::default(),
            warmup_over: false,
            tcc_seen: false,
            last_tcc: None,
            waiting_since: None,
            timeout_hold: false,
            last_timeout_cut: None,
            loss_fraction: 0.0,
            loss_state: State::Hold,
            target: start,
            overuse: false,
            scratch: Vec::new(),
        }
    }

    fn ts(&self, t: Instant) -> i64 {
        let us = t.saturating_duration_since(self.epoch).as_micros();
        i64::try_from(us).unwrap_or(MAX_TIME_US).min(MAX_TIME_US)
    }

    /// A media packet left the device carrying transport-wide sequence number `seq` (the 16-bit
    /// value written in the RTP header extension); `size` = bytes on the wire (RTP header +
    /// payload, roughly).
    pub fn on_packet_sent(&mut self, seq: u16, size: usize, now: Instant) {
        let now_us = self.ts(now);
        if self.history.on_sent(seq, size, now_us) && self.waiting_since.is_none() {
            self.waiting_since = Some(now_us);
        }
    }

    /// One parsed transport-cc feedback: every packet it reports, in order: (transport seq,
    /// Some(arrival time in µs on the receiver's clock, any origin)) or None when reported
    /// lost. Untrusted input: unknown, duplicate and absurd entries are ignored.
    pub fn on_transport_feedback(&mut self, packets: &[(u16, Option<i64>)], now: Instant) {
        let now_us = self.ts(now);
        if self.last_tcc.is_some_and(|t| now_us.saturating_sub(t) > STREAM_TIMEOUT_US) {
            self.reset_delay_signal();
        }
        self.tcc_seen = true;
        if let Some(last) = self.last_tcc {
            let gap = now_us.saturating_sub(last).min(WINDOW_FEEDBACK_FRESH_US);
            self.feedback_interval = Some(self.feedback_interval.map_or(gap, |i| (7 * i + gap) / 8));
        }
        self.last_tcc = Some(now_us);

        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let (mut received, mut lost) = (0i64, 0i64);
        let mut newest: Option<(u64, i64)> = None;
        for &(seq16, arrival) in packets {
            let Some(p) = self.history.get_mut(seq16) else { continue };
            match (p.status, arrival) {
                (Status::Received, _) | (Status::Lost, None) => {}
                (Status::Unreported, None) => {
                    p.status = Status::Lost;
                    lost += 1;
                    let cum = p.cum;
                    self.history.reported(cum);
                }
                (Status::Lost, Some(_)) => {
                    // Reported lost before, arrived after all: it counts as received, but its
                    // timing is out of order and says nothing about the queue.
                    p.status = Status::Received;
                    lost -= 1;
                    received += 1;
                }
                (Status::Unreported, Some(at)) => {
                    p.status = Status::Received;
                    received += 1;
                    let (seq, send, size, cum) = (p.seq, p.send_us, p.size, p.cum);
                    self.history.reported(cum);
                    if newest.is_none_or(|(s, _)| seq > s) {
                        newest = Some((seq, send));
                    }
                    let epoch = self.timing_epoch;
                    if let Some(arrival) = self.local_arrival(at, send) {
                        if self.timing_epoch != epoch {
                            scratch.clear();
                        }
                        scratch.push(Arrived { seq, send, arrival, size });
                    }
                }
            }
        }
        if received == 0 && lost == 0 {
            // Nothing new (empty, stale, duplicate or foreign): not evidence that our packets
            // still get through, so it does not hold off the feedback timeout either.
            self.scratch = scratch;
            return;
        }
        self.feedback_arrived();

        if let Some((_, send)) = newest {
            let sample = now_us.saturating_sub(send);
            if (0..=MAX_RTT_US).contains(&sample) {
                self.feedback_rtt = Some(self.feedback_rtt.map_or(sample, |r| (3 * r + sample) / 4));
                self.min_feedback_rtt = Some(self.min_feedback_rtt.map_or(sample, |m| sample.min(m + 1_000)));
            }
        }

        // In arrival order, as the receiver saw them (as libwebrtc does).
        scratch.sort_unstable_by_key(|a| (a.arrival, a.seq));
        let mut min_owd: Option<i64> = None;
        for a in &scratch {
            self.acked.add(a.arrival, a.size);
            self.acked_recent.add(a.arrival, a.size);
            let owd = a.arrival - a.send;
            min_owd = Some(min_owd.map_or(owd, |m| m.min(owd)));
            if let Some(d) = self.inter_arrival.add(a.send, a.arrival, now_us, a.size) {
                self.trendline.update(d.arrival_ms, d.send_ms, a.arrival as f64 / 1000.0);
            }
        }

        self.loss_window.add(now_us, received, lost);
        // The first cut needs a large sample (random loss must not trigger it); within an
        // episode (the window restarted at the last cut) a smaller one follows it closely.
        let in_episode = self.last_loss_decrease.is_some_and(|t| now_us.saturating_sub(t) < LOSS_EPISODE_US);
        let min_packets = if in_episode { loss::MIN_PACKETS_IN_EPISODE } else { loss::MIN_PACKETS };
        if let Some(f) = self.loss_window.fraction(min_packets) {
            self.loss_fraction = f;
            self.update_loss_based(f, now_us);
        }

        if let Some(owd) = min_owd {
            self.base_owd.add(now_us, owd);
            // The queue the least-delayed packet of this feedback saw (jitter delays some
            // packets, rarely all of them).
            let queue = owd.saturating_sub(self.base_owd.get().unwrap_or(owd)).max(0);
            let usage = self.delay_usage(queue, now_us);
            self.overuse = usage == Usage::Overusing;
            let acked = self.acked.rate();
            let acked_for_backoff = match (acked, self.acked_recent.rate()) {
                (Some(a), Some(r)) => Some(a.min(r)),
                (a, r) => a.or(r),
            };
            let input = Input {
                usage,
                acked,
                acked_for_backoff,
                beta: 1.0 - queue as f64 / DRAIN_TIME_US,
                cap: self.increase_cap(),
                rtt_us: self.rtt_us(),
                queue_us: queue,
            };
            self.rate.update(input, now_us);
        }
        self.scratch = scratch;
        self.update_target();
    }

    /// REMB from the receiver: caps the estimate. Without transport-cc it *is* the delay-based
    /// estimate (the receiver ran the delay-based part).
    pub fn on_remb(&mut self, bitrate_bps: u64, now: Instant) {
        let now_us = self.ts(now);
        let r = (bitrate_bps as f64).clamp(self.min, self.max);
        self.remb = Some(r);
        if !self.tcc_seen {
            self.feedback_arrived();
            self.rate.set_estimate(r, now_us);
        }
        self.update_target();
    }

    /// RTCP receiver report: fraction lost (0..=255 as in RFC 3550) and RTT if known. The loss
    /// drives the loss-based part only while no transport-cc feedback arrives; the RTT is used
    /// when transport feedback gives none.
    pub fn on_receiver_report(&mut self, fraction_lost: u8, rtt: Option<Duration>, now: Instant) {
        let now_us = self.ts(now);
        if let Some(rtt) = rtt {
            let us = i64::try_from(rtt.as_micros()).unwrap_or(i64::MAX);
            if us <= MAX_RTT_US {
                self.rr_rtt = Some(us);
            }
        }
        if !self.tcc_seen {
            self.feedback_arrived();
        }
        let tcc_recent = self.last_tcc.is_some_and(|t| now_us.saturating_sub(t) <= TCC_STALE_US);
        if !tcc_recent {
            let loss = f64::from(fraction_lost) / 256.0;
            self.loss_fraction = loss;
            self.update_loss_based(loss, now_us);
            if !self.tcc_seen && self.remb.is_none() {
                // No delay signal at all: classic loss-based control drives the estimate.
                if loss < LOSS_LOW {
                    self.rate.classic_increase(self.target, now_us);
                } else if loss <= LOSS_HIGH {
                    self.rate.set_state(State::Hold, now_us);
                } else {
                    self.rate.set_state(State::Decrease, now_us);
                }
            }
        }
        self.update_target();
    }

    /// Timers; call every ~25-100 ms. Feedback timeout: no feedback for 1 s while sending
    /// stops increases; after 3 s the estimate halves, and again every further second, not
    /// below min; feedback then restarts with a fast start. (Without transport-cc: 2 s / 6 s.)
    pub fn handle_timeout(&mut self, now: Instant) {
        let now_us = self.ts(now);
        self.history.prune(now_us);
        let Some(since) = self.waiting_since else { return };
        let (hold_after, reduce_after) = if self.tcc_seen {
            (TCC_HOLD_AFTER_US, TCC_REDUCE_AFTER_US)
        } else {
            (RR_HOLD_AFTER_US, RR_REDUCE_AFTER_US)
        };
        let waited = now_us.saturating_sub(since);
        if waited > hold_after && !self.timeout_hold {
            self.timeout_hold = true;
            self.rate.set_state(State::Hold, now_us);
        }
        if waited > reduce_after && self.last_timeout_cut.is_none_or(|t| now_us.saturating_sub(t) >= REDUCE_EVERY_US) {
            self.last_timeout_cut = Some(now_us);
            self.rate.set_estimate(self.target / 2.0, now_us);
            self.rate.restart(now_us);
            self.warmup_over = false;
            self.reset_delay_signal();
            self.update_target();
        }
    }

    /// The rate the encoder(s) should target for this link, bit/s, within [min, max].
    pub fn target_bps(&self) -> u64 {
        self.target as u64
    }

    /// The rate a pacer should release packets at: [`PACING_FACTOR`] x target.
    pub fn pacing_bps(&self) -> u64 {
        (self.target * PACING_FACTOR) as u64
    }

    /// Bytes sent and not yet reported on by transport feedback.
    pub fn in_flight_bytes(&self) -> u64 {
        self.history.in_flight()
    }

    /// The congestion window in bytes while transport feedback flows (else `None`: no limit).
    pub fn window_bytes(&self, now: Instant) -> Option<u64> {
        let now_us = self.ts(now);
        let fresh = self.last_tcc.is_some_and(|t| now_us.saturating_sub(t) <= WINDOW_FEEDBACK_FRESH_US);
        if !fresh {
            return None;
        }
        let rtt = self.min_feedback_rtt.unwrap_or(DEFAULT_RTT_US);
        let interval = self.feedback_interval.unwrap_or(100_000);
        let bytes = self.target / 8.0 * (rtt + interval + WINDOW_QUEUE_US) as f64 / 1e6;
        Some((bytes as u64).max(MIN_WINDOW_BYTES))
    }

    /// More data is in flight than the window allows: hold video (audio may still go) until
    /// feedback reports some of it.
    pub fn congested(&self, now: Instant) -> bool {
        self.window_bytes(now).is_some_and(|w| self.history.in_flight() > w)
    }

    /// A snapshot for logs and displays.
    pub fn stats(&self) -> Stats {
        Stats {
            target_bps: self.target_bps(),
            delay_based_bps: self.rate.estimate() as u64,
            loss_based_bps: self.loss_based as u64,
            acked_bps: if self.timeout_hold { 0 } else { self.acked.rate().map_or(0, |r| r as u64) },
            loss_fraction: self.loss_fraction,
            rtt: self.feedback_rtt.or(self.rr_rtt).map(|us| Duration::from_micros(us.max(0) as u64)),
            state: self.state(),
            trend: self.trendline.trend(),
            modified_trend: self.trendline.modified_trend(),
            threshold: self.trendline.threshold(),
            overuse: self.overuse,
            remb_bps: self.remb.map(|r| r as u64),
            link_capacity_bps: self.rate.capacity().estimate_bps().map(|c| c as u64),
        }
    }

    /// Sent packets remembered for matching feedback (bounded; for diagnostics and tests).
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    fn state(&self) -> State {
        if self.timeout_hold {
            State::Hold
        } else if self.loss_based < self.rate.estimate() && self.remb.is_none_or(|r| self.loss_based <= r) {
            self.loss_state
        } else {
            self.rate.state()
        }
    }

    fn rtt_us(&self) -> i64 {
        self.feedback_rtt.or(self.rr_rtt).unwrap_or(DEFAULT_RTT_US)
    }

    fn feedback_arrived(&mut self) {
        self.waiting_since = None;
        self.timeout_hold = false;
        self.last_timeout_cut = None;
    }

    fn reset_delay_signal(&mut self) {
        self.inter_arrival.reset();
        self.trendline.reset();
        self.acked.reset();
        self.acked_recent.reset();
        self.base_owd.reset();
        self.overuse = false;
    }

    /// The overuse detector's verdict, plus the absolute-queue checks of the start: the
    /// trendline needs 20 groups before it says anything, and cannot see a queue that stopped
    /// growing because the buffer is full.
    fn delay_usage(&mut self, queue: i64, now_us: i64) -> Usage {
        let usage = self.trendline.usage();
        if self.rate.in_startup() {
            if queue > STARTUP_QUEUE_EXIT_US {
                return Usage::Overusing;
            }
        } else if !self.warmup_over {
            let ended = self.rate.startup_ended_at().unwrap_or(now_us);
            if queue < STARTUP_QUEUE_EXIT_US || now_us.saturating_sub(ended) > WARMUP_US {
                self.warmup_over = true;
            } else if queue > WARMUP_QUEUE_US {
                return Usage::Overusing;
            }
        }
        usage
    }

    /// Maps a receiver-clock arrival time onto the local timeline (send time + change of the
    /// one-way delay against a reference packet), or None when it is garbage.
    fn local_arrival(&mut self, arrival: i64, send: i64) -> Option<i64> {
        let offset = arrival.checked_sub(send);
        let delta = match (offset, self.owd_ref) {
            (Some(o), Some(r)) => o.checked_sub(r).filter(|d| (-MAX_OWD_JUMP_US..=MAX_OWD_JUMP_US).contains(d)),
            (Some(o), None) => {
                self.owd_ref = Some(o);
                Some(0)
            }
            (None, _) => None,
        };
        if let Some(d) = delta {
            self.bad_timing = 0;
            return Some(send + d);
        }
        self.bad_timing = self.bad_timing.saturating_add(1);
        if self.bad_timing >= BAD_TIMING_RESYNC {
            // Consistently "absurd": the receiver's clock jumped (or the first reference was the
            // garbage). Believe the new clock, and start the delay signal over.
            if let Some(o) = offset {
                self.owd_ref = Some(o);
                self.bad_timing = 0;
                self.timing_epoch = self.timing_epoch.wrapping_add(1);
                self.reset_delay_signal();
                return Some(send);
            }
        }
        None
    }

    /// The loss-based ceiling (libwebrtc's classic rule): > 10 % loss cuts it to
    /// (1 - loss/2) x the current target, < 2 % lets it grow 8 %/s, in between it holds.
    /// It starts at max: with the delay signal in charge, moderate random loss holds nothing.
    fn update_loss_based(&mut self, loss: f64, now_us: i64) {
        let dt = self.last_loss_update.map_or(0.0, |t| now_us.saturating_sub(t) as f64 / 1e6).clamp(0.0, 1.0);
        self.last_loss_update = Some(now_us);
        if loss > LOSS_HIGH {
            self.loss_state = State::Decrease;
            let interval = LOSS_DECREASE_INTERVAL_US.saturating_add(self.rtt_us());
            if self.last_loss_decrease.is_none_or(|t| now_us.saturating_sub(t) >= interval) {
                self.loss_based = (self.loss_based.min(self.target) * (1.0 - 0.5 * loss)).max(self.min);
                self.last_loss_decrease = Some(now_us);
                self.loss_window.clear();
                self.rate.exit_startup(now_us);
            }
        } else if loss < LOSS_LOW {
            self.loss_state = State::Increase;
            self.loss_based = (self.loss_based * (1.0 + LOSS_INCREASE_RATE).powf(dt) + 1_000.0 * dt).min(self.max);
            let quiet = self.last_loss_decrease.is_none_or(|t| now_us.saturating_sub(t) >= LOSS_RELEASE_US.saturating_add(self.rtt_us()));
            if self.tcc_seen && quiet && self.loss_based < self.max {
                self.loss_based = self.max;
            }
        } else {
            self.loss_state = State::Hold;
        }
    }

    fn increase_cap(&self) -> f64 {
        let other = self.remb.map_or(self.loss_based, |r| r.min(self.loss_based));
        if other >= self.max { f64::INFINITY } else { other * OTHER_LIMIT_HEADROOM }
    }

    fn update_target(&mut self) {
        let mut t = self.rate.estimate().min(self.loss_based);
        if let Some(r) = self.remb {
            t = t.min(r);
        }
        self.target = t.clamp(self.min, self.max);
    }
}
