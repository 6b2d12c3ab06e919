//! An adaptive jitter buffer for the talker's Opus packets. Pure: arrival times come in as
//! arguments, so it is tested without a network.
//!
//! The playback thread pops one 20 ms frame per tick. The buffer holds packets back until
//! `target` frames are queued (prefill), then plays in sequence order: a missing packet is
//! reported as `Lost` (the decoder conceals it), and a queue that grew past the target (a burst,
//! or the sender's clock running fast) is trimmed so delay never accumulates. The target follows
//! the measured inter-arrival jitter (RFC 3550 style), between 1 and 3 frames (20–60 ms).
//!
//! Inter-arrival jitter misses one thing that matters on a busy two-core device: bursts. When
//! the sender (a phone's browser under load) or this device's playback thread stalls and then
//! catches up, a packet arrives after its slot was already concealed. Every such late packet
//! raises a floor under the target by how late it was (up to 5 frames, 100 ms), and the buffer
//! stretches (conceals once more, next to a frame it concealed anyway) to reach it; the floor steps back down one frame
//! per 10 s without a late packet. Like libwebrtc's NetEq, which also sizes its delay from late
//! arrivals rather than from the RFC 3550 figure alone.

use bytes::Bytes;
use std::collections::BTreeMap;

pub const FRAME_US: i64 = 20_000;
pub const MIN_TARGET: usize = 1;
pub const MAX_TARGET: usize = 3;
/// The most the late-arrival floor may raise the target to.
pub const MAX_LATE_TARGET: usize = 5;
/// Pops (20 ms each) without a late packet before the floor steps down a frame: 10 s.
const CALM_POPS_PER_STEP: u32 = 500;
/// Bounded: a sender flooding packets cannot grow memory.
const CAPACITY: usize = 50;
/// This many lost frames in a row means the talker stopped: back to prefill (and silence).
const LOST_BEFORE_REBUFFER: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pop {
    Frame(Bytes),
    /// The next packet is missing: conceal.
    Lost,
    /// Prefilling, or nothing has arrived: play silence.
    Empty,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub played: u64,
    pub lost: u64,
    pub late: u64,
    pub trimmed: u64,
    /// Frames concealed without advancing, to grow the delay after late arrivals.
    pub stretched: u64,
    pub target_frames: usize,
    pub jitter_us: i64,
}

#[derive(Debug)]
pub struct JitterBuffer {
    /// Keyed by extended (32-bit unwrapped) sequence number.
    packets: BTreeMap<u64, Bytes>,
    /// The next sequence number to play; `None` while prefilling.
    next: Option<u64>,
    /// The highest extended sequence number seen (to unwrap 16-bit numbers).
    highest: Option<u64>,
    lost_run: u32,
    /// Last (arrival_us, rtp_ts) for the jitter estimate.
    last_transit: Option<i64>,
    jitter_us: f64,
    /// The target's floor raised by late arrivals (0: none), and pops since the last one.
    late_floor: usize,
    calm_pops: u32,
    /// The last frame handed out was concealed (where a stretch does not cut into sound).
    just_concealed: bool,
    /// Frames of delay still to add since the target was raised.
    deficit: usize,
    stats: JitterStats,
}

impl Default for JitterBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl JitterBuffer {
    pub fn new() -> Self {
        Self {
            packets: BTreeMap::new(),
            next: None,
            highest: None,
            lost_run: 0,
            last_transit: None,
            jitter_us: 0.0,
            late_floor: 0,
            calm_pops: 0,
            just_concealed: false,
            deficit: 0,
            stats: JitterStats { target_frames: MIN_TARGET, ..Default::default() },
        }
    }

    pub fn stats(&self) -> JitterStats {
        JitterStats { target_frames: self.target(), jitter_us: self.jitter_us as i64, ..self.stats }
    }

    /// Frames to hold before playing: enough to ride out ~2x the measured jitter, and no fewer
    /// than recent late arrivals showed were needed.
    pub fn target(&self) -> usize {
        let frames = ((2.0 * self.jitter_us + 5_000.0) / FRAME_US as f64).ceil() as usize;
        frames.clamp(MIN_TARGET, MAX_TARGET).max(self.late_floor.min(MAX_LATE_TARGET))
    }

    pub fn buffered(&self) -> usize {
        self.packets.len()
    }

    /// Forgets everything (a new talker).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    fn extend(&mut self, seq: u16) -> u64 {
        let Some(high) = self.highest else {
            let e = (1u64 << 16) + seq as u64; // room below for reordered early packets
            self.highest = Some(e);
            return e;
        };
        let base = high & !0xffff;
        let candidates = [base.wrapping_sub(1 << 16) + seq as u64, base + seq as u64, base + (1 << 16) + seq as u64];
        let e = *candidates.iter().min_by_key(|c| c.abs_diff(high)).expect("three candidates");
        if e > high {
            self.highest = Some(e);
        }
        e
    }

    /// A packet arrived at `arrival_us` (any monotonic microsecond clock).
    pub fn push(&mut self, seq: u16, rtp_ts: u32, payload: Bytes, arrival_us: i64) {
        self.stats.received += 1;
        // Interarrival jitter (RFC 3550 6.4.1) in microseconds; Opus RTP runs at 48 kHz.
        let transit = arrival_us - (rtp_ts as i64 * 1_000 / 48);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            // A jump of more than a few frames is a new talkspurt or a clock reset, not jitter.
            if d < 200_000 {
                self.jitter_us += (d as f64 - self.jitter_us) / 16.0;
            }
        }
        self.last_transit = Some(transit);

        let e = self.extend(seq);
        if let Some(n) = self.next.filter(|&n| e < n) {
            self.stats.late += 1;
            // It would have played had the buffer been (n - e) frames deeper.
            let before = self.target();
            let needed = before + (n - e).min(MAX_LATE_TARGET as u64) as usize;
            self.late_floor = needed.min(MAX_LATE_TARGET).max(self.late_floor);
            self.deficit += self.target() - before;
            self.calm_pops = 0;
            return;
        }
        self.packets.insert(e, payload);
        while self.packets.len() > CAPACITY {
            self.packets.pop_first();
            self.stats.trimmed += 1;
        }
    }

    /// The frame to play now (called once per 20 ms tick).
    pub fn pop(&mut self) -> Pop {
        self.calm_pops += 1;
        if self.calm_pops >= CALM_POPS_PER_STEP {
            self.calm_pops = 0;
            self.late_floor = self.late_floor.saturating_sub(1);
        }
        let target = self.target();
        let Some(next) = self.next else {
            if self.packets.len() < target {
                return Pop::Empty;
            }
            // Prefilled (to the whole target, so no delay is owed): start at the oldest packet.
            self.deficit = 0;
            let (&first, _) = self.packets.first_key_value().expect("non-empty");
            self.next = Some(first);
            return self.pop();
        };
        // The target was raised after late arrivals: conceal once more without advancing, so the
        // delay grows by a frame. (By the frames it was raised, not by how short the queue is
        // now: a stall drains the queue and the burst after it refills it.) Only right after a
        // frame that was concealed anyway, once per gap: the gap grows by 20 ms instead of a new
        // one cutting into speech (a concealed frame inside a sound is an audible dip).
        if self.deficit > 0 && self.packets.contains_key(&next) && self.just_concealed {
            self.deficit -= 1;
            self.just_concealed = false;
            self.stats.stretched += 1;
            return Pop::Lost;
        }
        self.just_concealed = false;
        // Too much queued (more than target + 2 frames): drop the oldest so delay stays low.
        while self.packets.len() > target + 2 {
            let (k, _) = self.packets.pop_first().expect("non-empty");
            self.stats.trimmed += 1;
            self.next = Some(k + 1);
        }
        let next = self.next.unwrap_or(next);
        if let Some(p) = self.packets.remove(&next) {
            self.next = Some(next + 1);
            self.lost_run = 0;
            self.stats.played += 1;
            return Pop::Frame(p);
        }
        if self.packets.is_empty() {
            self.lost_run += 1;
            if self.lost_run >= LOST_BEFORE_REBUFFER {
                // The talker stopped (or a long gap): prefill again before playing.
                self.next = None;
                self.lost_run = 0;
                return Pop::Empty;
            }
            self.next = Some(next + 1);
            self.stats.lost += 1;
            self.just_concealed = true;
            return Pop::Lost;
        }
        // A hole with later packets waiting: conceal this one and move on.
        self.next = Some(next + 1);
        self.stats.lost += 1;
        self.just_concealed = true;
        Pop::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    #[test]
    fn plays_in_order_after_prefill_and_conceals_holes() {
        let mut j = JitterBuffer::new();
        assert_eq!(j.pop(), Pop::Empty);
        // Reordered arrival: 1, 0, 3 (2 is lost).
        j.push(1, 960, p(1), 20_000);
        j.push(0, 0, p(0), 21_000);
        j.push(3, 2880, p(3), 60_000);
        assert_eq!(j.pop(), Pop::Frame(p(0)));
        assert_eq!(j.pop(), Pop::Frame(p(1)));
        assert_eq!(j.pop(), Pop::Lost);
        assert_eq!(j.pop(), Pop::Frame(p(3)));
        // A late packet for an already-played slot is dropped.
        j.push(2, 1920, p(2), 80_000);
        assert_eq!(j.stats().late, 1);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut j = JitterBuffer::new();
        let mut out = Vec::new();
        for (i, seq) in [65534u16, 65535, 0, 1].iter().enumerate() {
            j.push(*seq, (i * 960) as u32, p(i as u8), i as i64 * 20_000);
            if let Pop::Frame(b) = j.pop() {
                out.push(b[0]);
            }
        }
        assert_eq!(out, vec![0, 1, 2, 3]);
    }

    #[test]
    fn silence_after_the_talker_stops_then_prefill_again() {
        let mut j = JitterBuffer::new();
        j.push(10, 0, p(0), 0);
        assert_eq!(j.pop(), Pop::Frame(p(0)));
        let pops: Vec<Pop> = (0..6).map(|_| j.pop()).collect();
        assert_eq!(pops[..4], [Pop::Lost, Pop::Lost, Pop::Lost, Pop::Lost]);
        assert_eq!(pops[4], Pop::Empty, "after 5 missing frames: rebuffer");
        j.push(20, 9600, p(9), 1_000_000);
        assert_eq!(j.pop(), Pop::Frame(p(9)));
    }

    #[test]
    fn a_burst_is_trimmed_to_keep_delay_low() {
        let mut j = JitterBuffer::new();
        for i in 0..20u16 {
            j.push(i, i as u32 * 960, p(i as u8), 0); // all at once
        }
        let first = j.pop();
        assert!(matches!(first, Pop::Frame(_)));
        assert!(j.buffered() <= MAX_TARGET + 2, "{} buffered", j.buffered());
        assert!(j.stats().trimmed > 0);
    }

    #[test]
    fn target_grows_with_jitter_but_stays_within_60_ms() {
        let mut steady = JitterBuffer::new();
        for i in 0..100u16 {
            steady.push(i, i as u32 * 960, p(0), i as i64 * 20_000);
        }
        assert_eq!(steady.target(), 1);
        let mut jittery = JitterBuffer::new();
        for i in 0..100u16 {
            let wobble = if i % 2 == 0 { 0 } else { 25_000 };
            jittery.push(i, i as u32 * 960, p(0), i as i64 * 20_000 + wobble);
        }
        assert_eq!(jittery.target(), MAX_TARGET);
    }

    /// Plays `packets` (seq, arrival µs) against a pop every 20 ms (starting at 5 ms), in time
    /// order; returns the late count seen by each pop.
    fn run(j: &mut JitterBuffer, packets: &[(u16, i64)], until_us: i64) -> Vec<u64> {
        let mut late = Vec::new();
        let mut next_packet = packets.iter().peekable();
        let mut tick = 5_000;
        while tick < until_us {
            while let Some(&&(seq, at)) = next_packet.peek().filter(|(_, at)| *at <= tick) {
                j.push(seq, seq as u32 * 960, p(0), at);
                next_packet.next();
            }
            let _ = j.pop();
            late.push(j.stats().late);
            tick += 20_000;
        }
        late
    }

    #[test]
    fn late_arrivals_deepen_the_buffer_then_it_relaxes() {
        // Steady 20 ms arrivals, but every second the sender stalls 70 ms and then sends what it
        // held at once: with the jitter-only target the held packets arrive after their slots.
        let stalls: Vec<(u16, i64)> = (0..1000u16)
            .map(|i| {
                let slot = i as i64 * 20_000;
                let held = i % 50 < 4; // 4 packets held back, released together
                (i, if held { (i - i % 50) as i64 * 20_000 + 70_000 } else { slot })
            })
            .collect();
        let mut j = JitterBuffer::new();
        let late = run(&mut j, &stalls, 20_000_000);
        let s = j.stats();
        assert!(late[100] > 0, "the stalls produced late packets at first: {s:?}");
        assert!(s.target_frames >= 3, "the floor rose: {s:?}");
        assert!(s.stretched > 0 && s.stretched < 10, "stretched to get there: {s:?}");
        assert_eq!(late[late.len() / 2], *late.last().unwrap(), "once deeper, no packet is late: {s:?}");
        // 60 s without a late packet: the floor steps back down to the jitter-based target.
        let steady: Vec<(u16, i64)> = (1000..4000u16).map(|i| (i, i as i64 * 20_000)).collect();
        run(&mut j, &steady, 80_000_000);
        assert!(j.target() <= 2, "relaxed to {}", j.target());
    }

    #[test]
    fn bounded_under_a_flood() {
        let mut j = JitterBuffer::new();
        for i in 0..10_000u32 {
            j.push(i as u16, i * 960, p(0), 0);
        }
        assert!(j.buffered() <= CAPACITY);
    }
}
