//! A small deterministic link simulator for the scenario tests.
//!
//! Sender: an encoder producing 30 frames/s at the controller's target (±20 % per frame),
//! split into packets of at most 1200 bytes, released by a token-bucket pacer at the pacing
//! rate (5 ms burst, like the product's) or all at once. Link: one bottleneck of C bit/s with a
//! drop-tail FIFO of a given size in bytes, optional random loss, then a fixed one-way delay
//! (plus optional jitter that keeps order). Receiver: a transport-cc reporter that every
//! `feedback_interval` lists each packet up to the newest arrival with its arrival time on its
//! own clock (arbitrary origin) or as lost; feedback returns over an uncongested path with the
//! same one-way delay. Time advances in 1 ms ticks; departures are computed to the µs.

#![allow(dead_code)]

use congestion::{Config, Controller, Stats};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One transport-cc feedback as the controller takes it.
pub type Feedback = Vec<(u16, Option<i64>)>;

pub const MS: i64 = 1_000;
pub const S: i64 = 1_000_000;
const TICK_US: i64 = 1_000;

/// xorshift64*: deterministic, no dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LinkParams {
    pub capacity_bps: f64,
    pub one_way_delay_us: i64,
    pub buffer_bytes: usize,
    pub loss: f64,
    pub jitter_us: i64,
}

impl LinkParams {
    /// A bottleneck of `capacity_bps` with a 500 ms (at that rate) buffer and 25 ms one way.
    pub fn capped(capacity_bps: f64) -> Self {
        Self {
            capacity_bps,
            one_way_delay_us: 25 * MS,
            buffer_bytes: (capacity_bps / 8.0 * 0.5) as usize,
            loss: 0.0,
            jitter_us: 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t_us: i64,
    pub stats: Stats,
    pub pacing_bps: u64,
    /// Bottleneck queue (time to drain it) at the sample.
    pub queue_us: i64,
}

pub struct Sim {
    pub cc: Controller,
    t0: Instant,
    pub now_us: i64,
    pub link: LinkParams,
    rng: Rng,
    // bottleneck
    link_free_at: i64,
    in_queue: VecDeque<(i64, usize)>,
    queued_bytes: usize,
    in_flight: VecDeque<(i64, u64)>,
    last_arrival: i64,
    // receiver
    rx_expected: u64,
    rx_arrived: VecDeque<(u64, i64)>,
    rx_highest: Option<u64>,
    pub feedback_interval_us: i64,
    next_feedback_us: i64,
    /// When false, the receiver's feedback is lost on the way back.
    pub feedback_enabled: bool,
    pending_feedback: VecDeque<(i64, Feedback)>,
    pub rx_clock_offset_us: i64,
    /// A receiver sending this REMB every 500 ms.
    pub remb: Option<u64>,
    next_remb_us: i64,
    // sender
    next_seq: u64,
    next_frame_us: i64,
    /// (enqueued at µs, bytes)
    pacer_queue: VecDeque<(i64, usize)>,
    budget: f64,
    pub paced: bool,
    /// The pacer holds while the controller's congestion window is full, and drops what has
    /// waited longer than `max_backlog_us` (as the product's session does: it skips to a new
    /// keyframe).
    pub windowed: bool,
    pub max_backlog_us: i64,
    pub window_holds: u64,
    pub backlog_drops: u64,
    /// Packets carry at most this many bytes.
    pub max_payload: usize,
    /// The encoder produces at most this (application-limited) whatever the target.
    pub app_limit_bps: Option<f64>,
    // records
    pub samples: Vec<Sample>,
    /// (send time, queueing delay at the bottleneck) per packet that entered it.
    pub queue_delays: Vec<(i64, i64)>,
    /// (encoded at µs, pacer wait + bottleneck queue µs) of every packet the link delivered:
    /// what a viewer sees on top of the fixed path delay.
    pub sender_delays: Vec<(i64, i64)>,
    pub queue_drops: Vec<i64>,
    pub random_drops: u64,
    pub sent_packets: u64,
}

impl Sim {
    pub fn new(start_bps: u64, link: LinkParams) -> Self {
        Self::with_config(Config { start_bps, min_bps: 50_000, max_bps: 50_000_000 }, link)
    }

    pub fn with_config(config: Config, link: LinkParams) -> Self {
        let t0 = Instant::now();
        Self {
            cc: Controller::new(config, t0),
            t0,
            now_us: 0,
            link,
            rng: Rng::new(0x9E37_79B9_7F4A_7C15),
            link_free_at: 0,
            in_queue: VecDeque::new(),
            queued_bytes: 0,
            in_flight: VecDeque::new(),
            last_arrival: 0,
            rx_expected: 0,
            rx_arrived: VecDeque::new(),
            rx_highest: None,
            feedback_interval_us: 50 * MS,
            next_feedback_us: 50 * MS,
            feedback_enabled: true,
            pending_feedback: VecDeque::new(),
            rx_clock_offset_us: -123_456_789_000,
            remb: None,
            next_remb_us: 0,
            next_seq: 65_000, // wraps early in every run
            next_frame_us: 0,
            pacer_queue: VecDeque::new(),
            windowed: true,
            max_backlog_us: 250 * MS,
            window_holds: 0,
            backlog_drops: 0,
            budget: 0.0,
            paced: true,
            max_payload: 1_200,
            app_limit_bps: None,
            samples: Vec::new(),
            queue_delays: Vec::new(),
            sender_delays: Vec::new(),
            queue_drops: Vec::new(),
            random_drops: 0,
            sent_packets: 0,
        }
    }

    pub fn instant(&self, us: i64) -> Instant {
        self.t0 + Duration::from_micros(us as u64)
    }

    pub fn run_until(&mut self, t_us: i64) {
        while self.now_us < t_us {
            self.tick();
        }
    }

    fn tick(&mut self) {
        let now = self.now_us;
        let at = self.instant(now);

        // receiver: arrivals
        while self.in_flight.front().is_some_and(|&(t, _)| t <= now) {
            let (t, seq) = self.in_flight.pop_front().unwrap();
            self.rx_arrived.push_back((seq, t));
            self.rx_highest = Some(self.rx_highest.map_or(seq, |h| h.max(seq)));
        }
        // receiver: feedback
        if now >= self.next_feedback_us {
            self.next_feedback_us += self.feedback_interval_us;
            if let Some(h) = self.rx_highest.filter(|&h| h >= self.rx_expected) {
                let mut fb = Vec::with_capacity((h - self.rx_expected + 1) as usize);
                for s in self.rx_expected..=h {
                    let arrival = match self.rx_arrived.front() {
                        Some(&(seq, t)) if seq == s => {
                            self.rx_arrived.pop_front();
                            Some(t + self.rx_clock_offset_us)
                        }
                        _ => None,
                    };
                    fb.push((s as u16, arrival));
                }
                self.rx_expected = h + 1;
                if self.feedback_enabled {
                    self.pending_feedback.push_back((now + self.link.one_way_delay_us, fb));
                }
            }
        }
        while self.pending_feedback.front().is_some_and(|(t, _)| *t <= now) {
            let (_, fb) = self.pending_feedback.pop_front().unwrap();
            self.cc.on_transport_feedback(&fb, at);
        }
        if let Some(r) = self.remb
            && now >= self.next_remb_us
        {
            self.next_remb_us = now + 500 * MS;
            self.cc.on_remb(r, at);
        }
        if now % (25 * MS) == 0 {
            self.cc.handle_timeout(at);
        }

        // encoder
        if now >= self.next_frame_us {
            self.next_frame_us += 33_333;
            let mut rate = self.cc.target_bps() as f64;
            if let Some(l) = self.app_limit_bps {
                rate = rate.min(l);
            }
            let bytes = (rate / 8.0 / 30.0 * (0.8 + 0.4 * self.rng.f64())) as usize;
            let n = bytes.div_ceil(self.max_payload).max(1);
            for _ in 0..n {
                self.pacer_queue.push_back((now, (bytes / n).max(100)));
            }
        }
        // pacer (token bucket, 5 ms burst, may go one packet into debt)
        if self.paced {
            let rate = self.cc.pacing_bps() as f64 / 8.0;
            let cap = (rate * 0.005).max(3_000.0);
            self.budget = (self.budget + rate * TICK_US as f64 / 1e6).min(cap);
            if self.windowed {
                while self.pacer_queue.front().is_some_and(|&(enq, _)| now - enq > self.max_backlog_us) {
                    self.pacer_queue.pop_front();
                    self.backlog_drops += 1;
                }
            }
            while self.budget >= 0.0 {
                if self.windowed && !self.pacer_queue.is_empty() && self.cc.congested(at) {
                    self.window_holds += 1;
                    break;
                }
                let Some((enq, size)) = self.pacer_queue.pop_front() else { break };
                self.budget -= size as f64;
                self.send(enq, size);
            }
        } else {
            while let Some((enq, size)) = self.pacer_queue.pop_front() {
                self.send(enq, size);
            }
        }

        if now % (100 * MS) == 0 {
            let queue_us = (self.link_free_at - now).max(0);
            self.samples.push(Sample { t_us: now, stats: self.cc.stats(), pacing_bps: self.cc.pacing_bps(), queue_us });
        }
        self.now_us += TICK_US;
    }

    fn send(&mut self, encoded_us: i64, size: usize) {
        let now = self.now_us;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent_packets += 1;
        self.cc.on_packet_sent(seq as u16, size, self.instant(now));
        if self.rng.f64() < self.link.loss {
            self.random_drops += 1;
            return;
        }
        while self.in_queue.front().is_some_and(|&(t, _)| t <= now) {
            let (_, s) = self.in_queue.pop_front().unwrap();
            self.queued_bytes -= s;
        }
        if self.queued_bytes + size > self.link.buffer_bytes {
            self.queue_drops.push(now);
            return;
        }
        let start = now.max(self.link_free_at);
        let depart = start + (size as f64 * 8.0 / self.link.capacity_bps * 1e6) as i64;
        self.link_free_at = depart;
        self.queue_delays.push((now, start - now));
        self.sender_delays.push((encoded_us, start - encoded_us));
        self.in_queue.push_back((depart, size));
        self.queued_bytes += size;
        let jitter = if self.link.jitter_us > 0 { (self.rng.f64() * self.link.jitter_us as f64) as i64 } else { 0 };
        let arrival = (depart + self.link.one_way_delay_us + jitter).max(self.last_arrival);
        self.last_arrival = arrival;
        self.in_flight.push_back((arrival, seq));
    }

    // ---- queries ----

    pub fn samples_between(&self, from_us: i64, to_us: i64) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.t_us >= from_us && s.t_us < to_us)
    }

    pub fn targets_between(&self, from_us: i64, to_us: i64) -> Vec<u64> {
        self.samples_between(from_us, to_us).map(|s| s.stats.target_bps).collect()
    }

    /// The first sampled time at or after `from_us` where `f` holds.
    pub fn first_time(&self, from_us: i64, f: impl Fn(&Stats) -> bool) -> Option<i64> {
        self.samples.iter().find(|s| s.t_us >= from_us && f(&s.stats)).map(|s| s.t_us)
    }

    /// Percentile (0..=100) of the bottleneck queueing delay of packets sent in [from, to), µs.
    pub fn queue_delay_percentile(&self, from_us: i64, to_us: i64, p: f64) -> i64 {
        let mut d: Vec<i64> =
            self.queue_delays.iter().filter(|(t, _)| *t >= from_us && *t < to_us).map(|&(_, d)| d).collect();
        assert!(!d.is_empty(), "no packets in the window");
        d.sort_unstable();
        d[((d.len() - 1) as f64 * p / 100.0).round() as usize]
    }

    /// The first time at or after `from_us` from which on every delivered packet (by encode
    /// time, up to `to_us`) waited less than `limit_us` in the pacer and the bottleneck queue.
    pub fn settled_below(&self, from_us: i64, to_us: i64, limit_us: i64) -> Option<i64> {
        let mut last_bad = None;
        for &(t, d) in self.sender_delays.iter().filter(|(t, _)| *t >= from_us && *t < to_us) {
            if d >= limit_us {
                last_bad = Some(t);
            }
        }
        match last_bad {
            None => Some(from_us),
            Some(t) if t + 500 * MS < to_us => Some(t),
            Some(_) => None,
        }
    }

    /// A readable trace for assertion messages.
    pub fn trace(&self, from_us: i64, to_us: i64) -> String {
        self.samples_between(from_us, to_us)
            .filter(|s| (s.t_us / (100 * MS)) % 5 == 0)
            .map(|s| {
                format!(
                    "{:5.1}s {:>6}k q{:>4}ms {:?} d{}k l{}k a{}k loss{:.3} tr{:+.3} mt{:+.1}/{:.1}{}\n",
                    s.t_us as f64 / 1e6,
                    s.stats.target_bps / 1000,
                    s.queue_us / 1000,
                    s.stats.state,
                    s.stats.delay_based_bps / 1000,
                    s.stats.loss_based_bps / 1000,
                    s.stats.acked_bps / 1000,
                    s.stats.loss_fraction,
                    s.stats.trend,
                    s.stats.modified_trend,
                    s.stats.threshold,
                    if s.stats.overuse { " OVERUSE" } else { "" }
                )
            })
            .collect()
    }
}
