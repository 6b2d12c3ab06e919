//! The delay-based rate: a fast start, then AIMD (libwebrtc `AimdRateControl`) driven by the
//! overuse detector's verdicts.

use crate::trendline::Usage;

/// Overuse backs off to this share of the acknowledged rate: just under what the link
/// delivered, so the queue that built up drains.
pub(crate) const BETA: f64 = 0.85;
/// ...or further, down to this, when a deep queue has built up (see `Input::beta`).
pub(crate) const MIN_BETA: f64 = 0.5;
/// Startup doubles the estimate every this long of clean feedback.
pub(crate) const STARTUP_DOUBLING_S: f64 = 0.4;
/// At most this much feedback-free time counts towards one startup step (a late feedback is
/// not evidence for a big jump).
const STARTUP_MAX_STEP_S: f64 = 0.3;
/// Multiplicative increase when far from any known capacity, per second...
const MULT_RATE: f64 = 0.08;
/// ...growing by this much per second of uninterrupted multiplicative increase...
const MULT_ACCEL: f64 = 0.08;
/// ...up to this. 8 %/s alone takes 12 s to go from 800 kbit/s to 2 Mbit/s after a link
/// recovers; libwebrtc relies on probing for that, which we do not have.
const MULT_RATE_MAX: f64 = 0.40;
const MAX_INCREASE_STEP_S: f64 = 1.0;
const MIN_MULT_INCREASE_BPS: f64 = 1_000.0;
/// Additive increase near capacity: about one packet per response time, at least this much.
const MIN_ADDITIVE_BPS_PER_S: f64 = 4_000.0;
const EXPECTED_PACKET_BYTES: f64 = 1_200.0;
const FRAME_RATE: f64 = 30.0;
/// The overuse detector's own reaction time, added to the RTT for the additive increase.
const DETECTOR_DELAY_US: i64 = 100_000;
/// Before any acknowledged rate is known, overuse halves the estimate this often.
const INITIAL_REDUCE_INTERVAL_US: i64 = 200_000;
/// Libwebrtc's RTT bounds for "once per RTT" reductions.
const MIN_REDUCE_INTERVAL_US: i64 = 10_000;
const MAX_REDUCE_INTERVAL_US: i64 = 200_000;
/// After a cut, a further cut within this long needs the queue to have grown by
/// `REDUCE_AGAIN_QUEUE_GROWTH_US` since: the first cut was sized to drain the queue in about
/// this time, and the trend stays high while packets sent before it still arrive. Without it
/// a capacity drop into a full drop-tail queue cut 2.3 Mbit/s -> 650 -> 560 -> 220 kbit/s on
/// an 800 kbit/s link, and climbing back took 4 s.
const REDUCE_AGAIN_WAIT_US: i64 = 1_000_000;
const REDUCE_AGAIN_QUEUE_GROWTH_US: i64 = 20_000;

/// What the rate controller is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Fast start: doubling every ~400 ms of clean feedback until the first overuse or loss.
    Startup,
    /// AIMD increase (multiplicative far from the known capacity, additive near it).
    Increase,
    /// Not changing: the queue is draining (underuse), or feedback is late.
    Hold,
    /// The link is overused; the rate was cut to below the acknowledged rate.
    Decrease,
}

/// Running estimate of the link capacity from the acknowledged rates at overuse (libwebrtc
/// `LinkCapacityEstimator`), in kbit/s as there.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkCapacity {
    estimate_kbps: Option<f64>,
    deviation_kbps: f64,
}

impl Default for LinkCapacity {
    fn default() -> Self {
        Self { estimate_kbps: None, deviation_kbps: 0.4 }
    }
}

impl LinkCapacity {
    pub fn estimate_bps(&self) -> Option<f64> {
        self.estimate_kbps.map(|e| e * 1000.0)
    }

    fn deviation(&self, e: f64) -> f64 {
        (self.deviation_kbps * e).sqrt()
    }

    pub fn upper_bound_bps(&self) -> f64 {
        self.estimate_kbps.map_or(f64::INFINITY, |e| (e + 3.0 * self.deviation(e)) * 1000.0)
    }

    pub fn lower_bound_bps(&self) -> f64 {
        self.estimate_kbps.map_or(0.0, |e| (e - 3.0 * self.deviation(e)).max(0.0) * 1000.0)
    }

    pub fn reset(&mut self) {
        self.estimate_kbps = None;
    }

    pub fn on_overuse(&mut self, acked_bps: f64) {
        let sample = acked_bps / 1000.0;
        let alpha = 0.05;
        let e = match self.estimate_kbps {
            None => sample,
            Some(e) => (1.0 - alpha) * e + alpha * sample,
        };
        self.estimate_kbps = Some(e);
        let norm = e.max(1.0);
        let err = e - sample;
        self.deviation_kbps = ((1.0 - alpha) * self.deviation_kbps + alpha * err * err / norm).clamp(0.4, 2.5);
    }
}

/// One feedback's worth of input to the rate controller.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Input {
    pub usage: Usage,
    /// Acknowledged rate over ~500 ms.
    pub acked: Option<f64>,
    /// What overuse backs off from: the lower of the 500 ms and the recent acknowledged rate.
    pub acked_for_backoff: Option<f64>,
    /// Backoff factor on overuse: BETA, less when a deep queue must drain
    /// (MIN_BETA..=BETA).
    pub beta: f64,
    /// The estimate may not be raised above this (other limits, so that it does not wander
    /// far above what is used).
    pub cap: f64,
    /// For the pace of additive increase and of reductions.
    pub rtt_us: i64,
    /// The standing queue the feedback saw (one-way delay over its recent minimum), µs.
    pub queue_us: i64,
}

pub(crate) struct RateControl {
    min: f64,
    max: f64,
    estimate: f64,
    state: State,
    startup_done: bool,
    capacity: LinkCapacity,
    last_change: Option<i64>,
    last_decrease: Option<i64>,
    /// The queue when it happened.
    last_decrease_queue: i64,
    /// Since when the increase has been multiplicative without interruption (for the
    /// acceleration).
    mult_since: Option<i64>,
    /// When the fast start ended (None while in it).
    startup_ended_at: Option<i64>,
}

impl RateControl {
    pub fn new(start: f64, min: f64, max: f64) -> Self {
        Self {
            min,
            max,
            estimate: start.clamp(min, max),
            state: State::Startup,
            startup_done: false,
            capacity: LinkCapacity::default(),
            last_change: None,
            last_decrease: None,
            last_decrease_queue: 0,
            mult_since: None,
            startup_ended_at: None,
        }
    }

    /// When the fast start ended, if it has.
    pub fn startup_ended_at(&self) -> Option<i64> {
        self.startup_ended_at
    }

    fn end_startup(&mut self, now: i64) {
        if !self.startup_done {
            self.startup_done = true;
            self.startup_ended_at = Some(now);
        }
    }

    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn in_startup(&self) -> bool {
        !self.startup_done
    }

    pub fn capacity(&self) -> &LinkCapacity {
        &self.capacity
    }

    /// Sets the estimate from outside (feedback timeout, receiver-side estimate).
    pub fn set_estimate(&mut self, bps: f64, now: i64) {
        self.estimate = bps.clamp(self.min, self.max);
        self.last_change = Some(now);
    }

    pub fn set_state(&mut self, state: State, now: i64) {
        if state != self.state {
            self.state = state;
            self.last_change = Some(now);
        }
    }

    /// Leaves the fast start without an overuse (heavy loss, or feedback that does not come).
    pub fn exit_startup(&mut self, now: i64) {
        self.end_startup(now);
        if self.state == State::Startup {
            self.set_state(State::Hold, now);
        }
    }

    /// The link may have changed beyond recognition (feedback lost for seconds): forget its
    /// capacity and rediscover it with a fast start.
    pub fn restart(&mut self, now: i64) {
        self.startup_done = false;
        self.startup_ended_at = None;
        self.capacity.reset();
        self.mult_since = None;
        self.set_state(State::Hold, now);
    }

    /// One feedback's verdict.
    pub fn update(&mut self, input: Input, now: i64) {
        match input.usage {
            Usage::Overusing => self.on_overuse(input, now),
            Usage::Underusing => {
                // The queue is draining: leave the rate alone until it is empty. (In the fast
                // start, simply do not grow this time.)
                if self.startup_done {
                    self.set_state(State::Hold, now);
                }
            }
            Usage::Normal => self.on_normal(input, now),
        }
    }

    fn time_to_reduce(&self, acked: Option<f64>, rtt_us: i64, queue_us: i64, now: i64) -> bool {
        let Some(last) = self.last_decrease else { return true };
        let since = now.saturating_sub(last);
        if since < REDUCE_AGAIN_WAIT_US && queue_us < self.last_decrease_queue.saturating_add(REDUCE_AGAIN_QUEUE_GROWTH_US) {
            return false;
        }
        match acked {
            Some(a) => since >= rtt_us.clamp(MIN_REDUCE_INTERVAL_US, MAX_REDUCE_INTERVAL_US) || a < 0.5 * self.estimate,
            None => since >= INITIAL_REDUCE_INTERVAL_US,
        }
    }

    fn on_overuse(&mut self, input: Input, now: i64) {
        self.end_startup(now);
        self.mult_since = None;
        let acked = input.acked_for_backoff;
        if !self.time_to_reduce(acked, input.rtt_us, input.queue_us, now) {
            self.state = State::Decrease;
            return;
        }
        match acked {
            Some(acked) => {
                let beta = input.beta.clamp(MIN_BETA, BETA);
                let mut new = beta * acked;
                if new > self.estimate
                    && let Some(c) = self.capacity.estimate_bps()
                {
                    new = beta * c;
                }
                // Never *raise* the rate on overuse (acked can exceed the estimate while a
                // queue built at a higher rate drains).
                if new < self.estimate {
                    self.estimate = new.max(self.min);
                }
                if acked < self.capacity.lower_bound_bps() {
                    // Far below the capacity we knew: the link changed, start its average over.
                    self.capacity.reset();
                }
                self.capacity.on_overuse(acked);
            }
            None => self.estimate = (self.estimate / 2.0).max(self.min),
        }
        self.state = State::Decrease;
        self.last_decrease = Some(now);
        self.last_decrease_queue = input.queue_us;
        self.last_change = Some(now);
    }

    fn on_normal(&mut self, input: Input, now: i64) {
        let Input { acked, cap, rtt_us, .. } = input;
        let state = self.state;
        if matches!(state, State::Hold | State::Decrease) {
            // Resume from now: the time spent holding is not credit for a bigger step.
            let next = if self.startup_done { State::Increase } else { State::Startup };
            self.state = next;
            self.last_change = Some(now);
            return;
        }
        let dt_s = |max_s: f64| self.last_change.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e6).clamp(0.0, max_s);
        let new = if state == State::Startup {
            self.estimate * 2f64.powf(dt_s(STARTUP_MAX_STEP_S) / STARTUP_DOUBLING_S)
        } else {
            if acked.is_some_and(|a| a > self.capacity.upper_bound_bps()) {
                // Delivering clearly more than the capacity we knew, without queueing: the link
                // got better. Find out how much, multiplicatively.
                self.capacity.reset();
            }
            let dt = dt_s(MAX_INCREASE_STEP_S);
            if let Some(c) = self.capacity.estimate_bps() {
                self.mult_since = None;
                let additive = self.estimate + self.near_max_increase_rate(rtt_us) * dt;
                // Well below the known capacity (after draining a deep queue): return to
                // BETA x capacity as fast as the fast start grows, then probe additively.
                let floor = BETA * c;
                if self.estimate < floor {
                    let recovered = self.estimate * 2f64.powf(dt.min(STARTUP_MAX_STEP_S) / STARTUP_DOUBLING_S);
                    additive.max(recovered.min(floor))
                } else {
                    additive
                }
            } else {
                let since = now.saturating_sub(*self.mult_since.get_or_insert(now)) as f64 / 1e6;
                let rate = (MULT_RATE + MULT_ACCEL * since).min(MULT_RATE_MAX);
                let grown = self.estimate * (1.0 + rate).powf(dt);
                grown.max(self.estimate + MIN_MULT_INCREASE_BPS * dt)
            }
        };
        // Note: not capped by the acknowledged rate. An application-limited encoder sends less
        // than the estimate and that must not hold the estimate down; the price is that
        // overuse, when it comes, is answered from the acknowledged rate instead.
        let limit = cap.max(self.estimate).min(self.max);
        self.estimate = new.min(limit).max(self.min);
        self.last_change = Some(now);
    }

    /// Libwebrtc's "one average packet per response time" additive increase, bit/s per second.
    fn near_max_increase_rate(&self, rtt_us: i64) -> f64 {
        let frame_bytes = self.estimate / 8.0 / FRAME_RATE;
        let packets = (frame_bytes / EXPECTED_PACKET_BYTES).ceil().max(1.0);
        let avg_packet_bits = frame_bytes / packets * 8.0;
        let response_s = (rtt_us.max(0).saturating_add(DETECTOR_DELAY_US)) as f64 / 1e6;
        (avg_packet_bits / response_s).max(MIN_ADDITIVE_BPS_PER_S)
    }

    /// Classic loss-driven increase for peers without transport-cc (8 %/s from the current
    /// target; no delay signal, so no fast start).
    pub fn classic_increase(&mut self, target: f64, now: i64) {
        let dt = self.last_change.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e6).clamp(0.0, MAX_INCREASE_STEP_S);
        let base = self.estimate.min(target);
        self.estimate = (base * (1.0 + MULT_RATE).powf(dt) + MIN_MULT_INCREASE_BPS * dt).clamp(self.min, self.max);
        self.end_startup(now);
        self.state = State::Increase;
        self.last_change = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000;

    fn inp(usage: Usage, acked: Option<f64>, cap: f64) -> Input {
        Input { usage, acked, acked_for_backoff: acked, beta: BETA, cap, rtt_us: 50 * MS, queue_us: 0 }
    }

    #[test]
    fn startup_doubles_about_every_400ms() {
        let mut r = RateControl::new(300_000.0, 50_000.0, 50_000_000.0);
        r.update(inp(Usage::Normal, None, f64::INFINITY), 0);
        for i in 1..=20 {
            r.update(inp(Usage::Normal, None, f64::INFINITY), i * 50 * MS);
        }
        // 1 s: 2.5 doublings
        let e = r.estimate();
        assert!((e / 300_000.0 - 2f64.powf(2.5)).abs() < 0.01, "{e}");
        assert_eq!(r.state(), State::Startup);
    }

    #[test]
    fn overuse_backs_off_to_085_of_acked_and_ends_startup() {
        let mut r = RateControl::new(2_000_000.0, 50_000.0, 50_000_000.0);
        r.update(inp(Usage::Overusing, Some(1_000_000.0), f64::INFINITY), 0);
        assert_eq!(r.estimate(), 850_000.0);
        assert_eq!(r.state(), State::Decrease);
        assert!(!r.in_startup());
        // not again within an RTT
        r.update(inp(Usage::Overusing, Some(500_000.0 / 0.85 * 0.99), f64::INFINITY), 10 * MS);
        assert_eq!(r.estimate(), 850_000.0);
        // never raised on overuse
        r.update(inp(Usage::Overusing, Some(5_000_000.0), f64::INFINITY), 300 * MS);
        assert!(r.estimate() <= 850_000.0);
        // normal: Hold/Decrease -> Increase without a jump
        r.update(inp(Usage::Normal, Some(850_000.0), f64::INFINITY), 400 * MS);
        assert_eq!(r.state(), State::Increase);
        assert!(r.estimate() <= 850_000.0);
    }

    #[test]
    fn additive_near_capacity_multiplicative_far_from_it() {
        let mut r = RateControl::new(1_000_000.0, 50_000.0, 50_000_000.0);
        r.update(inp(Usage::Overusing, Some(1_000_000.0), f64::INFINITY), 0);
        r.update(inp(Usage::Normal, Some(850_000.0), f64::INFINITY), 100 * MS);
        let before = r.estimate();
        r.update(inp(Usage::Normal, Some(850_000.0), f64::INFINITY), 1_100 * MS);
        let add = r.estimate() - before;
        // ~ one 1062-byte packet per 150 ms: ~57 kbit/s per second
        assert!(add > 30_000.0 && add < 80_000.0, "{add}");
        // acked far above the capacity: multiplicative, accelerating
        let before = r.estimate();
        r.update(inp(Usage::Normal, Some(3_000_000.0), f64::INFINITY), 2_100 * MS);
        let g1 = r.estimate() / before;
        assert!((g1 - 1.08).abs() < 0.005, "starts at 8 %/s: {g1}");
        let before = r.estimate();
        r.update(inp(Usage::Normal, Some(3_000_000.0), f64::INFINITY), 3_100 * MS);
        let g2 = r.estimate() / before;
        assert!((g2 - 1.16).abs() < 0.005, "a second later 16 %/s: {g2}");
        for s in 4..10 {
            r.update(inp(Usage::Normal, Some(30_000_000.0), f64::INFINITY), s * 1_000 * MS);
        }
        let before = r.estimate();
        r.update(inp(Usage::Normal, Some(30_000_000.0), f64::INFINITY), 10_000 * MS);
        let g = r.estimate() / before;
        assert!((g - (1.0 + MULT_RATE_MAX)).abs() < 0.01, "{g}");
    }

    #[test]
    fn underuse_holds_and_increase_respects_cap_and_max() {
        let mut r = RateControl::new(1_000_000.0, 50_000.0, 2_000_000.0);
        r.update(inp(Usage::Overusing, Some(1_000_000.0), f64::INFINITY), 0);
        r.update(inp(Usage::Underusing, Some(1_000_000.0), f64::INFINITY), 100 * MS);
        assert_eq!(r.state(), State::Hold);
        let e = r.estimate();
        r.update(inp(Usage::Underusing, Some(1_000_000.0), f64::INFINITY), 900 * MS);
        assert_eq!(r.estimate(), e);
        let mut r = RateControl::new(1_000_000.0, 50_000.0, 2_000_000.0);
        for i in 0..100 {
            r.update(inp(Usage::Normal, None, 1_500_000.0), i * 50 * MS);
        }
        assert_eq!(r.estimate(), 1_500_000.0);
        for i in 100..200 {
            r.update(inp(Usage::Normal, None, f64::INFINITY), i * 50 * MS);
        }
        assert_eq!(r.estimate(), 2_000_000.0);
    }

    #[test]
    fn link_capacity_bounds() {
        let mut c = LinkCapacity::default();
        assert_eq!(c.upper_bound_bps(), f64::INFINITY);
        c.on_overuse(1_000_000.0);
        assert_eq!(c.estimate_bps(), Some(1_000_000.0));
        assert!(c.upper_bound_bps() > 1_000_000.0 && c.upper_bound_bps() < 1_100_000.0);
        assert!(c.lower_bound_bps() < 1_000_000.0 && c.lower_bound_bps() > 900_000.0);
    }

    #[test]
    fn a_second_cut_within_a_second_needs_a_growing_queue() {
        let q = |usage, acked: f64, queue_us| Input { queue_us, ..inp(usage, Some(acked), f64::INFINITY) };
        let mut r = RateControl::new(2_000_000.0, 50_000.0, 50_000_000.0);
        r.update(q(Usage::Overusing, 2_000_000.0, 250 * MS), 0);
        let first = r.estimate();
        assert_eq!(first, 0.85 * 2_000_000.0);
        // 300 ms later the trend still says overuse, but the queue has not grown: the first
        // cut is still draining it
        r.update(q(Usage::Overusing, 1_500_000.0, 260 * MS), 300 * MS);
        assert_eq!(r.estimate(), first);
        // still growing by more than 20 ms: cut again
        r.update(q(Usage::Overusing, 1_500_000.0, 290 * MS), 500 * MS);
        assert_eq!(r.estimate(), 0.85 * 1_500_000.0);
        // a second after the last cut the old rule (once per RTT) applies again
        let second = r.estimate();
        r.update(q(Usage::Overusing, 1_000_000.0, 100 * MS), 900 * MS);
        assert_eq!(r.estimate(), second);
        r.update(q(Usage::Overusing, 1_000_000.0, 100 * MS), 1_500 * MS);
        assert_eq!(r.estimate(), 850_000.0);
    }
}
